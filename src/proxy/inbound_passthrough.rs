//! 15006: plaintext connections to the pod from outside the mesh, captured by REDIRECT.
//! Passed to the app as they came, source address preserved.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{connect, original_dst, ProxyInputs};
use crate::metrics::ResponseFlags;

pub(super) async fn handle(inputs: Arc<ProxyInputs>, client: TcpStream, src: SocketAddr) {
    let dst = match original_dst(&client) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(uid = %inputs.uid, %src, error = %e, "no original destination");
            return;
        }
    };
    if inputs.ports.contains(dst.port()) {
        tracing::warn!(uid = %inputs.uid, %src, %dst, "refusing plaintext connection to a ztunnel port");
        return;
    }
    let meter = inputs
        .meter
        .inbound(&inputs.state.current(), src, dst, None);
    let app = match connect(inputs.factory.as_ref(), dst, Some(src.ip())).await {
        Ok(s) => s,
        Err(e) => return meter.fail(ResponseFlags::Connect, &e),
    };
    let (up, down) = (meter.client_to_server(), meter.server_to_client());
    let moved = crate::copy::copy_bidirectional_metered(client, app, up, down).await;
    meter.finish(moved.map(drop));
}
