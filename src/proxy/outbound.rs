//! 15001: connections the pod's app makes, captured by REDIRECT. Find where the app meant to
//! go and carry it there: over HBONE to a meshed pod, plain TCP otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request};
use tokio::net::TcpStream;

use super::{connect, original_dst, ProxyInputs};
use crate::hbone::{self, Pool, PoolKey};
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
    let upstream = inputs
        .state
        .current()
        .resolve(dst, &mut |n| rand::random_range(0..n));
    let result = match upstream {
        Err(e) => {
            tracing::warn!(uid = %inputs.uid, %src, %dst, error = %e, "no route");
            return;
        }
        Ok(Upstream::Passthrough(addr)) => plain(&inputs, app, addr).await,
        Ok(Upstream::Workload { workload, addr, .. }) => match workload.protocol {
            Protocol::Tcp => plain(&inputs, app, addr).await,
            Protocol::Hbone => {
                tracing::debug!(uid = %inputs.uid, %src, %dst, target = %addr,
                    src_identity = %inputs.identity, dst_identity = %workload.identity(),
                    "opening HBONE tunnel");
                let key = PoolKey::new(
                    inputs.identity.clone(),
                    vec![workload.identity()],
                    SocketAddr::new(addr.ip(), inputs.ports.hbone),
                );
                tunnel(&pool, &key, app, src, addr).await
            }
        },
    };
    match result {
        Ok((up, down)) => {
            tracing::debug!(uid = %inputs.uid, %src, %dst, sent = up, received = down, "outbound closed")
        }
        Err(e) => tracing::info!(uid = %inputs.uid, %src, %dst, error = %e, "outbound failed"),
    }
}

async fn plain(
    inputs: &ProxyInputs,
    app: TcpStream,
    dst: SocketAddr,
) -> std::io::Result<(u64, u64)> {
    let up = connect(inputs.factory.as_ref(), dst, None).await?;
    crate::copy::copy_bidirectional(app, up).await
}

async fn tunnel(
    pool: &Pool,
    key: &PoolKey,
    app: TcpStream,
    src: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<(u64, u64)> {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header("forwarded", hbone::forwarded_for(src))
        .body(())
        .map_err(std::io::Error::other)?;
    let t = pool.connect(key, req).await?;
    if t.response.status() != http::StatusCode::OK {
        return Err(std::io::Error::other(format!(
            "HBONE peer {} answered {}",
            key.addr,
            t.response.status()
        )));
    }
    let _guard = t.guard;
    let moved = hbone::copy_bidirectional(app, t.send, t.response.into_body()).await?;
    Ok((moved.tcp_to_h2, moved.h2_to_tcp))
}
