//! 15006: plaintext connections to the pod from outside the mesh, captured by REDIRECT.
//! Passed to the app as they came, source address preserved.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{connect, original_dst, ProxyInputs};
use crate::authz::{ConnInfo, LiveConns};

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
    let Ok(admitted) = live.admit(&inputs.state, &inputs.uid, conn, "plaintext") else {
        return;
    };
    let work = async {
        let app = connect(inputs.factory.as_ref(), dst, Some(src.ip())).await?;
        crate::copy::copy_bidirectional(client, app).await
    };
    match admitted.run(work).await {
        None => {
            tracing::debug!(uid = %inputs.uid, %src, %dst, "inbound plaintext revoked by policy re-check")
        }
        Some(Ok((a, b))) => {
            tracing::debug!(uid = %inputs.uid, %src, %dst, sent = a, received = b, "inbound plaintext closed")
        }
        Some(Err(e)) => {
            tracing::info!(uid = %inputs.uid, %src, %dst, error = %e, "inbound plaintext failed")
        }
    }
}
