//! A node for the agent's tests: the real `cni-agent run` binary against a real apiserver
//! (shared by the tests of one binary, see `cluster`) with its own service account's token,
//! pods as netns with a veth and an IP from a subnet of their own, and a scripted ztunnel
//! speaking ZDS. Everything a node puts into the API is named after its unique prefix (the
//! Node object, its namespaces `<prefix>-<short name>`), so tests sharing the apiserver never
//! see each other's objects, and is deleted when the node is dropped.
#![allow(dead_code)]

pub mod cluster;
pub mod pods;
pub mod ztunnel;

use std::cell::RefCell;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use controlplane::{ControlPlane, Resource};
use serde_json::{json, Value};
use test_support::{unique_prefix, ChildGuard};

#[allow(unused_imports)]
pub use pods::{rules_snapshot, TestPod};
#[allow(unused_imports)]
pub use ztunnel::{FakeZtunnel, ZEvent};

pub const AGENT: &str = env!("CARGO_BIN_EXE_cni-agent");
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_meshtunnel-cni");
pub const AMBIENT: &str = "ambient";
pub const LABEL: &str = "istio.io/dataplane-mode";
pub const ANNOTATION: &str = "ambient.istio.io/redirection";

/// The line the agent logs once its pod and namespace watches have both listed.
pub const SYNCED: &str = "watch caches synced";

/// Generous: the machine is loaded. Targets (e.g. "captured within 2 s") are printed and named
/// in assertion messages; the tests fail only past these.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < WAIT,
            "timed out ({WAIT:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    start.elapsed()
}

pub struct Node<'cp> {
    pub prefix: String,
    pub name: String,
    pub cp: &'cp ControlPlane,
    pub dir: tempfile::TempDir,
    /// Namespaces this node created, deleted (with their pods) on drop.
    namespaces: RefCell<Vec<String>>,
    /// Where the running agent's log starts in the (appended) log file.
    log_start: usize,
    /// Pod IPs come from a /28 inside 100.64.0.0/10 chosen by 18 of the prefix's 20 bits, so
    /// discovery by IP cannot find another live test's pod (prefixes are unique among live netns).
    subnet_base: u32,
    next_ip: u32,
    agent: Option<ChildGuard>,
    pub backend: &'static str,
    /// Environment for the agent on top of the defaults (set before start_agent).
    pub extra_env: Vec<(&'static str, String)>,
}

impl Node<'static> {
    /// A node on the control plane shared by this test binary.
    pub fn new(backend: &'static str) -> Node<'static> {
        Node::on(cluster::shared(), backend)
    }
}

