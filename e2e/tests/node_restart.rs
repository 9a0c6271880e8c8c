//! A node restart through the whole system: node A's agent and ztunnel die (SIGKILL), every pod
//! sandbox on it vanishes with its netns (the runtime then runs CNI DEL for the dead sandboxes),
//! and the node comes back with ztunnel and the agent starting in either order. While either is
//! missing, a sandbox that must be meshed does not start (CNI ADD fails closed); once both run,
//! the kubelet's retry succeeds and the pod is captured before it is reported ready (no byte of
//! its traffic can leave uncaptured); a pod deleted during the outage and recreated under the
//! same name gets a fresh capture and nothing of its predecessor is left in ztunnel.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::state::Protocol;
use meshtunnel_e2e::apps::EchoServer;
use meshtunnel_e2e::cluster::{
    wait_until, Cluster, ClusterOptions, Pod, PodSpec, DATAPLANE_LABEL, PROXY_PORTS,
};
use test_support::{run_in, NodeId};

const NS: &str = "demo";
const GENEROUS: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum First {
    Ztunnel,
    Agent,
}

fn echo_from(cluster: &Cluster, from: &Pod, dst: SocketAddr) -> std::io::Result<()> {
    run_in(cluster.netns_of(from), || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"after the reboot")?;
        s.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        if back != b"after the reboot" {
            return Err(std::io::Error::other("wrong echo"));
        }
        Ok(())
    })
}

fn start_daemon(cluster: &Cluster, which: First) {
    match which {
        First::Ztunnel => cluster.start_ztunnel(NodeId::A).unwrap(),
        First::Agent => cluster.start_agent(NodeId::A).unwrap(),
    }
}

