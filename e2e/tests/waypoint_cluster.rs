//! The waypoint in cluster mode on the real apiserver and istiod: a Gateway of class
//! `istio-waypoint` applied with kubectl, a namespace labelled `istio.io/use-waypoint`, our
//! waypoint binary running as that Gateway's pod (objects from the API with the RBAC of
//! `manifests/waypoint.yaml`, workloads from istiod's workload xDS, its certificate from
//! istiod's CA); an HTTPRoute split 90/10 and an L7 AuthorizationPolicy applied with kubectl.
//! Traffic goes client pod → its ztunnel → waypoint → backend pod's ztunnel → backend.
//! How the waypoint is deployed without istiod's templates: `e2e/src/cluster/waypoint.rs`.

use std::time::{Duration, Instant};

use controlplane::Resource;
use meshtunnel::state::Protocol;
use meshtunnel_e2e::cluster::{
    wait_until, Cluster, ClusterOptions, ClusterWaypoint, PodSpec, DATAPLANE_LABEL,
};
use meshtunnel_e2e::mesh::http_in;
use meshtunnel_e2e::waypoint::HttpBackend;
use serde_json::Value;
use test_support::NodeId;

const NS: &str = "wpc";
const GATEWAY: &str = "waypoint";
const GENEROUS: Duration = Duration::from_secs(60);

fn apply(cluster: &Cluster, name: &str, yaml: &str) {
    let file = cluster.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    cluster
        .kubectl
        .ok(&["apply", "-f", &file.to_string_lossy()])
        .unwrap_or_else(|e| panic!("kubectl apply {name}: {e:#}"));
}

fn service_vip(cluster: &Cluster, name: &str) -> std::net::IpAddr {
    let svc = cluster
        .api()
        .try_get(Resource::Service, Some(NS), name)
        .unwrap()
        .unwrap();
    svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap()
}

const HTTPROUTES: Resource = Resource::Other("gateway.networking.k8s.io", "v1", "httproutes", true);

/// HTTPRoute split as the API has it now.
fn route(cluster: &Cluster) -> Option<Value> {
    cluster
        .api()
        .try_get(HTTPROUTES, Some(NS), "split")
        .ok()
        .flatten()
}

/// The waypoint's `/stats/prometheus`, from its pod.
fn stats(cluster: &Cluster, waypoint: &ClusterWaypoint) -> String {
    http_in(
        cluster.netns_of(&waypoint.pod),
        std::net::SocketAddr::from(([127, 0, 0, 1], 15020)),
        "GET",
        "/stats/prometheus",
    )
    .map(|(_, body)| body)
    .unwrap_or_default()
}

fn our_status(route: &Value) -> Option<&Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == "meshtunnel.io/waypoint")
}

