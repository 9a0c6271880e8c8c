use std::collections::HashMap;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::*;
use crate::state::NetworkAddress;

fn workload(name: &str, ns: &str, sa: &str) -> Workload {
    Workload {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        trust_domain: "cluster.local".into(),
        cluster_id: "Kubernetes".into(),
        ..Default::default()
    }
}

fn echo_service() -> Service {
    Service {
        name: "echo".into(),
        namespace: "demo".into(),
        hostname: "echo.demo.svc.cluster.local".into(),
        vips: vec!["/10.96.0.10".parse::<NetworkAddress>().unwrap()],
        ports: HashMap::from([(80, 8080)]),
        ..Default::default()
    }
}

#[test]
fn outbound_hbone_via_service_fills_both_sides() {
    let src = workload("web-7d9f", "demo", "web");
    let mut dst = workload("echo-0", "demo", "echo");
    dst.workload_name = "echo".into();
    dst.canonical_name = "echo-svc".into();
    dst.canonical_revision = "v2".into();
    let svc = echo_service();
    let id = src.identity();
    let l = TrafficLabels::from_view(&ConnectionView {
        reporter: Reporter::Source,
        source: Some(&src),
        source_identity: Some(&id),
        destination: Some(&dst),
        destination_identity: None,
        destination_service: Some(&svc),
        mtls: true,
    });
    assert_eq!(l.reporter, Reporter::Source);
    // No workload name from the control plane: the pod name; revision defaults to latest.
    assert_eq!(l.source_workload.as_str(), "web-7d9f");
    assert_eq!(l.source_canonical_service.as_str(), "web-7d9f");
    assert_eq!(l.source_canonical_revision.as_str(), "latest");
    assert_eq!(l.source_app.as_str(), "web-7d9f");
    assert_eq!(l.source_version.as_str(), "latest");
    assert_eq!(l.source_workload_namespace.as_str(), "demo");
    assert_eq!(
        l.source_principal.as_str(),
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    assert_eq!(l.source_cluster.as_str(), "Kubernetes");
    assert_eq!(l.destination_workload.as_str(), "echo");
    assert_eq!(l.destination_canonical_service.as_str(), "echo-svc");
    assert_eq!(l.destination_canonical_revision.as_str(), "v2");
    assert_eq!(l.destination_app.as_str(), "echo-svc");
    assert_eq!(l.destination_version.as_str(), "v2");
    assert_eq!(
        l.destination_principal.as_str(),
        "spiffe://cluster.local/ns/demo/sa/echo"
    );
    assert_eq!(
        l.destination_service.as_str(),
        "echo.demo.svc.cluster.local"
    );
    assert_eq!(l.destination_service_name.as_str(), "echo");
    assert_eq!(l.destination_service_namespace.as_str(), "demo");
    assert_eq!(l.connection_security_policy, SecurityPolicy::MutualTls);
    assert_eq!(l.response_flags, ResponseFlags::None);
}

#[test]
fn plaintext_inbound_from_outside_the_mesh_is_mostly_unknown() {
    let me = workload("b1", "demo", "sa-b1");
    let my_id = me.identity();
    let l = TrafficLabels::from_view(&ConnectionView {
        reporter: Reporter::Destination,
        source: None,
        source_identity: None,
        destination: Some(&me),
        destination_identity: Some(&my_id),
        destination_service: None,
        mtls: false,
    });
    assert_eq!(l.reporter, Reporter::Destination);
    for v in [
        &l.source_workload,
        &l.source_principal,
        &l.source_workload_namespace,
        &l.source_cluster,
        &l.destination_service,
    ] {
        assert_eq!(v.as_str(), "unknown");
    }
    assert_eq!(l.destination_workload.as_str(), "b1");
    assert_eq!(l.connection_security_policy, SecurityPolicy::Unknown);
}

#[test]
fn peer_certificate_names_a_source_the_config_does_not_know() {
    let id: Identity = "spiffe://cluster.local/ns/other/sa/job".parse().unwrap();
    let me: Identity = "spiffe://cluster.local/ns/demo/sa/b1".parse().unwrap();
    let l = TrafficLabels::from_view(&ConnectionView {
        reporter: Reporter::Destination,
        source_identity: Some(&id),
        destination_identity: Some(&me),
        mtls: true,
        ..Default::default()
    });
    assert_eq!(
        l.source_principal.as_str(),
        "spiffe://cluster.local/ns/other/sa/job"
    );
    assert_eq!(l.source_workload_namespace.as_str(), "other");
    assert_eq!(l.source_workload.as_str(), "unknown");
    // Not in the config, but we know whose certificate we presented.
    assert_eq!(
        l.destination_principal.as_str(),
        "spiffe://cluster.local/ns/demo/sa/b1"
    );
    assert_eq!(l.destination_workload_namespace.as_str(), "demo");
}

#[test]
fn encodes_with_istio_names_and_values() {
    let src = workload("a1", "demo", "sa-a1");
    let id = src.identity();
    let l = TrafficLabels::from_view(&ConnectionView {
        reporter: Reporter::Source,
        source: Some(&src),
        source_identity: Some(&id),
        mtls: false,
        ..Default::default()
    });
    let fam = Family::<TrafficLabels, Counter>::default();
    fam.get_or_create(&l).inc_by(7);
    fam.get_or_create(&l.with_flags(ResponseFlags::Connect))
        .inc();
    let mut reg = Registry::with_prefix("istio");
    reg.register("tcp_connections_opened", "x", fam);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
    let line = out
        .lines()
        .find(|l| l.contains("response_flags=\"-\""))
        .unwrap();
    assert!(
        line.starts_with("istio_tcp_connections_opened_total{reporter=\"source\","),
        "{line}"
    );
    for want in [
        "source_workload=\"a1\"",
        "source_principal=\"spiffe://cluster.local/ns/demo/sa/sa-a1\"",
        "destination_workload=\"unknown\"",
        "destination_service_name=\"unknown\"",
        "request_protocol=\"tcp\"",
        "connection_security_policy=\"unknown\"",
    ] {
        assert!(line.contains(want), "{want} missing from {line}");
    }
    assert!(line.ends_with(" 7"), "{line}");
    assert!(out.contains("response_flags=\"CONNECT\""), "{out}");
    // 23 labels, each once.
    assert_eq!(line.matches("=\"").count(), 23, "{line}");
}
