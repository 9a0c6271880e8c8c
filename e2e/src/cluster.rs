//! The whole-system "cluster" fixture: two nodes as network namespaces joined by a wire, each
//! running a real `ztunnel` and a real `cni-agent run`, a real Kubernetes control plane
//! (etcd, kube-apiserver, kube-controller-manager and istiod, see the `controlplane` crate) that
//! the agents watch and the real `kubectl` talks to, with Node objects for both nodes; and, until
//! ztunnel's xDS client replaces it, an istiod stand-in that renders ztunnel's local config file
//! from the real apiserver's pods. Pods are made the way a node makes them: the Pod object first, then a netns,
//! then the node's CNI conflist (real `bridge` + `host-local`, with `meshtunnel-cni` chained in
//! by the agent), then status.podIP. Enrolment is entirely the agent's doing.
//!
//! Everything it makes (processes, namespaces with their bridges and veths, files) is removed
//! when it drops, also while a failing test unwinds.

mod cni;
mod daemons;
mod istiod;
mod istiod_access;
mod kubectl;
mod node;
mod pods;
mod process;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::{Api, ControlPlane, Resource};
use meshtunnel::identity::LocalCa;
use meshtunnel::state::Protocol;
use serde_json::{json, Value};
use test_support::{unique_prefix, NodeId};

pub use cni::{Attachment, PluginError, Runtime, Sandbox};
pub use istiod::{render as render_config, workload_uid, AuthzPolicy, REDIRECTION_ANNOTATION};
pub use istiod_access::{IstiodAccess, ISTIOD_ADDR};
pub use kubectl::Kubectl;
pub use node::{subnets, Node, SYSTEM_CNI_DIR};
pub use pods::{Pod, PodSpec};
pub use process::log_tail;

use process::Proc;

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const DATAPLANE_LABEL: &str = "istio.io/dataplane-mode";
/// The agent's service account, as `manifests/cni-agent.yaml` names it.
const AGENT_NAMESPACE: &str = "istio-system";
const AGENT_SERVICE_ACCOUNT: &str = "meshtunnel-cni-agent";
pub(crate) const READINESS_PORT: u16 = 15021;
/// How often ztunnel re-reads its config file here.
pub(crate) const CONFIG_POLL: Duration = Duration::from_millis(100);
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

pub struct Cluster {
    // Drop::drop first runs CNI DEL for every pod while the agents still run and lets go of
    // the pods' namespaces; then the fields drop in this order: the config writer, the
    // processes, the nodes' namespaces (with bridges and veths), the API server, the files.
    pods: Mutex<Vec<Arc<Pod>>>,
    istiod: Option<istiod::Istiod>,
    agents: Mutex<[Option<Proc>; 2]>,
    ztunnels: Mutex<[Option<Proc>; 2]>,
    pub nodes: [Node; 2],
    /// Each node's way to the real istiod (token, root cert, port forward).
    pub istiod_access: Vec<IstiodAccess>,
    pub control_plane: Arc<ControlPlane>,
    pub kubectl: Kubectl,
    pub opts: ClusterOptions,
    prefix: String,
    pub dir: tempfile::TempDir,
}

