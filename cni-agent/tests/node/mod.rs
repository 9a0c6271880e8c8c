//! A node for the agent's tests: the real `cni-agent run` binary against an in-process
//! kube-standin, pods as netns with a veth and an IP from a subnet of their own, and a scripted
//! ztunnel speaking ZDS.
#![allow(dead_code)]

pub mod pods;
pub mod ztunnel;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_standin::{KubeStandin, Resource};
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

pub struct Node {
    pub prefix: String,
    pub name: String,
    pub api: KubeStandin,
    pub dir: tempfile::TempDir,
    /// Pod IPs come from a /28 inside 100.64.0.0/10 chosen by 18 of the prefix's 20 bits, so
    /// discovery by IP cannot find another live test's pod (prefixes are unique among live netns).
    subnet_base: u32,
    next_ip: u32,
    agent: Option<ChildGuard>,
    pub backend: &'static str,
    /// Environment for the agent on top of the defaults (set before start_agent).
    pub extra_env: Vec<(&'static str, String)>,
}

impl Node {
    pub fn new(backend: &'static str) -> Node {
        let prefix = unique_prefix();
        let h = u32::from_str_radix(&prefix[2..], 16).unwrap();
        let subnet_base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) | ((h & 0x3_ffff) << 4);
        let api = KubeStandin::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("net.d")).unwrap();
        fs::write(
            dir.path().join("net.d/10-ptp.conflist"),
            r#"{"cniVersion":"0.4.0","name":"ptp-net","plugins":[{"type":"ptp","ipam":{"type":"host-local","subnet":"10.77.0.0/16"}}]}"#,
        )
        .unwrap();
        api.write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap();
        Node {
            name: format!("node-{prefix}"),
            prefix,
            api,
            dir,
            subnet_base,
            next_ip: 1,
            agent: None,
            backend,
            extra_env: Vec::new(),
        }
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
            .env("KUBECONFIG", root.join("kubeconfig"))
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

    pub fn create_namespace(&self, name: &str, ambient: bool) {
        let mut labels = json!({});
        if ambient {
            labels[LABEL] = AMBIENT.into();
        }
        self.api
            .create(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}}))
            .unwrap();
    }

    pub fn label_namespace(&self, name: &str, value: Option<&str>) {
        self.api
            .merge_patch(
                Resource::Namespace,
                None,
                name,
                &json!({"metadata": {"labels": {LABEL: value}}}),
            )
            .unwrap();
    }

    pub fn label_pod(&self, ns: &str, name: &str, value: Option<&str>) {
        self.api
            .merge_patch(
                Resource::Pod,
                Some(ns),
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

    /// A running pod: its netns (with an IP) and its API object on this node.
    pub fn running_pod(&mut self, ns: &str, name: &str, labels: Value, spec: Value) -> TestPod {
        let ip = self.next_ip();
        let pod = TestPod::create(&format!("{}-{ns}-{name}", self.prefix), ip);
        let mut full_spec = json!({"nodeName": self.name, "serviceAccountName": format!("sa-{name}"),
            "containers": [{"name": "app", "image": "busybox"}]});
        for (k, v) in spec.as_object().unwrap() {
            full_spec[k] = v.clone();
        }
        let created = self
            .api
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
        let created = self
            .api
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
        self.api
            .get(Resource::Pod, Some(ns), name)?
            .pointer(&format!(
                "/metadata/annotations/{}",
                ANNOTATION.replace('/', "~1")
            ))?
            .as_str()
            .map(str::to_owned)
    }

    /// Waits for the agent's watches on the stand-in (pods and namespaces).
    pub fn wait_watching(&self) {
        wait_for("the agent's two watches", || self.api.active_watches() >= 2);
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent log ({}) ----\n{}", self.name, self.log());
        }
    }
}
