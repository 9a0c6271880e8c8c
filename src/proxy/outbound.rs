//! 15001: connections the pod's app makes, captured by REDIRECT. Find where the app meant to
//! go and carry it there: over HBONE to the destination's waypoint when it has one, over
//! HBONE to a meshed pod, plain TCP otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{connect_with, original_dst, ProxyInputs};
use crate::hbone::{self, Pool, PoolKey, Tunnel};
use crate::metrics::{ConnMeter, ResponseFlags};
use crate::state::{Protocol, ResolveError, Route, Upstream, WaypointGap, WaypointHop};

/// Not an `async fn`: its arguments go straight into the boxed setup future, so they take no
/// room in the task for the connection's whole life (see [`super::two_phase`]).
pub(super) fn handle(
    inputs: Arc<ProxyInputs>,
    pool: Pool,
    app: TcpStream,
    src: SocketAddr,
) -> impl std::future::Future<Output = ()> + Send {
    super::two_phase(setup(inputs, pool, app, src), Ready::run)
}

/// A connection past setup: both ends open, bytes not yet moving.
enum Ready {
    Plain {
        app: TcpStream,
        up: TcpStream,
        meter: ConnMeter,
    },
    Hbone {
        app: TcpStream,
        tunnel: Tunnel,
        meter: ConnMeter,
        /// The drain deadline: the stream then ends with END_STREAM, not a reset.
        wind_down: CancellationToken,
    },
}

impl Ready {
    async fn run(self) {
        match self {
            Ready::Plain { app, up, meter } => {
                let moved = crate::copy::copy_bidirectional_metered(
                    app,
                    up,
                    meter.client_to_server(),
                    meter.server_to_client(),
                )
                .await;
                meter.finish(moved.map(drop));
            }
            Ready::Hbone {
                mut app,
                tunnel,
                meter,
                wind_down,
            } => {
                let _guard = tunnel.guard;
                let moved = hbone::copy_bidirectional_metered(
                    &mut app,
                    tunnel.send,
                    tunnel.response.into_body(),
                    meter.client_to_server(),
                    meter.server_to_client(),
                    Some(&wind_down),
                )
                .await;
                // Wound down, the app's last bytes were never read: discard them up to its FIN
                // rather than reset it by closing over them.
                let unread = moved.is_err() || wind_down.is_cancelled();
                meter.finish(moved.map(drop));
                if unread {
                    super::close_after_failure(app).await;
                }
            }
        }
    }
}

/// Finds where the app meant to go and opens the way there; None when the connection is
/// refused or cannot be made (counted and logged here).
async fn setup(
    inputs: Arc<ProxyInputs>,
    pool: Pool,
    app: TcpStream,
    src: SocketAddr,
) -> Option<Ready> {
    let dst = match original_dst(&app) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(uid = %inputs.uid, %src, error = %e, "no original destination");
            return None;
        }
    };
    if inputs.ports.contains(dst.port())
        && (dst.ip().is_loopback() || inputs.pod_ips().contains(&dst.ip()))
    {
        tracing::warn!(uid = %inputs.uid, %src, %dst, "refusing connection to a ztunnel port (loop)");
        return None;
    }
    // No wait for this pod's own workload here: an outbound connection does not need it (it
    // only labels the metrics), so a pod not in the config yet is not held up.
    let snapshot = inputs.state.current();
    let me = inputs.pod.find(&snapshot).map(|w| &**w);
    let route = snapshot.route(me, dst, &mut |n| rand::random_range(0..n));
    let upstream = match route {
        Ok(Route::Waypoint(hop)) => {
            let meter = inputs.meter.outbound_waypoint(me, src, dst, &hop);
            drop(snapshot);
            return via_waypoint(&inputs, &pool, hop, app, src, meter).await;
        }
        Ok(Route::Direct(up)) => Ok(up),
        Err(e) => Err(e),
    };
    let meter = inputs
        .meter
        .outbound(&snapshot, me, src, dst, upstream.as_ref().ok());
    drop(snapshot);
    match upstream {
        Err(e) => {
            if let ResolveError::WaypointUnavailable {
                waypoint, reason, ..
            } = &e
            {
                tracing::warn!(uid = %inputs.uid, %src, %dst, %waypoint, error = %e,
                    "refused: the destination's waypoint cannot be used");
                inputs.meter.waypoint_unavailable(waypoint, *reason);
            } else {
                tracing::warn!(uid = %inputs.uid, %src, %dst, error = %e, "no route");
            }
            meter.fail(ResponseFlags::Connect, &e);
            None
        }
        Ok(Upstream::Passthrough(addr)) => plain(&inputs, app, addr, meter).await,
        Ok(Upstream::Workload {
            workload,
            addr,
            service,
        }) => match workload.protocol {
            Protocol::Tcp => plain(&inputs, app, addr, meter).await,
            Protocol::Hbone => {
                let key = PoolKey::new(
                    inputs.identity.clone(),
                    vec![workload.identity()],
                    SocketAddr::new(addr.ip(), inputs.ports.hbone),
                );
                let host = service.as_ref().map(|s| s.hostname.as_str());
                let req = connect_request(addr, src, host);
                let wind_down = inputs.life.force_close.clone();
                match tunnel(&pool, &key, req, app, meter, wind_down).await {
                    Ok(ready) => ready,
                    Err(e) => {
                        tracing::debug!(uid = %inputs.uid, %src, %dst, error = %e, "HBONE dial failed");
                        None
                    }
                }
            }
        },
    }
}

