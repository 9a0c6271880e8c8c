//! What a node's ztunnel needs to reach the real istiod, as upstream's DaemonSet gives it: a
//! ztunnel Pod object on the node (istio-system/ztunnel, the manifests' service account), a
//! token bound to that pod with audience `istio-ca` (what the projected `istio-token` volume
//! holds; istiod's CA lets a trusted node account ask for certificates of pods on its own node
//! only, which it checks through the bound pod), istiod's root certificate from the
//! `istio-ca-root-cert` ConfigMap, and istiod's TLS port on the node's loopback (a port forward
//! into the node netns, where ztunnel runs; istiod listens on the host's loopback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use controlplane::{Forward, Resource};
use serde_json::json;

use super::node::Node;
use super::{wait_until, Cluster};

/// Where ztunnel dials istiod inside its node netns (upstream's port).
pub const ISTIOD_ADDR: &str = "127.0.0.1:15012";
const ISTIO_NAMESPACE: &str = "istio-system";
const ZTUNNEL_SERVICE_ACCOUNT: &str = "ztunnel";

/// One node's way to istiod; the forward stops when this drops.
pub struct IstiodAccess {
    pub token: PathBuf,
    pub root_cert: PathBuf,
    /// The name istiod's serving certificate carries.
    pub hostname: String,
    pub cluster_id: String,
    /// The ztunnel Pod's name (POD_NAME; istiod checks it against the token's pod).
    pub pod_name: String,
    _forward: Forward,
}

impl Cluster {
    /// Registers the node's ztunnel pod and writes its token and istiod's root next to the
    /// node's files; starts the port forward.
    pub(super) fn istiod_access(&self, node: &Node) -> Result<IstiodAccess> {
        let istiod = self
            .control_plane
            .istiod()
            .context("control plane without istiod")?
            .clone();
        let api = self.api();
        let name = format!("ztunnel-{}", node.name);
        let pod = api.create(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ISTIO_NAMESPACE,
                "labels": {"app": "ztunnel"}},
            "spec": {
                "nodeName": node.name,
                "serviceAccountName": ZTUNNEL_SERVICE_ACCOUNT,
                "hostNetwork": true,
                "containers": [{"name": "istio-proxy", "image": "meshtunnel"}],
            },
            "status": {
                "phase": "Running",
                "podIP": node.wire_ip.to_string(),
                "podIPs": [{"ip": node.wire_ip.to_string()}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))?;
        let uid = pod["metadata"]["uid"].as_str().context("pod uid")?;
        let token = api.token(
            ISTIO_NAMESPACE,
            ZTUNNEL_SERVICE_ACCOUNT,
            &["istio-ca"],
            Some((&name, uid)),
            Duration::from_secs(24 * 3600),
        )?;
        let token_path = node.dir.join("istio-token");
        std::fs::write(&token_path, token)?;

        let mut root = String::new();
        wait_until(
            Duration::from_secs(30),
            "istiod's istio-ca-root-cert",
            || {
                api.try_get(
                    Resource::ConfigMap,
                    Some(ISTIO_NAMESPACE),
                    "istio-ca-root-cert",
                )
                .ok()
                .flatten()
                .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(str::to_owned))
                .map(|r| root = r)
                .is_some()
            },
        )?;
        let root_path = node.dir.join("istio-root-cert.pem");
        std::fs::write(&root_path, root)?;

        let listen: SocketAddr = ISTIOD_ADDR.parse()?;
        let forward = Forward::start(&node.netns.path(), listen, istiod.secure_grpc)?;
        Ok(IstiodAccess {
            token: token_path,
            root_cert: root_path,
            hostname: istiod.hostname,
            cluster_id: istiod.cluster_id,
            pod_name: name,
            _forward: forward,
        })
    }
}
