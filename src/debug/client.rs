//! HTTP/1.1 requests to the admin API of a running ztunnel.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` (with query) on the admin API; the body of a 200, an error otherwise.
pub fn get(admin: SocketAddr, path: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async { tokio::time::timeout(TIMEOUT, fetch(admin, path)).await })
        .with_context(|| format!("admin API at {admin} did not answer within {TIMEOUT:?}"))?
}

async fn fetch(admin: SocketAddr, path: &str) -> Result<String> {
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| {
            format!("connecting to the admin API at {admin} (is ztunnel running here?)")
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("admin API answered {status} for {path}: {}", body.trim());
    }
    Ok(body)
}