impl<'cp> Node<'cp> {
    /// A node on `cp`: its Node object is created, the agent gets a kubeconfig with its
    /// service account's token.
    pub fn on(cp: &'cp ControlPlane, backend: &'static str) -> Node<'cp> {
        let prefix = unique_prefix();
        let h = u32::from_str_radix(&prefix[2..], 16).unwrap();
        let subnet_base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) | ((h & 0x3_ffff) << 4);
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net.d")).unwrap();
        fs::write(
            dir.path().join("net.d/10-ptp.conflist"),
            r#"{"cniVersion":"0.4.0","name":"ptp-net","plugins":[{"type":"ptp","ipam":{"type":"host-local","subnet":"10.77.0.0/16"}}]}"#,
        )
        .unwrap();
        cluster::write_agent_kubeconfig(cp, &dir.path().join("kubeconfig"), None);
        let name = format!("node-{prefix}");
        // What a kubelet registers; pods bound to it need it (see the fixture's notes).
        cp.api()
            .create(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}))
            .unwrap();
        Node {
            name,
            prefix,
            cp,
            dir,
            namespaces: RefCell::new(Vec::new()),
            log_start: 0,
            subnet_base,
            next_ip: 1,
            agent: None,
            backend,
            extra_env: Vec::new(),
        }
    }

    /// The apiserver's JSON client (admin).
    pub fn api(&self) -> &'cp controlplane::Api {
        self.cp.api()
    }

    /// The API name of this node's namespace `short` (`<prefix>-<short>`); a name that is
    /// already one is returned as it is.
    pub fn ns(&self, short: &str) -> String {
        if short.starts_with(&format!("{}-", self.prefix)) {
            short.to_owned()
        } else {
            format!("{}-{short}", self.prefix)
        }
    }

    /// The agent's kubeconfig (its service account's token).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn zds_path(&self) -> PathBuf {
        self.dir.path().join("zds/ztunnel.sock")
    }

    pub fn plugin_socket(&self) -> PathBuf {
        self.dir.path().join("run/plugin.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The agent's stderr so far, for assertion messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn agent_command(&self) -> Command {
        let root = self.dir.path();
        let mut cmd = Command::new(AGENT);
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,cni_agent=debug")
            .env("CNI_BIN_DIR", root.join("bin"))
            .env("CNI_CONF_DIR", root.join("net.d"))
            .env("MESHTUNNEL_CNI_PLUGIN_BINARY", PLUGIN)
            .env("MESHTUNNEL_CNI_AGENT_SOCKET", self.plugin_socket())
            .env("NODE_NAME", &self.name)
            .env("KUBECONFIG", self.kubeconfig_path())
            .env("ZTUNNEL_UDS_ADDRESS", self.zds_path())
            .env("MESHTUNNEL_REDIRECT_BACKEND", self.backend)
            .env("MESHTUNNEL_RETRY_MAX_MS", "1000")
            // Only this test's pods are candidates in the netns dir.
            .env("MESHTUNNEL_NETNS_PREFIX", &self.prefix);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `cni-agent run` and waits until it serves the plugin socket.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "agent already running");
        self.log_start = self.log().len();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .agent_command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(ChildGuard::new(child));
        let sock = self.plugin_socket();
        wait_for("the agent's plugin socket", || sock.exists());
    }

    /// SIGTERM, as a DaemonSet rollout does, and wait for a clean exit.
    pub fn stop_agent(&mut self) {
        let guard = self.agent.take().expect("agent running");
        let mut child = guard.into_inner();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "agent exit {status:?}\n{}", self.log());
    }

    /// Creates this node's namespace `short` (see `ns`).
    pub fn create_namespace(&self, short: &str, ambient: bool) {
        let name = self.ns(short);
        let mut labels = json!({});
        if ambient {
            labels[LABEL] = AMBIENT.into();
        }
        self.api()
            .create(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}}))
            .unwrap();
        self.namespaces.borrow_mut().push(name);
    }

    pub fn label_namespace(&self, short: &str, value: Option<&str>) {
        self.api()
            .merge_patch(
                Resource::Namespace,
                None,
                &self.ns(short),
                &json!({"metadata": {"labels": {LABEL: value}}}),
            )
            .unwrap();
    }

    pub fn label_pod(&self, ns: &str, name: &str, value: Option<&str>) {
        self.api()
            .merge_patch(
                Resource::Pod,
                Some(&self.ns(ns)),
                name,
                &json!({"metadata": {"labels": {LABEL: value}}}),
            )
            .unwrap();
    }

    /// The next pod IP of this node's /28 (14 pods at most).
    pub fn next_ip(&mut self) -> Ipv4Addr {
        assert!(self.next_ip <= 14, "a test node has room for 14 pods");
        let ip = Ipv4Addr::from(self.subnet_base + self.next_ip);
        self.next_ip += 1;
        ip
    }

    /// A running pod: its netns (with an IP) and its API object on this node, in this node's
    /// namespace `ns` (short name).
    pub fn running_pod(&mut self, ns: &str, name: &str, labels: Value, spec: Value) -> TestPod {
        let ip = self.next_ip();
        let pod = TestPod::create(&format!("{}-{ns}-{name}", self.prefix), ip);
        let ns = &self.ns(ns);
        let mut full_spec = json!({"nodeName": self.name, "serviceAccountName": format!("sa-{name}"),
            "containers": [{"name": "app", "image": "busybox"}]});
        for (k, v) in spec.as_object().unwrap() {
            full_spec[k] = v.clone();
        }
        let created = self
            .api()
            .create(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": full_spec,
                "status": {"phase": "Running", "podIP": ip.to_string(),
                    "podIPs": [{"ip": ip.to_string()}]}}))
            .unwrap();
        TestPod {
            uid: created["metadata"]["uid"].as_str().unwrap().to_owned(),
            namespace: ns.to_owned(),
            name: name.to_owned(),
            ..pod
        }
    }

    /// A pod as the kubelet sees it just before the sandbox is built: in the API, Pending, no
    /// IP yet; its netns already exists (only a CNI ADD can tell the agent where it is).
    pub fn pending_pod(&mut self, ns: &str, name: &str) -> TestPod {
        let pod = TestPod::create(&format!("{}-{ns}-{name}", self.prefix), self.next_ip());
        let ns = &self.ns(ns);
        let created = self
            .api()
            .create(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"nodeName": self.name, "containers": [{"name": "app", "image": "busybox"}]},
                "status": {"phase": "Pending"}}))
            .unwrap();
        TestPod {
            uid: created["metadata"]["uid"].as_str().unwrap().to_owned(),
            namespace: ns.to_owned(),
            name: name.to_owned(),
            ..pod
        }
    }

    pub fn annotation(&self, ns: &str, name: &str) -> Option<String> {
        self.api()
            .get(Resource::Pod, Some(&self.ns(ns)), name)?
            .pointer(&format!(
                "/metadata/annotations/{}",
                ANNOTATION.replace('/', "~1")
            ))?
            .as_str()
            .map(str::to_owned)
    }

    /// Graceful deletion, as `kubectl delete pod` starts it: the pod gets a deletionTimestamp
    /// and stays (Terminating) until its kubelet, which these tests play, confirms it gone.
    pub fn terminate_pod(&self, ns: &str, name: &str) {
        let path = Resource::Pod.path(Some(&self.ns(ns)), Some(name));
        self.api()
            .request(
                http::Method::DELETE,
                &path,
                "application/json",
                Some(&json!({"apiVersion": "v1", "kind": "DeleteOptions",
                    "gracePeriodSeconds": 30})),
            )
            .unwrap();
    }

    /// The pod gone from the API (the kubelet's final delete).
    pub fn delete_pod(&self, ns: &str, name: &str) {
        assert!(
            self.api()
                .delete(Resource::Pod, Some(&self.ns(ns)), name)
                .unwrap(),
            "pod {ns}/{name} did not exist"
        );
    }

    /// A pod's phase, as its kubelet reports it (status subresource).
    pub fn set_phase(&self, ns: &str, name: &str, phase: &str) {
        self.api()
            .patch_status(
                Resource::Pod,
                Some(&self.ns(ns)),
                name,
                &json!({"status": {"phase": phase}}),
            )
            .unwrap();
    }

    /// Waits until the running agent logged that both its watches (pods, namespaces) have
    /// their initial list: from then on every change is seen through the watches.
    pub fn wait_watching(&self) {
        wait_for("the agent's pod and namespace watches to sync", || {
            self.log()
                .get(self.log_start..)
                .is_some_and(|l| l.contains(SYNCED))
        });
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent log ({}) ----\n{}", self.name, self.log());
        }
        // The agent first, so it does not react to the clean-up below.
        drop(self.agent.take());
        // Pods bound to a node are deleted gracefully and wait for a kubelet: delete them at
        // once, or their namespaces would stay Terminating. Best effort: a failing clean-up
        // must not hide the test's own failure.
        let api = self.cp.api();
        for ns in self.namespaces.borrow().iter() {
            for pod in api.list(Resource::Pod, Some(ns)).unwrap_or_default() {
                if let Some(name) = pod["metadata"]["name"].as_str() {
                    let _ = api.delete(Resource::Pod, Some(ns), name);
                }
            }
            let _ = api.delete(Resource::Namespace, None, ns);
        }
        let _ = api.delete(Resource::Node, None, &self.name);
    }
}
