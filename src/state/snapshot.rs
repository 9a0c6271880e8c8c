use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::policy::{Policy, Scope};
use super::service::Service;
use super::workload::{HealthStatus, NetworkMode, Workload};

/// Immutable, indexed view of one config generation.
#[derive(Debug, Default)]
pub struct ConfigSnapshot {
    workloads: Vec<Arc<Workload>>,
    services: Vec<Arc<Service>>,
    policies: Vec<Arc<Policy>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_uid: HashMap<String, Arc<Workload>>,
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
        let mut s = ConfigSnapshot::default();
        let mut uid_pos = HashMap::new();
        let mut ip_pos = HashMap::new();
        for (i, w) in workloads.into_iter().enumerate() {
            let w = Arc::new(w);
            if let Some(&first) = uid_pos.get(&w.uid) {
                return Err(SnapshotError::DuplicateUid {
                    uid: w.uid.clone(),
                    first,
                    second: i,
                });
            }
            uid_pos.insert(w.uid.clone(), i);
            // Host-network pods carry their node's IP; indexing it would claim the node.
            if w.network_mode == NetworkMode::Standard {
                for ip in &w.workload_ips {
                    match ip_pos.entry(*ip) {
                        Entry::Occupied(e) => {
                            return Err(SnapshotError::DuplicateWorkloadIp {
                                ip: *ip,
                                first: *e.get(),
                                second: i,
                            })
                        }
                        Entry::Vacant(e) => {
                            e.insert(i);
                            s.by_ip.insert(*ip, w.clone());
                        }
                    }
                }
            }
            s.by_uid.insert(w.uid.clone(), w.clone());
            s.workloads.push(w);
        }

        let mut key_pos = HashMap::new();
        for (i, svc) in services.into_iter().enumerate() {
            let key = svc.key();
            if let Some(&first) = key_pos.get(&key) {
                return Err(SnapshotError::DuplicateService {
                    key,
                    first,
                    second: i,
                });
            }
            key_pos.insert(key.clone(), i);
            s.by_key.insert(key.clone(), i);
            for vip in &svc.vips {
                if let Some(&first) = s.by_vip.get(&vip.address) {
                    return Err(SnapshotError::DuplicateVip {
                        ip: vip.address,
                        first,
                        second: i,
                    });
                }
                s.by_vip.insert(vip.address, i);
            }
            let eps = s
                .workloads
                .iter()
                .filter(|w| w.services.contains_key(&key))
                .cloned()
                .collect();
            s.endpoints.push(eps);
            s.service_keys.push(key);
            s.services.push(Arc::new(svc));
        }

        let mut policy_pos = HashMap::new();
        for (i, p) in policies.into_iter().enumerate() {
            let key = p.key();
            if let Some(&first) = policy_pos.get(&key) {
                return Err(SnapshotError::DuplicatePolicy {
                    key,
                    first,
                    second: i,
                });
            }
            policy_pos.insert(key.clone(), i);
            match p.scope {
                Scope::Global => s.global_policies.push(i),
                Scope::Namespace => s
                    .namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(i),
                Scope::WorkloadSelector => {}
            }
            s.policy_by_key.insert(key, i);
            s.policies.push(Arc::new(p));
        }
        Ok(s)
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
mod tests {
    use super::*;
    use crate::state::{NetworkAddress, Protocol};

    const SVC: &str = "demo/echo.demo.svc.cluster.local";

    fn wl(uid: &str, ip: &str, services: &[(&str, u16, u16)]) -> Workload {
        let mut map: HashMap<String, HashMap<u16, u16>> = HashMap::new();
        for (k, sp, tp) in services {
            map.entry(k.to_string()).or_default().insert(*sp, *tp);
        }
        Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "demo".into(),
            workload_ips: vec![ip.parse().unwrap()],
            protocol: Protocol::Hbone,
            services: map,
            ..Default::default()
        }
    }

