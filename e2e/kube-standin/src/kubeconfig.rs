//! A kubeconfig pointing at the stand-in, for kubectl and for `kube::Config`.

use std::io;
use std::path::Path;

/// The kubeconfig text for `server_url`: one cluster, one context, and a user with no
/// credentials, since the stand-in speaks plain HTTP and authorizes everything.
///
/// Written as YAML by hand because the shape is fixed and it keeps serde_yaml out.
pub fn kubeconfig(server_url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-standin
  cluster:
    server: {server_url}
contexts:
- name: kube-standin
  context:
    cluster: kube-standin
    user: kube-standin
    namespace: default
current-context: kube-standin
preferences: {{}}
users:
- name: kube-standin
  user: {{}}
"
    )
}

/// Writes [`kubeconfig`] to `path`, creating parent directories.
pub fn write_kubeconfig(path: &Path, server_url: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, kubeconfig(server_url))
}
