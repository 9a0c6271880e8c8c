//! 15006: plaintext connections to the pod from outside the mesh, captured by REDIRECT.
//! Passed to the app as they came, source address preserved.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{connect_with, original_dst, ProxyInputs};
use crate::authz::{ConnInfo, LiveConns};
use crate::metrics::ResponseFlags;

pub(super) async fn handle(
    inputs: Arc<ProxyInputs>,
    live: Arc<LiveConns>,
    client: TcpStream,
    src: SocketAddr,
) {
    let dst = match original_dst(&client) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(uid = %inputs.uid, %src, error = %e, "no original destination");
            return;
        }
    };
    if inputs.ports.contains(dst.port()) {
        tracing::warn!(uid = %inputs.uid, %src, %dst, "refusing plaintext connection to a ztunnel port");
        return;
    }
    // Plaintext: no peer identity, so identity fields of policies cannot match. Denied → the
    // connection is closed without reaching the app.
    let conn = ConnInfo {
        src_ip: src.ip().to_canonical(),
        src_identity: None,
        dst_ip: dst.ip().to_canonical(),
        dst_port: dst.port(),
    };
    // No wait for this pod's workload: without it there is no policy to apply yet, and the
    // re-check that runs when it arrives revokes this connection if its policies deny it.
    let snapshot = inputs.state.current();
    let me = inputs.pod.find(&snapshot);
    let meter = inputs
        .meter
        .inbound(&snapshot, me.map(|w| &**w), src, dst, None);
    drop(snapshot);
    let admitted = match live.admit(&inputs.state, &inputs.uid, &inputs.pod, conn, "plaintext") {
        Ok(a) => a,
        Err(d) => return meter.fail(ResponseFlags::Deny, &d.reason),
    };
    let app = match admitted
        .run(connect_with(
            inputs.factory.as_ref(),
            dst,
            Some(src.ip()),
            &inputs.h2.sockets,
        ))
        .await
    {
        None => return meter.revoked(),
        Some(Ok(s)) => s,
        Some(Err(e)) => return meter.fail(ResponseFlags::Connect, &e),
    };
    let (up, down) = (meter.client_to_server(), meter.server_to_client());
    let copy = crate::copy::copy_bidirectional_metered(client, app, up, down);
    match admitted.run(copy).await {
        None => meter.revoked(),
        Some(moved) => meter.finish(moved.map(drop)),
    }
}