#[test]
fn http_route_split_and_l7_deny_through_our_waypoint_on_the_real_control_plane() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    cluster
        .create_namespace(
            NS,
            &[
                (DATAPLANE_LABEL, "ambient"),
                ("istio.io/use-waypoint", GATEWAY),
            ],
        )
        .unwrap();
    // The services; the waypoint below is deployed for Gateway `waypoint`.
    apply(
        &cluster,
        "gateway",
        &format!(
            "apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NS}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v1, namespace: {NS}}}
spec:
  selector: {{app: echo, version: v1}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v2, namespace: {NS}}}
spec:
  selector: {{app: echo, version: v2}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"
        ),
    );

    let client = cluster.must_create_pod(&PodSpec::new("client", NodeId::A).namespace(NS));
    let v1 = cluster.must_create_pod(
        &PodSpec::new("v1", NodeId::B)
            .namespace(NS)
            .label("app", "echo")
            .label("version", "v1"),
    );
    let v2 = cluster.must_create_pod(
        &PodSpec::new("v2", NodeId::B)
            .namespace(NS)
            .label("app", "echo")
            .label("version", "v2"),
    );
    let any8080: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let _b1 = HttpBackend::start(cluster.netns_of(&v1), any8080, "v1").unwrap();
    let _b2 = HttpBackend::start(cluster.netns_of(&v2), any8080, "v2").unwrap();
    cluster
        .wait_config(&[&client, &v1, &v2], Protocol::Hbone, GENEROUS)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    let waypoint = cluster
        .deploy_waypoint(NS, GATEWAY, NodeId::A, "info")
        .unwrap_or_else(|e| panic!("deploying the waypoint: {e:#}\n{}", cluster.diagnostics()));
    assert!(
        !cluster.captured(&waypoint.pod),
        "the waypoint's own pod is not captured"
    );
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        panic!(
            "{what}: {e}\n--- waypoint log ---\n{}\n{}",
            waypoint.logs(),
            cluster.diagnostics()
        )
    };

    // istiod binds echo to the waypoint (namespace label) and says so in the workload xDS.
    wait_until(
        GENEROUS,
        "echo's waypoint pushed to the client's ztunnel",
        || {
            cluster.config_dump(NodeId::A).is_ok_and(|d| {
                d["services"].as_array().is_some_and(|ss| {
                    ss.iter().any(|s| {
                        s["name"] == "echo" && s["namespace"] == NS && !s["waypoint"].is_null()
                    })
                })
            })
        },
    )
    .unwrap_or_else(|e| fail("binding", &e));

    let echo = std::net::SocketAddr::new(service_vip(&cluster, "echo"), 80);
    let get = |path: &str| http_in(cluster.netns_of(&client), echo, "GET", path);
    // Without a route the waypoint sends echo's traffic to echo's own endpoints.
    wait_until(GENEROUS, "client -> echo through the waypoint", || {
        get("/").is_ok_and(|(c, _)| c == 200)
    })
    .unwrap_or_else(|e| fail("first request", &e));

    // The 90/10 split, applied with kubectl.
    apply(
        &cluster,
        "split",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split, namespace: {NS}}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]
  rules:
  - backendRefs:
    - {{name: echo-v1, port: 80, weight: 90}}
    - {{name: echo-v2, port: 80, weight: 10}}
