//! 15001: connections the pod's app makes, captured by REDIRECT. Find where the app meant to
//! go and carry it there: over HBONE to a meshed pod, plain TCP otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request};
use tokio::net::TcpStream;

use super::{connect, original_dst, ProxyInputs};
use crate::hbone::{self, Pool, PoolKey};
use crate::metrics::{ConnMeter, ResponseFlags};
use crate::state::{Protocol, Upstream};

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
    let me = inputs.pod.find(&snapshot);
    let upstream = snapshot.resolve(dst, &mut |n| rand::random_range(0..n));
    let meter = inputs.meter.outbound(
        &snapshot,
        me.map(|w| &**w),
        src,
        dst,
        upstream.as_ref().ok(),
    );
    drop(snapshot);
    match upstream {
        Err(e) => {
            tracing::warn!(uid = %inputs.uid, %src, %dst, error = %e, "no route");
            meter.fail(ResponseFlags::Connect, &e)
        }
        Ok(Upstream::Passthrough(addr)) => plain(&inputs, app, addr, meter).await,
        Ok(Upstream::Workload { workload, addr, .. }) => match workload.protocol {
            Protocol::Tcp => plain(&inputs, app, addr, meter).await,
            Protocol::Hbone => {
                let key = PoolKey::new(
                    inputs.identity.clone(),
                    vec![workload.identity()],
                    SocketAddr::new(addr.ip(), inputs.ports.hbone),
                );
                tunnel(&pool, &key, app, src, addr, meter).await
            }
        },
    }
}

async fn plain(inputs: &ProxyInputs, app: TcpStream, dst: SocketAddr, meter: ConnMeter) {
    let up = match connect(inputs.factory.as_ref(), dst, None).await {
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

async fn tunnel(
    pool: &Pool,
    key: &PoolKey,
    app: TcpStream,
    src: SocketAddr,
    target: SocketAddr,
    meter: ConnMeter,
) {
    let req = match Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header("forwarded", hbone::forwarded_for(src))
        .body(())
    {
        Ok(r) => r,
        Err(e) => return meter.fail(ResponseFlags::Connect, &e),
    };
    let t = match pool.connect(key, req).await {
        Ok(t) => t,
        Err(e) => return meter.fail(ResponseFlags::Connect, &e),
    };
    let status = t.response.status();
    if status != http::StatusCode::OK {
        let flags = if status == http::StatusCode::UNAUTHORIZED {
            ResponseFlags::Deny
        } else {
            ResponseFlags::Connect
        };
        return meter.fail(
            flags,
            &format_args!("HBONE peer {} answered {status}", key.addr),
        );
    }
    let _guard = t.guard;
    let moved = hbone::copy_bidirectional_metered(
        app,
        t.send,
        t.response.into_body(),
        meter.client_to_server(),
        meter.server_to_client(),
    )
    .await;
    meter.finish(moved.map(drop));
}
