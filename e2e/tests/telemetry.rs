//! Metrics and access log of real ztunnels: counters on both reporters equal the bytes that
//! moved, byte counters advance on open connections, series of removed pods go away.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshtunnel_e2e::apps::{connect_from, echo_exact, random_bytes, EchoServer};
use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::NodeId;

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// The value of the first sample of `name` whose line has every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls the node's metrics until `done` holds (the machine is loaded: be patient).
fn wait_metrics(mesh: &Mesh, node: NodeId, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = mesh.metrics(node).unwrap();
        if done(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not seen in 30s\n--- metrics ---\n{text}\n--- log ---\n{}",
                mesh.logs(node)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const A1: &str = "source_principal=\"spiffe://cluster.local/ns/demo/sa/sa-a1\"";
const B1: &str = "destination_principal=\"spiffe://cluster.local/ns/demo/sa/sa-b1\"";

#[test]
fn tcp_metrics_on_both_reporters_equal_the_bytes_moved() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let _echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let n = 3 * 1024 * 1024 + 17;
    let conn = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080)).unwrap();
    echo_exact(conn, &random_bytes(n)).unwrap();

    for (node, reporter) in [(NodeId::A, "source"), (NodeId::B, "destination")] {
        let r = format!("reporter=\"{reporter}\"");
        let labels = [
            r.as_str(),
            A1,
            B1,
            "source_workload=\"a1\"",
            "source_workload_namespace=\"demo\"",
            "destination_workload=\"b1\"",
            "destination_workload_namespace=\"demo\"",
            "connection_security_policy=\"mutual_tls\"",
            "request_protocol=\"tcp\"",
            "response_flags=\"-\"",
        ];
        let text = wait_metrics(&mesh, node, "closed connection", |t| {
            sample(t, "istio_tcp_connections_closed_total", &labels) == Some(1.0)
        });
        let get = |name| sample(&text, name, &labels);
        assert_eq!(
            get("istio_tcp_connections_opened_total"),
            Some(1.0),
            "{reporter}\n{text}"
        );
        // Istio's convention on both sides: received = client -> server, sent = back.
        assert_eq!(
            get("istio_tcp_received_bytes_total"),
            Some(n as f64),
            "{reporter}\n{text}"
        );
        assert_eq!(
            get("istio_tcp_sent_bytes_total"),
            Some(n as f64),
            "{reporter}\n{text}"
        );
        assert_eq!(get("istio_tcp_connections_failed_total"), None);
        assert!(
            sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6,
            "{text}"
        );
        assert!(sample(&text, "process_open_fds", &[]).unwrap() > 0.0);
        assert!(sample(&text, "process_start_time_seconds", &[]).unwrap() > 1.7e9);
        assert!(sample(&text, "process_cpu_seconds_total", &[]).is_some());
    }
    let a = mesh.metrics(NodeId::A).unwrap();
    assert_eq!(
        sample(&a, "workload_manager_active_proxy_count", &[]),
        Some(2.0),
        "a1 and a2"
    );

    // One access log line per connection on each side, with identities and bytes.
    for node in [NodeId::A, NodeId::B] {
        let log = mesh.logs(node);
        let line = log
            .lines()
            .find(|l| l.contains("connection complete"))
            .unwrap_or_else(|| panic!("no access log line:\n{log}"));
        for want in [
            "src.identity=\"spiffe://cluster.local/ns/demo/sa/sa-a1\"".to_owned(),
            "dst.identity=\"spiffe://cluster.local/ns/demo/sa/sa-b1\"".to_owned(),
            format!("bytes_sent={n}"),
            format!("bytes_recv={n}"),
            "result=\"ok\"".to_owned(),
        ] {
            assert!(line.contains(&want), "{want} missing from {line}");
        }
    }
}

#[test]
fn failed_connection_is_counted_with_its_reason() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    // Nothing listens on b1:8081: ztunnel B cannot reach the app and answers 503.
    let conn = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8081)).unwrap();
    assert!(echo_exact(conn, b"x").is_err());
    let f = "response_flags=\"CONNECT\"";
    for (node, r) in [
        (NodeId::A, "reporter=\"source\""),
        (NodeId::B, "reporter=\"destination\""),
    ] {
        let text = wait_metrics(&mesh, node, "failed connection", |t| {
            sample(t, "istio_tcp_connections_failed_total", &[r, f, A1, B1]) == Some(1.0)
        });
        assert_eq!(
            sample(&text, "istio_tcp_connections_closed_total", &[r, f]),
            Some(1.0)
        );
    }
}

