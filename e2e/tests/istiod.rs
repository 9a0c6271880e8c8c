//! ztunnel against the real istiod (built from its Go module, see the `controlplane` crate):
//! workloads, services and policies arrive over delta xDS from Pods, Services and
//! AuthorizationPolicies made with the real apiserver; a deleted pod leaves ztunnel's state;
//! istiod stopped keeps what ztunnel has and istiod back resyncs it without a restart. And the
//! Istio CA client gets a pod's certificate with ztunnel's pod-bound token, and is refused one
//! for an identity with no pod on its node.
//!
//! ztunnel runs in this (the host) netns here, on loopback ports of its own, with no ZDS agent:
//! only its config plane is under test; the data path over xDS is the cluster tests' business.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use controlplane::{wait_until, ControlPlane, Options, ZtunnelCredentials};
use meshtunnel::identity::{identity_of, Identity, IstioCa, IstioCaSettings};
use meshtunnel_e2e::mesh::find_binary;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn cp() -> &'static ControlPlane {
    ControlPlane::shared(Options { istiod: true })
}

/// A node with a ztunnel Pod on it, that pod's token (audience istio-ca) and istiod's root.
struct NodeAccess {
    node: String,
    creds: ZtunnelCredentials,
}

fn node_access(node: &str) -> NodeAccess {
    cp().api()
        .create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
        .unwrap();
    let creds = cp()
        .ztunnel_credentials(node, [127, 0, 0, 1].into(), &cp().dir().join(node))
        .unwrap();
    NodeAccess {
        node: node.to_owned(),
        creds,
    }
}

fn namespace(name: &str) {
    cp().api()
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .unwrap();
}

