use std::collections::BTreeSet;

use serde_json::json;

use super::*;

fn route() -> Value {
    json!({
        "kind": "HTTPRoute",
        "metadata": {"name": "split", "namespace": "demo", "generation": 3},
        "spec": {
            "parentRefs": [
                {"group": "", "kind": "Service", "name": "echo", "port": 80},
                {"group": "", "kind": "Service", "name": "elsewhere"},
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress"},
            ],
            "rules": [{"backendRefs": [
                {"group": "", "kind": "Service", "name": "echo-v1", "port": 80},
                {"name": "echo-v2", "port": 80},
            ]}],
        },
    })
}

fn served() -> BTreeSet<ServiceRef> {
    BTreeSet::from([ServiceRef::new("demo", "echo")])
}

#[test]
fn one_entry_per_served_service_parent_with_accepted_and_resolved_refs() {
    let all_known = |_: &ServiceRef| true;
    let d = desired_parents(&route(), None, &served(), all_known);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["controllerName"], CONTROLLER_NAME);
    assert_eq!(d[0]["parentRef"]["name"], "echo");
    let c = &d[0]["conditions"];
    assert_eq!(c[0]["type"], "Accepted");
    assert_eq!(c[0]["status"], "True");
    assert_eq!(c[0]["observedGeneration"], 3);
    assert_eq!(c[1]["type"], "ResolvedRefs");
    assert_eq!(c[1]["status"], "True");

    let no_v2 = |s: &ServiceRef| s.name != "echo-v2";
    let d = desired_parents(
        &route(),
        Some("HTTPRoute demo/split: rules[0]: bad"),
        &served(),
        no_v2,
    );
    let c = &d[0]["conditions"];
    assert_eq!(c[0]["status"], "False");
    assert_eq!(c[0]["reason"], "UnsupportedValue");
    assert!(c[0]["message"].as_str().unwrap().contains("rules[0]"));
    assert_eq!(c[1]["status"], "False");
    assert_eq!(c[1]["reason"], "BackendNotFound");
    assert!(c[1]["message"].as_str().unwrap().contains("demo/echo-v2"));

    assert!(desired_parents(&route(), None, &BTreeSet::new(), all_known).is_empty());
}

#[test]
fn merging_keeps_other_controllers_and_transition_times() {
    let istiod = json!({
        "controllerName": "istio.io/gateway-controller",
        "parentRef": {"group": "", "kind": "Service", "name": "echo", "port": 80},
        "conditions": [{"type": "Accepted", "status": "True"}],
    });
    let desired = desired_parents(&route(), None, &served(), |_: &ServiceRef| true);
    let first = merged(
        std::slice::from_ref(&istiod),
        desired.clone(),
        "2026-01-01T00:00:00Z",
    )
    .unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0], istiod);
    assert_eq!(
        first[1]["conditions"][0]["lastTransitionTime"],
        "2026-01-01T00:00:00Z"
    );
    // Nothing changed: no write, whatever the time.
    assert_eq!(merged(&first, desired, "2026-01-02T00:00:00Z"), None);
    // Accepted flips: its time moves, ResolvedRefs keeps its own.
    let refused = desired_parents(&route(), Some("bad"), &served(), |_: &ServiceRef| true);
    let second = merged(&first, refused, "2026-01-03T00:00:00Z").unwrap();
    assert_eq!(second.len(), 2);
    let ours = &second[1]["conditions"];
    assert_eq!(ours[0]["lastTransitionTime"], "2026-01-03T00:00:00Z");
    assert_eq!(ours[1]["lastTransitionTime"], "2026-01-01T00:00:00Z");
}
