//! The waypoint in cluster mode on the real apiserver and istiod: a Gateway of class
//! `istio-waypoint` applied with kubectl, a namespace labelled `istio.io/use-waypoint`, our
//! waypoint binary running as that Gateway's pod (objects from the API with the RBAC of
//! `manifests/waypoint.yaml`, workloads from istiod's workload xDS, its certificate from
//! istiod's CA); an HTTPRoute split 90/10 and an L7 AuthorizationPolicy applied with kubectl.
//! Traffic goes client pod → its ztunnel → waypoint → backend pod's ztunnel → backend.
//!
//! istiod provisions a waypoint's Deployment and Service from its injection templates; the
//! fixture's istiod has none, so it renders nothing ("no waypoint template") and the test
//! makes what the template would: the Gateway's ServiceAccount, its Service (selector
//! `gateway.networking.k8s.io/gateway-name`) and one Pod. No Deployment or ReplicaSet exists
//! and the fixture's controller-manager runs no deployment/replicaset controllers, so nothing
//! adopts or deletes that Pod.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use controlplane::{Forward, Resource};
use meshtunnel::state::Protocol;
use meshtunnel_e2e::cluster::{wait_until, Cluster, ClusterOptions, Pod, PodSpec, DATAPLANE_LABEL};
use meshtunnel_e2e::mesh::{find_binary, http_in};
use meshtunnel_e2e::waypoint::HttpBackend;
use serde_json::Value;
use test_support::{ChildGuard, NodeId};

const NS: &str = "wpc";
const GATEWAY: &str = "waypoint";
const GENEROUS: Duration = Duration::from_secs(60);

fn pod(cluster: &Cluster, spec: PodSpec) -> Arc<Pod> {
    cluster
        .create_pod(&spec)
        .unwrap_or_else(|e| panic!("creating {}: {e:#}\n{}", spec.name, cluster.diagnostics()))
}

fn apply(cluster: &Cluster, name: &str, yaml: &str) {
    let file = cluster.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    cluster
        .kubectl
        .ok(&["apply", "-f", &file.to_string_lossy()])
        .unwrap_or_else(|e| panic!("kubectl apply {name}: {e:#}"));
}

/// The waypoint process in its pod's netns, with port forwards to istiod and the apiserver
/// on that netns's loopback (both listen on the host's).
struct RunningWaypoint {
    _child: ChildGuard,
    _forwards: [Forward; 2],
    log: std::path::PathBuf,
}

