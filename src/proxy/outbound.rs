//! 15001: connections the pod's app makes, captured by REDIRECT. Find where the app meant to
//! go and carry it there: over HBONE to the destination's waypoint when it has one, over
//! HBONE to a meshed pod, plain TCP otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request};
use tokio::net::TcpStream;

use super::{connect_with, original_dst, ProxyInputs};
use crate::hbone::{self, Pool, PoolKey};
use crate::metrics::{ConnMeter, ResponseFlags};
use crate::state::{Protocol, ResolveError, Route, Upstream, WaypointGap, WaypointHop};

pub(super) async fn handle(inputs: Arc<ProxyInputs>, pool: Pool, app: TcpStream, src: SocketAddr) {
    let dst = match original_dst(&app) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(uid = %inputs.uid, %src, error = %e, "no original destination");
            return;
        }
    };
    if inputs.ports.contains(dst.port())
        && (dst.ip().is_loopback() || inputs.pod_ips().contains(&dst.ip()))
    {
        tracing::warn!(uid = %inputs.uid, %src, %dst, "refusing connection to a ztunnel port (loop)");
        return;
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
            meter.fail(ResponseFlags::Connect, &e)
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
                if let Err(e) = tunnel(&pool, &key, req, app, meter).await {
                    tracing::debug!(uid = %inputs.uid, %src, %dst, error = %e, "HBONE dial failed");
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
) {
    let key = PoolKey::new(inputs.identity.clone(), hop.identities, hop.addr);
    let host = hop.service.as_ref().map(|s| s.hostname.as_str());
    let req = connect_request(hop.authority, src, host);
    if let Err(e) = tunnel(pool, &key, req, app, meter).await {
        tracing::warn!(uid = %inputs.uid, %src, dst = %hop.authority, waypoint = %hop.name,
            instance = %hop.addr, error = %e, "refused: the destination's waypoint is unreachable");
        inputs
            .meter
            .waypoint_unavailable(&hop.name, WaypointGap::Unreachable);
    }
}

async fn plain(inputs: &ProxyInputs, app: TcpStream, dst: SocketAddr, meter: ConnMeter) {
    let up = match connect_with(inputs.factory.as_ref(), dst, None, &inputs.h2.sockets).await {
        Ok(s) => s,
        Err(e) => return meter.fail(ResponseFlags::Connect, &e),
    };
    let moved = crate::copy::copy_bidirectional_metered(
        app,
        up,
        meter.client_to_server(),
        meter.server_to_client(),
    )
    .await;
    meter.finish(moved.map(drop));
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

/// Carries `app` over one CONNECT stream. Err only when no stream could be opened (the
/// peer could not be dialed); every outcome is recorded on `meter`.
async fn tunnel(
    pool: &Pool,
    key: &PoolKey,
    req: Result<Request<()>, http::Error>,
    app: TcpStream,
    meter: ConnMeter,
) -> Result<(), std::io::Error> {
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            meter.fail(ResponseFlags::Connect, &e);
            return Ok(());
        }
    };
    let t = match pool.connect(key, req).await {
        Ok(t) => t,
        Err(e) => {
            meter.fail(ResponseFlags::Connect, &e);
            return Err(e);
        }
    };
    let status = t.response.status();
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
        return Ok(());
    }
    let _guard = t.guard;
    let mut app = app;
    let moved = hbone::copy_bidirectional_metered(
        &mut app,
        t.send,
        t.response.into_body(),
        meter.client_to_server(),
        meter.server_to_client(),
    )
    .await;
    let failed = moved.is_err();
    meter.finish(moved.map(drop));
    if failed {
        super::close_after_failure(app).await;
    }
    Ok(())
}
