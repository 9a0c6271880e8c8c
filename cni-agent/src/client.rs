//! The plugin's side of [`crate::protocol`]: one blocking request/reply with a hard deadline.

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::cni::AgentOutcome;
use crate::protocol::{read_frame, write_frame, FrameError, Reply, Request};

/// Asks the agent and waits at most `timeout` in total. The exchange runs on its own thread so
/// that even a `connect` stuck on a full listen backlog cannot hold the runtime past the bound;
/// the plugin process exits right after, taking a stuck thread with it.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> AgentOutcome {
    let (tx, rx) = mpsc::channel();
    let socket: PathBuf = socket.to_owned();
    let req = req.clone();
    std::thread::spawn(move || {
        let _ = tx.send(exchange(&socket, &req, timeout));
    });
    rx.recv_timeout(timeout).unwrap_or(AgentOutcome::TimedOut)
}

fn exchange(socket: &Path, req: &Request, timeout: Duration) -> AgentOutcome {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => return AgentOutcome::Unreachable(format!("connect {}: {e}", socket.display())),
    };
    let _ = stream.set_write_timeout(Some(timeout));
    let _ = stream.set_read_timeout(Some(timeout));
    if let Err(e) = write_frame(&mut stream, req) {
        return AgentOutcome::Unreachable(format!("sending request: {e}"));
    }
    match read_frame::<Reply>(&mut stream) {
        Ok(reply) => AgentOutcome::Replied(reply),
        Err(FrameError::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            AgentOutcome::TimedOut
        }
        Err(FrameError::Io(e)) => {
            AgentOutcome::Unreachable(format!("agent closed the connection without a reply: {e}"))
        }
        Err(e) => AgentOutcome::BadReply(e.to_string()),
    }
}