"
        ),
    );
    let applied = Instant::now();
    // Applied once every answer comes from v1 or v2 per the route; v2 is rare, so wait for the
    // route to show in the waypoint's config dump instead.
    wait_until(GENEROUS, "route in the waypoint's config", || {
        waypoint
            .admin(&cluster, "/config_dump")
            .is_ok_and(|(c, b)| c == 200 && b.contains("HTTPRoute wpc/split"))
    })
    .unwrap_or_else(|e| fail("route applied", &e));
    eprintln!(
        "route in force {} ms after kubectl apply returned",
        applied.elapsed().as_millis()
    );
    let (mut n1, mut n2) = (0, 0);
    const N: usize = 400;
    for i in 0..N {
        let (code, body) = get(&format!("/split/{i}")).unwrap_or_else(|e| fail("split", &e));
        assert_eq!(code, 200, "{body}");
        match body.lines().next() {
            Some("pod=v1") => n1 += 1,
            Some("pod=v2") => n2 += 1,
            other => fail("unexpected backend", &format!("{other:?}")),
        }
    }
    eprintln!("split over {N}: v1 {n1}, v2 {n2}");
    // 10 % of 400 is 40 (sd 6): 18..=70 is beyond 3.5 sd either way; plain ztunnel would
    // give about half each.
    assert!((18..=70).contains(&n2), "v2 got {n2} of {N}");

    // The route's status: our entry, Accepted, for this generation; istiod's stays.
    wait_until(GENEROUS, "route status written", || {
        route(&cluster).is_some_and(|r| {
            our_status(&r).is_some_and(|p| {
                let c = &p["conditions"];
                let generation = &r["metadata"]["generation"];
                c.as_array().is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["type"] == "Accepted"
                            && c["status"] == "True"
                            && &c["observedGeneration"] == generation
                    }) && cs
                        .iter()
                        .any(|c| c["type"] == "ResolvedRefs" && c["status"] == "True")
                })
            })
        })
    })
    .unwrap_or_else(|e| fail("status", &e));
    let r = route(&cluster).unwrap();
    let controllers: Vec<&str> = r["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["controllerName"].as_str())
        .collect();
    assert!(
        controllers.contains(&"istio.io/gateway-controller"),
        "istiod's own entry is kept: {controllers:?}"
    );

    // An L7 DENY on /admin for echo: 403 there, other paths pass.
    apply(
        &cluster,
        "deny-admin",
        &format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: {NS}}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: echo}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: [\"/admin*\"]}}}}]
"
        ),
    );
    wait_until(GENEROUS, "/admin denied", || {
        get("/admin/users").is_ok_and(|(c, _)| c == 403)
    })
    .unwrap_or_else(|e| fail("deny", &e));
    let (code, body) = get("/admin/users").unwrap();
    assert_eq!(code, 403);
    assert!(body.contains("RBAC: access denied"), "{body}");
    for path in ["/", "/users", "/administrator-guide"] {
        let (code, body) = get(path).unwrap_or_else(|e| fail(path, &e));
        let expect = if path.starts_with("/admin") { 403 } else { 200 };
        assert_eq!(code, expect, "{path}: {body}");
    }

    // A route the waypoint cannot take is refused by name; the split stays in force.
    apply(
        &cluster,
        "split",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split, namespace: {NS}}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{path: {{type: RegularExpression, value: \"(\"}}}}]
    backendRefs:
    - {{name: echo-v2, port: 80}}
"
        ),
    );
    wait_until(GENEROUS, "bad route refused in status", || {
        route(&cluster).is_some_and(|r| {
            our_status(&r).is_some_and(|p| {
                p["conditions"].as_array().is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["type"] == "Accepted"
                            && c["status"] == "False"
                            && c["observedGeneration"] == 2
                            && c["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("HTTPRoute wpc/split"))
                    })
                })
            })
        })
    })
    .unwrap_or_else(|e| fail("refused route", &e));
    assert!(waypoint.logs().contains("HTTPRoute wpc/split"));
    let mut v1_seen = false;
    for i in 0..40 {
        let (code, body) = get(&format!("/after/{i}")).unwrap();
        assert_eq!(code, 200, "{body}");
        v1_seen |= body.starts_with("pod=v1");
    }
    assert!(v1_seen, "the previous split stays in force");

    // The control-plane side on /stats/prometheus: the refused route counted, istiod's stream
    // up with its pushes counted, echo, echo-v1 and echo-v2 served (the namespace's label).
    let page = stats(&cluster, &waypoint);
    for want in [
        "waypoint_kube_objects_total{kind=\"HTTPRoute\",result=\"refused\"} 1",
        "waypoint_xds_connected 1",
        "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"}",
        "waypoint_served_services 3",
    ] {
        assert!(page.contains(want), "{want} not in\n{page}");
    }

    // echo leaves the waypoint (`none` opts a Service out of its namespace's waypoint): our
    // entry for it goes from the route's status, other controllers' entries are not ours to
    // touch.
    let before: Vec<Value> = route(&cluster).unwrap()["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["controllerName"] != "meshtunnel.io/waypoint")
        .cloned()
        .collect();
    cluster
        .kubectl
        .ok(&[
            "label",
            "--overwrite",
            "-n",
            NS,
            "service",
            "echo",
            "istio.io/use-waypoint=none",
        ])
        .unwrap_or_else(|e| fail("unbinding echo", &e));
    let unbound = Instant::now();
    wait_until(GENEROUS, "our status entry removed after unbinding", || {
        route(&cluster).is_some_and(|r| our_status(&r).is_none())
    })
    .unwrap_or_else(|e| fail("unbound parent", &e));
    eprintln!(
        "our entry gone {} ms after the unbinding label",
        unbound.elapsed().as_millis()
    );
    wait_until(GENEROUS, "two services served after unbinding echo", || {
        stats(&cluster, &waypoint).contains("waypoint_served_services 2")
    })
    .unwrap_or_else(|e| fail("served services", &e));
    let after = route(&cluster).unwrap();
    let others: Vec<String> = after["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["controllerName"].as_str().map(str::to_owned))
        .collect();
    eprintln!(
        "controllers before unbinding {:?}, after {others:?}",
        before
            .iter()
            .filter_map(|p| p["controllerName"].as_str())
            .collect::<Vec<_>>()
    );
    assert!(
        others.contains(&"istio.io/gateway-controller".to_owned()),
        "istiod's entry stays: {others:?}"
    );
}