/// A running, ready, captured pod (what istiod pushes as an HBONE workload).
fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: Value) {
    cp().api()
        .create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "annotations": {"ambient.istio.io/redirection": "enabled"}},
            "spec": {"nodeName": node, "serviceAccountName": format!("sa-{name}"),
                "containers": [{"name": "app", "image": "busybox"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
}

struct Ztunnel {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Ztunnel {
    fn start(access: &NodeAccess) -> Ztunnel {
        let istiod = cp().istiod().unwrap();
        let dir = access.creds.token.parent().unwrap();
        let port = || {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let admin = port();
        let log = dir.join("ztunnel.log");
        let child = Command::new(find_binary("ztunnel", false).unwrap())
            .env_clear()
            .env("RUST_LOG", "info")
            .env("XDS_ADDRESS", format!("https://{}", istiod.secure_grpc))
            .env("XDS_ROOT_CA", &access.creds.root_cert)
            .env("ALT_XDS_HOSTNAME", &istiod.hostname)
            .env("CA_ROOT_CA", &access.creds.root_cert)
            .env("ALT_CA_HOSTNAME", &istiod.hostname)
            .env("AUTH_TOKEN", &access.creds.token)
            .env("CLUSTER_ID", &istiod.cluster_id)
            .env("NODE_NAME", &access.node)
            .env("POD_NAME", &access.creds.pod_name)
            .env("POD_NAMESPACE", &access.creds.pod_namespace)
            .env("INSTANCE_IP", "127.0.0.1")
            .env("INPOD_UDS", dir.join("no-agent.sock"))
            .env("LOCAL_CA_DIR", dir.join("unused-ca"))
            .env("READINESS_ADDR", port().to_string())
            .env("STATS_ADDR", port().to_string())
            .env("ADMIN_ADDR", admin.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Ztunnel { child, admin, log }
    }

    fn dump(&self) -> Value {
        http_get(self.admin, "/config_dump")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn has_workload(&self, uid: &str) -> bool {
        self.dump()["workloads"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["uid"] == uid))
    }

    fn wait(&self, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Duration {
        let start = Instant::now();
        wait_until(WAIT, what, || cond(&self.dump()))
            .unwrap_or_else(|e| panic!("{e}\n{}\n{}", self.log_tail(), self.dump()));
        start.elapsed()
    }

    fn log_tail(&self) -> String {
        controlplane::log_tail(&self.log, 30)
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn kubectl_apply(yaml: &str, dir: &Path) {
    let file = dir.join("object.yaml");
    std::fs::write(&file, yaml).unwrap();
    cp().kubectl_run(&["apply", "-f", file.to_str().unwrap()])
        .unwrap();
}

/// The two tests share one control plane; one of them stops istiod for a while.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn ztunnel_follows_istiod_over_delta_xds() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let access = node_access("xds-node");
    namespace("xds-demo");
    cp().api()
        .create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "xds-demo"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap();
    pod(
        "xds-demo",
        "web-1",
        "xds-node",
        "10.251.0.7",
        json!({"app": "web"}),
    );
    let mut zt = Ztunnel::start(&access);

    let uid = "Kubernetes//Pod/xds-demo/web-1";
    let took = zt.wait("istiod's workload and service", |d| {
        let workload = d["workloads"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w["uid"] == uid && w["protocol"] == "HBONE" && w["node"] == "xds-node")
        });
        let service = d["services"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "web" && s["namespace"] == "xds-demo")
        });
        workload && service
    });
    eprintln!(
        "first push applied {} ms after ztunnel started",
        took.as_millis()
    );
    let source = &zt.dump()["configSource"]["xds"];
    assert!(
        !source.is_null(),
        "config_dump names the xDS source: {source}"
    );

    // An AuthorizationPolicy applied with kubectl reaches ztunnel.
    kubectl_apply(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-other\n  namespace: xds-demo\nspec:\n  selector:\n    matchLabels:\n      app: web\n  action: DENY\n  rules:\n  - from:\n    - source:\n        namespaces: [\"other\"]\n",
        access.creds.token.parent().unwrap(),
    );
    let took = zt.wait("the policy", |d| {
        d["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "deny-other"))
    });
    eprintln!(
        "AuthorizationPolicy in ztunnel {} ms after kubectl apply",
        took.as_millis()
    );

    // istiod goes away: ztunnel keeps what it has.
    cp().stop_istiod().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(zt.has_workload(uid), "state kept while istiod is down");
    // A pod made meanwhile arrives once istiod is back, with no ztunnel restart.
    pod(
        "xds-demo",
        "web-2",
        "xds-node",
        "10.251.0.8",
        json!({"app": "web"}),
    );
    cp().start_istiod().unwrap();
    let took = zt.wait("resync after istiod came back", |d| {
        d["workloads"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w["uid"] == "Kubernetes//Pod/xds-demo/web-2")
        })
    });
    eprintln!(
        "resynced {} ms after istiod was ready again",
        took.as_millis()
    );

    // A pod deleted with kubectl leaves ztunnel's state.
    cp().kubectl_run(&[
        "-n",
        "xds-demo",
        "delete",
        "pod",
        "web-1",
        "--grace-period=0",
        "--force",
    ])
    .unwrap();
    zt.wait("the deleted pod removed", |d| {
        d["workloads"]
            .as_array()
            .is_some_and(|w| !w.iter().any(|w| w["uid"] == uid))
    });
    let exited = zt.child.try_wait().unwrap();
    assert!(
        exited.is_none(),
        "ztunnel exited ({exited:?}):\n{}",
        zt.log_tail()
    );
}

#[test]
fn istio_ca_issues_a_pod_identity_on_the_node_and_refuses_a_foreign_one() {
    // Not while the xDS test has istiod stopped.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let access = node_access("ca-node");
    namespace("ca-demo");
    pod(
        "ca-demo",
        "api-1",
        "ca-node",
        "10.251.1.7",
        json!({"app": "api"}),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(issue(&access));
}

async fn issue(access: &NodeAccess) {
    let istiod = cp().istiod().unwrap();
    let ca = IstioCa::new(IstioCaSettings {
        address: format!("https://{}", istiod.secure_grpc),
        root_ca: access.creds.root_cert.clone(),
        alt_hostname: Some(istiod.hostname.clone()),
        token_path: access.creds.token.clone(),
        cluster_id: istiod.cluster_id.clone(),
        impersonate: true,
    })
    .unwrap();
    let id = Identity::new("cluster.local", "ca-demo", "sa-api-1");
    let cert = ca.issue(&id, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(identity_of(&cert.chain[0]), Ok(id));
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(life <= Duration::from_secs(3600 + 600), "{life:?}");

    // No pod of this identity runs on the token's node: istiod refuses to impersonate it.
    let foreign = Identity::new("cluster.local", "nowhere", "nobody");
    let e = ca
        .issue(&foreign, Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
}