#[test]
fn byte_counters_move_while_the_connection_is_open() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let _echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let mut conn = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080)).unwrap();
    let chunk = random_bytes(256 * 1024);
    conn.write_all(&chunk).unwrap();
    let mut back = vec![0u8; chunk.len()];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(back, chunk);

    let want = chunk.len() as f64;
    for (node, r, pod, dir) in [
        (
            NodeId::A,
            "reporter=\"source\"",
            "pod=\"a1\"",
            "direction=\"outbound\"",
        ),
        (
            NodeId::B,
            "reporter=\"destination\"",
            "pod=\"b1\"",
            "direction=\"inbound\"",
        ),
    ] {
        let text = wait_metrics(&mesh, node, "bytes of the open connection", |t| {
            sample(t, "istio_tcp_received_bytes_total", &[r, A1]) == Some(want)
                && sample(t, "istio_tcp_sent_bytes_total", &[r, A1]) == Some(want)
        });
        assert_eq!(
            sample(&text, "istio_tcp_connections_closed_total", &[r, A1]),
            Some(0.0),
            "still open"
        );
        assert_eq!(
            sample(&text, "ztunnel_pod_active_connections", &[pod, dir]),
            Some(1.0),
            "{text}"
        );
    }
    drop(conn);
}

#[test]
fn series_of_a_removed_pod_are_dropped_within_the_retention() {
    let retention = Duration::from_secs(2);
    let mesh = Mesh::start(MeshOptions {
        env: vec![("METRICS_RETENTION".into(), "2s".into())],
        ..MeshOptions::default()
    })
    .unwrap();
    let _echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    for pod in ["a1", "a2"] {
        let conn = connect_from(mesh.pod_ns(pod), mesh.addr("b1", 8080)).unwrap();
        echo_exact(conn, b"hello").unwrap();
    }
    let a1_series = "source_workload=\"a1\"";
    wait_metrics(&mesh, NodeId::A, "a1's series", |t| t.contains(a1_series));

    mesh.del("a1").unwrap();
    let removed = Instant::now();
    let text = wait_metrics(&mesh, NodeId::A, "a1's series gone", |t| {
        !t.contains(a1_series) && !t.contains("pod=\"a1\"")
    });
    let took = removed.elapsed();
    // The bound plus the sweep period and scrape polling, with room for a loaded machine.
    assert!(took < retention + Duration::from_secs(15), "took {took:?}");
    // a2 lives on: its series and gauges stay.
    assert!(text.contains("source_workload=\"a2\""), "{text}");
    assert!(text.contains("pod=\"a2\""), "{text}");
    assert_eq!(
        sample(&text, "workload_manager_active_proxy_count", &[]),
        Some(1.0)
    );
    // On node B, a1 is a peer that is still in the config: its series stay.
    assert!(mesh.metrics(NodeId::B).unwrap().contains(a1_series));
}

#[test]
fn access_log_lines_are_json_with_log_format_json() {
    let mesh = Mesh::start(MeshOptions {
        env: vec![("LOG_FORMAT".into(), "json".into())],
        ..MeshOptions::default()
    })
    .unwrap();
    let _echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let msg = b"hello, json";
    let conn = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080)).unwrap();
    echo_exact(conn, msg).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let log = mesh.logs(NodeId::B);
        if let Some(l) = log.lines().find(|l| l.contains("connection complete")) {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no access log line:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["target"], "access", "{v}");
    assert_eq!(v["level"], "INFO");
    let f = &v["fields"];
    assert_eq!(f["message"], "connection complete");
    assert_eq!(f["direction"], "inbound");
    assert_eq!(f["src.identity"], "spiffe://cluster.local/ns/demo/sa/sa-a1");
    assert_eq!(f["src.workload"], "a1");
    assert_eq!(f["dst.identity"], "spiffe://cluster.local/ns/demo/sa/sa-b1");
    assert_eq!(f["dst.addr"], mesh.addr("b1", 8080).to_string());
    assert_eq!(f["bytes_sent"], msg.len());
    assert_eq!(f["bytes_recv"], msg.len());
    assert_eq!(f["result"], "ok");
    assert!(f["duration_ms"].is_u64(), "{v}");
}
