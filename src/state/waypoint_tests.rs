use std::collections::HashMap;
use std::net::SocketAddr;

use super::*;
use super::{GatewayAddress, NetworkAddress, Protocol, Service, Workload};
use crate::identity::Identity;

const SVC: &str = "demo/echo.demo.svc.cluster.local";
const WP_SVC: &str = "demo/waypoint.demo.svc.cluster.local";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn wl(uid: &str, ip: &str, sa_name: &str, services: &[(&str, u16, u16)]) -> Workload {
    let mut map: HashMap<String, HashMap<u16, u16>> = HashMap::new();
    for (k, sp, tp) in services {
        map.entry(k.to_string()).or_default().insert(*sp, *tp);
    }
    Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "demo".into(),
        service_account: sa_name.into(),
        trust_domain: "cluster.local".into(),
        workload_ips: vec![ip.parse().unwrap()],
        protocol: Protocol::Hbone,
        services: map,
        ..Default::default()
    }
}

fn gw(dest: &str) -> GatewayAddress {
    GatewayAddress {
        destination: serde_yaml::from_str(dest).unwrap(),
        hbone_mtls_port: 15008,
    }
}

fn svc(key: &str, vip: &str, ports: &[(u16, u16)], waypoint: Option<GatewayAddress>) -> Service {
    let (ns, host) = key.split_once('/').unwrap();
    Service {
        name: host.split('.').next().unwrap().into(),
        namespace: ns.into(),
        hostname: host.into(),
        vips: vec![format!("/{vip}").parse::<NetworkAddress>().unwrap()],
        ports: ports.iter().copied().collect(),
        waypoint,
        ..Default::default()
    }
}

/// echo (VIP 10.96.0.10, endpoint app 10.0.0.1) behind waypoint pod wp (10.0.0.9, SA
/// "waypoint"), itself the endpoint of service waypoint (VIP 10.96.0.99); client pod 10.0.0.2.
fn mesh(
    echo_waypoint: Option<GatewayAddress>,
    app_waypoint: Option<GatewayAddress>,
) -> ConfigSnapshot {
    let mut app = wl("app", "10.0.0.1", "echo", &[(SVC, 80, 8080)]);
    app.waypoint = app_waypoint;
    let mut wp_svc = svc(WP_SVC, "10.96.0.99", &[(15008, 15008)], None);
    wp_svc.subject_alt_names = vec!["spiffe://cluster.local/ns/demo/sa/waypoint-alt".into()];
    ConfigSnapshot::new(
        vec![
            app,
            wl("client", "10.0.0.2", "client", &[]),
            wl("wp", "10.0.0.9", "waypoint", &[(WP_SVC, 15008, 15008)]),
        ],
        vec![svc(SVC, "10.96.0.10", &[(80, 8080)], echo_waypoint), wp_svc],
        vec![],
    )
    .unwrap()
}

fn route(s: &ConfigSnapshot, from: &str, dst: &str) -> Result<Route, ResolveError> {
    let source = s.workload_by_uid(from).map(|w| &**w);
    s.route(source, sa(dst), &mut |_| 0)
}

fn hop(r: Result<Route, ResolveError>) -> WaypointHop {
    match r {
        Ok(Route::Waypoint(h)) => h,
        other => panic!("expected a waypoint hop, got {other:?}"),
    }
}

fn id(sa_name: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa_name)
}

#[test]
fn service_traffic_goes_to_the_service_waypoint_with_the_vip_as_authority() {
    // The three ways to name a waypoint: its service's VIP, its service's hostname, its pod IP.
    for (dest, with_service_sans) in [
        ("/10.96.0.99", true),
        ("demo/waypoint.demo.svc.cluster.local", true),
        ("/10.0.0.9", false),
    ] {
        let s = mesh(Some(gw(dest)), None);
        let h = hop(route(&s, "client", "10.96.0.10:80"));
        assert_eq!(h.addr, sa("10.0.0.9:15008"), "{dest}");
        assert_eq!(h.authority, sa("10.96.0.10:80"), "{dest}");
        assert_eq!(h.waypoint.uid, "wp");
        assert_eq!(h.service.as_ref().unwrap().key(), SVC);
        assert!(h.destination.is_none());
        assert_eq!(h.name, dest);
        let mut want = vec![id("waypoint")];
        if with_service_sans {
            want.push(id("waypoint-alt"));
        }
        assert_eq!(h.identities, want, "{dest}");
    }
}

