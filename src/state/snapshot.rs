use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::policy::{Policy, Scope};
use super::service::Service;
use super::workload::{HealthStatus, NetworkMode, Workload, WorkloadInfo};

/// Immutable, indexed view of one config generation.
#[derive(Debug, Default)]
pub struct ConfigSnapshot {
    workloads: Vec<Arc<Workload>>,
    services: Vec<Arc<Service>>,
    policies: Vec<Arc<Policy>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_uid: HashMap<String, Arc<Workload>>,
    /// Hash of (namespace, name) → indexes into `workloads`: how a pod handed over by ZDS finds
    /// its workload. A hash rather than the strings, so the index costs no copy of every name.
    by_pod_name: HashMap<u64, Vec<usize>>,
    pod_name_hasher: RandomState,
    /// Index into `services` / `endpoints` / `service_keys`.
    by_vip: HashMap<IpAddr, usize>,
    /// `namespace/hostname` → index, for waypoints named by hostname.
    by_key: HashMap<String, usize>,
    /// Parallel to `services`; precomputed so the per-connection path does not format keys.
    service_keys: Vec<String>,
    endpoints: Vec<Vec<Arc<Workload>>>,
    /// Policy indexes, so an authorization decision looks at the policies that apply to one
    /// workload instead of scanning them all: `namespace/name` → index, Global-scope
    /// indexes, Namespace-scope indexes by namespace.
    policy_by_key: HashMap<String, usize>,
    global_policies: Vec<usize>,
    namespace_policies: HashMap<String, Vec<usize>>,
}

/// Config that cannot be indexed without guessing. Positions are indexes into the lists given
/// to [`ConfigSnapshot::new`], named the way the local config file names them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("workloads[{second}]: duplicate uid {uid:?} (also workloads[{first}])")]
    DuplicateUid {
        uid: String,
        first: usize,
        second: usize,
    },
    #[error("workloads[{second}]: IP {ip} is already used by workloads[{first}]")]
    DuplicateWorkloadIp {
        ip: IpAddr,
        first: usize,
        second: usize,
    },
    #[error("services[{second}]: duplicate service {key:?} (also services[{first}])")]
    DuplicateService {
        key: String,
        first: usize,
        second: usize,
    },
    #[error("services[{second}]: VIP {ip} is already used by services[{first}]")]
    DuplicateVip {
        ip: IpAddr,
        first: usize,
        second: usize,
    },
    #[error("policies[{second}]: duplicate policy {key:?} (also policies[{first}])")]
    DuplicatePolicy {
        key: String,
        first: usize,
        second: usize,
    },
}

/// Where an outbound connection should go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// A known workload: `addr` = one of its IPs and the target port (service port mapped via
    /// the workload's `services` map to targetPort, or the Service's `ports` map when the
    /// workload has no entry; direct-to-pod-IP keeps the port); `service` = the Service when
    /// dst was a VIP.
    Workload {
        workload: Arc<Workload>,
        addr: SocketAddr,
        service: Option<Arc<Service>>,
    },
    /// Not in the mesh's config: connect straight to dst.
    Passthrough(SocketAddr),
}

impl Upstream {
    /// The address to connect (or tunnel) to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Upstream::Workload { addr, .. } => *addr,
            Upstream::Passthrough(a) => *a,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("service {service} has no healthy endpoint serving port {port}")]
    NoEndpoints { service: String, port: u16 },
    #[error("port {port} is not a port of service {service}")]
    PortNotInService { service: String, port: u16 },
    /// The destination must go through its waypoint, and the waypoint cannot be used: the
    /// connection is refused rather than sent around the waypoint's L7 policy.
    #[error("{destination} must go through waypoint {waypoint}, which is {reason}")]
    WaypointUnavailable {
        destination: String,
        waypoint: String,
        reason: super::waypoint::WaypointGap,
    },
}

impl ConfigSnapshot {
    pub fn empty() -> Self {
        Self::default()
    }

