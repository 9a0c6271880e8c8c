//! The waypoint's side toward the backends: choosing an endpoint of a service, and opening a
//! byte stream to it — HBONE through the shared pool (the waypoint's own certificate, one
//! CONNECT stream per upstream connection, authority podIP:targetPort, `forwarded` carrying
//! the original client), or plain TCP to an endpoint that is not meshed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use meshtunnel::hbone::{self, Dialer, H2Settings, Pool, PoolKey};
use meshtunnel::identity::{CertSlot, Identity, TlsContext};
use meshtunnel::state::{ConfigSnapshot, HealthStatus, Protocol, Service, Workload};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::route::ServiceRef;

/// A byte stream to an endpoint, whatever carries it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    /// Pod IP and target port.
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickError {
    #[error("service {0} is unknown")]
    UnknownService(ServiceRef),
    #[error("service {0} port {1} has no healthy endpoint")]
    NoEndpoints(ServiceRef, u16),
}

pub fn find_service<'a>(snap: &'a ConfigSnapshot, svc: &ServiceRef) -> Option<&'a Arc<Service>> {
    snap.services()
        .find(|s| s.name == svc.name && s.namespace == svc.namespace)
}

/// Healthy endpoints of `svc` serving `port`, with the target port each one maps it to.
pub fn endpoints(
    snap: &ConfigSnapshot,
    svc: &ServiceRef,
    port: u16,
) -> Result<Vec<Endpoint>, PickError> {
    let service = find_service(snap, svc).ok_or_else(|| PickError::UnknownService(svc.clone()))?;
    let key = service.key();
    let svc_target = service.ports.get(&port).copied().filter(|p| *p != 0);
    let eps: Vec<Endpoint> = snap
        .endpoints(service)
        .iter()
        .filter(|w| w.status == HealthStatus::Healthy)
        .filter_map(|w| {
            let ip = w.workload_ips.first()?;
            let target = w.target_port(&key, port).or(svc_target)?;
            Some(Endpoint {
                workload: w.clone(),
                addr: SocketAddr::new(*ip, target),
            })
        })
        .collect();
    if eps.is_empty() {
        return Err(PickError::NoEndpoints(svc.clone(), port));
    }
    Ok(eps)
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out")]
    Timeout { addr: SocketAddr },
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HBONE CONNECT to {addr} answered {status}")]
    Refused {
        addr: SocketAddr,
        status: StatusCode,
    },
}

pub struct Upstreams {
    pool: Pool,
    identity: Identity,
    connect_timeout: Duration,
    /// Round-robin position per service port.
    rr: Mutex<HashMap<(ServiceRef, u16), usize>>,
}

impl Upstreams {
    pub fn new(
        tls: TlsContext,
        cert: Arc<CertSlot>,
        settings: H2Settings,
        connect_timeout: Duration,
    ) -> Upstreams {
        let identity = cert.identity().clone();
        Upstreams {
            pool: Pool::new(dialer(tls, cert, connect_timeout), settings),
            identity,
            connect_timeout,
            rr: Mutex::new(HashMap::new()),
        }
    }

    /// Endpoints in the order to try them: round robin, so each request starts one further.
    pub fn order(&self, svc: &ServiceRef, port: u16, mut eps: Vec<Endpoint>) -> Vec<Endpoint> {
        let start = {
            let mut rr = self.rr.lock().unwrap_or_else(|p| p.into_inner());
            let n = rr.entry((svc.clone(), port)).or_insert(0);
            let s = *n;
            *n = n.wrapping_add(1);
            s
        };
        let len = eps.len();
        eps.rotate_left(start % len.max(1));
        eps
    }

    /// Opens a stream to `ep`: HBONE when the endpoint is meshed, plain TCP otherwise.
    pub async fn open(
        &self,
        ep: &Endpoint,
        client: SocketAddr,
    ) -> Result<Box<dyn Io>, ConnectError> {
        if ep.workload.protocol != Protocol::Hbone {
            let addr = ep.addr;
            let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| ConnectError::Timeout { addr })?
                .map_err(|source| ConnectError::Io { addr, source })?;
            let _ = tcp.set_nodelay(true);
            return Ok(Box::new(tcp));
        }
        let hbone_addr = SocketAddr::new(ep.addr.ip(), hbone::HBONE_PORT);
        let key = PoolKey::new(
            self.identity.clone(),
            vec![ep.workload.identity()],
            hbone_addr,
        );
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(ep.addr.to_string())
            .header("forwarded", hbone::forwarded_for(client, None))
            .body(())
            .map_err(|e| ConnectError::Io {
                addr: ep.addr,
                source: std::io::Error::other(e),
            })?;
        let tunnel = tokio::time::timeout(self.connect_timeout, self.pool.connect(&key, req))
            .await
            .map_err(|_| ConnectError::Timeout { addr: hbone_addr })?
            .map_err(|source| ConnectError::Io {
                addr: hbone_addr,
                source,
            })?;
        let status = tunnel.response.status();
        if status != StatusCode::OK {
            return Err(ConnectError::Refused {
                addr: ep.addr,
                status,
            });
        }
        // The HTTP client speaks to one end of an in-memory pipe; the other end is copied
        // into the CONNECT stream with the library's flow-control-aware copy.
        let (near, far) = tokio::io::duplex(64 * 1024);
        let recv = tunnel.response.into_body();
        let (send, guard) = (tunnel.send, tunnel.guard);
        tokio::spawn(async move {
            let _slot = guard;
            let _ = hbone::copy_bidirectional(far, send, recv).await;
        });
        Ok(Box::new(near))
    }
}

fn dialer(tls: TlsContext, cert: Arc<CertSlot>, timeout: Duration) -> Dialer {
    Arc::new(move |key: PoolKey| {
        let (tls, cert) = (tls.clone(), cert.clone());
        Box::pin(async move {
            let cfg = tls
                .client_config(cert, key.dst.clone())
                .map_err(std::io::Error::other)?;
            let connect = async {
                let tcp = TcpStream::connect(key.addr).await?;
                let _ = tcp.set_nodelay(true);
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(ServerName::IpAddress(key.addr.ip().into()), tcp)
                    .await
            };
            tokio::time::timeout(timeout, connect).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "HBONE dial timed out")
            })?
        })
    })
}