pub(crate) fn idx(node: NodeId) -> usize {
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
        let control_plane = Arc::new(ControlPlane::start(controlplane::Options { istiod: true })?);
        let kubeconfig = control_plane.kubeconfig().to_owned();
        LocalCa::load_or_create(&dir.path().join("ca"), TRUST_DOMAIN)?;
        let nodes = node::build(&prefix, dir.path())?;
        let mut cluster = Cluster {
            pods: Mutex::new(Vec::new()),
            istiod: None,
            agents: Mutex::new([None, None]),
            ztunnels: Mutex::new([None, None]),
            nodes,
            istiod_access: Vec::new(),
            kubectl: Kubectl {
                kubeconfig,
                binary: control_plane.kubectl_path(),
            },
            control_plane,
            opts,
            prefix,
            dir,
        };
        let files = cluster
            .nodes
            .iter()
            .map(|n| cluster.config_path(n.id))
            .collect();
        cluster.install_manifests()?;
        for node in &cluster.nodes {
            cluster.create_node_object(node)?;
        }
        cluster.istiod_access = cluster
            .nodes
            .iter()
            .map(|n| cluster.istiod_access(n))
            .collect::<Result<_>>()?;
        cluster.istiod = Some(istiod::Istiod::start(
            cluster.control_plane.clone(),
            cluster.nodes.iter().map(|n| n.name.to_owned()).collect(),
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

    /// Pod netns on `node` are named `<prefix><namespace>-<name>`.
    pub fn pod_netns_prefix(&self, node: NodeId) -> String {
        let tag = match node {
            NodeId::A => "a",
            NodeId::B => "b",
        };
        format!("{}-{tag}-", self.prefix)
    }

    pub fn config_path(&self, node: NodeId) -> PathBuf {
        self.node(node).dir.join("ztunnel-config.yaml")
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    // ---- Kubernetes objects ----

    /// The apiserver's JSON client (admin).
    pub fn api(&self) -> &Api {
        self.control_plane.api()
    }

    /// Applies every object in `manifests/` (server-side validated, as on a cluster), and
    /// gives the agents a kubeconfig with a token of the manifests' own service account, so
    /// the RBAC the agents run with is the one the manifests grant.
    fn install_manifests(&self) -> Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        // manifests/README.md's order: the namespace first.
        for file in ["namespace.yaml", "cni-agent.yaml", "ztunnel.yaml"] {
            self.control_plane
                .kubectl_run(&["apply", "--server-side", "-f", &path(file)])?;
        }
        let token = self.api().token(
            AGENT_NAMESPACE,
            AGENT_SERVICE_ACCOUNT,
            &[],
            None,
            Duration::from_secs(24 * 3600),
        )?;
        self.control_plane
            .write_token_kubeconfig(&self.agent_kubeconfig(), &token)
    }

    /// The kubeconfig the agents run with (their service account's token).
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("cni-agent.kubeconfig")
    }

    /// The Node object a kubelet registers: pods scheduled to it need it (the EndpointSlice
    /// controller skips pods of unknown nodes), with its address on the wire.
    fn create_node_object(&self, node: &Node) -> Result<()> {
        self.api().create(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": node.wire_ip.to_string()}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            },
        }))?;
        Ok(())
    }

    /// Creates a namespace with `labels`.
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.api()
            .create(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels},
            }))
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(())
    }

    /// The pod object as the API has it now.
    pub fn pod_object(&self, namespace: &str, name: &str) -> Option<Value> {
        self.api()
            .try_get(Resource::Pod, Some(namespace), name)
            .ok()
            .flatten()
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
                    snap.workload_by_uid(&workload_uid(&p.namespace, &p.name))
                        .is_some_and(|w| w.protocol == protocol)
                })
            })
        })?;
        std::thread::sleep(CONFIG_POLL * 6);
        Ok(())
    }

    /// Hands `policies` to the istiod stand-in (replacing any before) and waits until every
    /// ztunnel's config file holds exactly them, then a few of ztunnel's polls more.
    pub fn apply_policies(&self, policies: Vec<AuthzPolicy>, timeout: Duration) -> Result<()> {
        let mut want: Vec<String> = policies.iter().map(|a| a.policy.key()).collect();
        want.sort();
        self.istiod
            .as_ref()
            .context("istiod stand-in not running")?
            .set_policies(policies);
        wait_until(timeout, "policies rendered", || {
            self.nodes.iter().all(|n| {
                let path = self.config_path(n.id);
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return false;
                };
                meshtunnel::config::parse(&text, &path).is_ok_and(|snap| {
                    let mut got: Vec<String> = snap.policies().map(|p| p.key()).collect();
                    got.sort();
                    got == want
                })
            })
        })?;
        std::thread::sleep(CONFIG_POLL * 6);
        Ok(())
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
