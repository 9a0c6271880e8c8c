//! The local config file is watched: a workload added to it is served over HBONE without a
//! restart, and connections opened before the change keep working.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshtunnel_e2e::apps::{connect_from, echo_exact, EchoServer};
use meshtunnel_e2e::wire::Capture;
use meshtunnel_e2e::{Mesh, MeshOptions};
use std::io::{Read, Write};
use test_support::{NodeId, WIRE_IF};

#[test]
fn new_workload_in_the_file_is_served_without_restart() {
    let mut opts = MeshOptions::default();
    // b1 is enrolled (rules + ZDS) but not yet in the config: ztunnel A treats it as unknown.
    for p in opts.pods.iter_mut().filter(|p| p.name == "b1") {
        p.in_config = false;
    }
    let mesh = Mesh::start(opts).unwrap();
    let _echo =
        EchoServer::start(mesh.pod_ns("b1"), SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let dst = mesh.addr("b1", 8080);

    // Before: plain passthrough, so port 8080 shows on the wire.
    let cap = Capture::start(
        mesh.topo.node(NodeId::A),
        WIRE_IF,
        mesh.dir.path().join("before.pcap"),
    )
    .unwrap();
    let mut long_lived = connect_from(mesh.pod_ns("a1"), dst).unwrap();
    long_lived.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    long_lived.read_exact(&mut b).unwrap();
    let before = cap.stop().unwrap();
    assert!(
        !before.non_hbone().is_empty(),
        "expected plain traffic before the edit"
    );

    // Add b1 to the file.
    let mut pods = mesh.opts.pods.clone();
    for p in pods.iter_mut() {
        p.in_config = true;
    }
    mesh.write_config(&pods).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cap = Capture::start(
            mesh.topo.node(NodeId::A),
            WIRE_IF,
            mesh.dir.path().join("after.pcap"),
        )
        .unwrap();
        echo_exact(
            connect_from(mesh.pod_ns("a1"), dst).unwrap(),
            b"after the edit",
        )
        .unwrap();
        let after = cap.stop().unwrap();
        if after.non_hbone().is_empty() && after.tls_app_records() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new workload not served over HBONE after 10 s: {:?}, {} TLS records\n{}",
            &after.non_hbone()[..after.non_hbone().len().min(4)],
            after.tls_app_records(),
            mesh.logs(NodeId::A)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The connection opened before the reload is still alive.
    long_lived.write_all(b"still").unwrap();
    long_lived.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still");
}
