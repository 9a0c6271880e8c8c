//! The waypoint's side toward the backends: choosing an endpoint of a service, and opening a
//! byte stream to it — HBONE through the shared pool (the waypoint's own certificate, one
//! CONNECT stream per upstream connection, authority podIP:targetPort, `forwarded` carrying
//! the original client), or plain TCP to an endpoint that is not meshed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use meshtunnel::hbone::{self, Dialer, H2Settings, Pool, PoolKey};
use meshtunnel::identity::{CertSlot, Identity, TlsContext};
use meshtunnel::state::{ConfigSnapshot, HealthStatus, Protocol, Service, Workload};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::balance::{self, LbPolicy, Rolls};
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
    /// Requests in flight per endpoint (least-request balancing).
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// Counts one request in flight to an endpoint until dropped (when its response ends).
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoints whose counters are kept without a request in flight before idle ones are
/// dropped (endpoints come and go with the config).
const IN_FLIGHT_KEEP: usize = 1024;

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
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Endpoints in the order to try them: `policy`'s choice first, then the others.
    pub fn order(
        &self,
        svc: &ServiceRef,
        port: u16,
        policy: LbPolicy,
        eps: Vec<Endpoint>,
    ) -> Vec<Endpoint> {
        let rr = if policy == LbPolicy::RoundRobin {
            let mut rr = self.rr.lock().unwrap_or_else(|p| p.into_inner());
            let n = rr.entry((svc.clone(), port)).or_insert(0);
            let s = *n;
            *n = n.wrapping_add(1);
            s
        } else {
            0
        };
        let (a, b) = {
            use rand::Rng;
            let mut rng = rand::rng();
            (rng.random::<u64>(), rng.random::<u64>())
        };
        let counts = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let load = |e: &Endpoint| counts.get(&e.addr).map_or(0, |c| c.load(Ordering::Relaxed));
        balance::order(policy, eps, load, Rolls { rr, a, b })
    }

    /// Counts a request to `ep` as in flight until the returned guard drops.
    pub fn start_request(&self, ep: &Endpoint) -> InFlight {
        let mut counts = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= IN_FLIGHT_KEEP {
            counts.retain(|_, c| c.load(Ordering::Relaxed) > 0);
        }
        let c = counts.entry(ep.addr).or_default().clone();
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
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
        // The CONNECT runs to its end on a task of its own, even when the request that asked
        // for it is cancelled (a client resetting its stream): a CONNECT stream dropped before
        // the endpoint's ztunnel took it counts against that connection's reset limit, and a
        // client's rapid-reset flood would otherwise make the shared upstream connection
        // GOAWAY under every other client's requests. An unwanted tunnel is ended cleanly.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (pool, timeout) = (self.pool.clone(), self.connect_timeout);
        tokio::spawn(async move {
            let r = tokio::time::timeout(timeout, pool.connect(&key, req)).await;
            if let Err(Ok(Ok(mut unwanted))) = tx.send(r) {
                let _ = unwanted.send.send_data(bytes::Bytes::new(), true);
            }
        });
        let tunnel = rx
            .await
            .map_err(|_| ConnectError::Timeout { addr: hbone_addr })?
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
                hbone::tls_connect(cfg, ServerName::IpAddress(key.addr.ip().into()), tcp).await
            };
            tokio::time::timeout(timeout, connect).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "HBONE dial timed out")
            })?
        })
    })
}