    /// Indexes one config generation. Refuses duplicates instead of letting a later entry
    /// silently shadow an earlier one.
    pub fn new(
        workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Policy>,
    ) -> Result<Self, SnapshotError> {
        let mut first_error = None;
        let s = Self::index(
            workloads.into_iter().map(Arc::new),
            services.into_iter().map(Arc::new),
            policies.into_iter().map(Arc::new),
            &mut |e| {
                first_error.get_or_insert(e);
                false
            },
        );
        match first_error {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }

    /// Indexes config from sources that may disagree (istiod mid-update, or istiod and the
    /// local file): the first of two entries with the same key or address wins and each
    /// conflict is returned, so one stale entry cannot take the whole config down. Takes the
    /// entries shared, so a rebuild after a one-workload change copies pointers, not workloads.
    pub fn merged(
        workloads: impl IntoIterator<Item = Arc<Workload>>,
        services: impl IntoIterator<Item = Arc<Service>>,
        policies: impl IntoIterator<Item = Arc<Policy>>,
    ) -> (Self, Vec<SnapshotError>) {
        let mut conflicts = Vec::new();
        let s = Self::index(workloads, services, policies, &mut |e| {
            conflicts.push(e);
            true
        });
        (s, conflicts)
    }

    /// `conflict` hears every duplicate and says whether to go on (skipping the later entry,
    /// or for an address only its index entry) or stop.
    fn index(
        workloads: impl IntoIterator<Item = Arc<Workload>>,
        services: impl IntoIterator<Item = Arc<Service>>,
        policies: impl IntoIterator<Item = Arc<Policy>>,
        conflict: &mut dyn FnMut(SnapshotError) -> bool,
    ) -> Self {
        let workloads = workloads.into_iter();
        let mut s = ConfigSnapshot::default();
        s.by_uid.reserve(workloads.size_hint().0);
        s.by_ip.reserve(workloads.size_hint().0);
        // Input position of each accepted workload, to name the first of a conflicting pair
        // (looked up only when there is a conflict, so the common path hashes each key once).
        let mut accepted_pos = Vec::with_capacity(workloads.size_hint().0);
        let first_pos = |s: &ConfigSnapshot, held: &Arc<Workload>, pos: &[usize]| {
            s.workloads
                .iter()
                .position(|x| Arc::ptr_eq(x, held))
                .map_or(0, |j| pos[j])
        };
        for (i, w) in workloads.enumerate() {
            if let Some(held) = s.by_uid.get(&w.uid) {
                let first = first_pos(&s, held, &accepted_pos);
                let go_on = conflict(SnapshotError::DuplicateUid {
                    uid: w.uid.clone(),
                    first,
                    second: i,
                });
                if go_on {
                    continue;
                }
                return s;
            }
            // Host-network pods carry their node's IP; indexing it would claim the node.
            if w.network_mode == NetworkMode::Standard {
                for ip in &w.workload_ips {
                    match s.by_ip.entry(*ip) {
                        Entry::Occupied(e) => {
                            let held = e.get().clone();
                            let first = first_pos(&s, &held, &accepted_pos);
                            let go_on = conflict(SnapshotError::DuplicateWorkloadIp {
                                ip: *ip,
                                first,
                                second: i,
                            });
                            if !go_on {
                                return s;
                            }
                        }
                        Entry::Vacant(e) => {
                            e.insert(w.clone());
                        }
                    }
                }
            }
            s.by_uid.insert(w.uid.clone(), w.clone());
            let key = s.pod_name_key(&w.namespace, &w.name);
            s.by_pod_name.entry(key).or_default().push(i);
            s.workloads.push(w);
            accepted_pos.push(i);
        }

        let mut key_pos = HashMap::new();
        for (i, svc) in services.into_iter().enumerate() {
            let key = svc.key();
            if let Some(&(first, _)) = key_pos.get(&key) {
                let go_on = conflict(SnapshotError::DuplicateService {
                    key,
                    first,
                    second: i,
                });
                if go_on {
                    continue;
                }
                return s;
            }
            let idx = s.services.len();
            key_pos.insert(key.clone(), (i, idx));
            s.by_key.insert(key.clone(), idx);
            for vip in &svc.vips {
                match s.by_vip.entry(vip.address) {
                    Entry::Occupied(e) => {
                        let go_on = conflict(SnapshotError::DuplicateVip {
                            ip: vip.address,
                            first: *e.get(),
                            second: i,
                        });
                        if !go_on {
                            return s;
                        }
                    }
                    Entry::Vacant(e) => {
                        e.insert(idx);
                    }
                }
            }
            s.service_keys.push(key);
            s.services.push(svc);
        }
        // Endpoints by walking each workload's own service list once: O(workloads x their
        // services), where asking every workload about every service would be O(W x S).
        s.endpoints = vec![Vec::new(); s.services.len()];
        for w in &s.workloads {
            for key in w.services.keys() {
                if let Some(&(_, idx)) = key_pos.get(key) {
                    s.endpoints[idx].push(w.clone());
                }
            }
        }

        let mut policy_pos = HashMap::new();
        for (i, p) in policies.into_iter().enumerate() {
            let key = p.key();
            if let Some(&first) = policy_pos.get(&key) {
                let go_on = conflict(SnapshotError::DuplicatePolicy {
                    key,
                    first,
                    second: i,
                });
                if go_on {
                    continue;
                }
                return s;
            }
            policy_pos.insert(key.clone(), i);
            let idx = s.policies.len();
            match p.scope {
                Scope::Global => s.global_policies.push(idx),
                Scope::Namespace => s
                    .namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(idx),
                Scope::WorkloadSelector => {}
            }
            s.policy_by_key.insert(key, idx);
            s.policies.push(p);
        }
        s
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.iter()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.iter()
    }

    /// The policy named `namespace/name`.
    pub fn policy(&self, key: &str) -> Option<&Arc<Policy>> {
        self.policy_by_key.get(key).map(|&i| &self.policies[i])
    }

    /// Global-scope policies (whatever namespace they name, as upstream), in config order.
    pub fn global_policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.global_policies.iter().map(|&i| &self.policies[i])
    }

