use std::io;
use std::sync::Arc;

use socket2::Socket;

use super::InpodNetns;
use crate::proxy::{new_tcp_socket, SocketFactory};

/// Sockets created inside one pod's namespace and marked (0x539 by default) so the pod's
/// redirect rules let ztunnel's own traffic through.
pub struct InpodSocketFactory {
    netns: Arc<InpodNetns>,
    mark: u32,
}

impl InpodSocketFactory {
    pub fn new(netns: Arc<InpodNetns>, mark: u32) -> Self {
        InpodSocketFactory { netns, mark }
    }
}

impl SocketFactory for InpodSocketFactory {
    fn tcp_socket(&self, v6: bool) -> io::Result<Socket> {
        self.netns.run(|| new_tcp_socket(v6, Some(self.mark)))
    }
}
