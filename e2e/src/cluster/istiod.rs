//! The istiod stand-in: turns the pods in the real apiserver into ztunnel's local
//! config (upstream's local-config schema, see `meshtunnel::config`) and rewrites every
//! ztunnel's file when they change. Like istiod, it reads the redirection annotation the node
//! agent sets: a pod whose traffic is captured speaks HBONE, every other pod plain TCP.
//! Authorization policies are handed to it already in ztunnel's schema (what istiod makes of
//! an AuthorizationPolicy), each with the pod labels it selects when workload-scoped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use controlplane::{ControlPlane, Resource};
use meshtunnel::state::{Policy, Scope};
use serde_json::{json, Value};

/// The annotation the node agent sets on a pod once its traffic is captured.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";

/// An authorization policy as istiod hands it to ztunnel. A `WorkloadSelector`-scope policy
/// applies to the pods of its namespace whose labels include all of `selector` (as a
/// `spec.selector.matchLabels` would); the other scopes ignore `selector`.
#[derive(Clone, Debug)]
pub struct AuthzPolicy {
    pub policy: Policy,
    pub selector: BTreeMap<String, String>,
}

impl AuthzPolicy {
    fn selects(&self, pod: &Value) -> bool {
        let meta = &pod["metadata"];
        self.policy.scope == Scope::WorkloadSelector
            && meta["namespace"].as_str() == Some(self.policy.namespace.as_str())
            && self
                .selector
                .iter()
                .all(|(k, v)| meta["labels"][k].as_str() == Some(v.as_str()))
    }
}

/// The uid istiod gives a pod's workload: `<cluster>//Pod/<namespace>/<name>` (cluster
/// `Kubernetes`, istiod's default CLUSTER_ID). Not the Kubernetes pod UID that ZDS carries, so
/// ztunnel must find a pod's workload by name, namespace, service account and node.
pub fn workload_uid(namespace: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{namespace}/{name}")
}

/// Renders the config for `pods` (Kubernetes Pod objects) and `policies`. Pods without an IP
/// yet and host-network pods (whose IP is the node's) are not workloads. Written as YAML, the
/// way upstream writes it (string matches are tags such as `!Exact`); keys are sorted, so equal
/// input renders equal bytes.
pub fn render(pods: &[Value], policies: &[AuthzPolicy], trust_domain: &str) -> Result<String> {
    let mut workloads: Vec<Value> = pods
        .iter()
        .filter(|p| !p["spec"]["hostNetwork"].as_bool().unwrap_or(false))
        .filter_map(|p| {
            let ips: Vec<&str> = pod_ips(p);
            if ips.is_empty() {
                return None;
            }
            let meta = &p["metadata"];
            let (namespace, name) = (
                meta["namespace"].as_str().unwrap_or_default(),
                meta["name"].as_str().unwrap_or_default(),
            );
            let captured = meta["annotations"][REDIRECTION_ANNOTATION].as_str() == Some("enabled");
            let selected: Vec<String> = policies
                .iter()
                .filter(|a| a.selects(p))
                .map(|a| a.policy.key())
                .collect();
            Some(json!({
                "authorizationPolicies": selected,
                "uid": workload_uid(namespace, name),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "serviceAccount": p["spec"]["serviceAccountName"].as_str().unwrap_or("default"),
                "trustDomain": trust_domain,
                "workloadIps": ips,
                "protocol": if captured { "HBONE" } else { "TCP" },
                "node": p["spec"]["nodeName"].as_str().unwrap_or(""),
                "network": "",
                "services": {},
            }))
        })
        .collect();
    workloads.sort_by(|a, b| a["uid"].as_str().cmp(&b["uid"].as_str()));
    let policies: Vec<&Policy> = policies.iter().map(|a| &a.policy).collect();
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("workloads".into(), serde_yaml::to_value(workloads)?);
    doc.insert("policies".into(), serde_yaml::to_value(policies)?);
    Ok(serde_yaml::to_string(&doc)?)
}

/// status.podIPs, falling back to status.podIP.
fn pod_ips(pod: &Value) -> Vec<&str> {
    let status = &pod["status"];
    let listed: Vec<&str> = status["podIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(|ip| ip["ip"].as_str()).collect())
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    status["podIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .into_iter()
        .collect()
}

/// Write-then-rename, so a polling reader never sees half a file.
pub fn write_atomically(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Polls the apiserver's pods (those on this cluster's nodes) and its own policies and re-renders every config file on
/// change.
pub struct Istiod {
    policies: Arc<Mutex<Vec<AuthzPolicy>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Istiod {
    /// Writes the files once, synchronously (ztunnel needs them to start), then keeps them
    /// current from a background thread.
    pub fn start(
        control_plane: Arc<ControlPlane>,
        nodes: Vec<String>,
        files: Vec<PathBuf>,
        trust_domain: String,
        every: Duration,
    ) -> Result<Istiod> {
        let policies = Arc::new(Mutex::new(Vec::new()));
        let current = policies.clone();
        let render_all = move |last: &mut String| -> Result<()> {
            let policies = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let pods: Vec<Value> = control_plane
                .api()
                .list(Resource::Pod, None)?
                .into_iter()
                .filter(|p| {
                    let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
                    nodes.iter().any(|n| n == node)
                })
                .collect();
            let text = render(&pods, &policies, &trust_domain)?;
            if text != *last {
                for f in &files {
                    write_atomically(f, &text)?;
                }
                *last = text;
            }
            Ok(())
        };
        let mut last = String::new();
        render_all(&mut last)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("istiod-standin".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if let Err(e) = render_all(&mut last) {
                        eprintln!("istiod stand-in: {e:#}");
                    }
                    std::thread::sleep(every);
                }
            })?;
        Ok(Istiod {
            policies,
            stop,
            thread: Some(thread),
        })
    }

    /// Replaces the policies; the next render (within `every`) publishes them.
    pub fn set_policies(&self, policies: Vec<AuthzPolicy>) {
        *self.policies.lock().unwrap_or_else(|e| e.into_inner()) = policies;
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
