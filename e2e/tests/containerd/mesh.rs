//! meshtunnel on a [`CriNode`]: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager; the `controlplane` crate) of this node's own, and `ztunnel` and
//! `cni-agent run`, each as the real binary inside the node netns, where the apiserver is reached
//! through a port forward. Started in the order a node brings them up: API, agent (which chains
//! the plugin into the node's conflist), ztunnel, then the runtime.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::{ControlPlane, Forward, Options, Resource};
use meshtunnel::identity::LocalCa;
use meshtunnel_e2e::cluster::workload_uid;
use meshtunnel_e2e::mesh::find_binary;
use serde_json::{json, Value};
use test_support::ChildGuard;

use super::CriNode;

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
const READINESS_PORT: u16 = 15021;

/// How long the plugin waits for the agent before failing an ADD.
pub const AGENT_TIMEOUT_MS: u64 = 20_000;

pub struct NodeMesh {
    // Drop order: agent, ztunnel, the forward, the API.
    agent: Option<ChildGuard>,
    ztunnel: Option<ChildGuard>,
    _forward: Forward,
    pub control_plane: ControlPlane,
    pub node_name: String,
    dir: PathBuf,
}

impl NodeMesh {
    /// The control plane, its apiserver forwarded into the node netns (where the agent runs)
    /// on the same port, and the CA and (empty) config ztunnel will read.
    pub fn new(node: &CriNode) -> Result<NodeMesh> {
        let control_plane = ControlPlane::start(Options::default())?;
        let server: SocketAddr = control_plane
            .server()
            .trim_start_matches("https://")
            .parse()?;
        let forward = Forward::start(&node.netns().path(), server, server)?;
        let dir = node.root().join("mesh");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(control_plane.kubeconfig(), dir.join("kubeconfig"))?;
        LocalCa::load_or_create(&dir.join("ca"), TRUST_DOMAIN)?;
        let mesh = NodeMesh {
            agent: None,
            ztunnel: None,
            _forward: forward,
            control_plane,
            node_name: format!("{}-node", node.prefix()),
            dir,
        };
        mesh.control_plane
            .api()
            .create(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": mesh.node_name}}))?;
        mesh.write_ztunnel_config(&[])?;
        Ok(mesh)
    }

    pub fn zds_socket(&self) -> PathBuf {
        self.dir.join("zds.sock")
    }

    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("cni-plugin.sock")
    }

