//! 15006: plaintext connections to the pod from outside the mesh, captured by REDIRECT.
//! Passed to the app as they came, source address preserved.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{connect, original_dst, ProxyInputs};

pub(super) async fn handle(inputs: Arc<ProxyInputs>, client: TcpStream, src: SocketAddr) {
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
    let result = async {
        let app = connect(inputs.factory.as_ref(), dst, Some(src.ip())).await?;
        crate::copy::copy_bidirectional(client, app).await
    }
    .await;
    match result {
        Ok((a, b)) => {
            tracing::debug!(uid = %inputs.uid, %src, %dst, sent = a, received = b, "inbound plaintext closed")
        }
        Err(e) => {
            tracing::info!(uid = %inputs.uid, %src, %dst, error = %e, "inbound plaintext failed")
        }
    }
}
