//! What every request handler shares, and what one HBONE tunnel knows about its client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meshtunnel::identity::Identity;
use meshtunnel::state::{ConfigSnapshot, State, Workload};

use crate::client_pool::ClientPool;
use crate::route::ServiceRef;
use crate::state::ConfigCell;
use crate::telemetry::Telemetry;
use crate::upstream::Upstreams;

/// Bounds on what one client may make the waypoint hold or wait for.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A client must finish sending request headers within this (slowloris).
    pub header_timeout: Duration,
    /// Largest request head (HTTP/1) or header list (HTTP/2) accepted; larger → 431.
    pub max_header_bytes: usize,
    /// Largest request body held in memory for retries and mirroring.
    pub retry_buffer: usize,
    /// How long protocol sniffing waits for a client's first bytes before treating the
    /// stream as opaque TCP (server-first protocols send nothing).
    pub sniff_timeout: Duration,
    /// An upstream HTTP connection unused this long is not reused.
    pub upstream_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 60 * 1024,
            retry_buffer: 1024 * 1024,
            sniff_timeout: Duration::from_secs(1),
            upstream_idle_timeout: Duration::from_secs(60),
        }
    }
}

pub struct Shared {
    pub mesh: Arc<State>,
    pub config: Arc<ConfigCell>,
    pub upstreams: Upstreams,
    pub telemetry: Arc<Telemetry>,
    pub limits: Limits,
}

/// One HBONE CONNECT stream into the waypoint.
#[derive(Clone, Debug)]
pub struct Downstream {
    /// The CONNECT authority: the original destination (service VIP:port or pod IP:port).
    pub dst: SocketAddr,
    /// The original client (from `forwarded`, else the HBONE peer's address).
    pub client: SocketAddr,
    /// The verified SPIFFE id of the HBONE peer: the request's source principal.
    pub peer: Identity,
    /// `peer` as a URI, made once per tunnel rather than per request.
    pub peer_uri: Arc<str>,
    /// Upstream connections this client's requests may reuse; they close with the tunnel.
    pub clients: Arc<ClientPool>,
}

impl Downstream {
    pub fn new(
        dst: SocketAddr,
        client: SocketAddr,
        peer: Identity,
        clients: Arc<ClientPool>,
    ) -> Self {
        Downstream {
            dst,
            client,
            peer_uri: peer.to_string().into(),
            peer,
            clients,
        }
    }

    /// The source principal as policies name it (the SPIFFE id without its scheme).
    pub fn principal(&self) -> &str {
        self.peer_uri
            .strip_prefix("spiffe://")
            .unwrap_or(&self.peer_uri)
    }
}

/// What the CONNECT authority names.
#[derive(Clone, Debug)]
pub enum Destination {
    Service { svc: ServiceRef, port: u16 },
    Workload(Arc<Workload>),
}

impl Destination {
    pub fn resolve(snap: &ConfigSnapshot, dst: SocketAddr) -> Option<Destination> {
        if let Some(s) = snap.service_by_vip(dst.ip()) {
            return Some(Destination::Service {
                svc: ServiceRef::new(&s.namespace, &s.name),
                port: dst.port(),
            });
        }
        snap.workload_by_ip(dst.ip())
            .map(|w| Destination::Workload(w.clone()))
    }

    pub fn service(&self) -> Option<&ServiceRef> {
        match self {
            Destination::Service { svc, .. } => Some(svc),
            Destination::Workload(_) => None,
        }
    }
}

/// IPs this waypoint accepts as a CONNECT target: the VIP or pod IP must be in the config.
pub fn known_target(snap: &ConfigSnapshot, ip: IpAddr) -> bool {
    snap.service_by_vip(ip).is_some() || snap.workload_by_ip(ip).is_some()
}