    pub fn ztunnel_log_path(&self) -> PathBuf {
        self.dir.join("ztunnel.log")
    }

    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.join("cni-agent.log")
    }

    pub fn ztunnel_log(&self) -> String {
        std::fs::read_to_string(self.ztunnel_log_path()).unwrap_or_default()
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_log_path()).unwrap_or_default()
    }

    /// Everything the processes said, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- cni-agent log ---\n{}\n--- ztunnel log ---\n{}",
            self.agent_log(),
            self.ztunnel_log()
        )
    }

    /// A namespace, with `labels`.
    pub fn namespace(&self, name: &str, labels: Value) -> Result<()> {
        self.control_plane
            .api()
            .create(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}}))
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// A pending pod scheduled to this node, as the scheduler leaves it before the kubelet
    /// starts its sandbox; returns the uid the API server gave it.
    pub fn pod(&self, namespace: &str, name: &str, service_account: &str) -> Result<String> {
        let obj = self
            .control_plane
            .api()
            .create(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
                "spec": {
                    "nodeName": self.node_name,
                    "serviceAccountName": service_account,
                    "containers": [{"name": "app", "image": "example.invalid/app:1"}],
                },
            }))
            .with_context(|| format!("creating pod {namespace}/{name}"))?;
        obj.pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("created pod has no uid")
    }

    /// What the kubelet reports once the sandbox is up: the pod's IP, phase Running.
    pub fn pod_running(&self, namespace: &str, name: &str, ip: &str) -> Result<()> {
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        self.control_plane
            .api()
            .patch_status(Resource::Pod, Some(namespace), name, &status)
            .with_context(|| format!("patching the status of {namespace}/{name}"))?;
        Ok(())
    }

    /// Replaces the namespace's labels with `labels` (a merge patch; `null` values remove).
    pub fn label_namespace(&self, name: &str, labels: Value) -> Result<()> {
        self.control_plane
            .api()
            .merge_patch(
                Resource::Namespace,
                None,
                name,
                &json!({"metadata": {"labels": labels}}),
            )
            .with_context(|| format!("labelling namespace {name}"))?;
        Ok(())
    }

    /// The pod's `ambient.istio.io/redirection` annotation.
    pub fn redirection(&self, namespace: &str, name: &str) -> Option<String> {
        self.control_plane
            .api()
            .try_get(Resource::Pod, Some(namespace), name)
            .ok()??
            .pointer("/metadata/annotations")?
            .get(REDIRECTION_ANNOTATION)?
            .as_str()
            .map(str::to_owned)
    }

    /// ztunnel's local config: the pods it may serve, `(namespace, name, service account)`,
    /// under the uids istiod gives them (not the pod UIDs the agent sends over ZDS).
    pub fn write_ztunnel_config(&self, pods: &[(&str, &str, &str)]) -> Result<()> {
        let mut y = String::from("workloads:");
        if pods.is_empty() {
            y += " []";
        }
        y += "\n";
        for (ns, name, sa) in pods {
            let uid = workload_uid(ns, name);
            y += &format!(
                "- uid: {uid}\n  name: {name}\n  namespace: {ns}\n  serviceAccount: {sa}\n  trustDomain: {TRUST_DOMAIN}\n  protocol: HBONE\n  node: {node}\n  network: \"\"\n  services: {{}}\n",
                node = self.node_name,
            );
        }
        y += "services: []\n";
        let tmp = self.dir.join("ztunnel.yaml.tmp");
        std::fs::write(&tmp, y)?;
        std::fs::rename(&tmp, self.dir.join("ztunnel.yaml"))?;
        Ok(())
    }

    /// `cni-agent run` in the node netns: it binds its sockets and chains the plugin into the
    /// node's conflist; returns once the conflist names meshtunnel-cni and the agent answers on
    /// its socket.
    pub fn start_agent(&mut self, node: &CriNode, timeout: Duration) -> Result<()> {
        anyhow::ensure!(self.agent.is_none(), "agent already running");
        let bin = find_binary("cni-agent", false)?;
        // Appended: a restarted agent's log follows its predecessor's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log_path())?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", node.netns().path().display()))
            .arg(bin)
            .arg("run")
            .arg("--cni-bin-dir")
            .arg(node.cni_bin_dir())
            .arg("--cni-conf-dir")
            .arg(node.cni_conf_dir())
            .arg("--agent-socket")
            .arg(self.agent_socket())
            .args(["--agent-timeout-ms", &AGENT_TIMEOUT_MS.to_string()])
            .args(["--plugin-log-level", "debug"])
            .args(["--recheck-ms", "500"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,cni_agent=debug")
            .env("NO_COLOR", "1")
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("NODE_NAME", &self.node_name)
            .env("ZTUNNEL_UDS_ADDRESS", self.zds_socket())
            .env("MESHTUNNEL_REDIRECT_BACKEND", "nftables")
            .env("MESHTUNNEL_NETNS_DIR", node.sandbox_netns_dir())
            // Running pods are found among the CRI's netns files only, never another test's.
            .env("MESHTUNNEL_NETNS_SCAN_PROC", "false")
            // A pod the API does not have is refused after this long.
            .env("MESHTUNNEL_CNI_POD_WAIT_MS", "2000")
            .env("MESHTUNNEL_RETRY_MAX_MS", "1000")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.agent = Some(node.netns().spawn_command(cmd)?);
        let deadline = Instant::now() + timeout;
        loop {
            let conf = std::fs::read_to_string(node.primary_conflist_path()).unwrap_or_default();
            // A killed predecessor leaves its socket file: only an accepted connection counts.
            if conf.contains("\"meshtunnel-cni\"")
                && UnixStream::connect(self.agent_socket()).is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self
                .agent
                .as_mut()
                .and_then(|a| a.child_mut().try_wait().ok().flatten())
            {
                bail!("cni-agent exited with {status}\n{}", self.logs());
            }
            if Instant::now() > deadline {
                bail!(
                    "cni-agent did not chain itself in within {timeout:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the agent (a crash): the plugin stays chained.
    pub fn kill_agent(&mut self) {
        self.agent = None;
    }

    /// ztunnel in the node netns, connected to the agent's ZDS socket; returns once ready.
    pub fn start_ztunnel(&mut self, node: &CriNode, timeout: Duration) -> Result<()> {
        let bin = find_binary("ztunnel", false)?;
        let log = std::fs::File::create(self.ztunnel_log_path())?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", node.netns().path().display()))
            .arg(bin)
            .env_clear()
            .env("LOCAL_XDS_PATH", self.dir.join("ztunnel.yaml"))
            .env("INPOD_UDS", self.zds_socket())
            .env("NODE_NAME", &self.node_name)
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env("LOCAL_CA_DIR", self.dir.join("ca"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.ztunnel = Some(node.netns().spawn_command(cmd)?);
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match readiness(node) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "ztunnel not ready after {timeout:?}: {last}\n{}",
            self.logs()
        )
    }
}

/// GET /healthz/ready on the node's ztunnel: (status, body).
fn readiness(node: &CriNode) -> Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, READINESS_PORT));
    meshtunnel_e2e::mesh::http_in(node.netns(), addr, "GET", "/healthz/ready")
}