#[test]
fn the_port_is_not_checked_before_the_waypoint() {
    // The waypoint owns the service's routing; a port the service does not list still goes
    // there (and the waypoint answers for it), never direct.
    let s = mesh(Some(gw("/10.96.0.99")), None);
    assert_eq!(
        hop(route(&s, "client", "10.96.0.10:443")).authority,
        sa("10.96.0.10:443")
    );
}

#[test]
fn workload_traffic_goes_to_the_workload_waypoint_with_the_pod_address() {
    let s = mesh(None, Some(gw("/10.96.0.99")));
    let h = hop(route(&s, "client", "10.0.0.1:8080"));
    assert_eq!(h.addr, sa("10.0.0.9:15008"));
    assert_eq!(h.authority, sa("10.0.0.1:8080"));
    assert_eq!(h.destination.as_ref().unwrap().uid, "app");
    assert!(h.service.is_none());
}

#[test]
fn service_traffic_ignores_the_endpoint_waypoint() {
    // As upstream: a workload waypoint is for traffic addressed to the workload.
    let s = mesh(None, Some(gw("/10.96.0.99")));
    match route(&s, "client", "10.96.0.10:80").unwrap() {
        Route::Direct(up) => assert_eq!(up.addr(), sa("10.0.0.1:8080")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_waypoint_itself_goes_direct() {
    let s = mesh(Some(gw("/10.96.0.99")), Some(gw("/10.96.0.99")));
    for dst in ["10.96.0.10:80", "10.0.0.1:8080"] {
        match route(&s, "wp", dst).unwrap() {
            Route::Direct(Upstream::Workload { workload, addr, .. }) => {
                assert_eq!(workload.uid, "app");
                assert_eq!(addr, sa("10.0.0.1:8080"));
            }
            other => panic!("{dst}: {other:?}"),
        }
    }
    // Another waypoint's instance is not exempt.
    let s = mesh(Some(gw("/10.96.0.99")), None);
    assert!(matches!(
        route(&s, "client", "10.96.0.10:80"),
        Ok(Route::Waypoint(_))
    ));
    // Nor is an unknown source.
    let h = s.route(None, sa("10.96.0.10:80"), &mut |_| 0);
    assert!(matches!(h, Ok(Route::Waypoint(_))), "{h:?}");
}

#[test]
fn an_unusable_waypoint_fails_closed() {
    let cases = [
        ("/10.96.7.7", WaypointGap::Unknown),
        ("demo/nowhere.demo.svc", WaypointGap::Unknown),
        (
            "other/waypoint.demo.svc.cluster.local",
            WaypointGap::Unknown,
        ),
    ];
    for (dest, gap) in cases {
        let s = mesh(Some(gw(dest)), Some(gw(dest)));
        for dst in ["10.96.0.10:80", "10.0.0.1:8080"] {
            let e = route(&s, "client", dst).unwrap_err();
            let ResolveError::WaypointUnavailable {
                waypoint, reason, ..
            } = &e
            else {
                panic!("{dest} {dst}: {e:?}")
            };
            assert_eq!(waypoint, dest);
            assert_eq!(*reason, gap);
            assert!(e.to_string().contains(dest), "{e}");
        }
    }
    // Known but no healthy instance.
    let mut s_wl = vec![
        wl("app", "10.0.0.1", "echo", &[(SVC, 80, 8080)]),
        wl("wp", "10.0.0.9", "waypoint", &[(WP_SVC, 15008, 15008)]),
    ];
    s_wl[1].status = HealthStatus::Unhealthy;
    let s = ConfigSnapshot::new(
        s_wl,
        vec![
            svc(SVC, "10.96.0.10", &[(80, 8080)], Some(gw("/10.96.0.99"))),
            svc(WP_SVC, "10.96.0.99", &[(15008, 15008)], None),
        ],
        vec![],
    )
    .unwrap();
    let e = s.route(None, sa("10.96.0.10:80"), &mut |_| 0).unwrap_err();
    assert!(
        matches!(
            e,
            ResolveError::WaypointUnavailable {
                reason: WaypointGap::NoHealthyInstance,
                ..
            }
        ),
        "{e}"
    );
    // No port.
    let mut no_port = gw("/10.96.0.99");
    no_port.hbone_mtls_port = 0;
    let s = mesh(Some(no_port), None);
    let e = route(&s, "client", "10.96.0.10:80").unwrap_err();
    assert!(
        matches!(
            e,
            ResolveError::WaypointUnavailable {
                reason: WaypointGap::NoPort,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn picks_among_healthy_waypoint_instances() {
    let s = ConfigSnapshot::new(
        vec![
            wl("app", "10.0.0.1", "echo", &[(SVC, 80, 8080)]),
            wl("wp1", "10.0.0.8", "waypoint", &[(WP_SVC, 15008, 15008)]),
            wl("wp2", "10.0.0.9", "waypoint", &[(WP_SVC, 15008, 15008)]),
        ],
        vec![
            svc(SVC, "10.96.0.10", &[(80, 8080)], Some(gw("/10.96.0.99"))),
            svc(WP_SVC, "10.96.0.99", &[(15008, 15008)], None),
        ],
        vec![],
    )
    .unwrap();
    let mut seen = 0;
    let r = s.route(None, sa("10.96.0.10:80"), &mut |n| {
        seen = n;
        1
    });
    assert_eq!(seen, 2);
    assert_eq!(hop(r).addr, sa("10.0.0.9:15008"));
}

#[test]
fn no_waypoint_resolves_as_before() {
    let s = mesh(None, None);
    assert_eq!(
        route(&s, "client", "10.96.0.10:80").unwrap(),
        Route::Direct(s.resolve(sa("10.96.0.10:80"), &mut |_| 0).unwrap())
    );
    assert_eq!(
        route(&s, "client", "192.0.2.1:443").unwrap(),
        Route::Direct(Upstream::Passthrough(sa("192.0.2.1:443")))
    );
}

#[test]
fn peer_is_the_waypoint_only_with_its_identity_and_address() {
    let ip = |s: &str| s.parse().unwrap();
    // Behind a service waypoint, a workload waypoint, or none.
    for (svc_wp, app_wp, expect) in [
        (Some(gw("/10.96.0.99")), None, true),
        (None, Some(gw("demo/waypoint.demo.svc.cluster.local")), true),
        (None, None, false),
    ] {
        let s = mesh(svc_wp, app_wp);
        let app = s.workload_by_uid("app").unwrap();
        assert_eq!(
            s.peer_is_waypoint_for(app, &id("waypoint"), ip("10.0.0.9")),
            expect
        );
        // Right identity from another address, or another identity from the right address.
        assert!(!s.peer_is_waypoint_for(app, &id("waypoint"), ip("10.0.0.2")));
        assert!(!s.peer_is_waypoint_for(app, &id("client"), ip("10.0.0.9")));
    }
    // IPv4-mapped peer addresses (a dual-stack listener) count as the IPv4 address.
    let s = mesh(Some(gw("/10.96.0.99")), None);
    let app = s.workload_by_uid("app").unwrap();
    assert!(s.peer_is_waypoint_for(app, &id("waypoint"), ip("::ffff:10.0.0.9")));
}
