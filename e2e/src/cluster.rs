//! The whole-system "cluster" fixture: two nodes as network namespaces joined by a wire, each
//! running a real `ztunnel` and a real `cni-agent run`, a Kubernetes API stand-in the agents
//! watch and the real `kubectl` talks to, and an istiod stand-in that renders ztunnel's config
//! from the pods. Pods are made the way a node makes them: the Pod object first, then a netns,
//! then the node's CNI conflist (real `bridge` + `host-local`, with `meshtunnel-cni` chained in
//! by the agent), then status.podIP. Enrolment is entirely the agent's doing.
//!
//! Everything it makes (processes, namespaces with their bridges and veths, files) is removed
//! when it drops, also while a failing test unwinds.

mod cni;
mod istiod;
mod kubectl;
mod node;
mod process;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kube_standin::{KubeStandin, Resource};
use meshtunnel::identity::LocalCa;
use meshtunnel::state::Protocol;
use serde_json::{json, Value};
use test_support::{run_in, unique_prefix, Netns, NodeId};

pub use cni::{Attachment, PluginError, Runtime, Sandbox};
pub use istiod::{render as render_config, REDIRECTION_ANNOTATION};
pub use kubectl::Kubectl;
pub use node::{subnets, Node, SYSTEM_CNI_DIR};
pub use process::log_tail;

use crate::mesh::find_binary;
use process::Proc;

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const DATAPLANE_LABEL: &str = "istio.io/dataplane-mode";
const READINESS_PORT: u16 = 15021;
/// How often ztunnel re-reads its config file here.
const CONFIG_POLL: Duration = Duration::from_millis(100);
/// ztunnel's listeners inside an enrolled pod.
pub const PROXY_PORTS: [u16; 3] = [15001, 15006, 15008];

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// RUST_LOG for ztunnel and the agents.
    pub log_level: String,
    pub release_binary: bool,
    /// The agent's `--redirect-backend`.
    pub redirect_backend: String,
    /// How long the CNI plugin waits for its agent (written into the conflist by the agent).
    pub plugin_timeout_ms: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            log_level: "info".into(),
            release_binary: false,
            redirect_backend: "nftables".into(),
            plugin_timeout_ms: 10_000,
        }
    }
}

/// A pod to create: its Kubernetes object's fields that matter to the mesh.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub node: NodeId,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
}

impl PodSpec {
    /// A pod in namespace `demo` with service account `sa-<name>`.
    pub fn new(name: &str, node: NodeId) -> PodSpec {
        PodSpec {
            name: name.to_owned(),
            namespace: "demo".to_owned(),
            node,
            service_account: format!("sa-{name}"),
            labels: BTreeMap::new(),
            host_network: false,
        }
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_owned();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }

    fn object(&self, node_name: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
            },
            "spec": {
                "nodeName": node_name,
                "serviceAccountName": self.service_account,
                "hostNetwork": self.host_network,
                "containers": [{"name": "app", "image": "busybox"}],
            },
            "status": {"phase": "Pending"},
        })
    }
}

/// A running pod: its sandbox and what the CNI chain gave it.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: NodeId,
    pub uid: String,
    pub ip: Ipv4Addr,
    sandbox: Option<(Sandbox, Attachment)>,
    // Last: the namespace goes after everything that refers to it.
    netns: Option<Netns>,
}

impl Pod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// The pod's own netns; `None` for a host-network pod.
    pub fn own_netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// The CNI result the runtime cached (`None` for a host-network pod).
    pub fn cni_result(&self) -> Option<&Value> {
        self.sandbox.as_ref().map(|(_, a)| &a.result)
    }
}

