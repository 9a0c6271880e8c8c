//! The real control plane the agent's tests run against (`controlplane` fixture: etcd,
//! kube-apiserver, kube-controller-manager), with the agent's RBAC from manifests/ applied, so
//! the agent runs with a token of its own service account and exactly the rights the manifests
//! grant it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use controlplane::{ControlPlane, Options};
use serde::Deserialize;

/// The kinds of manifests/cni-agent.yaml that make up the agent's identity and rights.
const RBAC_KINDS: [&str; 3] = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"];

/// The control plane shared by every test of this binary, started on first use.
pub fn shared() -> &'static ControlPlane {
    ControlPlane::shared(Options { istiod: false })
}

fn manifest(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The agent's ServiceAccount (namespace, name) and its RBAC objects, from the manifest.
fn agent_rbac() -> ((String, String), Vec<serde_yaml::Value>) {
    let text = manifest("cni-agent.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("manifests/cni-agent.yaml parses"))
        .filter(|d| RBAC_KINDS.contains(&d["kind"].as_str().unwrap_or_default()))
        .collect();
    let sa = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ServiceAccount"))
        .expect("manifests/cni-agent.yaml has the agent's ServiceAccount");
    let account = (
        sa["metadata"]["namespace"].as_str().unwrap().to_owned(),
        sa["metadata"]["name"].as_str().unwrap().to_owned(),
    );
    (account, docs)
}

/// Applies manifests/namespace.yaml and the RBAC objects of manifests/cni-agent.yaml to `cp`
/// (once per control plane; server-side apply, as the README installs them).
fn install_rbac(cp: &ControlPlane) {
    static DONE: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let done = done.get_or_insert_with(HashSet::new);
    if done.contains(cp.server()) {
        return;
    }
    let (_, docs) = agent_rbac();
    let rbac = cp.dir().join("cni-agent-rbac.yaml");
    let text: String = docs
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    std::fs::write(&rbac, text).unwrap();
    let namespace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/namespace.yaml");
    for file in [namespace.as_path(), rbac.as_path()] {
        cp.kubectl_run(&["apply", "--server-side", "-f", file.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("applying {}: {e:#}", file.display()));
    }
    done.insert(cp.server().to_owned());
}

/// A token of the agent's own service account (what its DaemonSet pod would mount).
pub fn agent_token(cp: &ControlPlane) -> String {
    install_rbac(cp);
    let ((ns, name), _) = agent_rbac();
    cp.api()
        .token(&ns, &name, &[], None, Duration::from_secs(24 * 3600))
        .unwrap_or_else(|e| panic!("a token for {ns}/{name}: {e:#}"))
}

/// Writes a kubeconfig for the agent: its own service account's token, the apiserver at
/// `server` (the control plane's own address unless a relay is in between).
pub fn write_agent_kubeconfig(cp: &ControlPlane, path: &Path, server: Option<&str>) {
    let token = agent_token(cp);
    cp.write_token_kubeconfig_for(path, server.unwrap_or(cp.server()), &token)
        .unwrap();
}
