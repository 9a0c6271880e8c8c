//! What a node's ztunnel needs to reach the real istiod, as upstream's DaemonSet gives it (the
//! fixture's `ztunnel_credentials`: a ztunnel Pod on the node, its pod-bound `istio-ca` token,
//! istiod's root), and istiod's TLS port on the node's loopback: a port forward into the node
//! netns, where ztunnel runs, while istiod listens on the host's loopback.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use controlplane::{Forward, ZtunnelCredentials};

use super::node::Node;
use super::Cluster;

/// Where ztunnel dials istiod inside its node netns (upstream's port).
pub const ISTIOD_ADDR: &str = "127.0.0.1:15012";

/// One node's way to istiod; the forward stops when this drops.
pub struct IstiodAccess {
    pub credentials: ZtunnelCredentials,
    /// The name istiod's serving certificate carries.
    pub hostname: String,
    pub cluster_id: String,
    _forward: Forward,
}

impl Cluster {
    /// Registers the node's ztunnel pod, writes its token and istiod's root next to the
    /// node's files, and starts the port forward.
    pub(super) fn istiod_access(&self, node: &Node) -> Result<IstiodAccess> {
        let istiod = self
            .control_plane
            .istiod()
            .context("control plane without istiod")?
            .clone();
        let credentials =
            self.control_plane
                .ztunnel_credentials(node.name, node.wire_ip.into(), &node.dir)?;
        let listen: SocketAddr = ISTIOD_ADDR.parse()?;
        let forward = Forward::start(&node.netns.path(), listen, istiod.secure_grpc)?;
        Ok(IstiodAccess {
            credentials,
            hostname: istiod.hostname,
            cluster_id: istiod.cluster_id,
            _forward: forward,
        })
    }
}
