use serde_json::json;

use super::*;

fn scope() -> Scope {
    Scope {
        root_namespace: "istio-system".into(),
        gateway: ("demo".into(), "wp".into()),
    }
}

fn route(name: &str, path_type: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "demo", "generation": 1},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 80}],
            "rules": [{
                "matches": [{"path": {"type": path_type, "value": "/v2"}}],
                "backendRefs": [{"name": "echo-v2", "port": 80}],
            }],
        },
    })
}

fn policy(name: &str, targets: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"targetRefs": targets, "action": "DENY",
                 "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
    })
}

fn key(kind: &str, name: &str) -> Key {
    Key {
        kind: kind.into(),
        namespace: "demo".into(),
        name: name.into(),
    }
}

#[test]
fn a_bad_object_is_refused_alone_and_its_last_good_version_stays() {
    let s = scope();
    let mut store = ObjectStore::default();
    assert!(store.apply(Event::Upsert(route("a", "PathPrefix")), &s));
    assert!(store.apply(Event::Upsert(route("b", "PathPrefix")), &s));
    assert_eq!(store.build(&s).unwrap().objects.len(), 2);

    // b gets an unknown path type: refused by name, its previous version stays, a is kept.
    assert!(store.apply(Event::Upsert(route("b", "Glob")), &s));
    let (_, b) = store
        .entries()
        .find(|(k, _)| **k == key("HTTPRoute", "b"))
        .unwrap();
    let err = b.error.as_deref().unwrap();
    assert!(err.contains("HTTPRoute demo/b"), "{err}");
    assert_eq!(
        b.good.as_ref().unwrap()["spec"]["rules"][0]["matches"][0]["path"]["type"],
        "PathPrefix"
    );
    let cfg = store.build(&s).unwrap();
    assert_eq!(cfg.objects.len(), 2, "{:?}", cfg.objects);

    // A new object that is bad from the start is not applied at all.
    store.apply(Event::Upsert(route("c", "Glob")), &s);
    assert_eq!(store.build(&s).unwrap().objects.len(), 2);

    // Fixed: applied; deleted: gone.
    store.apply(Event::Upsert(route("b", "Exact")), &s);
    let (_, b) = store
        .entries()
        .find(|(k, _)| **k == key("HTTPRoute", "b"))
        .unwrap();
    assert!(b.error.is_none());
    assert!(store.apply(Event::Delete(key("HTTPRoute", "b")), &s));
    assert_eq!(store.build(&s).unwrap().objects.len(), 1);
    // The same object again is no change.
    assert!(!store.apply(Event::Upsert(route("a", "PathPrefix")), &s));
}

#[test]
fn a_relist_drops_what_is_gone() {
    let s = scope();
    let mut store = ObjectStore::default();
    store.apply(Event::Upsert(route("a", "PathPrefix")), &s);
    store.apply(Event::Upsert(route("b", "PathPrefix")), &s);
    store.apply(
        Event::Upsert(policy("p", json!([{"kind": "Service", "name": "echo"}]))),
        &s,
    );
    store.apply(Event::ListStart("HTTPRoute".into()), &s);
    assert!(!store.listed("HTTPRoute"));
    store.apply(Event::Upsert(route("b", "PathPrefix")), &s);
    assert!(store.apply(Event::ListDone("HTTPRoute".into()), &s));
    assert!(store.listed("HTTPRoute"));
    let keys: Vec<String> = store.entries().map(|(k, _)| k.to_string()).collect();
    assert_eq!(keys, ["AuthorizationPolicy demo/p", "HTTPRoute demo/b"]);
}

#[test]
fn gateway_targeted_policies_apply_only_to_this_waypoints_gateway() {
    let s = scope();
    let mut store = ObjectStore::default();
    let gw = |n: &str| json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": n});
    store.apply(Event::Upsert(policy("mine", json!([gw("wp")]))), &s);
    store.apply(Event::Upsert(policy("other", json!([gw("other-wp")]))), &s);
    store.apply(
        Event::Upsert(policy(
            "mixed",
            json!([gw("other-wp"), {"kind": "Service", "name": "echo"}]),
        )),
        &s,
    );
    let cfg = store.build(&s).unwrap();
    assert_eq!(cfg.policies.len(), 2, "{:?}", cfg.policies);
    let mixed = cfg.policies.iter().find(|p| p.name == "mixed").unwrap();
    assert_eq!(
        mixed.targets,
        [crate::authz::Target::Service(
            crate::route::ServiceRef::new("demo", "echo")
        )]
    );
    assert!(cfg.policies.iter().any(|p| p.name == "mine"));
}