pub struct Cluster {
    // Drop order (after Drop::drop has run CNI DEL for every pod): the config writer, the
    // processes, the pods' namespaces, the nodes' namespaces (with bridges and veths), the
    // API server, the files.
    pods: Mutex<Vec<Arc<Pod>>>,
    istiod: Option<istiod::Istiod>,
    agents: Mutex<[Option<Proc>; 2]>,
    ztunnels: Mutex<[Option<Proc>; 2]>,
    pub nodes: [Node; 2],
    pub api: Arc<KubeStandin>,
    pub kubectl: Kubectl,
    pub opts: ClusterOptions,
    prefix: String,
    pub dir: tempfile::TempDir,
}

fn idx(node: NodeId) -> usize {
    match node {
        NodeId::A => 0,
        NodeId::B => 1,
    }
}

impl Cluster {
    /// Starts the API stand-in, both nodes, both agents (which chain the plugin into each node's
    /// conflist) and both ztunnels, and waits until the ztunnels are ready.
    pub fn start(opts: ClusterOptions) -> Result<Cluster> {
        let prefix = unique_prefix();
        let dir = tempfile::Builder::new()
            .prefix("meshtunnel-cluster-")
            .tempdir()?;
        let api = Arc::new(KubeStandin::start("127.0.0.1:0".parse()?)?);
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        LocalCa::load_or_create(&dir.path().join("ca"), TRUST_DOMAIN)?;
        let nodes = node::build(&prefix, dir.path())?;
        let mut cluster = Cluster {
            pods: Mutex::new(Vec::new()),
            istiod: None,
            agents: Mutex::new([None, None]),
            ztunnels: Mutex::new([None, None]),
            nodes,
            api,
            kubectl: Kubectl { kubeconfig },
            opts,
            prefix,
            dir,
        };
        let files = cluster
            .nodes
            .iter()
            .map(|n| cluster.config_path(n.id))
            .collect();
        cluster.istiod = Some(istiod::Istiod::start(
            cluster.api.clone(),
            files,
            TRUST_DOMAIN.into(),
            Duration::from_millis(50),
        )?);
        for node in [NodeId::A, NodeId::B] {
            cluster.start_agent(node)?;
        }
        for node in [NodeId::A, NodeId::B] {
            cluster.start_ztunnel(node)?;
        }
        for node in [NodeId::A, NodeId::B] {
            cluster.wait_ready(node, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[idx(id)]
    }

    pub fn config_path(&self, node: NodeId) -> PathBuf {
        self.node(node).dir.join("ztunnel-config.yaml")
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    // ---- processes ----

    fn lock_agents(&self) -> MutexGuard<'_, [Option<Proc>; 2]> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_ztunnels(&self) -> MutexGuard<'_, [Option<Proc>; 2]> {
        self.ztunnels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `cni-agent run` for `node`, in the host netns: it reaches the API stand-in on 127.0.0.1
    /// and pods through their netns paths and Unix sockets.
    pub fn start_agent(&self, id: NodeId) -> Result<()> {
        let node = self.node(id);
        let bin = find_binary("cni-agent", self.opts.release_binary)?;
        let plugin = find_binary("meshtunnel-cni", self.opts.release_binary)?;
        let mut cmd = std::process::Command::new(bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("KUBECONFIG", &self.kubectl.kubeconfig)
            .env("NODE_NAME", node.name)
            .env("RUST_LOG", &self.opts.log_level)
            .env("CNI_BIN_DIR", node.cni_bin_dir())
            .env("CNI_CONF_DIR", node.cni_conf_dir())
            .env("MESHTUNNEL_CNI_PLUGIN_BINARY", plugin)
            .env("MESHTUNNEL_CNI_AGENT_SOCKET", node.agent_socket())
            .env(
                "MESHTUNNEL_CNI_AGENT_TIMEOUT_MS",
                self.opts.plugin_timeout_ms.to_string(),
            )
            .env("MESHTUNNEL_CNI_RECHECK_MS", "500")
            .env("ZTUNNEL_UDS_ADDRESS", node.zds_socket())
            .args(["run", "--redirect-backend", &self.opts.redirect_backend])
            .arg("--ztunnel-uds")
            .arg(node.zds_socket());
        let mut proc = Proc::spawn(
            cmd,
            &format!("cni-agent on {}", node.name),
            &node.agent_log(),
        )?;
        self.wait_agent_serving(id, &mut proc, Duration::from_secs(20))?;
        self.lock_agents()[idx(id)] = Some(proc);
        Ok(())
    }

    /// Serving = the plugin socket accepts connections and the plugin is chained into the
    /// node's conflist (from then on every pod's ADD reaches the agent).
    fn wait_agent_serving(&self, id: NodeId, proc: &mut Proc, timeout: Duration) -> Result<()> {
        let node = self.node(id);
        let deadline = Instant::now() + timeout;
        loop {
            proc.check_alive()?;
            let listening = std::os::unix::net::UnixStream::connect(node.agent_socket()).is_ok();
            let chained = self
                .runtime(id)
                .current_conflist()
                .map(|c| c.to_string().contains("\"meshtunnel-cni\""))
                .unwrap_or(false);
            let installed = node.cni_bin_dir().join("meshtunnel-cni").is_file();
            if listening && chained && installed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "cni-agent on {} not serving after {timeout:?} (socket {listening}, chained {chained}, binary {installed}); log:\n{}",
                    node.name,
                    log_tail(&node.agent_log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERMs the agent and waits for its exit.
    pub fn terminate_agent(&self, id: NodeId, timeout: Duration) -> Result<ExitStatus> {
        let proc = self.lock_agents()[idx(id)]
            .take()
            .context("agent not running")?;
        proc.terminate(timeout)
    }

    /// SIGKILLs the agent (a crash; its sockets stay behind as files).
    pub fn kill_agent(&self, id: NodeId) {
        self.lock_agents()[idx(id)] = None;
    }

    pub fn agent_pid(&self, id: NodeId) -> Option<u32> {
        self.lock_agents()[idx(id)].as_ref().map(Proc::id)
    }

    pub fn start_ztunnel(&self, id: NodeId) -> Result<()> {
        let node = self.node(id);
        let bin = find_binary("ztunnel", self.opts.release_binary)?;
        let mut cmd = node.netns.command(bin.to_str().context("non-UTF-8 path")?);
        cmd.env_clear()
            .env("LOCAL_XDS_PATH", self.config_path(id))
            .env(
                "CONFIG_POLL_INTERVAL",
                format!("{}ms", CONFIG_POLL.as_millis()),
            )
            .env("INPOD_UDS", node.zds_socket())
            .env("NODE_NAME", node.name)
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env("LOCAL_CA_DIR", self.ca_dir())
            .env("RUST_LOG", &self.opts.log_level);
        let proc = Proc::spawn(
            cmd,
            &format!("ztunnel on {}", node.name),
            &node.ztunnel_log(),
        )?;
        self.lock_ztunnels()[idx(id)] = Some(proc);
        Ok(())
    }

    /// SIGKILLs ztunnel on the node.
    pub fn kill_ztunnel(&self, id: NodeId) {
        self.lock_ztunnels()[idx(id)] = None;
    }

    /// GET /healthz/ready on the node's ztunnel: (status code, body).
    pub fn readiness(&self, id: NodeId) -> Result<(u16, String)> {
        run_in(&self.node(id).netns, || -> Result<(u16, String)> {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, READINESS_PORT)),
                Duration::from_secs(1),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            let code = resp
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .context("malformed HTTP response")?;
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
            Ok((code, body))
        })
    }

    pub fn wait_ready(&self, id: NodeId, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(p) = self.lock_ztunnels()[idx(id)].as_mut() {
                p.check_alive()?;
            }
            match self.readiness(id) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "ztunnel on {} not ready after {timeout:?}: {last}\n{}",
            self.node(id).name,
            self.diagnostics()
        )
    }

    /// The tails of every process log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s += &format!(
                "--- ztunnel {} ---\n{}\n--- cni-agent {} ---\n{}\n",
                n.name,
                log_tail(&n.ztunnel_log(), 30),
                n.name,
                log_tail(&n.agent_log(), 30)
            );
        }
        s
    }

    pub fn ztunnel_log(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.node(id).ztunnel_log()).unwrap_or_default()
    }

    pub fn agent_log(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.node(id).agent_log()).unwrap_or_default()
    }

