//! Which services this waypoint serves. istiod resolves `istio.io/use-waypoint` (namespace or
//! service label) to a waypoint and pushes it in the workload xDS as the service's `waypoint`:
//! the hostname of the waypoint Gateway's Service (`<gateway>.<ns>.svc.<domain>`) or one of its
//! addresses. The services whose waypoint is this waypoint's own Service are the ones it
//! serves; its own Service is not among them.

use std::collections::BTreeSet;

use meshtunnel::state::{ConfigSnapshot, GatewayDestination};

use crate::route::ServiceRef;

/// Services of `snapshot` whose waypoint is the Service of Gateway `gateway` (ns, name).
pub fn served_services(snapshot: &ConfigSnapshot, gateway: &ServiceRef) -> BTreeSet<ServiceRef> {
    let own = snapshot
        .services()
        .find(|s| s.namespace == gateway.namespace && s.name == gateway.name);
    let mut out = BTreeSet::new();
    for svc in snapshot.services() {
        let Some(wp) = &svc.waypoint else { continue };
        if svc.namespace == gateway.namespace && svc.name == gateway.name {
            continue;
        }
        let ours = match &wp.destination {
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => {
                namespace == &gateway.namespace
                    && (own.is_some_and(|o| &o.hostname == hostname)
                        || hostname.split('.').take(3).eq([
                            gateway.name.as_str(),
                            gateway.namespace.as_str(),
                            "svc",
                        ]))
            }
            GatewayDestination::Address(a) => own.is_some_and(|o| o.vips.contains(a)),
        };
        if ours {
            out.insert(ServiceRef::new(&svc.namespace, &svc.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use meshtunnel::state::NetworkAddress;

    use super::super::test_mesh::{by_hostname as host, service as svc};
    use super::*;

    #[test]
    fn services_bound_to_this_gateway_by_hostname_or_address() {
        let addr = |ip: &str| {
            Some(GatewayDestination::Address(NetworkAddress {
                network: String::new(),
                address: ip.parse().unwrap(),
            }))
        };
        let snap = ConfigSnapshot::new(
            vec![],
            vec![
                // The waypoint's own Service is bound to itself by the namespace label.
                svc(
                    "demo",
                    "wp",
                    "10.96.0.5",
                    host("demo", "wp.demo.svc.cluster.local"),
                ),
                svc(
                    "demo",
                    "echo",
                    "10.96.0.10",
                    host("demo", "wp.demo.svc.cluster.local"),
                ),
                svc("demo", "by-ip", "10.96.0.11", addr("10.96.0.5")),
                svc(
                    "demo",
                    "other",
                    "10.96.0.12",
                    host("demo", "wp2.demo.svc.cluster.local"),
                ),
                svc("demo", "other-ip", "10.96.0.13", addr("10.96.0.99")),
                svc(
                    "prod",
                    "same-name",
                    "10.96.0.14",
                    host("prod", "wp.prod.svc.cluster.local"),
                ),
                svc("demo", "none", "10.96.0.15", None),
            ],
            vec![],
        )
        .unwrap();
        let got: Vec<String> = served_services(&snap, &ServiceRef::new("demo", "wp"))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["demo/by-ip", "demo/echo"]);
    }
}
