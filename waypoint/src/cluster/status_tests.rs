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

fn keep_all(_: &Value) -> bool {
    true
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
        keep_all,
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
    assert_eq!(
        merged(&first, desired, keep_all, "2026-01-02T00:00:00Z"),
        None
    );
    // Accepted flips: its time moves, ResolvedRefs keeps its own.
    let refused = desired_parents(&route(), Some("bad"), &served(), |_: &ServiceRef| true);
    let second = merged(&first, refused, keep_all, "2026-01-03T00:00:00Z").unwrap();
    assert_eq!(second.len(), 2);
    let ours = &second[1]["conditions"];
    assert_eq!(ours[0]["lastTransitionTime"], "2026-01-03T00:00:00Z");
    assert_eq!(ours[1]["lastTransitionTime"], "2026-01-01T00:00:00Z");
}

fn ref_to(name: &str) -> Value {
    json!({"group": "", "kind": "Service", "name": name})
}

#[test]
fn which_entries_of_ours_stay_when_not_wanted() {
    let echo = json!({"group": "", "kind": "Service", "name": "echo", "port": 80});
    // Spelled differently from the spec (no group, null namespace): the same parent.
    let elsewhere = json!({"kind": "Service", "name": "elsewhere", "namespace": null});
    let gone_from_spec = ref_to("removed");
    let gateway =
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress"});
    use Binding::*;
    // (parent, binding of its Service, written by this waypoint, stays)
    let cases = [
        (&echo, Ours, true, true),
        (&echo, Unbound, false, false),
        (&echo, Unbound, true, false),
        (&echo, Elsewhere, false, true),
        (&echo, Elsewhere, true, false),
        (&elsewhere, Elsewhere, false, true),
        (&elsewhere, Unbound, false, false),
        (&gone_from_spec, Ours, true, false),
        (&gone_from_spec, Elsewhere, false, false),
        (&gateway, Unbound, false, true),
    ];
    for (parent, b, claimed, stays) in cases {
        let got = keep_ours(&route(), parent, |_: &ServiceRef| b, claimed);
        assert_eq!(got, stays, "{parent} bound {b:?} claimed {claimed}");
    }
    // The binding is asked about the parent's Service, in the route's namespace by default.
    let asked = std::cell::RefCell::new(Vec::new());
    keep_ours(
        &route(),
        &echo,
        |s: &ServiceRef| {
            asked.borrow_mut().push(s.to_string());
            Unbound
        },
        false,
    );
    assert_eq!(asked.into_inner(), ["demo/echo"]);
}

#[test]
fn unbound_parents_lose_our_entry_and_only_ours() {
    let istiod_echo = json!({
        "controllerName": "istio.io/gateway-controller",
        "parentRef": {"group": "", "kind": "Service", "name": "echo", "port": 80},
        "conditions": [{"type": "Accepted", "status": "True"}],
    });
    let other_controller = json!({
        "controllerName": "example.com/mesh",
        "parentRef": ref_to("elsewhere"),
        "conditions": [],
    });
    let desired = desired_parents(&route(), None, &served(), |_: &ServiceRef| true);
    let mut ours_elsewhere = desired[0].clone();
    ours_elsewhere["parentRef"] = ref_to("elsewhere");
    let current = merged(
        &[
            istiod_echo.clone(),
            other_controller.clone(),
            ours_elsewhere.clone(),
        ],
        desired,
        keep_all,
        "2026-01-01T00:00:00Z",
    )
    .unwrap();
    assert_eq!(current.len(), 4);

    // echo is no longer served (nothing desired) and may not stay; `elsewhere` may.
    let only_elsewhere = |p: &Value| p["name"] == "elsewhere";
    let after = merged(&current, vec![], only_elsewhere, "2026-01-02T00:00:00Z").unwrap();
    assert_eq!(
        after,
        [
            istiod_echo.clone(),
            other_controller.clone(),
            ours_elsewhere
        ]
    );
    // Nothing of ours may stay: other controllers' entries do.
    let after = merged(&after, vec![], |_: &Value| false, "2026-01-03T00:00:00Z").unwrap();
    assert_eq!(after, [istiod_echo, other_controller]);
    // Nothing left to remove: no write.
    assert_eq!(
        merged(&after, vec![], |_: &Value| false, "2026-01-04T00:00:00Z"),
        None
    );
}

