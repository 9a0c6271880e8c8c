//! The ztunnel side of ZDS: connect to the agent, say Hello, and turn each request into a handler
//! call and one Ack. Any connection failure leads to a reconnect and a fresh snapshot.

use std::collections::HashSet;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::protocol::{encode_ack, encode_hello, Event, Protocol, ProtocolError, WorkloadInfo};
use super::seqpacket::SeqPacket;

/// Where the agent listens unless configured otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/ztunnel/ztunnel.sock";

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What ztunnel does with the workloads the agent hands over.
pub trait WorkloadHandler: Send + Sync + 'static {
    /// A pod to proxy; `netns` is its network namespace. Err(msg) is sent back as a nack.
    fn add(
        &self,
        uid: String,
        info: WorkloadInfo,
        netns: OwnedFd,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// The pod is gone: stop proxying it. Err(msg) is sent back as a nack.
    fn del(&self, uid: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Snapshot finished: drop every proxy whose uid is not in `present` (uids added or kept in
    /// this snapshot).
    fn snapshot_complete(&self, present: HashSet<String>) -> impl Future<Output = ()> + Send;
    /// The connection to the agent was lost (reconnect follows); used for readiness.
    fn disconnected(&self) {}
}

/// Serves the agent at `path` until `shutdown` becomes true (or its sender is dropped).
pub async fn run_client<H: WorkloadHandler>(
    path: PathBuf,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        match SeqPacket::connect(&path) {
            Ok(sock) => {
                info!(path = %path.display(), "connected to the ZDS agent");
                let mut synced = false;
                let outcome = tokio::select! {
                    r = serve(&sock, handler.as_ref(), &mut synced) => Some(r),
                    () = shutdown_requested(&mut shutdown) => None,
                };
                // Only a connection that got as far as a full snapshot earns a quick retry: an
                // agent that accepts and then hangs up at once must not be hammered every 100 ms.
                if synced {
                    backoff = INITIAL_BACKOFF;
                }
                drop(sock);
                handler.disconnected();
                match outcome {
                    None => return,
                    Some(Ok(())) => info!("ZDS agent closed the connection; reconnecting"),
                    Some(Err(e)) => warn!("ZDS connection failed: {e:#}; reconnecting"),
                }
            }
            Err(e) => {
                // The agent starting after ztunnel (or restarting) is routine; only an agent that
                // stays away until the backoff has grown to its cap is worth a warning.
                if backoff < MAX_BACKOFF {
                    info!(path = %path.display(), retry_in = ?backoff, "cannot connect to the ZDS agent yet: {e}");
                } else {
                    warn!(path = %path.display(), retry_in = ?backoff, "cannot connect to the ZDS agent: {e}");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown_requested(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves once shutdown is set to true, or its sender is gone (nobody could ever set it).
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    // Err means the sender was dropped: treat it as a shutdown.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One connection: returns Ok on a clean close by the agent, Err on anything that needs a
/// reconnect. Sets `synced` once the snapshot is complete.
async fn serve<H: WorkloadHandler>(
    sock: &SeqPacket,
    handler: &H,
    synced: &mut bool,
) -> anyhow::Result<()> {
    sock.send(&encode_hello(), &[]).await?;
    let mut proto = Protocol::new();
    loop {
        let dgram = sock.recv().await?;
        if dgram.data.is_empty() {
            if !proto.synced() {
                warn!("ZDS agent closed the connection before finishing the snapshot");
            }
            return Ok(());
        }
        let mut fds = dgram.fds;
        let result = match proto.on_datagram(&dgram.data, fds.len()) {
            Ok(event) => dispatch(event, fds.pop(), handler).await,
            Err(ProtocolError::Nack(msg)) => Err(msg),
            // Dropping `fds` on return closes them.
            Err(e @ ProtocolError::Fatal(_)) => return Err(e.into()),
        };
        drop(fds);
        *synced = proto.synced();
        if let Err(msg) = &result {
            warn!("nacking ZDS request: {msg}");
        }
        sock.send(
            &encode_ack(result.as_ref().map(|_| ()).map_err(String::as_str)),
            &[],
        )
        .await?;
    }
}

async fn dispatch<H: WorkloadHandler>(
    event: Event,
    netns: Option<OwnedFd>,
    handler: &H,
) -> Result<(), String> {
    match event {
        Event::Add { uid, info } => {
            // The protocol checked there is exactly one fd; a missing one here is a bug, not the
            // peer's fault, but still must not panic.
            let netns =
                netns.ok_or_else(|| "internal error: AddWorkload lost its fd".to_string())?;
            debug!(%uid, "ZDS add");
            handler.add(uid, info, netns).await
        }
        Event::Del { uid } => {
            debug!(%uid, "ZDS del");
            handler.del(&uid).await
        }
        Event::Keep { uid } => {
            debug!(%uid, "ZDS keep");
            Ok(())
        }
        Event::SnapshotSent { present } => {
            info!(pods = present.len(), "ZDS snapshot complete");
            handler.snapshot_complete(present).await;
            Ok(())
        }
    }
}
