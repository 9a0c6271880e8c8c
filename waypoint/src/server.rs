//! The HBONE side facing clients: TLS 1.3 with the waypoint's certificate (clients must
//! present one of our trust domain), HTTP/2 CONNECT streams whose authority is the original
//! destination, and inside each stream the client's HTTP (or opaque TCP) served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshtunnel::hbone::{self, H2Settings, LocalTargets};
use meshtunnel::identity::peer_identity;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::client_pool::ClientPool;
use crate::config::AppProtocol;
use crate::guarded::Guarded;
use crate::handle::handle;
use crate::shared::{known_target, Destination, Downstream, Shared};
use crate::sniff::{classify, Prefixed, Sniffed};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nBad Request";

pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    shared: Arc<Shared>,
    h2: H2Settings,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "HBONE accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (tls, shared, h2, stop) = (tls.clone(), shared.clone(), h2.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(tls, tcp, peer, shared, h2, stop).await {
                tracing::debug!(%peer, error = %e, "HBONE connection ended");
            }
        });
    }
}

async fn connection(
    tls: Arc<ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    h2: H2Settings,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, hbone::tls_accept(tls, tcp))
        .await
        .map_err(|_| anyhow::anyhow!("TLS handshake timed out"))??;
    let Some(identity) = peer_identity(tls.get_ref().1.peer_certificates()) else {
        anyhow::bail!("client presented no SPIFFE identity");
    };
    let identity = Arc::new(identity);
    hbone::serve_connection(tls, &h2, stop, move |req, respond| {
        let (shared, identity) = (shared.clone(), identity.clone());
        async move { stream(shared, peer, identity, req, respond).await }
    })
    .await?;
    Ok(())
}

async fn stream(
    shared: Arc<Shared>,
    peer: SocketAddr,
    identity: Arc<meshtunnel::identity::Identity>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let snap = shared.mesh.current();
    // The library's CONNECT checks, with "local" = the destinations this waypoint serves.
    let ip = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .map(|a| a.ip());
    let known = ip.filter(|ip| known_target(&snap, *ip));
    let known_ips: Vec<std::net::IpAddr> = known.into_iter().collect();
    let local = match (ip, known) {
        (Some(_), None) => LocalTargets::Unknown,
        _ => LocalTargets::Known(&known_ips),
    };
    let dst = match hbone::check_connect(&req, local) {
        Ok(dst) => dst,
        Err(rej) => {
            tracing::info!(%peer, peer_identity = %identity, reason = %rej, "CONNECT refused");
            return hbone::reject(respond, rej.status);
        }
    };
    let client = req
        .headers()
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(hbone::parse_forwarded_for)
        .unwrap_or(peer);
    let down = Arc::new(Downstream::new(
        dst,
        client,
        (*identity).clone(),
        ClientPool::new(16, shared.limits.upstream_idle_timeout),
    ));
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT stream gone before 200");
            return;
        }
    };
    let (near, far) = tokio::io::duplex(64 * 1024);
    let recv = req.into_body();
    tokio::spawn(async move {
        let _ = hbone::copy_bidirectional(far, send, recv).await;
    });
    serve_tunnel(shared, down, near).await;
}

/// Serves what the client speaks inside one tunnel.
async fn serve_tunnel(shared: Arc<Shared>, down: Arc<Downstream>, mut io: DuplexStream) {
    let cfg = shared.config.current();
    let snap = shared.mesh.current();
    let declared = match Destination::resolve(&snap, down.dst) {
        Some(Destination::Service { svc, port }) => cfg.protocols.get(&(svc, port)).copied(),
        _ => None,
    };
    drop(snap);
    let mut first = BytesMut::with_capacity(64);
    let proto = match declared {
        Some(p) => p,
        None => {
            let deadline = tokio::time::Instant::now() + shared.limits.sniff_timeout;
            loop {
                match classify(&first) {
                    Sniffed::Http1 => break AppProtocol::Http1,
                    Sniffed::Http2 => break AppProtocol::Http2,
                    Sniffed::Opaque => break AppProtocol::Tcp,
                    Sniffed::NeedMore => {}
                }
                match tokio::time::timeout_at(deadline, io.read_buf(&mut first)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => {}
                    // A client that says nothing may be speaking a server-first protocol.
                    Err(_) => break AppProtocol::Tcp,
                }
            }
        }
    };
    let io = Prefixed::new(first.freeze(), io);
    let limits = &shared.limits;
    match proto {
        AppProtocol::Http1 => {
            let (s, d) = (shared.clone(), down.clone());
            let svc = hyper::service::service_fn(move |req| {
                let (s, d) = (s.clone(), d.clone());
                async move { Ok::<_, Infallible>(handle(s, d, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                // The guard ends a refused stream with EOF: answers already in progress must
                // still be written, so EOF is a half-close, not an abort.
                .half_close(true)
                .serve_connection(TokioIo::new(Guarded::new(io, limits.max_header_bytes)), svc)
                .without_shutdown();
            match conn.await {
                Ok(parts) => {
                    let guarded = parts.io.into_inner();
                    if let Some((why, at_head)) = guarded.refused().cloned() {
                        tracing::info!(client = %down.client, dst = %down.dst, reason = %why, "request refused: ambiguous framing");
                        let mut io = guarded.into_inner();
                        // A refusal before the request reached the server gets its 400 here;
                        // one in the middle of a body failed that request's handler already.
                        if at_head {
                            let _ = io.write_all(BAD_REQUEST).await;
                        }
                        let _ = io.shutdown().await;
                    } else {
                        let mut io = guarded.into_inner();
                        let _ = io.shutdown().await;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "HTTP/1 connection in tunnel ended"),
            }
        }
        AppProtocol::Http2 => {
            let (s, d) = (shared.clone(), down.clone());
            let svc = hyper::service::service_fn(move |req| {
                let (s, d) = (s.clone(), d.clone());
                async move { Ok::<_, Infallible>(handle(s, d, req).await) }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32)
                .max_concurrent_streams(1000)
                // Rapid reset (CVE-2023-44487): a client that opens and cancels streams faster
                // than they are accepted, or makes us reset many, loses the connection.
                .max_pending_accept_reset_streams(100)
                .max_local_error_reset_streams(1024)
                // A dead client behind the tunnel is noticed and its connection freed.
                .keep_alive_interval(std::time::Duration::from_secs(30))
                .keep_alive_timeout(std::time::Duration::from_secs(20))
                .serve_connection(TokioIo::new(io), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 connection in tunnel ended");
            }
        }
        AppProtocol::Tcp => crate::tcp::passthrough(shared, down, io).await,
    }
}
