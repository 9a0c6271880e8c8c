//! Pods' TCP through two real ztunnels: cross-node, same-node, via a service VIP, to an
//! un-meshed destination. What crossed between the nodes is read from a packet capture.

use std::net::SocketAddr;

use meshtunnel_e2e::apps::{connect_from, echo_exact, random_bytes, EchoServer};
use meshtunnel_e2e::wire::Capture;
use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::{NodeId, WIRE_IF};

const MIB: usize = 1024 * 1024;

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

#[test]
fn cross_node_8mib_each_way_only_tls_to_15008_on_the_wire() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let capture = Capture::start(
        mesh.topo.node(NodeId::A),
        WIRE_IF,
        mesh.dir.path().join("wire.pcap"),
    )
    .unwrap();

    // A marker the capture must not contain: if it does, plaintext left the pod.
    let marker = b"meshtunnel-plaintext-marker-0123456789";
    let mut data = marker.to_vec();
    data.extend(random_bytes(8 * MIB));
    let conn = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080)).unwrap();
    echo_exact(conn, &data).unwrap_or_else(|e| {
        panic!(
            "{e:#}\n--- ztunnel A ---\n{}\n--- ztunnel B ---\n{}",
            mesh.logs(NodeId::A),
            mesh.logs(NodeId::B)
        )
    });

    let wire = capture.stop().unwrap();
    assert!(
        wire.non_hbone().is_empty(),
        "non-HBONE payload crossed the wire: {:?}",
        &wire.non_hbone()[..wire.non_hbone().len().min(5)]
    );
    // A capture may drop some packets under load; most of the 16 MiB must be there.
    assert!(
        wire.payload_bytes() >= 8 * MIB,
        "only {} payload bytes captured",
        wire.payload_bytes()
    );
    assert!(
        wire.tls_app_records() > 0,
        "no TLS application data seen: {:?}",
        &wire.segments[..wire.segments.len().min(8)]
    );
    assert!(
        !wire.contains(marker),
        "plaintext marker visible on the wire"
    );

    let peers = echo.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].ip(), mesh.pod_ip("a1"), "source IP not preserved");
}

#[test]
fn same_node_and_service_vip_and_plain_destination() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let echo_a2 = EchoServer::start(mesh.pod_ns("a2"), any(8080)).unwrap();
    let echo_b1 = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let echo_b2 = EchoServer::start(mesh.pod_ns("b2"), any(8080)).unwrap();

    // Same node: a1 -> a2, both meshed, one ztunnel.
    let data = random_bytes(8 * MIB);
    let conn = connect_from(mesh.pod_ns("a1"), mesh.addr("a2", 8080)).unwrap();
    echo_exact(conn, &data).unwrap();
    assert_eq!(echo_a2.peers()[0].ip(), mesh.pod_ip("a1"));

    // Service VIP 10.96.0.10:80 -> endpoint b1:8080.
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let conn = connect_from(mesh.pod_ns("a1"), vip).unwrap();
    echo_exact(conn, &random_bytes(64 * 1024)).unwrap();
    assert_eq!(echo_b1.peers().len(), 1);
    assert_eq!(echo_b1.peers()[0].ip(), mesh.pod_ip("a1"));

    // b2 is protocol TCP and not meshed: plain passthrough from a1's namespace.
    let conn = connect_from(mesh.pod_ns("a1"), mesh.addr("b2", 8080)).unwrap();
    echo_exact(conn, &random_bytes(MIB)).unwrap();
    assert_eq!(echo_b2.peers()[0].ip(), mesh.pod_ip("a1"));
}
