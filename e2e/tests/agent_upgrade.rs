//! cni-agent upgrade under traffic, through the whole system (real apiserver, istiod, agents,
//! ztunnels, CNI chain): the agent DaemonSet rolls one node at a time (the old agent gets
//! SIGTERM, then the new one starts: it binds the node's ZDS and CNI sockets, so the two never
//! overlap). Meanwhile client loops keep opening connections between meshed pods on both nodes
//! and a watcher reads every pod's rules over and over: no connection may fail, no pod may be
//! seen uncaptured at any sample, and the rules after the upgrade are exactly those before (no
//! duplicates). A pod created after the upgrade is captured by the new agent.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshtunnel::state::Protocol;
use meshtunnel_e2e::apps::{spawn_in, EchoServer};
use meshtunnel_e2e::cluster::{
    wait_until, Cluster, ClusterOptions, PodSpec, DATAPLANE_LABEL, PROXY_PORTS,
};
use test_support::NodeId;

const NS: &str = "demo";
const GENEROUS: Duration = Duration::from_secs(20);

fn short_conn(dst: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"through the agent upgrade")?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    if back != b"through the agent upgrade" {
        return Err(std::io::Error::other(format!(
            "echo returned {} bytes",
            back.len()
        )));
    }
    Ok(())
}

#[test]
fn cni_agent_upgrade_leaves_traffic_and_capture_untouched() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    cluster
        .create_namespace(NS, &[(DATAPLANE_LABEL, "ambient")])
        .unwrap();
    let make = |name: &str, node| cluster.must_create_pod(&PodSpec::new(name, node));
    let (a1, b1) = (make("a1", NodeId::A), make("b1", NodeId::B));
    let pods = [a1.clone(), b1.clone()];
    let _echo_a =
        EchoServer::start(cluster.netns_of(&a1), "0.0.0.0:8080".parse().unwrap()).unwrap();
    let _echo_b =
        EchoServer::start(cluster.netns_of(&b1), "0.0.0.0:8080".parse().unwrap()).unwrap();
    cluster
        .wait_config(&[&a1, &b1], Protocol::Hbone, GENEROUS)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    wait_until(GENEROUS, "pods captured", || {
        pods.iter().all(|p| cluster.captured(p))
    })
    .unwrap();
    let rules_before: Vec<String> = pods.iter().map(|p| cluster.ruleset(p).unwrap()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (attempted, failures) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    // Both directions, so each node's pods are clients and servers.
    let loops: Vec<_> = [(&a1, b1.addr(8080)), (&b1, a1.addr(8080))]
        .into_iter()
        .flat_map(|(from, dst)| [(from, dst), (from, dst)])
        .map(|(from, dst)| {
            let (stop, attempted, failures) = (stop.clone(), attempted.clone(), failures.clone());
            spawn_in(cluster.netns_of(from), move || {
                while !stop.load(Ordering::Relaxed) {
                    attempted.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = short_conn(dst) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("to {dst}: {e} ({:?})", e.kind()));
                    }
                }
            })
        })
        .collect();
    // Samples every pod's capture as fast as `nft list ruleset` runs.
    let (samples, uncaptured) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let (mut samples, mut uncaptured) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for p in &pods {
                    samples += 1;
                    if !cluster.captured(p) {
                        uncaptured.push(p.name.clone());
                    }
                }
            }
            (samples, uncaptured)
        });
        std::thread::sleep(Duration::from_secs(1));
        for node in [NodeId::A, NodeId::B] {
            let started = Instant::now();
            let status = cluster.terminate_agent(node, GENEROUS).unwrap();
            assert!(
                status.success(),
                "old agent on {node:?} exited with {status}"
            );
            cluster.start_agent(node).unwrap();
            eprintln!("{node:?}: agent replaced in {:?}", started.elapsed());
            std::thread::sleep(Duration::from_secs(2));
        }
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    for l in loops {
        l.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    let attempted = attempted.load(Ordering::Relaxed);
    eprintln!(
        "agent upgrade: {attempted} connections, {} failed; {samples} capture samples, {} uncaptured",
        failures.len(),
        uncaptured.len()
    );
    assert!(attempted > 100, "too little traffic: {attempted}");
    assert!(
        failures.is_empty(),
        "failed connections: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(uncaptured.is_empty(), "seen uncaptured: {uncaptured:?}");
    for (p, before) in pods.iter().zip(&rules_before) {
        assert_eq!(
            &cluster.ruleset(p).unwrap(),
            before,
            "{}'s rules changed",
            p.name
        );
        assert_eq!(
            cluster.proxy_listeners(p).unwrap(),
            PROXY_PORTS,
            "{}",
            p.name
        );
    }
    for node in [NodeId::A, NodeId::B] {
        let log = cluster.ztunnel_log(node);
        assert!(
            !log.contains("pod proxies removed") && !log.contains("not in the agent's snapshot"),
            "ztunnel on {node:?} dropped a pod during the agent upgrade:\n{log}"
        );
    }
    // The new agent captures new pods.
    let a2 = make("a2", NodeId::A);
    assert!(cluster.captured(&a2), "{}", cluster.diagnostics());
}