    /// Namespace-scope policies of `namespace`, in config order.
    pub fn namespace_policies(&self, namespace: &str) -> impl Iterator<Item = &Arc<Policy>> {
        self.namespace_policies
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|&i| &self.policies[i])
    }

    /// All networks are treated as one for now.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid)
    }

    /// The workload of a pod on node `node` that ZDS describes as `info`: same name, namespace
    /// and service account, and `node` (any node when `node` is empty, as upstream does without
    /// NODE_NAME). The first in config order if several claim it.
    pub fn local_workload(&self, node: &str, info: &WorkloadInfo) -> Option<&Arc<Workload>> {
        self.by_pod_name
            .get(&self.pod_name_key(&info.namespace, &info.name))?
            .iter()
            .map(|&i| &self.workloads[i])
            .find(|w| info.matches(w) && (node.is_empty() || w.node == node))
    }

    fn pod_name_key(&self, namespace: &str, name: &str) -> u64 {
        self.pod_name_hasher.hash_one((namespace, name))
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip).map(|&i| &self.services[i])
    }

    /// Workloads naming `service` in their `services` map, in config order (healthy or not).
    pub fn endpoints(&self, service: &Service) -> &[Arc<Workload>] {
        self.by_key
            .get(&service.key())
            .map(|&i| self.endpoints[i].as_slice())
            .unwrap_or(&[])
    }

    /// The service keyed `namespace/hostname`, with its endpoints (healthy or not).
    pub(crate) fn service_by_key(&self, key: &str) -> Option<(&Arc<Service>, &[Arc<Workload>])> {
        self.by_key
            .get(key)
            .map(|&i| (&self.services[i], self.endpoints[i].as_slice()))
    }

    /// The endpoints of the service at VIP `ip` (healthy or not).
    pub(crate) fn endpoints_by_vip(&self, ip: IpAddr) -> Option<&[Arc<Workload>]> {
        self.by_vip.get(&ip).map(|&i| self.endpoints[i].as_slice())
    }

    /// Where an outbound connection to `dst` (the pod's original destination) should go.
    /// For a VIP, `pick(n)` chooses among the `n` usable endpoints (taken modulo `n`, so a
    /// random picker may return any number); tests pass a fixed one.
    pub fn resolve(
        &self,
        dst: SocketAddr,
        pick: &mut impl FnMut(usize) -> usize,
    ) -> Result<Upstream, ResolveError> {
        if let Some(&i) = self.by_vip.get(&dst.ip()) {
            return self.resolve_service(i, dst, pick);
        }
        Ok(match self.by_ip.get(&dst.ip()) {
            Some(w) => Upstream::Workload {
                workload: w.clone(),
                addr: dst,
                service: None,
            },
            None => Upstream::Passthrough(dst),
        })
    }

    fn resolve_service(
        &self,
        i: usize,
        dst: SocketAddr,
        pick: &mut impl FnMut(usize) -> usize,
    ) -> Result<Upstream, ResolveError> {
        let svc = &self.services[i];
        let key = &self.service_keys[i];
        let port = dst.port();
        let eps = &self.endpoints[i];
        let in_service =
            svc.ports.contains_key(&port) || eps.iter().any(|w| w.target_port(key, port).is_some());
        if !in_service {
            return Err(ResolveError::PortNotInService {
                service: key.clone(),
                port,
            });
        }
        let svc_target = svc.ports.get(&port).copied().filter(|p| *p != 0);
        // Counting first and then walking to the chosen one avoids a per-connection Vec.
        let usable = || {
            eps.iter().filter_map(move |w| {
                if w.status != HealthStatus::Healthy {
                    return None;
                }
                let ip = w
                    .workload_ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                    .or(w.workload_ips.first())?;
                let target = w.target_port(key, port).or(svc_target)?;
                Some((w, SocketAddr::new(*ip, target)))
            })
        };
        let n = usable().count();
        if n == 0 {
            return Err(ResolveError::NoEndpoints {
                service: key.clone(),
                port,
            });
        }
        let (w, addr) = usable()
            .nth(pick(n) % n)
            .expect("index is below the count just taken");
        Ok(Upstream::Workload {
            workload: w.clone(),
            addr,
            service: Some(svc.clone()),
        })
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
