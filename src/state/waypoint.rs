//! Waypoints: which outbound connections must go through one, which instance, and whom to
//! expect on the other end; and, on the receiving side, whether a peer is the waypoint a pod
//! sits behind. Pure lookups on one [`ConfigSnapshot`], so every case is a table test.
//!
//! As upstream: a service's `waypoint` applies to traffic addressed to the service's VIP, a
//! workload's `waypoint` to traffic addressed to the workload's own IP; a connection whose
//! source is that waypoint goes direct (the waypoint's own hop to the endpoint). A waypoint
//! that is set but cannot be resolved is an error, never a reason to go direct: going around
//! the waypoint would skip its L7 policy.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::service::Service;
use super::snapshot::{ConfigSnapshot, ResolveError, Upstream};
use super::workload::{GatewayAddress, GatewayDestination, HealthStatus, Workload};
use crate::identity::Identity;

/// Where an outbound connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// No waypoint in the way (or the source is the waypoint): as [`ConfigSnapshot::resolve`].
    Direct(Upstream),
    /// Through the destination's waypoint.
    Waypoint(WaypointHop),
}

/// One connection's hop to a waypoint: HBONE to `addr`, CONNECT `authority`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointHop {
    /// The waypoint instance picked.
    pub waypoint: Arc<Workload>,
    /// The instance's IP and the gateway's `hboneMtlsPort`.
    pub addr: SocketAddr,
    /// Identities the waypoint may present: the instance's own, plus the `subjectAltNames`
    /// of the waypoint's service when it is named through one.
    pub identities: Vec<Identity>,
    /// The original destination, unchanged: service VIP:port or pod IP:port. The waypoint
    /// routes on it.
    pub authority: SocketAddr,
    /// The service the app addressed (service-addressed traffic).
    pub service: Option<Arc<Service>>,
    /// The workload the app addressed (workload-addressed traffic).
    pub destination: Option<Arc<Workload>>,
    /// The waypoint as the config names it (`network/ip` or `namespace/hostname`).
    pub name: String,
}

/// Why a waypoint cannot be used. Also the `reason` label of the metric counting refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaypointGap {
    /// The address or hostname names no workload or service in the config.
    Unknown,
    /// Known, but no instance is healthy and has an address.
    NoHealthyInstance,
    /// The gateway address has no `hboneMtlsPort`.
    NoPort,
    /// Resolved, but the HBONE connection to it failed (reported by the proxy).
    Unreachable,
}

impl WaypointGap {
    pub fn as_label(self) -> &'static str {
        match self {
            WaypointGap::Unknown => "unknown",
            WaypointGap::NoHealthyInstance => "no_healthy_instance",
            WaypointGap::NoPort => "no_port",
            WaypointGap::Unreachable => "unreachable",
        }
    }
}

impl fmt::Display for WaypointGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaypointGap::Unknown => "not in the config",
            WaypointGap::NoHealthyInstance => "without a healthy instance",
            WaypointGap::NoPort => "without an hboneMtlsPort",
            WaypointGap::Unreachable => "unreachable",
        })
    }
}

/// What a gateway address stands for: a workload, or a service and its endpoints.
struct Members<'a> {
    service: Option<&'a Arc<Service>>,
    workloads: &'a [Arc<Workload>],
}

impl ConfigSnapshot {
    /// Where an outbound connection from `source` (the capturing pod's workload, when the
    /// config knows it) to `dst` should go. `pick` chooses among `n` candidates, as in
    /// [`ConfigSnapshot::resolve`]: the endpoint, or the waypoint instance.
    pub fn route(
        &self,
        source: Option<&Workload>,
        dst: SocketAddr,
        pick: &mut impl FnMut(usize) -> usize,
    ) -> Result<Route, ResolveError> {
        let is_source = |gw: &GatewayAddress| source.is_some_and(|s| self.is_member(gw, s));
        if let Some(svc) = self.service_by_vip(dst.ip()) {
            // Service-addressed: only the service's waypoint applies (as upstream); the
            // endpoint's own waypoint is for traffic addressed to the endpoint.
            if let Some(gw) = svc.waypoint.as_ref().filter(|gw| !is_source(gw)) {
                return self
                    .hop(gw, dst, Some(svc.clone()), None, svc.key(), pick)
                    .map(Route::Waypoint);
            }
        } else if let Some(w) = self.workload_by_ip(dst.ip()) {
            if let Some(gw) = w.waypoint.as_ref().filter(|gw| !is_source(gw)) {
                return self
                    .hop(gw, dst, None, Some(w.clone()), w.to_string(), pick)
                    .map(Route::Waypoint);
            }
        }
        self.resolve(dst, pick).map(Route::Direct)
    }

