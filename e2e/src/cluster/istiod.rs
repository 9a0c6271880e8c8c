//! The istiod stand-in: turns the pods in the Kubernetes API stand-in into ztunnel's local
//! config (upstream's local-config schema, see `meshtunnel::config`) and rewrites every
//! ztunnel's file when they change. Like istiod, it reads the redirection annotation the node
//! agent sets: a pod whose traffic is captured speaks HBONE, every other pod plain TCP.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use kube_standin::{KubeStandin, Resource};
use serde_json::{json, Value};

/// The annotation the node agent sets on a pod once its traffic is captured.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";

/// Renders the config for `pods` (Kubernetes Pod objects). Pods without an IP yet and
/// host-network pods (whose IP is the node's) are not workloads. JSON is YAML, so ztunnel's
/// YAML parser reads this unchanged; keys are sorted, so equal input renders equal bytes.
pub fn render(pods: &[Value], trust_domain: &str) -> String {
    let mut workloads: Vec<Value> = pods
        .iter()
        .filter(|p| !p["spec"]["hostNetwork"].as_bool().unwrap_or(false))
        .filter_map(|p| {
            let ips: Vec<&str> = pod_ips(p);
            if ips.is_empty() {
                return None;
            }
            let meta = &p["metadata"];
            let captured = meta["annotations"][REDIRECTION_ANNOTATION].as_str() == Some("enabled");
            Some(json!({
                "uid": meta["uid"],
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
    serde_json::to_string_pretty(&json!({ "workloads": workloads }))
        .expect("a JSON value always serializes")
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

/// Watches the API stand-in's resourceVersion and re-renders every config file on change.
pub struct Istiod {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Istiod {
    /// Writes the files once, synchronously (ztunnel needs them to start), then keeps them
    /// current from a background thread.
    pub fn start(
        api: Arc<KubeStandin>,
        files: Vec<PathBuf>,
        trust_domain: String,
        every: Duration,
    ) -> Result<Istiod> {
        let render_all = move |last: &mut String| -> Result<()> {
            let text = render(&api.list(Resource::Pod, None), &trust_domain);
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
            stop,
            thread: Some(thread),
        })
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