impl RunningWaypoint {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_waypoint(cluster: &Cluster, wp: &Pod) -> Result<RunningWaypoint> {
    let netns = cluster.netns_of(wp);
    let cp = &cluster.control_plane;
    let istiod = cp.istiod().context("istiod")?.clone();
    let istiod_local: std::net::SocketAddr = "127.0.0.1:15012".parse()?;
    let api_target: std::net::SocketAddr = cp
        .server()
        .trim_start_matches("https://")
        .parse()
        .context("apiserver address")?;
    let forwards = [
        Forward::start(&netns.path(), istiod_local, istiod.secure_grpc)?,
        Forward::start(&netns.path(), api_target, api_target)?,
    ];
    let dir = cluster.dir.path().join("waypoint");
    std::fs::create_dir_all(&dir)?;
    let api = cluster.api();
    // The projected istio-token of the pod (audience istio-ca) and its API token.
    let ca_token = api.token(
        NS,
        GATEWAY,
        &["istio-ca"],
        Some((&wp.name, &wp.uid)),
        Duration::from_secs(3600),
    )?;
    std::fs::write(dir.join("istio-token"), ca_token)?;
    let kube_token = api.token(NS, GATEWAY, &[], None, Duration::from_secs(3600))?;
    let kubeconfig = dir.join("kubeconfig");
    cp.write_token_kubeconfig(&kubeconfig, &kube_token)?;
    let root = cluster.istiod_access[0].credentials.root_cert.clone();
    let log = dir.join("waypoint.log");
    let out = std::fs::File::create(&log)?;
    let bin = find_binary("waypoint", false)?;
    let mut cmd = netns.command(bin.to_str().context("binary path")?);
    // The environment istiod's waypoint Deployment gives its pod (downward API values
    // supplied), plus the kubeconfig a kubelet-less pod needs and the names to verify
    // istiod's certificate against (dialled at 127.0.0.1).
    cmd.env_clear()
        .args(["proxy", "waypoint", "--domain", "wpc.svc.cluster.local"])
        .env("XDS_ADDRESS", format!("https://{istiod_local}"))
        .env("ALT_XDS_HOSTNAME", &istiod.hostname)
        .env("ALT_CA_HOSTNAME", &istiod.hostname)
        .env("XDS_ROOT_CA", &root)
        .env("CA_ROOT_CA", &root)
        .env("AUTH_TOKEN", dir.join("istio-token"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", &wp.name)
        .env("POD_NAMESPACE", NS)
        .env("INSTANCE_IP", wp.ip.to_string())
        .env("SERVICE_ACCOUNT", GATEWAY)
        .env("ISTIO_META_SERVICE_ACCOUNT", GATEWAY)
        .env("ISTIO_META_NODE_NAME", cluster.node(wp.node).name)
        .env("ISTIO_META_WORKLOAD_NAME", GATEWAY)
        .env("ISTIO_META_CLUSTER_ID", &istiod.cluster_id)
        .env("CLUSTER_ID", &istiod.cluster_id)
        .env("TRUST_DOMAIN", "cluster.local")
        .env("CONFIG_POLL_INTERVAL", "200ms")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = netns.spawn_command(cmd)?;
    let running = RunningWaypoint {
        _child: child,
        _forwards: forwards,
        log,
    };
    wait_until(GENEROUS, "waypoint ready", || {
        http_in(
            netns,
            "127.0.0.1:15021".parse().unwrap(),
            "GET",
            "/healthz/ready",
        )
        .is_ok_and(|(c, _)| c == 200)
    })
    .with_context(|| running.logs())?;
    Ok(running)
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
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    cluster
        .kubectl
        .ok(&[
            "apply",
            "--server-side",
            "-f",
            &manifests.join("waypoint.yaml").to_string_lossy(),
        ])
        .unwrap();
    let binding = format!("meshtunnel-waypoint-{NS}-{GATEWAY}");
    cluster
        .kubectl
        .ok(&[
            "create",
            "clusterrolebinding",
            &binding,
            "--clusterrole=meshtunnel-waypoint",
            &format!("--serviceaccount={NS}:{GATEWAY}"),
        ])
        .unwrap();

    // The Gateway, and what istiod's template would have made for it.
    apply(
        &cluster,
        "gateway",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {GATEWAY}, namespace: {NS}}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {{name: mesh, port: 15008, protocol: HBONE}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {GATEWAY}, namespace: {NS}}}
---
apiVersion: v1
kind: Service
metadata:
  name: {GATEWAY}
  namespace: {NS}
  labels: {{gateway.networking.k8s.io/gateway-name: {GATEWAY}, gateway.networking.k8s.io/gateway-class-name: istio-waypoint}}
spec:
  selector: {{gateway.networking.k8s.io/gateway-name: {GATEWAY}}}
  ports:
  - {{name: status-port, port: 15021, protocol: TCP}}
  - {{name: mesh, port: 15008, protocol: TCP}}
---
apiVersion: v1
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

    // The waypoint's pod: the Gateway's service account, not captured (`dataplane-mode:
    // none`, as istiod's template labels it).
    let mut wp_spec = PodSpec::new("waypoint-0", NodeId::A)
        .namespace(NS)
        .label("gateway.networking.k8s.io/gateway-name", GATEWAY)
        .label(
            "gateway.networking.k8s.io/gateway-class-name",
            "istio-waypoint",
        )
        .label(DATAPLANE_LABEL, "none");
    wp_spec.service_account = GATEWAY.into();
    let wp = pod(&cluster, wp_spec);
    let client = pod(&cluster, PodSpec::new("client", NodeId::A).namespace(NS));
    let v1 = pod(
        &cluster,
        PodSpec::new("v1", NodeId::B)
            .namespace(NS)
            .label("app", "echo")
            .label("version", "v1"),
    );
    let v2 = pod(
        &cluster,
        PodSpec::new("v2", NodeId::B)
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
    assert!(
        !cluster.captured(&wp),
        "the waypoint's own pod is not captured"
    );

    let waypoint = start_waypoint(&cluster, &wp)
        .unwrap_or_else(|e| panic!("starting the waypoint: {e:#}\n{}", cluster.diagnostics()));
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
        http_in(
            cluster.netns_of(&wp),
            "127.0.0.1:15000".parse().unwrap(),
            "GET",
            "/config_dump",
        )
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
}
