//! Two "nodes", each with two "pods", routed like a minimal Kubernetes cluster:
//!
//! ```text
//!  <p>-a1 10.244.1.2 ─┐                                        ┌─ <p>-b1 10.244.2.2
//!                     ├─ <p>-na ══ wire0 ═══════ wire0 ══ <p>-nb ─┤
//!  <p>-a2 10.244.1.3 ─┘   10.250.0.1/30       10.250.0.2/30    └─ <p>-b2 10.244.2.3
//! ```
//!
//! Ranges (they exist only inside these namespaces, never on the host):
//! - node-to-node wire: 10.250.0.0/30 (A = .1, B = .2), interface `wire0` in both node netns;
//! - pods on node A: 10.244.1.0/24, on node B: 10.244.2.0/24; pod N's address is .(N+1).
//!
//! Pod links are routed point-to-point veths (no bridge, so no bridge-netfilter surprises): the
//! pod has `eth0` with a /32 and a default route via the gateway 10.244.X.1 (onlink); the node
//! side `veth-<pod>` carries that same gateway /32 and a /32 route back to the pod. Every link is
//! created directly inside a namespace, so nothing ever appears in the host netns and deleting
//! the namespaces deletes the links.

use std::net::Ipv4Addr;

use anyhow::{bail, Result};

use crate::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeId {
    A,
    B,
}

impl NodeId {
    fn subnet_octet(self) -> u8 {
        match self {
            NodeId::A => 1,
            NodeId::B => 2,
        }
    }
}

#[derive(Debug)]
pub struct Pod {
    /// Short name within the topology: "a1", "a2", "b1", "b2".
    pub name: String,
    pub node: NodeId,
    pub ip: Ipv4Addr,
    pub netns: Netns,
}

/// Interface name of the node-to-node link inside each node netns (capture here to see what
/// crosses "the network").
pub const WIRE_IF: &str = "wire0";
/// Interface name inside every pod.
pub const POD_IF: &str = "eth0";

#[derive(Debug)]
pub struct Topology {
    prefix: String,
    // Field order is drop order: pods go before the nodes their veths hang off.
    pods: Vec<Pod>,
    node_a: Netns,
    node_b: Netns,
}

impl Topology {
    /// Build the two-node, four-pod topology; on error everything built so far is removed.
    pub fn two_nodes(prefix: &str) -> Result<Topology> {
        let node_a = Netns::create(&format!("{prefix}-na"))?;
        let node_b = Netns::create(&format!("{prefix}-nb"))?;
        let mut topo = Topology {
            prefix: prefix.to_owned(),
            pods: Vec::new(),
            node_a,
            node_b,
        };
        topo.wire()?;
        for (node, idx) in [
            (NodeId::A, 1),
            (NodeId::A, 2),
            (NodeId::B, 1),
            (NodeId::B, 2),
        ] {
            topo.add_pod(node, idx)?;
        }
        Ok(topo)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node(&self, id: NodeId) -> &Netns {
        match id {
            NodeId::A => &self.node_a,
            NodeId::B => &self.node_b,
        }
    }

    /// The node's address on the wire.
    pub fn node_ip(&self, id: NodeId) -> Ipv4Addr {
        match id {
            NodeId::A => Ipv4Addr::new(10, 250, 0, 1),
            NodeId::B => Ipv4Addr::new(10, 250, 0, 2),
        }
    }

    pub fn wire_if(&self, _id: NodeId) -> &'static str {
        WIRE_IF
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Panics on an unknown name: pod names are fixed, so a typo is a bug in the test.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?} in topology {}", self.prefix))
    }

    pub fn pod_ns(&self, name: &str) -> &Netns {
        &self.pod(name).netns
    }

    pub fn pod_ip(&self, name: &str) -> Ipv4Addr {
        self.pod(name).ip
    }

    fn wire(&self) -> Result<()> {
        let end = |id: NodeId| WireEnd {
            netns: self.node(id),
            ip: self.node_ip(id),
            pods: format!("10.244.{}.0/24", id.subnet_octet()),
        };
        link_nodes(&end(NodeId::A), &end(NodeId::B))
    }

    fn add_pod(&mut self, node: NodeId, idx: u8) -> Result<()> {
        if !(1..=200).contains(&idx) {
            bail!("pod index {idx} out of range");
        }
        let octet = node.subnet_octet();
        let name = format!("{}{idx}", if node == NodeId::A { "a" } else { "b" });
        let ip = Ipv4Addr::new(10, 244, octet, idx + 1);
        let gw = format!("10.244.{octet}.1");
        let netns = Netns::create(&format!("{}-{name}", self.prefix))?;
        // Push the pod before configuring it so a failure below still deletes its netns.
        self.pods.push(Pod {
            name: name.clone(),
            node,
            ip,
            netns,
        });
        let node_ns = self.node(node);
        let pod_ns = &self.pods.last().expect("just pushed").netns;
        let host_if = format!("veth-{name}");
        node_ns.exec(
            "ip",
            &[
                "link",
                "add",
                &host_if,
                "type",
                "veth",
                "peer",
                "name",
                POD_IF,
                "netns",
                pod_ns.name(),
            ],
        )?;
        node_ns.exec("ip", &["addr", "add", &format!("{gw}/32"), "dev", &host_if])?;
        node_ns.exec("ip", &["link", "set", &host_if, "up"])?;
        node_ns.exec(
            "ip",
            &["route", "add", &format!("{ip}/32"), "dev", &host_if],
        )?;
        pod_ns.exec("ip", &["addr", "add", &format!("{ip}/32"), "dev", POD_IF])?;
        pod_ns.exec("ip", &["link", "set", POD_IF, "up"])?;
        pod_ns.exec(
            "ip",
            &[
                "route", "add", "default", "via", &gw, "dev", POD_IF, "onlink",
            ],
        )?;
        Ok(())
    }
}

/// One node's side of the link between two node namespaces.
pub struct WireEnd<'a> {
    pub netns: &'a Netns,
    /// Its address on the link (a /30 shared with the other end).
    pub ip: Ipv4Addr,
    /// Its pod subnet, routed to it from the other end.
    pub pods: String,
}

/// Joins two node namespaces with a veth pair named [`WIRE_IF`] on both sides, each routing
/// the other's pod subnet over it, as a routed cluster network does.
pub fn link_nodes(a: &WireEnd<'_>, b: &WireEnd<'_>) -> Result<()> {
    a.netns.exec(
        "ip",
        &[
            "link",
            "add",
            WIRE_IF,
            "type",
            "veth",
            "peer",
            "name",
            WIRE_IF,
            "netns",
            b.netns.name(),
        ],
    )?;
    for (me, other) in [(a, b), (b, a)] {
        let ns = me.netns;
        ns.exec(
            "ip",
            &["addr", "add", &format!("{}/30", me.ip), "dev", WIRE_IF],
        )?;
        ns.exec("ip", &["link", "set", WIRE_IF, "up"])?;
        let via = other.ip.to_string();
        ns.exec(
            "ip",
            &["route", "add", &other.pods, "via", &via, "dev", WIRE_IF],
        )?;
        ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    }
    Ok(())
}