    fn svc(ports: &[(u16, u16)]) -> Service {
        Service {
            name: "echo".into(),
            namespace: "demo".into(),
            hostname: "echo.demo.svc.cluster.local".into(),
            vips: vec!["/10.96.0.10".parse::<NetworkAddress>().unwrap()],
            ports: ports.iter().copied().collect(),
            ..Default::default()
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn resolve(s: &ConfigSnapshot, dst: &str, idx: usize) -> Result<Upstream, ResolveError> {
        s.resolve(sa(dst), &mut |_| idx)
    }

    #[test]
    fn vip_maps_port_via_workload_then_service() {
        let s = ConfigSnapshot::new(
            vec![
                wl("a", "10.0.0.1", &[(SVC, 80, 8080)]),
                wl("b", "10.0.0.2", &[(SVC, 81, 0)]),
            ],
            vec![svc(&[(80, 9999), (81, 9081)])],
            vec![],
        )
        .unwrap();
        // "a" maps 80 itself; "b" has no usable entry for 80 and falls back to the service.
        let Upstream::Workload { addr, service, .. } = resolve(&s, "10.96.0.10:80", 0).unwrap()
        else {
            panic!("not a workload")
        };
        assert_eq!(addr, sa("10.0.0.1:8080"));
        assert_eq!(service.unwrap().name, "echo");
        assert_eq!(
            resolve(&s, "10.96.0.10:80", 1).unwrap().addr(),
            sa("10.0.0.2:9999")
        );
        // Out-of-range picks wrap instead of panicking.
        assert_eq!(
            resolve(&s, "10.96.0.10:80", 3).unwrap().addr(),
            sa("10.0.0.2:9999")
        );
        // Target port 0 on the workload defers to the service map.
        assert_eq!(
            resolve(&s, "10.96.0.10:81", 1).unwrap().addr(),
            sa("10.0.0.2:9081")
        );
    }

    #[test]
    fn picker_sees_only_usable_endpoints() {
        let mut sick = wl("sick", "10.0.0.3", &[(SVC, 80, 8080)]);
        sick.status = HealthStatus::Unhealthy;
        let s = ConfigSnapshot::new(
            vec![sick, wl("ok", "10.0.0.4", &[(SVC, 80, 8080)])],
            vec![svc(&[(80, 8080)])],
            vec![],
        )
        .unwrap();
        let mut seen = 0;
        let up = s
            .resolve(sa("10.96.0.10:80"), &mut |n| {
                seen = n;
                0
            })
            .unwrap();
        assert_eq!(seen, 1);
        assert_eq!(up.addr(), sa("10.0.0.4:8080"));
    }

    #[test]
    fn direct_pod_ip_keeps_port_and_unknown_passes_through() {
        let s = ConfigSnapshot::new(vec![wl("a", "10.0.0.1", &[])], vec![], vec![]).unwrap();
        match resolve(&s, "10.0.0.1:1234", 0).unwrap() {
            Upstream::Workload {
                workload,
                addr,
                service,
            } => {
                assert_eq!(workload.uid, "a");
                assert_eq!(addr, sa("10.0.0.1:1234"));
                assert!(service.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            resolve(&s, "192.0.2.1:443", 0).unwrap(),
            Upstream::Passthrough(sa("192.0.2.1:443"))
        );
    }

    #[test]
    fn service_errors() {
        let s = ConfigSnapshot::new(vec![], vec![svc(&[(80, 8080)])], vec![]).unwrap();
        let e = resolve(&s, "10.96.0.10:80", 0).unwrap_err();
        assert_eq!(
            e,
            ResolveError::NoEndpoints {
                service: SVC.into(),
                port: 80
            }
        );
        assert!(e.to_string().contains(SVC), "{e}");
        let e = resolve(&s, "10.96.0.10:443", 0).unwrap_err();
        assert!(
            matches!(e, ResolveError::PortNotInService { port: 443, .. }),
            "{e}"
        );
    }

    #[test]
    fn duplicates_are_refused_with_positions() {
        let e = ConfigSnapshot::new(
            vec![wl("a", "10.0.0.1", &[]), wl("a", "10.0.0.2", &[])],
            vec![],
            vec![],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "workloads[1]: duplicate uid \"a\" (also workloads[0])"
        );
        let e = ConfigSnapshot::new(
            vec![wl("a", "10.0.0.1", &[]), wl("b", "10.0.0.1", &[])],
            vec![],
            vec![],
        )
        .unwrap_err();
        assert!(matches!(
            e,
            SnapshotError::DuplicateWorkloadIp {
                first: 0,
                second: 1,
                ..
            }
        ));
        let mut other = svc(&[]);
        other.hostname = "other".into();
        let e = ConfigSnapshot::new(vec![], vec![svc(&[]), other], vec![]).unwrap_err();
        assert!(matches!(e, SnapshotError::DuplicateVip { .. }), "{e}");
    }

    #[test]
    fn host_network_workloads_are_not_indexed_by_ip() {
        let mut h = wl("h", "192.168.0.1", &[]);
        h.network_mode = NetworkMode::HostNetwork;
        let mut h2 = wl("h2", "192.168.0.1", &[]);
        h2.network_mode = NetworkMode::HostNetwork;
        let s = ConfigSnapshot::new(vec![h, h2], vec![], vec![]).unwrap();
        assert!(s.workload_by_ip("192.168.0.1".parse().unwrap()).is_none());
        assert!(s.workload_by_uid("h2").is_some());
    }
}
