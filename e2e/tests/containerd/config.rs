//! containerd's config file and the node's primary CNI config, with every path inside the
//! fixture's temp dir so that runs never share state with each other or with a system containerd.

use std::path::Path;

use serde_json::json;

use super::image::PAUSE_IMAGE;

/// Everything the config points at; all directories live under one temp root.
pub struct Paths<'a> {
    pub root: &'a Path,
    pub state: &'a Path,
    pub socket: &'a Path,
    pub opt: &'a Path,
    pub runc_root: &'a Path,
    pub cni_bin: &'a Path,
    pub cni_conf: &'a Path,
}

/// containerd 1.6 config (version 2) with the CRI plugin set up the way a kubelet node has it,
/// minus what this machine cannot do.
pub fn containerd_toml(p: &Paths) -> String {
    let q = |p: &Path| toml_str(&p.display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}
# Snapshotters that need kernel features or tools we lack; tracing needs an exporter.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {socket}
[ttrpc]
  address = {ttrpc}
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  # Root here lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj of -998 would fail.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Sandbox netns mounts under our state dir rather than /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = {runc_root}
"#,
        root = q(p.root),
        state = q(p.state),
        socket = q(p.socket),
        ttrpc = toml_str(&format!("{}.ttrpc", p.socket.display())),
        opt = q(p.opt),
        pause = toml_str(PAUSE_IMAGE),
        cni_bin = q(p.cni_bin),
        cni_conf = q(p.cni_conf),
        runc_root = q(p.runc_root),
    )
}

/// The node's primary network: a bridge in the node netns with host-local addresses, the
/// conflist a cluster's CNI would have written before meshtunnel chains itself in.
pub fn primary_conflist(name: &str, bridge: &str, subnet: &str, ipam_dir: &Path) -> String {
    let doc = json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "dataDir": ipam_dir,
            },
        }],
    });
    serde_json::to_string_pretty(&doc).expect("a JSON value always serializes")
}

/// A TOML basic string; JSON string escaping is a valid subset of it.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serializes")
}