mod rounds {
    use super::super::super::store::{Event, Scope};
    use super::super::super::test_mesh::in_demo as svc;
    use super::*;

    /// istiod's view: echo bound to `echo_waypoint`, its backends known.
    fn mesh(echo_waypoint: Option<&str>) -> ConfigSnapshot {
        ConfigSnapshot::new(
            vec![],
            vec![
                svc("wp", "10.96.0.5", None),
                svc("echo", "10.96.0.10", echo_waypoint),
                svc("echo-v1", "10.96.0.11", None),
                svc("echo-v2", "10.96.0.12", None),
            ],
            vec![],
        )
        .unwrap()
    }

    fn scope() -> Scope {
        Scope {
            root_namespace: "istio-system".into(),
            gateway: ("demo".into(), "wp".into()),
        }
    }

    /// The store holding route() with `parents` as its status.
    fn store(parents: &[Value]) -> Mutex<ObjectStore> {
        let mut r = route();
        r["apiVersion"] = "gateway.networking.k8s.io/v1".into();
        r["metadata"]["resourceVersion"] = "7".into();
        r["status"] = json!({"parents": parents});
        let mut s = ObjectStore::default();
        s.apply(Event::Upsert(r), &scope());
        Mutex::new(s)
    }

    fn istiod() -> Value {
        json!({
            "controllerName": "istio.io/gateway-controller",
            "parentRef": {"group": "", "kind": "Service", "name": "echo", "port": 80},
            "conditions": [],
        })
    }

    fn written(w: &Write) -> Vec<Value> {
        w.body["status"]["parents"].as_array().unwrap().clone()
    }

    #[test]
    fn an_entry_of_ours_goes_when_its_service_is_rebound_or_unbound() {
        let gw = ServiceRef::new("demo", "wp");
        let mut claims = Claims::new();

        // Served: our entry is written next to istiod's.
        let writes = pending_writes(&store(&[istiod()]), &mesh(Some("wp")), &gw, &mut claims);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].key.to_string(), "HTTPRoute demo/split");
        assert_eq!(writes[0].body["metadata"]["resourceVersion"], "7");
        let with_ours = written(&writes[0]);
        assert_eq!(with_ours.len(), 2);
        assert_eq!(with_ours[1]["controllerName"], CONTROLLER_NAME);
        // Written: this waypoint holds the entry from now on.
        let w = writes.into_iter().next().unwrap();
        claim(&mut claims, w.key, w.claims);

        // In place: no write, the claim stays.
        let in_place = store(&with_ours);
        assert!(pending_writes(&in_place, &mesh(Some("wp")), &gw, &mut claims).is_empty());
        assert_eq!(claims.len(), 1);

        // Rebound to another waypoint: the one that wrote the entry removes it.
        let writes = pending_writes(&in_place, &mesh(Some("wp2")), &gw, &mut claims);
        assert_eq!(writes.len(), 1);
        assert_eq!(written(&writes[0]), [istiod()]);
        // ...a waypoint that did not write it leaves it to its owner.
        let mut none = Claims::new();
        assert!(pending_writes(&in_place, &mesh(Some("wp2")), &gw, &mut none).is_empty());
        // Bound to no waypoint (label removed) or gone: any waypoint of ours removes it.
        for view in [mesh(None), ConfigSnapshot::empty()] {
            let writes = pending_writes(&in_place, &view, &gw, &mut Claims::new());
            assert_eq!(writes.len(), 1);
            assert_eq!(written(&writes[0]), [istiod()]);
        }

        // The route gone from the store: its claim goes too.
        let empty = Mutex::new(ObjectStore::default());
        assert!(pending_writes(&empty, &mesh(Some("wp")), &gw, &mut claims).is_empty());
        assert!(claims.is_empty());
    }

    #[test]
    fn an_entry_of_ours_goes_when_its_parent_ref_leaves_the_route() {
        let gw = ServiceRef::new("demo", "wp");
        let mut ours = desired_parents(&route(), None, &served(), |_: &ServiceRef| true)[0].clone();
        ours["parentRef"] = ref_to("old-parent");
        let s = store(&[istiod(), ours]);
        let writes = pending_writes(&s, &mesh(None), &gw, &mut Claims::new());
        assert_eq!(writes.len(), 1);
        assert_eq!(written(&writes[0]), [istiod()]);
    }
}
