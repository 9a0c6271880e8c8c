//! Pods the way a node makes them: the Pod object, a netns, the node's CNI chain, then the
//! pod's status; and removal the same way back.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, MutexGuard};

use anyhow::{Context, Result};
use controlplane::Resource;
use serde_json::{json, Value};
use test_support::{Netns, NodeId};

use super::cni::{Attachment, Runtime, Sandbox};
use super::{Cluster, PROXY_PORTS};

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

impl Cluster {
    pub fn runtime(&self, id: NodeId) -> Runtime<'_> {
        self.node(id).runtime()
    }

    /// [`Self::create_pod`] for a test step that must succeed: panics with the error and every
    /// daemon's log tail.
    #[track_caller]
    pub fn must_create_pod(&self, spec: &PodSpec) -> Arc<Pod> {
        self.create_pod(spec)
            .unwrap_or_else(|e| panic!("creating {}: {e:#}\n{}", spec.name, self.diagnostics()))
    }

    /// Creates the Pod object, then starts its sandbox (see [`Cluster::start_sandbox`]). If the
    /// sandbox fails, the object stays (Pending), as it would in a cluster.
    pub fn create_pod(&self, spec: &PodSpec) -> Result<Arc<Pod>> {
        self.api()
            .create(spec.object(self.node(spec.node).name))
            .with_context(|| format!("creating pod {}/{}", spec.namespace, spec.name))?;
        self.start_sandbox(&spec.namespace, &spec.name)
    }

    /// Only the Pod object (scheduled, no sandbox yet): the kubelet has not got to it.
    pub fn create_pod_object(&self, spec: &PodSpec) -> Result<()> {
        self.api()
            .create(spec.object(self.node(spec.node).name))
            .with_context(|| format!("creating pod {}/{}", spec.namespace, spec.name))?;
        Ok(())
    }

    /// Deletes only the Pod object (its sandbox already gone, say).
    pub fn delete_pod_object(&self, namespace: &str, name: &str) -> Result<()> {
        self.api()
            .delete(Resource::Pod, Some(namespace), name)
            .with_context(|| format!("deleting {namespace}/{name}"))?;
        Ok(())
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
            let netns = Netns::create(&format!(
                "{}{namespace}-{name}",
                self.pod_netns_prefix(node.id)
            ))?;
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
        self.api()
            .patch_status(Resource::Pod, Some(namespace), name, &status)
            .with_context(|| format!("setting status of {namespace}/{name}"))?;
        Ok(pod)
    }

    pub(super) fn lock_pods(&self) -> MutexGuard<'_, Vec<Arc<Pod>>> {
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
        self.api()
            .delete(Resource::Pod, Some(namespace), name)
            .with_context(|| format!("deleting {namespace}/{name}"))?;
        del
    }

    /// What a node reboot does to a pod's sandbox: its netns and everything in it vanish, and
    /// the restarted runtime then runs CNI DEL for the dead sandbox. The Pod object stays; a
    /// later [`Cluster::start_sandbox`] is the kubelet recreating it.
    pub fn lose_sandbox(&self, namespace: &str, name: &str) -> Result<()> {
        let pod = {
            let mut pods = self.lock_pods();
            let i = pods
                .iter()
                .position(|p| p.namespace == namespace && p.name == name)
                .with_context(|| format!("no running pod {namespace}/{name}"))?;
            pods.remove(i)
        };
        if let Some(ns) = &pod.netns {
            // Gone under everyone holding it by path; its guard's own delete later is a no-op.
            std::process::Command::new("ip")
                .args(["netns", "del", ns.name()])
                .status()
                .context("ip netns del")?;
        }
        self.teardown(&pod)
    }

    pub(super) fn teardown(&self, pod: &Pod) -> Result<()> {
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
