//! One HTTP/1.1 request or one gRPC call over a byte stream the caller opened (an HBONE
//! tunnel into the waypoint, or a plain TCP socket in a pod that its ztunnel captures), and
//! the reply as the tests read it.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Reply;

/// The head of a bodiless HTTP/1.1 request with `Host: host` (unless `headers` carry a Host
/// of their own) and `Connection: close`, so the reply ends with the stream.
pub(crate) fn request_head(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> String {
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map_or(host, |(_, v)| v);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
    {
        head += &format!("{k}: {v}\r\n");
    }
    head += "Content-Length: 0\r\n\r\n";
    head
}

/// An HTTP/1.1 response read to its end.
pub(crate) fn parse_reply(raw: &[u8]) -> Result<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of response head")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// One HTTP/2 (prior knowledge) POST of `path` on `io`, as a gRPC client sends it; the
/// reply's trailers (`grpc-status`) are added to its headers. The caller bounds the wait.
pub(crate) async fn grpc_on<IO>(io: IO, path: &str) -> Result<Reply>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await?;
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://echo{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (resp, _) = client.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut headers: BTreeMap<String, String> = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut body = resp.into_body();
    let mut raw = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        raw.extend_from_slice(&chunk);
    }
    if let Some(t) = body.trailers().await? {
        for (k, v) in &t {
            headers.insert(k.to_string(), v.to_str().unwrap_or("").to_owned());
        }
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&raw).into_owned(),
    })
}
