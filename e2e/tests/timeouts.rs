//! Bounded waits on a real ztunnel's data path: a client that connects to a pod's 15008 and
//! never starts the TLS handshake is closed at TLS_HANDSHAKE_TIMEOUT.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::{run_in, NodeId};

#[test]
fn a_silent_client_on_15008_is_closed_at_the_handshake_timeout() {
    let mesh = Mesh::start(MeshOptions {
        env: vec![("TLS_HANDSHAKE_TIMEOUT".into(), "300ms".into())],
        ..MeshOptions::default()
    })
    .unwrap();
    let target = mesh.addr("b1", 15008);
    // From node B's namespace: not captured, straight to the pod's HBONE listener.
    let mut s = run_in(mesh.topo.node(NodeId::B), || {
        TcpStream::connect_timeout(&target, Duration::from_secs(5))
    })
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let took = start.elapsed();
    assert_eq!(n, 0, "expected the connection to be closed");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "closed after {took:?}\n{}",
        mesh.logs(NodeId::B)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mesh
        .logs(NodeId::B)
        .contains("HBONE TLS handshake timed out")
    {
        assert!(Instant::now() < deadline, "{}", mesh.logs(NodeId::B));
        std::thread::sleep(Duration::from_millis(20));
    }
}
