//! The fixture's own parts, without the agent: nodes and the real CNI chain.

use std::net::SocketAddr;

use serde_json::json;
use test_support::{unique_prefix, NodeId, WIRE_IF};

use super::cni::Sandbox;
use super::node;
use crate::apps::{connect_from, echo_exact, random_bytes, EchoServer};

fn sandbox(netns: &test_support::Netns, name: &str) -> Sandbox {
    Sandbox {
        container_id: format!("ctr-{name}"),
        netns: netns.path(),
        ifname: "eth0".into(),
        pod_namespace: "demo".into(),
        pod_name: name.into(),
        pod_uid: format!("uid-{name}"),
    }
}

fn leases(node: &node::Node) -> Vec<String> {
    walk(&node.ipam_dir())
        .into_iter()
        .filter(|n| n.starts_with("10."))
        .collect()
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                vec![e.file_name().to_string_lossy().into_owned()]
            }
        })
        .collect()
}

/// Bridge + host-local run the way a runtime runs them give pods on two nodes addresses from
/// each node's subnet, TCP flows between them over the wire with source addresses intact, and
/// DEL gives everything back.
#[test]
fn real_cni_chain_connects_pods_across_the_wire_and_del_cleans_up() {
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let nodes = node::build(&prefix, dir.path()).unwrap();
    let pa = test_support::Netns::create(&format!("{prefix}-pa")).unwrap();
    let pb = test_support::Netns::create(&format!("{prefix}-pb")).unwrap();
    let (sa, sb) = (sandbox(&pa, "pa"), sandbox(&pb, "pb"));
    let att_a = nodes[0].runtime().add(&sa).unwrap();
    let att_b = nodes[1].runtime().add(&sb).unwrap();
    let (ipa, ipb) = (att_a.ipv4().unwrap(), att_b.ipv4().unwrap());
    assert_eq!(ipa.octets()[..3], nodes[0].subnet.octets()[..3], "{ipa}");
    assert_eq!(ipb.octets()[..3], nodes[1].subnet.octets()[..3], "{ipb}");
    assert_eq!(leases(&nodes[0]).len(), 1);
    let bridge = nodes[0]
        .netns
        .exec("ip", &["-o", "link", "show", &nodes[0].bridge])
        .unwrap();
    assert!(bridge.contains(&nodes[0].bridge), "{bridge}");

    let echo = EchoServer::start(&pb, SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let capture =
        crate::wire::Capture::start(&nodes[0].netns, WIRE_IF, dir.path().join("wire.pcap"))
            .unwrap();
    let marker = b"plain-tcp-marker-42";
    let mut data = marker.to_vec();
    data.extend(random_bytes(64 * 1024));
    echo_exact(
        connect_from(&pa, SocketAddr::from((ipb, 8080))).unwrap(),
        &data,
    )
    .unwrap();
    assert_eq!(echo.peers()[0].ip(), ipa, "source address rewritten");
    let wire = capture.stop().unwrap();
    assert!(wire.contains(marker), "plain TCP expected on the wire");

    nodes[0].runtime().del(&sa, &att_a).unwrap();
    nodes[1].runtime().del(&sb, &att_b).unwrap();
    assert!(leases(&nodes[0]).is_empty() && leases(&nodes[1]).is_empty());
    let links = pa.exec("ip", &["-o", "link", "show", "eth0"]);
    assert!(links.is_err(), "eth0 left in the pod: {links:?}");
    let _ = NodeId::A;
}

#[test]
fn a_failing_plugin_fails_add_with_its_cni_error_and_frees_the_address() {
    let prefix = unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let nodes = node::build(&prefix, dir.path()).unwrap();
    // A chained plugin after the bridge that refuses every ADD: the runtime must tear down.
    let mut conf = nodes[0].primary_conflist();
    conf["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "host-local-missing"}));
    std::fs::write(
        nodes[0].cni_conf_dir().join("10-podnet.conflist"),
        conf.to_string(),
    )
    .unwrap();
    let pa = test_support::Netns::create(&format!("{prefix}-pa")).unwrap();
    let rt = nodes[0].runtime();
    let err = rt.add(&sandbox(&pa, "pa")).unwrap_err();
    assert!(format!("{err:#}").contains("host-local-missing"), "{err:#}");
    assert!(leases(&nodes[0]).is_empty(), "{:?}", leases(&nodes[0]));
}
