use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use test_support::{run_in, thread_in, unique_prefix, Netns, NodeId, Topology};

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_gone(prefix: &str) {
    let list = netns_list();
    assert!(
        !list.lines().any(|l| l.starts_with(prefix)),
        "namespaces with prefix {prefix} left behind:\n{list}"
    );
}

#[test]
fn tcp_crosses_nodes_and_everything_is_removed() {
    let prefix = unique_prefix();
    {
        let topo = Topology::two_nodes(&prefix).expect("build topology");
        let b1 = topo.pod_ip("b1");
        let listener = run_in(topo.pod_ns("b1"), || TcpListener::bind((b1, 7000)).unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"world").unwrap();
            (peer, buf)
        });
        let reply = run_in(topo.pod_ns("a1"), || {
            let mut c =
                TcpStream::connect_timeout(&SocketAddr::from((b1, 7000)), Duration::from_secs(5))
                    .unwrap();
            c.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
            buf
        });
        assert_eq!(&reply, b"world");
        let (peer, got) = server.join().unwrap();
        assert_eq!(&got, b"hello");
        // Routed, not NATed: the server sees the client pod's own address.
        assert_eq!(peer.ip(), topo.pod_ip("a1"));

        for name in ["na", "nb", "a1", "a2", "b1", "b2"] {
            assert!(netns_list().contains(&format!("{prefix}-{name}")));
        }
        let links = topo.node(NodeId::A).exec("ip", &["-o", "link"]).unwrap();
        assert!(links.contains(topo.wire_if(NodeId::A)));
    }
    assert_gone(&prefix);
}

#[test]
fn same_node_pods_reach_each_other() {
    let prefix = unique_prefix();
    {
        let topo = Topology::two_nodes(&prefix).unwrap();
        let a2 = topo.pod_ip("a2");
        let listener = run_in(topo.pod_ns("a2"), || TcpListener::bind((a2, 7001)).unwrap());
        let server = std::thread::spawn(move || listener.accept().map(|(_, p)| p).unwrap());
        let h = thread_in(topo.pod_ns("a1"), move || {
            TcpStream::connect_timeout(&SocketAddr::from((a2, 7001)), Duration::from_secs(5))
                .unwrap();
        });
        h.join().unwrap();
        assert_eq!(server.join().unwrap().ip(), topo.pod_ip("a1"));
    }
    assert_gone(&prefix);
}

#[test]
fn panic_inside_catch_unwind_still_cleans_up() {
    let prefix = unique_prefix();
    let p = prefix.clone();
    let result = std::panic::catch_unwind(move || {
        let topo = Topology::two_nodes(&p).unwrap();
        // A spawned child must not keep the namespace alive after the guard is gone.
        let _sleeper = topo.pod_ns("a1").spawn("sleep", &["600"]).unwrap();
        std::mem::forget(topo.pod_ns("b1").spawn("sleep", &["600"]).unwrap());
        panic!("deliberate");
    });
    assert!(result.is_err());
    assert_gone(&prefix);
}

#[test]
fn create_refuses_existing_name() {
    let name = format!("{}-x", unique_prefix());
    let ns = Netns::create(&name).unwrap();
    assert!(Netns::create(&name).is_err());
    // The failed second create must not have deleted the first one.
    assert!(netns_list().lines().any(|l| l.starts_with(&name)));
    drop(ns);
    assert_gone(&name);
}

#[test]
fn run_in_really_enters_the_namespace() {
    let ns = Netns::create(&format!("{}-y", unique_prefix())).unwrap();
    let inside = run_in(&ns, || {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    });
    let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_ne!(inside, outside);
    let out = ns.exec("ip", &["-o", "link"]).unwrap();
    assert_eq!(out.lines().count(), 1, "a fresh netns has only lo: {out}");
}
