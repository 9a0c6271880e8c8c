use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::copy::Progress;
use crate::state::Workload;

/// The value of the first sample of `name` whose line contains every one of `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn log() -> LogContext {
    LogContext {
        src: "10.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        dst: "10.0.0.2:8080".parse().unwrap(),
        hbone_target: None,
    }
}

fn peer() -> Workload {
    Workload {
        uid: "peer-uid".into(),
        name: "b1".into(),
        namespace: "demo".into(),
        service_account: "sa-b1".into(),
        trust_domain: "cluster.local".into(),
        ..Default::default()
    }
}

fn open(pod: &Arc<PodMeter>, dst: &Workload) -> ConnMeter {
    let id = pod.identity.clone();
    pod.open(
        &ConnectionView {
            reporter: Reporter::Source,
            source_identity: Some(&id),
            destination: Some(dst),
            mtls: true,
            ..Default::default()
        },
        Some(&dst.uid),
        log(),
    )
}

fn identity() -> Identity {
    "spiffe://cluster.local/ns/demo/sa/sa-a1".parse().unwrap()
}

#[test]
fn a_connection_counts_open_bytes_while_open_and_close() {
    let m = Metrics::new(Duration::from_secs(60));
    let pod = m.pod("a1-uid", "a1", "demo", identity());
    let dst = peer();
    let c = open(&pod, &dst);
    c.client_to_server().moved(1000);
    c.server_to_client().moved(30);
    let text = m.encode();
    let opened = sample(
        &text,
        "istio_tcp_connections_opened_total",
        &["reporter=\"source\""],
    );
    assert_eq!(opened, Some(1.0), "{text}");
    // Bytes show up before the connection ends.
    assert_eq!(
        sample(&text, "istio_tcp_received_bytes_total", &[]),
        Some(1000.0)
    );
    assert_eq!(sample(&text, "istio_tcp_sent_bytes_total", &[]), Some(30.0));
    assert_eq!(
        sample(&text, "istio_tcp_connections_closed_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "ztunnel_pod_active_connections",
            &["pod=\"a1\"", "direction=\"outbound\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "workload_manager_active_proxy_count", &[]),
        Some(1.0)
    );
    c.finish(Ok::<(), std::io::Error>(()));
    let text = m.encode();
    assert_eq!(
        sample(
            &text,
            "istio_tcp_connections_closed_total",
            &["response_flags=\"-\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "ztunnel_pod_active_connections",
            &["direction=\"outbound\""]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_failed_total", &[]),
        None
    );
}

#[test]
fn failures_carry_the_response_flag_and_drops_count_as_closed() {
    let m = Metrics::new(Duration::from_secs(60));
    let pod = m.pod("a1-uid", "a1", "demo", identity());
    let dst = peer();
    open(&pod, &dst).fail(ResponseFlags::Connect, &"connection refused");
    open(&pod, &dst).fail(ResponseFlags::Deny, &"HBONE peer answered 401");
    drop(open(&pod, &dst));
    let text = m.encode();
    for flag in ["CONNECT", "DENY"] {
        let f = format!("response_flags=\"{flag}\"");
        assert_eq!(
            sample(&text, "istio_tcp_connections_failed_total", &[&f]),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "istio_tcp_connections_closed_total", &[&f]),
            Some(1.0)
        );
    }
    assert_eq!(
        sample(
            &text,
            "istio_tcp_connections_closed_total",
            &["response_flags=\"-\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &[]),
        Some(3.0)
    );
    assert_eq!(m.tracked_series(), 1);
}

#[test]
fn series_of_a_removed_pod_go_after_the_retention_and_not_before() {
    let retention = Duration::from_secs(30);
    let m = Metrics::new(retention);
    let pod = m.pod("a1-uid", "a1", "demo", identity());
    let dst = peer();
    open(&pod, &dst).finish(Ok::<(), std::io::Error>(()));
    let alive = |_: &str| true;
    let t0 = Instant::now();
    m.sweep(t0, &alive);
    m.sweep(t0 + retention * 2, &alive);
    assert_eq!(m.tracked_series(), 1, "a live pod's idle series must stay");

    // A connection still open keeps its series even after its pod is gone.
    let held = open(&pod, &dst);
    drop(pod);
    m.sweep(t0, &alive);
    m.sweep(t0 + retention * 2, &alive);
    assert_eq!(m.tracked_series(), 1);
    held.finish(Ok::<(), std::io::Error>(()));

    m.sweep(t0, &alive);
    m.sweep(t0 + retention / 2, &alive);
    assert!(m.encode().contains("pod=\"a1\""));
    assert_eq!(m.tracked_series(), 1, "dropped before the retention");
    m.sweep(t0 + retention, &alive);
    assert_eq!(m.tracked_series(), 0);
    let text = m.encode();
    assert!(!text.contains("a1"), "{text}");
    assert_eq!(
        sample(&text, "workload_manager_active_proxy_count", &[]),
        Some(0.0)
    );
}

#[test]
fn series_to_a_peer_that_left_the_config_go_while_the_pod_lives() {
    let retention = Duration::from_secs(5);
    let m = Metrics::new(retention);
    let pod = m.pod("a1-uid", "a1", "demo", identity());
    let dst = peer();
    open(&pod, &dst).finish(Ok::<(), std::io::Error>(()));
    let gone = |uid: &str| uid != "peer-uid";
    let t0 = Instant::now();
    m.sweep(t0, &gone);
    m.sweep(t0 + retention, &gone);
    assert_eq!(m.tracked_series(), 0);
    assert!(!m.encode().contains("istio_tcp_connections_opened_total{"));
    // The pod's own gauges stay.
    assert!(m.encode().contains("pod=\"a1\""));
}

#[test]
fn a_series_back_in_use_is_not_dropped() {
    let retention = Duration::from_secs(5);
    let m = Metrics::new(retention);
    let pod = m.pod("a1-uid", "a1", "demo", identity());
    let dst = peer();
    open(&pod, &dst).finish(Ok::<(), std::io::Error>(()));
    let gone = |_: &str| false;
    let t0 = Instant::now();
    m.sweep(t0, &gone);
    // Peer back (e.g. config reload) and used again before the deadline.
    let c = open(&pod, &dst);
    m.sweep(t0 + retention, &gone);
    assert_eq!(m.tracked_series(), 1);
    c.finish(Ok::<(), std::io::Error>(()));
    assert_eq!(
        sample(&m.encode(), "istio_tcp_connections_opened_total", &[]),
        Some(2.0)
    );
}

/// An inbound connection from `client`, whose workload the config does not name.
fn open_from_unlisted(pod: &Arc<PodMeter>, client: &Identity, mtls: bool) -> ConnMeter {
    let me = pod.identity.clone();
    pod.open(
        &ConnectionView {
            reporter: Reporter::Destination,
            source_identity: mtls.then_some(client),
            destination_identity: Some(&me),
            mtls,
            ..Default::default()
        },
        None,
        log(),
    )
}

#[test]
fn series_of_identities_the_config_does_not_name_go_once_idle_for_the_retention() {
    // Churn: each new pod's first connections arrive before istiod pushed its workload, so
    // the server's ztunnel knows the client only by its certificate. The server pod lives on;
    // its series of clients long gone must not.
    let retention = Duration::from_secs(5);
    let m = Metrics::new(retention);
    let pod = m.pod("srv-uid", "srv", "demo", identity());
    let alive = |_: &str| true;
    let t0 = Instant::now();
    let held = open_from_unlisted(
        &pod,
        &"spiffe://cluster.local/ns/demo/sa/c0".parse().unwrap(),
        true,
    );
    for i in 1..=3 {
        let client: Identity = format!("spiffe://cluster.local/ns/demo/sa/c{i}")
            .parse()
            .unwrap();
        open_from_unlisted(&pod, &client, true).finish(Ok::<(), std::io::Error>(()));
    }
    // A plaintext client carries no identity: its series is one per pod and stays with it.
    open_from_unlisted(&pod, &identity(), false).finish(Ok::<(), std::io::Error>(()));
    assert_eq!(m.tracked_series(), 5);
    m.sweep(t0, &alive);
    m.sweep(t0 + retention / 2, &alive);
    assert_eq!(m.tracked_series(), 5, "dropped before the retention");
    m.sweep(t0 + retention, &alive);
    let text = m.encode();
    assert_eq!(m.tracked_series(), 2, "{text}");
    assert!(!text.contains("sa/c1") && !text.contains("sa/c3"), "{text}");
    // The open connection keeps its series until it closes, and the retention after.
    assert!(text.contains("sa/c0"), "{text}");
    held.finish(Ok::<(), std::io::Error>(()));
    m.sweep(t0 + retention * 2, &alive);
    m.sweep(t0 + retention * 3, &alive);
    assert_eq!(m.tracked_series(), 1);
    assert!(sample(
        &m.encode(),
        "istio_tcp_connections_opened_total",
        &["source_principal=\"unknown\""]
    )
    .is_some());
}

#[test]
fn process_metrics_are_exported() {
    let text = Metrics::new(Duration::from_secs(1)).encode();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "process_max_fds",
    ] {
        let v = sample(&text, name, &[]).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
        assert!(v >= 0.0);
    }
    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(text.ends_with("# EOF\n"));
}
