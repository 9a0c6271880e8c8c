//! 15008: HBONE from other ztunnels and waypoints. Terminate mTLS with this pod's certificate,
//! then serve each CONNECT by dialing the app from inside the pod, as the original client:
//! the peer itself, or, when the peer is a waypoint this pod sits behind, the client the
//! waypoint names in `Forwarded`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{connect_with, ProxyInputs};
use crate::authz::{Admitted, ConnInfo, LiveConns};
use crate::hbone::{self, check_connect, LocalTargets};
use crate::identity::{peer_identity, Identity};
use crate::metrics::{ConnMeter, ResponseFlags};

pub(super) async fn handle(
    inputs: Arc<ProxyInputs>,
    server: Arc<rustls::ServerConfig>,
    live: Arc<LiveConns>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let accept = hbone::tls_accept(server, tcp);
    let tls = match tokio::time::timeout(inputs.h2.handshake_timeout, accept).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(uid = %inputs.uid, %peer, error = %e, "HBONE TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(uid = %inputs.uid, %peer, timeout = ?inputs.h2.handshake_timeout,
                "HBONE TLS handshake timed out; connection closed");
            return;
        }
    };
    let Some(client) = peer_identity(tls.get_ref().1.peer_certificates()) else {
        return; // unreachable with our verifier; refuse rather than assume.
    };
    let (drain, stop) = (
        inputs.life.listeners_closed.clone(),
        inputs.life.force_close.clone(),
    );
    let h2 = inputs.h2.clone();
    // A drain (ztunnel stopping, pod removed) sends the peer's new streams to the new ztunnel.
    let result = hbone::serve_draining(tls, &h2, drain, stop, |req, respond| {
        stream(
            inputs.clone(),
            live.clone(),
            client.clone(),
            peer,
            req,
            respond,
        )
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(uid = %inputs.uid, %peer, error = %e, "HBONE connection error");
    }
}

/// Not an `async fn`: its arguments go straight into the boxed setup future, so they take no
/// room in the task for the stream's whole life (see [`super::two_phase`]).
pub(super) fn stream(
    inputs: Arc<ProxyInputs>,
    live: Arc<LiveConns>,
    client: Identity,
    peer: SocketAddr,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> impl std::future::Future<Output = ()> + Send {
    super::two_phase(accept(inputs, live, client, peer, req, respond), Ready::run)
}

/// A stream past its checks, with the app dialed and the 200 sent.
struct Ready {
    app: TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
    meter: ConnMeter,
    admitted: Admitted,
    /// The drain deadline: the stream then ends with END_STREAM, not a reset.
    wind_down: CancellationToken,
}

impl Ready {
    fn run(self) -> impl std::future::Future<Output = ()> + Send {
        let Ready {
            mut app,
            send,
            recv,
            meter,
            admitted,
            wind_down,
        } = self;
        async move {
            // A policy re-check may revoke the stream; dropping the copy resets it (RST_STREAM).
            let (to_client, to_app) = (meter.server_to_client(), meter.client_to_server());
            let copy = hbone::copy_bidirectional_metered(
                &mut app,
                send,
                recv,
                to_client,
                to_app,
                Some(&wind_down),
            );
            match admitted.run(copy).await {
                None => meter.revoked(),
                Some(Ok(_)) => {
                    meter.finish(Ok::<(), std::io::Error>(()));
                    // Wound down, the app's last bytes were never read: discard them up to
                    // its FIN rather than reset it by closing over them.
                    if wind_down.is_cancelled() {
                        super::close_after_failure(app).await;
                    }
                }
                // The client's side went away (its ztunnel stopped at its deadline, say): the
                // app gets a FIN, not a reset.
                Some(Err(e)) => {
                    meter.finish(Err(e));
                    super::close_after_failure(app).await;
                }
            }
        }
    }
}

/// Checks the CONNECT and the policy, dials the app and answers 200; None when the stream
/// was refused (answered, counted and logged here).
async fn accept(
    inputs: Arc<ProxyInputs>,
    live: Arc<LiveConns>,
    client: Identity,
    peer: SocketAddr,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) -> Option<Ready> {
    let (snapshot, me) = inputs.local_workload().await;
    let local = match &me {
        Some(w) => LocalTargets::Known(&w.workload_ips),
        None => LocalTargets::Unknown,
    };
    let target = match check_connect(&req, local) {
        Ok(t) => t,
        Err(rej) => {
            tracing::info!(uid = %inputs.uid, %peer, %client, uri = %req.uri(), rejected = %rej, "HBONE request refused");
            hbone::reject(respond, rej.status);
            return None;
        }
    };
    // Only a waypoint of this pod is trusted to name someone else as the client; anyone else's
    // `forwarded` header is ignored.
    let from_waypoint = me
        .as_deref()
        .is_some_and(|w| snapshot.peer_is_waypoint_for(w, &client, peer.ip()));
    let origin = if from_waypoint {
        let named = req
            .headers()
            .get(http::header::FORWARDED)
            .and_then(|v| v.to_str().ok())
            .and_then(hbone::parse_forwarded_for);
        if named.is_none() {
            tracing::debug!(uid = %inputs.uid, %peer, %client, "waypoint sent no usable forwarded for=; the app sees the waypoint");
        }
        named.unwrap_or(peer)
    } else {
        peer
    };
    let meter = inputs
        .meter
        .inbound(&snapshot, me.as_deref(), origin, target, Some(&client));
    drop(snapshot);
    let admitted = match live.admit(
        &inputs.state,
        &inputs.uid,
        &inputs.pod,
        conn_info(&client, peer, target),
        "hbone",
    ) {
        Ok(a) => a,
        Err(d) => {
            hbone::reject(respond, StatusCode::UNAUTHORIZED);
            meter.fail(ResponseFlags::Deny, &d.reason);
            return None;
        }
    };
    // The outer connection comes from the client pod's own namespace, so its source IP is the
    // client pod's IP (or the waypoint's, which named the client instead): that is what the
    // app should see.
    let app = match connect_with(
        inputs.factory.as_ref(),
        target,
        Some(origin.ip()),
        &inputs.h2.sockets,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            hbone::reject(respond, StatusCode::SERVICE_UNAVAILABLE);
            meter.fail(ResponseFlags::Connect, &e);
            return None;
        }
    };
    tracing::debug!(uid = %inputs.uid, %peer, client_identity = %client, server_identity = %inputs.identity,
        %target, "HBONE tunnel accepted");
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(_) => return None,
    };
    Some(Ready {
        app,
        send,
        recv: req.into_body(),
        meter,
        admitted,
        wind_down: inputs.life.force_close.clone(),
    })
}

/// The outer connection comes from the client pod's own namespace, so its source IP is the
/// client pod's IP: the one policies see. Through a waypoint, policies see the waypoint
/// (its identity and address), as upstream: the waypoint enforced the client's policy.
fn conn_info(client: &Identity, peer: SocketAddr, target: SocketAddr) -> ConnInfo {
    ConnInfo {
        src_ip: peer.ip().to_canonical(),
        src_identity: Some(client.clone()),
        dst_ip: target.ip().to_canonical(),
        dst_port: target.port(),
    }
}
