//! The mesh on the real istiod, end to end (two nodes, real agents and ztunnels fed over xDS
//! with certificates from istiod's CA): an AuthorizationPolicy applied with kubectl is enforced
//! on the data path, and istiod going away stops nothing that works: an established connection
//! keeps flowing, new connections to known workloads still work (certificates kept); once it is
//! back, ztunnel resyncs without a restart (a pod made meanwhile becomes reachable over HBONE).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshtunnel::state::Protocol;
use meshtunnel_e2e::apps::{connect_from, echo_exact, random_bytes, EchoServer};
use meshtunnel_e2e::cluster::{wait_until, Cluster, ClusterOptions, Pod, PodSpec, DATAPLANE_LABEL};
use test_support::NodeId;

const NS: &str = "demo";
const GENEROUS: Duration = Duration::from_secs(30);

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn echo_ok(cluster: &Cluster, from: &Pod, to: &Pod) -> anyhow::Result<()> {
    echo_exact(
        connect_from(cluster.netns_of(from), to.addr(8080))?,
        &random_bytes(16 * 1024),
    )
}

#[test]
fn policies_are_enforced_and_istiod_going_away_stops_nothing() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    cluster
        .create_namespace(NS, &[(DATAPLANE_LABEL, "ambient")])
        .unwrap();
    let a1 = cluster.must_create_pod(&PodSpec::new("a1", NodeId::A));
    let a2 = cluster.must_create_pod(&PodSpec::new("a2", NodeId::A));
    let b1 = cluster.must_create_pod(&PodSpec::new("b1", NodeId::B).label("app", "echo"));
    let _echo = EchoServer::start(cluster.netns_of(&b1), any(8080)).unwrap();
    cluster
        .wait_config(&[&a1, &a2, &b1], Protocol::Hbone, GENEROUS)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    echo_ok(&cluster, &a2, &b1).unwrap();

    // kubectl apply → istiod → both ztunnels → enforced.
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-a2\n  namespace: demo\nspec:\n  selector:\n    matchLabels:\n      app: echo\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/demo/sa/sa-a2\"]\n";
    let file = cluster.dir.path().join("deny-a2.yaml");
    std::fs::write(&file, yaml).unwrap();
    let applied = Instant::now();
    cluster
        .kubectl
        .ok(&["apply", "-f", &file.to_string_lossy()])
        .unwrap();
    wait_until(GENEROUS, "a2 -> b1 refused", || {
        echo_ok(&cluster, &a2, &b1).is_err()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    eprintln!(
        "policy enforced {} ms after kubectl apply returned",
        applied.elapsed().as_millis()
    );
    echo_ok(&cluster, &a1, &b1).expect("a1 is not denied");
    cluster.delete_policy(NS, "deny-a2", GENEROUS).unwrap();
    wait_until(GENEROUS, "a2 -> b1 allowed again", || {
        echo_ok(&cluster, &a2, &b1).is_ok()
    })
    .unwrap();

    // A long-lived connection, open before istiod goes.
    let mut long = connect_from(cluster.netns_of(&a1), b1.addr(8080)).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let round = |conn: &mut std::net::TcpStream, what: &str| {
        let data = random_bytes(4096);
        conn.write_all(&data).unwrap();
        let mut back = vec![0; data.len()];
        conn.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", cluster.diagnostics()));
        assert_eq!(back, data, "{what}");
    };
    round(&mut long, "before istiod stops");

    cluster.control_plane.stop_istiod().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    round(&mut long, "established connection while istiod is down");
    for (from, what) in [(&a1, "a1"), (&a2, "a2")] {
        echo_ok(&cluster, from, &b1).unwrap_or_else(|e| {
            panic!(
                "new connection {what} -> b1 with istiod down: {e:#}\n{}",
                cluster.diagnostics()
            )
        });
    }

    // A policy applied while istiod is down, then istiod back: ztunnel resyncs without a
    // restart and enforces it. (A pod cannot be meshed meanwhile: its certificate comes from
    // istiod's CA, so its sandbox fails closed until istiod is back.)
    cluster
        .kubectl
        .ok(&["apply", "-f", &file.to_string_lossy()])
        .unwrap();
    cluster.control_plane.start_istiod().unwrap();
    let back = Instant::now();
    wait_until(GENEROUS, "a2 -> b1 refused after the resync", || {
        echo_ok(&cluster, &a2, &b1).is_err()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    eprintln!(
        "a policy applied while istiod was down enforced {} ms after istiod came back",
        back.elapsed().as_millis()
    );
    echo_ok(&cluster, &a1, &b1).expect("a1 -> b1 after the resync");
    let a3 = cluster.must_create_pod(&PodSpec::new("a3", NodeId::A));
    cluster
        .wait_config(&[&a3], Protocol::Hbone, GENEROUS)
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    echo_ok(&cluster, &a3, &b1)
        .unwrap_or_else(|e| panic!("a3 -> b1: {e:#}\n{}", cluster.diagnostics()));
    round(&mut long, "established connection after istiod came back");
}
