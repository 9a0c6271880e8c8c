//! A node of the cluster fixture: its network namespace, its pod subnet, its half of the wire,
//! and the directories a kubelet-managed node keeps (CNI bin and conf dirs, host-local's lease
//! store, runtime sockets, logs).
//!
//! ```text
//!  pods ── <bridge> 10.X.Y.1/24 ─ <p>-na ══ wire0 ═══ wire0 ══ <p>-nb ─ <bridge> 10.X.Y+1.1/24 ── pods
//!                                 10.250.0.1/30     10.250.0.2/30
//! ```
//! The bridge and the pods' veths are made by the real `bridge` plugin when the first pod's CNI
//! ADD runs; this file only makes what exists before any pod: the namespace, the wire, routes.

use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use test_support::{link_nodes, Netns, NodeId, WireEnd};

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

pub struct Node {
    pub id: NodeId,
    /// The Kubernetes node name (`spec.nodeName` of its pods, ztunnel's and the agent's NODE_NAME).
    pub name: &'static str,
    pub netns: Netns,
    /// First address of the node's /24 pod subnet (the bridge takes .1, pods .2 on).
    pub subnet: Ipv4Addr,
    pub wire_ip: Ipv4Addr,
    pub bridge: String,
    pub dir: PathBuf,
}

impl Node {
    pub fn subnet_cidr(&self) -> String {
        format!("{}/24", self.subnet)
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("cni/bin")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("cni/ipam")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The socket the agent serves ZDS on and ztunnel connects to.
    pub fn zds_socket(&self) -> PathBuf {
        self.run_dir().join("ztunnel.sock")
    }

    /// The socket the CNI plugin asks the agent on.
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir().join("cni-plugin.sock")
    }

    /// This node's container runtime, as far as CNI goes.
    pub fn runtime(&self) -> crate::cluster::Runtime<'_> {
        crate::cluster::Runtime {
            node: &self.netns,
            bin_dir: self.cni_bin_dir(),
            conf_dir: self.cni_conf_dir(),
            timeout: std::time::Duration::from_secs(60),
        }
    }

    pub fn ztunnel_log(&self) -> PathBuf {
        self.dir.join("ztunnel.log")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("cni-agent.log")
    }

    /// The node's primary CNI config, as a cluster's network add-on would have written it before
    /// meshtunnel arrives: the real `bridge` plugin with `host-local` IPAM over the node's subnet.
    /// No masquerading, so pod source addresses survive between nodes.
    pub fn primary_conflist(&self) -> serde_json::Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "podnet",
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet_cidr()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.ipam_dir()
                }
            }]
        })
    }

    /// Lays out the node's directories: the reference plugins linked into the CNI bin dir (one
    /// directory, as runtimes want) and the primary conflist in the conf dir.
    fn prepare_dirs(&self) -> Result<()> {
        for d in [
            self.cni_bin_dir(),
            self.cni_conf_dir(),
            self.ipam_dir(),
            self.run_dir(),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let system = Path::new(SYSTEM_CNI_DIR);
        anyhow::ensure!(
            system.join("bridge").is_file() && system.join("host-local").is_file(),
            "no bridge/host-local in {SYSTEM_CNI_DIR}: apt-get install containernetworking-plugins"
        );
        for entry in std::fs::read_dir(system)? {
            let entry = entry?;
            symlink(entry.path(), self.cni_bin_dir().join(entry.file_name()))?;
        }
        let conf = self.cni_conf_dir().join("10-podnet.conflist");
        std::fs::write(&conf, serde_json::to_vec_pretty(&self.primary_conflist())?)?;
        Ok(())
    }
}

/// Two pod subnets for this run, derived from the run's prefix so concurrent runs (each in
/// its own namespaces anyway) also differ in addresses. That matters: the agent finds a running
/// pod's netns by its IP among all named namespaces on the machine, so two runs must never
/// hand out the same pod address. Within one process, subnets are never reused while a run
/// holds them. Inside 10.128.0.0/10: clear of the wire (10.250.0.0/30) and VIPs (10.96/12).
pub fn subnets(prefix: &str) -> [Ipv4Addr; 2] {
    let hash = prefix
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let mut used = USED_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = hash % SLOTS;
    while used.contains(&r) && used.len() < SLOTS as usize {
        r = (r + 1) % SLOTS;
    }
    used.insert(r);
    slot(r)
}

const SLOTS: u32 = 4096;
static USED_SLOTS: std::sync::Mutex<std::collections::BTreeSet<u32>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn slot(r: u32) -> [Ipv4Addr; 2] {
    let (second, third) = (128 + (r >> 6) as u8, ((r & 63) * 2) as u8);
    [
        Ipv4Addr::new(10, second, third, 0),
        Ipv4Addr::new(10, second, third + 1, 0),
    ]
}

/// Creates both nodes, wires them together and routes each node's pod subnet to the other.
/// On error, whatever was made is removed by the guards' drops.
pub fn build(prefix: &str, dir: &Path) -> Result<[Node; 2]> {
    let [sa, sb] = subnets(prefix);
    let make = |id: NodeId, name: &'static str, suffix: &str, subnet, wire_ip| -> Result<Node> {
        Ok(Node {
            id,
            name,
            netns: Netns::create(&format!("{prefix}-{suffix}"))?,
            subnet,
            wire_ip,
            bridge: format!("{prefix}-br"),
            dir: dir.join(name),
        })
    };
    let a = make(NodeId::A, "node-a", "na", sa, Ipv4Addr::new(10, 250, 0, 1))?;
    let b = make(NodeId::B, "node-b", "nb", sb, Ipv4Addr::new(10, 250, 0, 2))?;
    fn end(n: &Node) -> WireEnd<'_> {
        WireEnd {
            netns: &n.netns,
            ip: n.wire_ip,
            pods: n.subnet_cidr(),
        }
    }
    link_nodes(&end(&a), &end(&b))?;
    a.prepare_dirs()?;
    b.prepare_dirs()?;
    Ok([a, b])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_distinct_private_and_clear_of_the_wire() {
        // The same prefix twice still gets a different slot within one process.
        let mut seen = std::collections::BTreeSet::new();
        for p in ["mt00000", "mtfffff", "mt12345", "mtabcde", "mt12345"] {
            let [a, b] = subnets(p);
            assert_ne!(a, b);
            for s in [a, b] {
                let o = s.octets();
                assert_eq!(o[0], 10);
                assert!((128..192).contains(&o[1]), "{s}");
                assert_eq!(o[3], 0);
            }
            assert_eq!(a.octets()[2] + 1, b.octets()[2]);
            assert!(seen.insert(a), "{a} handed out twice");
        }
    }
}
