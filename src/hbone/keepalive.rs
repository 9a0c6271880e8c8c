//! HTTP/2 PING keepalive, on both ends of a HBONE connection: a peer that vanished without a
//! FIN or RST (its node or netns gone, its link down) never answers, and the connection with
//! every stream on it must then be released in seconds, not after TCP keepalive's half hour.

use std::time::Duration;

/// Returns when the peer stops answering pings (none within `timeout` of sending one, every
/// `interval`) or the connection fails; never when ping is unavailable (`None`).
pub(super) async fn until_peer_silent(
    ping: Option<h2::PingPong>,
    interval: Duration,
    timeout: Duration,
) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection failed (I/O, GOAWAY) or no pong came: either way it is over.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}
