//! Services as istiod's workload xDS gives them, for the cluster tests.

use std::collections::HashMap;

use meshtunnel::state::{GatewayAddress, GatewayDestination, NetworkAddress, Service};

/// Service `ns/name` at `vip` (port 80 → 8080), bound to `waypoint` when given.
pub fn service(ns: &str, name: &str, vip: &str, waypoint: Option<GatewayDestination>) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.cluster.local"),
        vips: vec![NetworkAddress {
            network: String::new(),
            address: vip.parse().unwrap(),
        }],
        ports: HashMap::from([(80, 8080)]),
        subject_alt_names: vec![],
        waypoint: waypoint.map(|destination| GatewayAddress {
            destination,
            hbone_mtls_port: 15008,
        }),
    }
}

/// A waypoint named by hostname, as istiod pushes one.
pub fn by_hostname(ns: &str, hostname: &str) -> Option<GatewayDestination> {
    Some(GatewayDestination::Hostname {
        namespace: ns.into(),
        hostname: hostname.into(),
    })
}

/// Service `demo/name` bound to Gateway `demo/<waypoint>`'s Service when given.
pub fn in_demo(name: &str, vip: &str, waypoint: Option<&str>) -> Service {
    let wp = waypoint.and_then(|w| by_hostname("demo", &format!("{w}.demo.svc.cluster.local")));
    service("demo", name, vip, wp)
}
