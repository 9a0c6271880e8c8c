//! The HTTP/2 side of a HBONE listener: drives one connection and hands every request stream
//! to a handler task.

use std::future::Future;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::H2Settings;

/// Serves HTTP/2 on `io` until the client goes away or `stop` fires; every request runs in
/// its own task so one slow upstream never holds up the others.
pub async fn serve_connection<IO, H, F>(
    io: IO,
    settings: &H2Settings,
    stop: CancellationToken,
    handler: H,
) -> Result<(), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RecvStream>, SendResponse<Bytes>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    serve_draining(io, settings, CancellationToken::new(), stop, handler).await
}

/// [`serve_connection`] that also drains: once `drain` fires the client is told (GOAWAY,
/// graceful: the streams it already sent are still served) to open new streams elsewhere, and
/// the connection closes cleanly (final GOAWAY, TLS close_notify, FIN) when its last stream
/// ends. `stop` ends it: streams get [`WIND_DOWN_GRACE`] to end themselves, the rest is cut.
pub async fn serve_draining<IO, H, F>(
    io: IO,
    settings: &H2Settings,
    drain: CancellationToken,
    stop: CancellationToken,
    handler: H,
) -> Result<(), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RecvStream>, SendResponse<Bytes>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    // A client that finishes TLS and never sends the HTTP/2 preface must not hold this task.
    let handshake = settings.server().handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Ok(r) => r?,
        // SETTINGS_TIMEOUT: the reason HTTP/2 has for a peer that does not get going.
        Err(_) => return Err(h2::Error::from(h2::Reason::SETTINGS_TIMEOUT)),
    };
    // A client that vanished without a FIN leaves no other trace: its streams (and the app
    // connections behind them) would be held until TCP keepalive gives up, half an hour on.
    let silent = super::keepalive::until_peer_silent(
        conn.ping_pong(),
        settings.keepalive_interval,
        settings.keepalive_timeout,
    );
    tokio::pin!(silent);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = &mut silent => {
                tracing::info!("HBONE client stopped answering pings, closing its connection");
                return Err(h2::Error::from(h2::Reason::CANCEL));
            }
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => { tokio::spawn(handler(req, respond)); }
                Some(Err(e)) => return if e.is_go_away() || e.is_reset() { Ok(()) } else { Err(e) },
                None => return Ok(()),
            },
            _ = drain.cancelled(), if !draining => {
                // h2 sends GOAWAY(max id) and a PING, then the real last id one round trip
                // later, so requests already on the wire are served, not refused; accept()
                // ends once every stream has.
                conn.graceful_shutdown();
                draining = true;
            }
            _ = stop.cancelled() => {
                // Streams that end on `stop` themselves (the proxy's wind-down: END_STREAM
                // both ways) get a moment to, with this task still driving the connection;
                // whatever is left after it is cut.
                if !draining {
                    conn.graceful_shutdown();
                }
                let ended = async {
                    while let Some(next) = conn.accept().await {
                        if let Ok((_, respond)) = next {
                            reject(respond, StatusCode::SERVICE_UNAVAILABLE);
                        }
                    }
                };
                let _ = tokio::time::timeout(WIND_DOWN_GRACE, ended).await;
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                // Let the GOAWAY flush; the peer sees its streams end.
                let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
                return Ok(());
            }
        }
    }
}

/// How long streams get to end by themselves once `stop` fires (one round trip to the peer and
/// its app, in a cluster), before the connection is cut under them.
pub const WIND_DOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Answers a request with a bodiless status (an HBONE refusal).
pub fn reject(mut respond: SendResponse<Bytes>, status: StatusCode) {
    let resp = Response::builder()
        .status(status)
        .body(())
        .unwrap_or_else(|_| Response::new(()));
    let _ = respond.send_response(resp, true);
}

#[cfg(test)]
#[path = "wind_down_tests.rs"]
mod wind_down_tests;