    /// Whether the mTLS peer `identity` connecting from `ip` is a waypoint that `dest` sits
    /// behind: `dest`'s own waypoint or the waypoint of a service it serves. Only such a peer
    /// is trusted to name the original client (`Forwarded`). Identity and address must both
    /// match one instance, so a workload sharing the waypoint's service account elsewhere
    /// does not qualify.
    pub fn peer_is_waypoint_for(&self, dest: &Workload, identity: &Identity, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let matches = |gw: &GatewayAddress| {
            self.members(gw).workloads.iter().any(|w| {
                w.trust_domain == identity.trust_domain
                    && w.namespace == identity.namespace
                    && w.service_account == identity.service_account
                    && w.workload_ips.contains(&ip)
            })
        };
        dest.waypoint.as_ref().is_some_and(matches)
            || dest.services.keys().any(|key| {
                self.service_by_key(key)
                    .and_then(|(svc, _)| svc.waypoint.as_ref())
                    .is_some_and(matches)
            })
    }

    fn members(&self, gw: &GatewayAddress) -> Members<'_> {
        let none = Members {
            service: None,
            workloads: &[],
        };
        match &gw.destination {
            GatewayDestination::Address(a) => {
                if let Some(w) = self.workload_by_ip(a.address) {
                    Members {
                        service: None,
                        workloads: std::slice::from_ref(w),
                    }
                } else if let (Some(svc), Some(eps)) = (
                    self.service_by_vip(a.address),
                    self.endpoints_by_vip(a.address),
                ) {
                    Members {
                        service: Some(svc),
                        workloads: eps,
                    }
                } else {
                    none
                }
            }
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => match self.service_by_key(&format!("{namespace}/{hostname}")) {
                Some((svc, eps)) => Members {
                    service: Some(svc),
                    workloads: eps,
                },
                None => none,
            },
        }
    }

    fn is_member(&self, gw: &GatewayAddress, w: &Workload) -> bool {
        self.members(gw).workloads.iter().any(|m| m.uid == w.uid)
    }

    fn hop(
        &self,
        gw: &GatewayAddress,
        dst: SocketAddr,
        service: Option<Arc<Service>>,
        destination: Option<Arc<Workload>>,
        destination_name: String,
        pick: &mut impl FnMut(usize) -> usize,
    ) -> Result<WaypointHop, ResolveError> {
        let members = self.members(gw);
        // Counting first and then walking to the chosen one avoids a per-connection Vec.
        let usable = || {
            members.workloads.iter().filter_map(move |w| {
                if w.status != HealthStatus::Healthy {
                    return None;
                }
                let ip = w
                    .workload_ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                    .or(w.workload_ips.first())?;
                Some((w, SocketAddr::new(*ip, gw.hbone_mtls_port)))
            })
        };
        let n = usable().count();
        let gap = if members.workloads.is_empty() {
            Some(WaypointGap::Unknown)
        } else if n == 0 {
            Some(WaypointGap::NoHealthyInstance)
        } else if gw.hbone_mtls_port == 0 {
            Some(WaypointGap::NoPort)
        } else {
            None
        };
        if let Some(reason) = gap {
            return Err(ResolveError::WaypointUnavailable {
                destination: destination_name,
                waypoint: gw.destination.to_string(),
                reason,
            });
        }
        let (w, addr) = usable()
            .nth(pick(n) % n)
            .expect("index is below the count just taken");
        let mut identities = vec![w.identity()];
        if let Some(svc) = members.service {
            identities.extend(
                svc.subject_alt_names
                    .iter()
                    .filter_map(|san| san.parse::<Identity>().ok()),
            );
        }
        Ok(WaypointHop {
            waypoint: w.clone(),
            addr,
            identities,
            authority: dst,
            service,
            destination,
            name: gw.destination.to_string(),
        })
    }
}