/// HBONE to the waypoint with this pod's certificate, expecting the waypoint's identity;
/// the CONNECT names the original destination. A waypoint that cannot be reached is counted
/// and logged like one that is missing: the connection is refused, never sent direct.
async fn via_waypoint(
    inputs: &ProxyInputs,
    pool: &Pool,
    hop: WaypointHop,
    app: TcpStream,
    src: SocketAddr,
    meter: ConnMeter,
) -> Option<Ready> {
    let key = PoolKey::new(inputs.identity.clone(), hop.identities, hop.addr);
    let host = hop.service.as_ref().map(|s| s.hostname.as_str());
    let req = connect_request(hop.authority, src, host);
    let wind_down = inputs.life.force_close.clone();
    match tunnel(pool, &key, req, app, meter, wind_down).await {
        Ok(ready) => ready,
        Err(e) => {
            tracing::warn!(uid = %inputs.uid, %src, dst = %hop.authority, waypoint = %hop.name,
                instance = %hop.addr, error = %e, "refused: the destination's waypoint is unreachable");
            inputs
                .meter
                .waypoint_unavailable(&hop.name, WaypointGap::Unreachable);
            None
        }
    }
}

async fn plain(
    inputs: &ProxyInputs,
    app: TcpStream,
    dst: SocketAddr,
    meter: ConnMeter,
) -> Option<Ready> {
    match connect_with(inputs.factory.as_ref(), dst, None, &inputs.h2.sockets).await {
        Ok(up) => Some(Ready::Plain { app, up, meter }),
        Err(e) => {
            meter.fail(ResponseFlags::Connect, &e);
            None
        }
    }
}

fn connect_request(
    target: SocketAddr,
    src: SocketAddr,
    host: Option<&str>,
) -> Result<Request<()>, http::Error> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header("forwarded", hbone::forwarded_for(src, host))
        .body(())
}

/// Opens one CONNECT stream for `app`. Err only when no stream could be opened (the peer could
/// not be dialed); Ok(None) when the peer refused; every failure is recorded on `meter`.
async fn tunnel(
    pool: &Pool,
    key: &PoolKey,
    req: Result<Request<()>, http::Error>,
    app: TcpStream,
    meter: ConnMeter,
    wind_down: CancellationToken,
) -> Result<Option<Ready>, std::io::Error> {
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            meter.fail(ResponseFlags::Connect, &e);
            return Ok(None);
        }
    };
    let tunnel = match pool.connect(key, req).await {
        Ok(t) => t,
        Err(e) => {
            meter.fail(ResponseFlags::Connect, &e);
            return Err(e);
        }
    };
    let status = tunnel.response.status();
    if status != http::StatusCode::OK {
        let flags = if status == http::StatusCode::UNAUTHORIZED {
            ResponseFlags::Deny
        } else {
            ResponseFlags::Connect
        };
        meter.fail(
            flags,
            &format_args!("HBONE peer {} answered {status}", key.addr),
        );
        return Ok(None);
    }
    Ok(Some(Ready::Hbone {
        app,
        tunnel,
        meter,
        wind_down,
    }))
}
