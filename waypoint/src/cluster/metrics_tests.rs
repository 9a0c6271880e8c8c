use meshtunnel::state::{ConfigSnapshot, Service};
use serde_json::json;

use super::super::store::{Event, ObjectStore, Scope};
use super::super::test_mesh::in_demo as svc;
use super::*;

fn text(r: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, r).unwrap();
    out
}

fn mesh(services: Vec<Service>) -> ConfigSnapshot {
    ConfigSnapshot::new(vec![], services, vec![]).unwrap()
}

fn route(name: &str, path_type: &str) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "demo", "generation": 1},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "rules": [{
                "matches": [{"path": {"type": path_type, "value": "/v2"}}],
                "backendRefs": [{"name": "echo-v2", "port": 80}],
            }],
        },
    })
}

#[test]
fn conversions_watch_trouble_xds_state_and_served_services_on_one_page() {
    let state = Arc::new(State::new(ConfigSnapshot::empty()));
    let mut registry = Registry::default();
    let m = ClusterMetrics::register(&mut registry, state.clone(), ServiceRef::new("demo", "wp"));
    assert!(text(&registry).contains("waypoint_served_services 0"));

    // Each conversion the store makes is counted by kind and outcome; a status-only update
    // converts nothing.
    let scope = Scope {
        root_namespace: "istio-system".into(),
        gateway: ("demo".into(), "wp".into()),
    };
    let mut store = ObjectStore::new(m.kube.clone());
    store.apply(Event::Upsert(route("a", "PathPrefix")), &scope);
    store.apply(Event::Upsert(route("b", "Glob")), &scope);
    let mut status_only = route("a", "PathPrefix");
    status_only["status"] = json!({"parents": []});
    store.apply(Event::Upsert(status_only), &scope);
    m.kube.watch_error("GRPCRoute");
    m.kube.watch_error("GRPCRoute");
    m.kube.relisted("Service");
    m.xds.connected(true);
    m.xds.terminated(meshtunnel::xds::metrics::Reason::Error);

    state.replace(mesh(vec![
        svc("wp", "10.96.0.5", None),
        svc("echo", "10.96.0.10", Some("wp")),
        svc("echo-v2", "10.96.0.11", Some("wp")),
        svc("other", "10.96.0.12", Some("wp2")),
        svc("plain", "10.96.0.13", None),
    ]));
    let t = text(&registry);
    for want in [
        "waypoint_kube_objects_total{kind=\"HTTPRoute\",result=\"accepted\"} 1",
        "waypoint_kube_objects_total{kind=\"HTTPRoute\",result=\"refused\"} 1",
        "waypoint_kube_watch_errors_total{kind=\"GRPCRoute\"} 2",
        "waypoint_kube_watch_relists_total{kind=\"Service\"} 1",
        "waypoint_xds_connected 1",
        "istio_xds_connection_terminations_total{reason=\"Error\"} 1",
        "waypoint_served_services 2",
    ] {
        assert!(t.contains(want), "{want} not in\n{t}");
    }
}
