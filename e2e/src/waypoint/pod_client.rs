//! Requests sent from inside a pod's network namespace the way its app sends them: a plain
//! TCP connection to the destination (a service VIP or a pod IP), which the pod's ztunnel
//! captures and, for a service bound to a waypoint, carries there over HBONE.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use test_support::Netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{exchange, Reply};

/// Connect and whole-request bounds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// An app in a pod: opens one connection per request (the pod's netns held open by fd).
#[derive(Clone)]
pub struct PodClient {
    netns: Arc<OwnedFd>,
}

impl PodClient {
    pub fn new(netns: &Netns) -> Result<PodClient> {
        Ok(PodClient {
            netns: Arc::new(netns.open_fd()?),
        })
    }

    /// A TCP connection to `dst` made inside the pod (setns is per thread, so the socket is
    /// made on a thread of its own and then driven by tokio).
    async fn connect(&self, dst: SocketAddr) -> Result<TcpStream> {
        let fd = self.netns.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let r = nix::sched::setns(&*fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::other)
                .and_then(|_| std::net::TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT));
            let _ = tx.send(r);
        });
        let tcp = rx
            .await
            .context("connect thread")?
            .with_context(|| format!("connecting to {dst}"))?;
        tcp.set_nonblocking(true)?;
        Ok(TcpStream::from_std(tcp)?)
    }

    /// One HTTP/1.1 request to `dst` with `Host: host` (unless `headers` carry one).
    pub async fn request_to_host(
        &self,
        dst: SocketAddr,
        method: &str,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let work = async {
            let mut tcp = self.connect(dst).await?;
            tcp.write_all(exchange::request_head(method, path, host, headers).as_bytes())
                .await?;
            let mut raw = Vec::new();
            tcp.read_to_end(&mut raw).await?;
            exchange::parse_reply(&raw)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .with_context(|| format!("HTTP request to {dst} from the pod timed out"))?
    }

    /// One gRPC call of `path` to `dst` (HTTP/2 prior knowledge).
    pub async fn grpc(&self, dst: SocketAddr, path: &str) -> Result<Reply> {
        let work = async {
            let tcp = self.connect(dst).await?;
            exchange::grpc_on(tcp, path).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .with_context(|| format!("gRPC call to {dst} from the pod timed out"))?
    }
}