    // ---- Kubernetes objects ----

    /// Creates a namespace with `labels`.
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.api
            .create(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels},
            }))
            .map_err(|e| anyhow::anyhow!("creating namespace {name}: {e:?}"))?;
        Ok(())
    }

    /// The pod object as the API has it now.
    pub fn pod_object(&self, namespace: &str, name: &str) -> Option<Value> {
        self.api.get(Resource::Pod, Some(namespace), name)
    }

    /// The agent's redirection annotation on the pod, if any.
    pub fn redirection(&self, namespace: &str, name: &str) -> Option<String> {
        self.pod_object(namespace, name)?["metadata"]["annotations"][REDIRECTION_ANNOTATION]
            .as_str()
            .map(str::to_owned)
    }

    /// Waits until every ztunnel's config file lists each of `pods` with `protocol` (the
    /// istiod stand-in follows the agent's annotation), then a few of ztunnel's 100 ms polls
    /// more, so ztunnel runs with it.
    pub fn wait_config(&self, pods: &[&Pod], protocol: Protocol, timeout: Duration) -> Result<()> {
        wait_until(timeout, "ztunnel config rendered", || {
            self.nodes.iter().all(|n| {
                let path = self.config_path(n.id);
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return false;
                };
                let Ok(snap) = meshtunnel::config::parse(&text, &path) else {
                    return false;
                };
                pods.iter().all(|p| {
                    snap.workload_by_uid(&p.uid)
                        .is_some_and(|w| w.protocol == protocol)
                })
            })
        })?;
        std::thread::sleep(CONFIG_POLL * 6);
        Ok(())
    }

    // ---- pods, as a node makes them ----

    pub fn runtime(&self, id: NodeId) -> Runtime<'_> {
        self.node(id).runtime()
    }

    /// Creates the Pod object, then starts its sandbox (see [`Cluster::start_sandbox`]). If the
    /// sandbox fails, the object stays (Pending), as it would in a cluster.
    pub fn create_pod(&self, spec: &PodSpec) -> Result<Arc<Pod>> {
        self.api
            .create(spec.object(self.node(spec.node).name))
            .map_err(|e| anyhow::anyhow!("creating pod {}/{}: {e:?}", spec.namespace, spec.name))?;
        self.start_sandbox(&spec.namespace, &spec.name)
    }

    /// What a kubelet does for a scheduled pod: a netns, the CNI ADD chain in it, then the
    /// pod's IP in its status. Host-network pods get no netns and no CNI call. A failed ADD
    /// removes the netns and returns the error (a [`PluginError`] inside when a plugin failed);
    /// calling this again is the kubelet's retry.
    pub fn start_sandbox(&self, namespace: &str, name: &str) -> Result<Arc<Pod>> {
        let obj = self
            .pod_object(namespace, name)
            .with_context(|| format!("no pod {namespace}/{name}"))?;
        let uid = obj["metadata"]["uid"]
            .as_str()
            .context("pod without uid")?
            .to_owned();
        let node_name = obj["spec"]["nodeName"].as_str().unwrap_or("");
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == node_name)
            .with_context(|| format!("pod {namespace}/{name} is on unknown node {node_name:?}"))?;
        let host_network = obj["spec"]["hostNetwork"].as_bool().unwrap_or(false);
        let pod = if host_network {
            Pod {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                node: node.id,
                uid,
                ip: node.wire_ip,
                sandbox: None,
                netns: None,
            }
        } else {
            let netns = Netns::create(&format!("{}-{namespace}-{name}", self.prefix))?;
            let sandbox = Sandbox {
                container_id: format!("{:032x}", rand::random::<u128>()),
                netns: netns.path(),
                ifname: "eth0".into(),
                pod_namespace: namespace.to_owned(),
                pod_name: name.to_owned(),
                pod_uid: uid.clone(),
            };
            let attachment = self.runtime(node.id).add(&sandbox)?;
            let ip = attachment
                .ipv4()
                .with_context(|| format!("CNI result without IPv4: {}", attachment.result))?;
            Pod {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                node: node.id,
                uid,
                ip,
                sandbox: Some((sandbox, attachment)),
                netns: Some(netns),
            }
        };
        let ip = pod.ip.to_string();
        let now = obj["metadata"]["creationTimestamp"].clone();
        // What a kubelet reports once the sandbox and the app container run.
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": node.wire_ip.to_string(),
            "hostIPs": [{"ip": node.wire_ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": "app",
                "image": "busybox",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }],
        }});
        let pod = Arc::new(pod);
        // Registered before the status write, so a failure below still tears the sandbox down.
        self.lock_pods().push(pod.clone());
        self.api
            .merge_patch(Resource::Pod, Some(namespace), name, &status)
            .map_err(|e| anyhow::anyhow!("setting status of {namespace}/{name}: {e:?}"))?;
        Ok(pod)
    }

    fn lock_pods(&self) -> MutexGuard<'_, Vec<Arc<Pod>>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.lock_pods()
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
    }

    /// The netns a pod's processes run in: its own, or its node's for a host-network pod.
    pub fn netns_of<'a>(&'a self, pod: &'a Pod) -> &'a Netns {
        pod.netns.as_ref().unwrap_or(&self.node(pod.node).netns)
    }

    /// Deletes a pod the way a node does: CNI DEL over the cached attachment, the object from
    /// the API, then the netns (once the caller's handles to the pod are gone too).
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let pod = {
            let mut pods = self.lock_pods();
            let i = pods
                .iter()
                .position(|p| p.namespace == namespace && p.name == name)
                .with_context(|| format!("no running pod {namespace}/{name}"))?;
            pods.remove(i)
        };
        let del = self.teardown(&pod);
        self.api
            .delete(Resource::Pod, Some(namespace), name)
            .map_err(|e| anyhow::anyhow!("deleting {namespace}/{name}: {e:?}"))?;
        del
    }

    fn teardown(&self, pod: &Pod) -> Result<()> {
        match &pod.sandbox {
            Some((sandbox, attachment)) => self.runtime(pod.node).del(sandbox, attachment),
            None => Ok(()),
        }
    }

    // ---- what is in a pod ----

    /// The pod's nftables ruleset (empty when nothing is installed). iptables-nft rules show
    /// here too.
    pub fn ruleset(&self, pod: &Pod) -> Result<String> {
        self.netns_of(pod).exec("nft", &["list", "ruleset"])
    }

    /// Whether the in-pod capture (outbound redirect to 15001) is installed.
    pub fn captured(&self, pod: &Pod) -> bool {
        self.ruleset(pod)
            .map(|r| r.contains("redirect to :15001"))
            .unwrap_or(false)
    }

    /// Which of ztunnel's proxy ports listen inside the pod's netns.
    pub fn proxy_listeners(&self, pod: &Pod) -> Result<Vec<u16>> {
        let out = self.netns_of(pod).exec("ss", &["-Htln"])?;
        let mut ports: Vec<u16> = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(|local| local.rsplit(':').next()?.parse().ok())
            .filter(|p| PROXY_PORTS.contains(p))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // CNI DEL for every pod while the agents still run, as a draining node would; then the
        // fields drop in order. Never panic here: this also runs while a test unwinds.
        let pods: Vec<Arc<Pod>> = std::mem::take(&mut *self.lock_pods());
        for pod in &pods {
            let _ = self.teardown(pod);
        }
        drop(pods);
        self.istiod = None;
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns how long it took.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
