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
    let Upstream::Workload { addr, service, .. } = resolve(&s, "10.96.0.10:80", 0).unwrap() else {
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

#[test]
fn merged_keeps_the_first_of_conflicting_entries_and_reports_the_rest() {
    let a = Arc::new(wl("a", "10.0.0.1", &[(SVC, 80, 8080)]));
    let a_again = Arc::new(wl("a", "10.0.0.9", &[]));
    let b_same_ip = Arc::new(wl("b", "10.0.0.1", &[(SVC, 80, 8080)]));
    let mut other = svc(&[]);
    other.hostname = "other".into();
    let (s, conflicts) = ConfigSnapshot::merged(
        vec![a, a_again, b_same_ip],
        vec![Arc::new(svc(&[(80, 8080)])), Arc::new(other)],
        vec![],
    );
    assert_eq!(conflicts.len(), 3, "{conflicts:?}");
    assert!(matches!(conflicts[0], SnapshotError::DuplicateUid { .. }));
    assert!(matches!(
        conflicts[1],
        SnapshotError::DuplicateWorkloadIp { .. }
    ));
    assert!(matches!(conflicts[2], SnapshotError::DuplicateVip { .. }));
    // "a" keeps the IP; "b" is still a workload and still an endpoint.
    assert_eq!(
        s.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid,
        "a"
    );
    assert!(s.workload_by_uid("b").is_some());
    assert!(s.workload_by_ip("10.0.0.9".parse().unwrap()).is_none());
    let echo = s.services().next().unwrap().clone();
    assert_eq!(s.endpoints(&echo).len(), 2);
    // The VIP stays with the first service; the second one is kept without it.
    assert_eq!(s.services().count(), 2);
    assert_eq!(
        s.service_by_vip("10.96.0.10".parse().unwrap())
            .unwrap()
            .hostname,
        echo.hostname
    );
}

fn pod(uid: &str, name: &str, sa: &str, node: &str) -> Workload {
    Workload {
        uid: uid.into(),
        name: name.into(),
        namespace: "demo".into(),
        service_account: sa.into(),
        node: node.into(),
        ..Default::default()
    }
}

fn info(name: &str, sa: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "demo".into(),
        service_account: sa.into(),
    }
}

#[test]
fn local_workload_matches_name_namespace_account_and_node_not_uid() {
    // istiod's uids; the ZDS uid (a pod UID) appears nowhere in the config.
    let s = ConfigSnapshot::new(
        vec![
            pod("Kubernetes//Pod/demo/web-a", "web", "web", "node-a"),
            pod("Kubernetes//Pod/demo/web-b", "web", "web", "node-b"),
            pod("Kubernetes//Pod/demo/api", "api", "api", "node-a"),
        ],
        vec![],
        vec![],
    )
    .unwrap();
    let uid_of = |node, i: &WorkloadInfo| s.local_workload(node, i).map(|w| w.uid.as_str());
    assert_eq!(
        uid_of("node-a", &info("web", "web")),
        Some("Kubernetes//Pod/demo/web-a")
    );
    assert_eq!(
        uid_of("node-b", &info("web", "web")),
        Some("Kubernetes//Pod/demo/web-b")
    );
    // Another node's pod of that name is not ours.
    assert_eq!(uid_of("node-b", &info("api", "api")), None);
    // Every field counts.
    assert_eq!(uid_of("node-a", &info("web", "default")), None);
    assert_eq!(uid_of("node-a", &info("nope", "web")), None);
    let mut other_ns = info("web", "web");
    other_ns.namespace = "prod".into();
    assert_eq!(uid_of("node-a", &other_ns), None);
    // Without a node name, any node's workload will do (the first in config order).
    assert_eq!(
        uid_of("", &info("web", "web")),
        Some("Kubernetes//Pod/demo/web-a")
    );
    assert!(s.workload_by_uid("2c7d8f0e-pod-uid").is_none());
}
