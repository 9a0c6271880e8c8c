//! The whole-system "cluster" fixture: two nodes as network namespaces joined by a wire, each
//! running a real `ztunnel` and a real `cni-agent run`, a real Kubernetes control plane
//! (etcd, kube-apiserver, kube-controller-manager and istiod, see the `controlplane` crate) that
//! the agents watch and the real `kubectl` talks to, with Node objects for both nodes. ztunnel
//! runs as upstream's DaemonSet runs it: its config over delta xDS and its certificates from
//! istiod's CA. Pods are made the way a node makes them: the Pod object first, then a netns,
//! then the node's CNI conflist (real `bridge` + `host-local`, with `meshtunnel-cni` chained in
//! by the agent), then status.podIP. Enrolment is entirely the agent's doing.
//!
//! Everything it makes (processes, namespaces with their bridges and veths, files) is removed
//! when it drops, also while a failing test unwinds.

mod cni;
mod daemons;
mod istiod_access;
mod kubectl;
mod manifest_env;
mod node;
mod pods;
mod process;
#[cfg(test)]
mod tests;
mod waypoint;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use controlplane::{Api, ControlPlane, Resource};
use meshtunnel::state::Protocol;
use serde_json::{json, Value};
use test_support::{unique_prefix, NodeId};

pub use cni::{Attachment, PluginError, Runtime, Sandbox};
pub use istiod_access::{IstiodAccess, ISTIOD_ADDR};
pub use kubectl::Kubectl;
pub use node::{subnets, Node, SYSTEM_CNI_DIR};
pub use pods::{Pod, PodSpec};
pub use process::log_tail;
pub use waypoint::ClusterWaypoint;

use process::Proc;

pub const TRUST_DOMAIN: &str = "cluster.local";
pub const DATAPLANE_LABEL: &str = "istio.io/dataplane-mode";
/// The annotation the node agent sets on a pod once its traffic is captured (istiod reads it:
/// HBONE for such a pod, plain TCP otherwise).
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// ztunnel's admin API, on the loopback of its node's netns.
const ADMIN_PORT: u16 = 15000;

/// The uid istiod gives a pod's workload (cluster id `Kubernetes`, istiod's default).
pub fn workload_uid(namespace: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{namespace}/{name}")
}
/// The agent's service account, as `manifests/cni-agent.yaml` names it.
const AGENT_NAMESPACE: &str = "istio-system";
const AGENT_SERVICE_ACCOUNT: &str = "meshtunnel-cni-agent";
pub(crate) const READINESS_PORT: u16 = 15021;
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
    /// Extra environment for both ztunnels, beyond the DaemonSet's (settings such as
    /// METRICS_RETENTION that a test shortens).
    pub ztunnel_env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            log_level: "info".into(),
            release_binary: false,
            redirect_backend: "nftables".into(),
            plugin_timeout_ms: 10_000,
            ztunnel_env: Vec::new(),
        }
    }
}

pub struct Cluster {
    // Drop::drop first runs CNI DEL for every pod while the agents still run and lets go of
    // the pods' namespaces; then the fields drop in this order: the config writer, the
    // processes, the nodes' namespaces (with bridges and veths), the API server, the files.
    pods: Mutex<Vec<Arc<Pod>>>,
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
        let nodes = node::build(&prefix, dir.path())?;
        let mut cluster = Cluster {
            pods: Mutex::new(Vec::new()),
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
        cluster.install_manifests()?;
        for node in &cluster.nodes {
            cluster.create_node_object(node)?;
        }
        cluster.istiod_access = cluster
            .nodes
            .iter()
            .map(|n| cluster.istiod_access(n))
            .collect::<Result<_>>()?;
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

    /// Waits until every ztunnel's config (its `/config_dump`, fed by istiod over xDS) lists
    /// each of `pods` with `protocol` (istiod follows the agent's annotation).
    pub fn wait_config(&self, pods: &[&Pod], protocol: Protocol, timeout: Duration) -> Result<()> {
        let want = match protocol {
            Protocol::Hbone => "HBONE",
            Protocol::Tcp => "TCP",
        };
        wait_until(timeout, "ztunnel's config from istiod", || {
            self.nodes.iter().all(|n| {
                self.config_dump(n.id).is_ok_and(|d| {
                    pods.iter().all(|p| {
                        let uid = workload_uid(&p.namespace, &p.name);
                        d["workloads"].as_array().is_some_and(|ws| {
                            ws.iter()
                                .any(|w| w["uid"] == uid.as_str() && w["protocol"] == want)
                        })
                    })
                })
            })
        })?;
        Ok(())
    }

    /// The node ztunnel's `/config_dump`.
    pub fn config_dump(&self, id: NodeId) -> Result<Value> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        match crate::mesh::http_in(&self.node(id).netns, addr, "GET", "/config_dump")? {
            (200, body) => Ok(serde_json::from_str(&body)?),
            (code, body) => bail!("config_dump answered {code}: {body}"),
        }
    }

    /// Applies `yaml` (an AuthorizationPolicy, say) with kubectl and waits until every ztunnel
    /// holds policy `namespace/name` from istiod.
    pub fn apply_policy(
        &self,
        yaml: &str,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<()> {
        let file = self.dir.path().join(format!("{namespace}-{name}.yaml"));
        std::fs::write(&file, yaml)?;
        self.kubectl.ok(&["apply", "-f", &file.to_string_lossy()])?;
        self.wait_policy(namespace, name, true, timeout)
    }

    /// Deletes AuthorizationPolicy `namespace/name` and waits until no ztunnel holds it.
    pub fn delete_policy(&self, namespace: &str, name: &str, timeout: Duration) -> Result<()> {
        self.kubectl
            .ok(&["-n", namespace, "delete", "authorizationpolicy", name])?;
        self.wait_policy(namespace, name, false, timeout)
    }

    fn wait_policy(
        &self,
        namespace: &str,
        name: &str,
        present: bool,
        timeout: Duration,
    ) -> Result<()> {
        wait_until(timeout, "policy pushed by istiod", || {
            self.nodes.iter().all(|n| {
                self.config_dump(n.id).is_ok_and(|d| {
                    let held = d["policies"].as_array().is_some_and(|ps| {
                        ps.iter()
                            .any(|p| p["name"] == name && p["namespace"] == namespace)
                    });
                    held == present
                })
            })
        })?;
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