/// Recreates the sandbox of `name` as a kubelet does: retrying while CNI ADD fails.
fn sandbox_when_possible(cluster: &Cluster, name: &str) -> (Arc<Pod>, u32) {
    let deadline = Instant::now() + GENEROUS;
    let mut failures = 0;
    loop {
        match cluster.start_sandbox(NS, name) {
            Ok(p) => return (p, failures),
            Err(e) if Instant::now() < deadline => {
                failures += 1;
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{name} never started: {e:#}\n{}", cluster.diagnostics()),
        }
    }
}

fn node_restart(first: First) {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    cluster
        .create_namespace(NS, &[(DATAPLANE_LABEL, "ambient")])
        .unwrap();
    let make = |name: &str, node| cluster.must_create_pod(&PodSpec::new(name, node));
    let (a1, a2, b1) = (
        make("a1", NodeId::A),
        make("a2", NodeId::A),
        make("b1", NodeId::B),
    );
    let _echo = EchoServer::start(cluster.netns_of(&b1), "0.0.0.0:8080".parse().unwrap()).unwrap();
    cluster
        .wait_config(&[&a1, &a2, &b1], Protocol::Hbone, GENEROUS)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    echo_from(&cluster, &a1, b1.addr(8080)).unwrap();
    let (a2_uid, a2_ip) = (a2.uid.clone(), a2.ip);
    let before = cluster.config_dump(NodeId::A).unwrap();
    assert_eq!(before["pods"].as_array().map(Vec::len), Some(2), "{before}");
    drop((a1, a2));

    // The node goes down: daemons first (a reboot kills everything at once), then the sandboxes.
    cluster.kill_agent(NodeId::A);
    cluster.kill_ztunnel(NodeId::A);
    cluster.lose_sandbox(NS, "a1").unwrap();
    cluster.lose_sandbox(NS, "a2").unwrap();
    // a2 is deleted meanwhile and recreated under the same name (a new pod, a new uid).
    cluster.delete_pod_object(NS, "a2").unwrap();
    cluster
        .create_pod_object(&PodSpec::new("a2", NodeId::A))
        .unwrap();

    // The node is back, one daemon first: meshed sandboxes must not start yet.
    let up = Instant::now();
    start_daemon(&cluster, first);
    let err = cluster
        .start_sandbox(NS, "a1")
        .expect_err("CNI ADD succeeded with only one of agent and ztunnel running");
    eprintln!("{first:?} alone: ADD refused: {err:#}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(cluster.pod(NS, "a1").is_none(), "a1 started uncaptured");
    start_daemon(
        &cluster,
        match first {
            First::Ztunnel => First::Agent,
            First::Agent => First::Ztunnel,
        },
    );
    let both = Instant::now();
    let (a1, retries1) = sandbox_when_possible(&cluster, "a1");
    // Captured and proxied the moment the sandbox exists: before the app could send a byte.
    assert!(cluster.captured(&a1), "{}", cluster.diagnostics());
    assert_eq!(cluster.proxy_listeners(&a1).unwrap(), PROXY_PORTS);
    let (a2, retries2) = sandbox_when_possible(&cluster, "a2");
    assert!(cluster.captured(&a2), "{}", cluster.diagnostics());
    assert_eq!(cluster.proxy_listeners(&a2).unwrap(), PROXY_PORTS);
    assert_ne!(a2.uid, a2_uid);
    cluster
        .wait_config(&[&a1, &a2, &b1], Protocol::Hbone, GENEROUS)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    wait_until(GENEROUS, "traffic through the restarted node", || {
        echo_from(&cluster, &a1, b1.addr(8080)).is_ok()
            && echo_from(&cluster, &a2, b1.addr(8080)).is_ok()
    })
    .unwrap();
    let converged = both.elapsed();
    eprintln!(
        "{first:?} first: converged {converged:?} after both daemons ran ({:?} after the first); \
         ADD retries a1 {retries1}, a2 {retries2}; a2's IP before {a2_ip}, after {}",
        up.elapsed(),
        a2.ip
    );

    // ztunnel holds exactly the two live pods, in their new namespaces, and nothing of a2's
    // predecessor.
    let dump = cluster.config_dump(NodeId::A).unwrap();
    let pods = dump["pods"].as_array().unwrap();
    let uids: Vec<&str> = pods.iter().filter_map(|p| p["uid"].as_str()).collect();
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(
        uids.contains(&a1.uid.as_str()) && uids.contains(&a2.uid.as_str()),
        "{uids:?}"
    );
    assert!(
        !uids.contains(&a2_uid.as_str()),
        "a2's predecessor still in ztunnel: {uids:?}"
    );
    // Each is proxied in its current namespace. (Not "none of the old inodes": the kernel
    // recycles a freed namespace's inode number.)
    for p in pods {
        let pod = if p["uid"] == a1.uid.as_str() {
            &a1
        } else {
            &a2
        };
        let current = std::fs::metadata(cluster.netns_of(pod).path())
            .unwrap()
            .ino();
        assert_eq!(p["netnsInode"].as_u64(), Some(current), "{p}");
    }
    assert!(converged < Duration::from_secs(10), "took {converged:?}");
}

#[test]
fn node_restart_ztunnel_first() {
    node_restart(First::Ztunnel);
}

#[test]
fn node_restart_agent_first() {
    node_restart(First::Agent);
}

/// Makes the node's host-local IPAM hand out `ip` next: it allocates round-robin after the
/// address in `last_reserved_ip.0`, so a freed address comes back once the range wraps; this
/// makes it come back at once.
fn reuse_ip_next(cluster: &Cluster, node: NodeId, ip: std::net::Ipv4Addr) {
    let file = cluster
        .node(node)
        .ipam_dir()
        .join("podnet")
        .join("last_reserved_ip.0");
    assert!(file.is_file(), "host-local keeps no {}", file.display());
    let before = std::net::Ipv4Addr::from(u32::from(ip) - 1);
    std::fs::write(&file, before.to_string()).unwrap();
}

/// The `ztunnel_pod_active_connections` gauge of `pod` in `direction` on `node`.
fn active(cluster: &Cluster, node: NodeId, pod: &str, direction: &str) -> Option<f64> {
    let m = cluster.metrics(node).ok()?;
    let (pod, direction) = (
        format!("pod=\"{pod}\""),
        format!("direction=\"{direction}\""),
    );
    m.lines()
        .filter(|l| l.starts_with("ztunnel_pod_active_connections{"))
        .find(|l| l.contains(&pod) && l.contains(&direction))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A pod deleted in the middle of a connection and created again under the same name, which
/// the IPAM gives the same address, with both daemons running throughout: the new pod is
/// captured and proxied before its first byte, in its own netns, and nothing of the old one
/// is left in ztunnel (its ZDS entry, its listeners and sockets, its open connection and the
/// connection gauge that counted it).
#[test]
fn a_pod_recreated_with_the_same_name_and_ip_starts_fresh() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    cluster
        .create_namespace(NS, &[(DATAPLANE_LABEL, "ambient")])
        .unwrap();
    let make = |name: &str, node| cluster.must_create_pod(&PodSpec::new(name, node));
    let b1 = make("b1", NodeId::B);
    let _echo = EchoServer::start(cluster.netns_of(&b1), "0.0.0.0:8080".parse().unwrap()).unwrap();
    cluster
        .wait_config(&[&b1], Protocol::Hbone, GENEROUS)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));

    let old = make("a1", NodeId::A);
    echo_from(&cluster, &old, b1.addr(8080)).unwrap();
    // What ztunnel A holds for one idle pod.
    std::thread::sleep(Duration::from_millis(300));
    let zpid = cluster.ztunnel_pid(NodeId::A).unwrap();
    let one_pod = meshtunnel_e2e::proc_stats::fds(zpid).unwrap();
    let (old_uid, old_ip) = (old.uid.clone(), old.ip);
    // An open connection, mid-stream when the pod goes.
    let mut open = run_in(cluster.netns_of(&old), || {
        TcpStream::connect_timeout(&b1.addr(8080), Duration::from_secs(5))
    })
    .unwrap();
    open.write_all(b"mid").unwrap();
    let mut back = [0u8; 3];
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    open.read_exact(&mut back).unwrap();
    assert_eq!(active(&cluster, NodeId::A, "a1", "outbound"), Some(1.0));

    cluster.delete_pod(NS, "a1").unwrap();
    let _ = open.shutdown(Shutdown::Both);
    drop(open);
    drop(old);
    reuse_ip_next(&cluster, NodeId::A, old_ip);
    let new = make("a1", NodeId::A);
    assert_eq!(new.ip, old_ip, "the IPAM did not hand out the same address");
    assert_ne!(new.uid, old_uid);
    // Captured and proxied from the moment the sandbox exists.
    assert!(cluster.captured(&new), "{}", cluster.diagnostics());
    assert_eq!(cluster.proxy_listeners(&new).unwrap(), PROXY_PORTS);
    echo_from(&cluster, &new, b1.addr(8080)).unwrap();

    // ztunnel A: one pod a1, the new one, proxied in its new netns.
    let dump = cluster.config_dump(NodeId::A).unwrap();
    let pods = dump["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["uid"], new.uid.as_str(), "{pods:?}");
    let ino = std::fs::metadata(cluster.netns_of(&new).path())
        .unwrap()
        .ino();
    assert_eq!(pods[0]["netnsInode"].as_u64(), Some(ino), "{pods:?}");
    // The old pod's connection is released (its peer's HBONE pings find it gone) and with it
    // its sockets, listeners and the gauge that counted it: ztunnel A holds what one idle pod
    // needs, as before.
    let took = wait_until(
        GENEROUS * 2,
        "the old pod's state gone from ztunnel A",
        || {
            let fds = meshtunnel_e2e::proc_stats::fds(zpid).unwrap();
            fds.0 <= one_pod.0
                && fds.1 <= one_pod.1
                && active(&cluster, NodeId::A, "a1", "outbound") == Some(0.0)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: fds {:?}, one pod's {one_pod:?}, gauge {:?}\n{}",
            meshtunnel_e2e::proc_stats::fds(zpid),
            active(&cluster, NodeId::A, "a1", "outbound"),
            cluster.diagnostics()
        )
    });
    eprintln!(
        "same name and IP {old_ip}: the old pod's state was gone {took:?} after the recreate"
    );
}
