//! Cost of telemetry on the data path, measured through the same calls the proxies make:
//! a connection's open + close (label derivation, series lookup, counters, gauge, access log
//! call sites with the log filter at its default), and one byte-counter update per chunk.
//!
//! Run: `cargo bench -p meshtunnel --bench metrics` (a few seconds).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::copy::Progress;
use meshtunnel::metrics::Metrics;
use meshtunnel::state::{ConfigSnapshot, Protocol, Workload};

fn workload(i: usize) -> Workload {
    Workload {
        uid: format!("Kubernetes//Pod/demo/pod-{i}"),
        name: format!("pod-{i}"),
        namespace: "demo".into(),
        service_account: format!("sa-{i}"),
        trust_domain: "cluster.local".into(),
        workload_ips: vec![format!("10.0.{}.{}", i / 250, i % 250 + 1).parse().unwrap()],
        protocol: Protocol::Hbone,
        cluster_id: "Kubernetes".into(),
        services: HashMap::new(),
        ..Default::default()
    }
}

fn per_op(start: Instant, n: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let peers = 1000;
    let snap = ConfigSnapshot::new((0..peers).map(workload).collect(), vec![], vec![]).unwrap();
    let metrics = Metrics::new(Duration::from_secs(300));
    let src_w = workload(0);
    let pod = metrics.pod(&src_w.uid, &src_w.name, &src_w.namespace, src_w.identity());
    let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    // The pod's own workload, as its proxy finds it once per connection.
    let me = snap.workload_by_uid(&src_w.uid).map(|w| &**w);
    let dst = |i: usize| {
        SocketAddr::new(
            snap.workload_by_uid(&workload(i).uid).unwrap().workload_ips[0],
            8080,
        )
    };
    let resolve = |i: usize| snap.resolve(dst(i), &mut |_| 0).unwrap();

    println!("| telemetry cost (one thread) | ns |");
    println!("|---|---|");

    // Same peer every time: the steady state of a pod talking to one service.
    let up = resolve(1);
    for _ in 0..10_000 {
        pod.outbound(&snap, me, src, dst(1), Some(&up))
            .finish(Ok::<(), std::io::Error>(()));
    }
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        pod.outbound(&snap, me, src, dst(1), Some(&up))
            .finish(Ok::<(), std::io::Error>(()));
    }
    println!(
        "| connection open + close, existing series | {:.0} |",
        per_op(t, n)
    );

    // A different peer each time, series already there (1,000 live series).
    let ups: Vec<_> = (0..peers).map(resolve).collect();
    for (i, u) in ups.iter().enumerate() {
        pod.outbound(&snap, me, src, dst(i), Some(u))
            .finish(Ok::<(), std::io::Error>(()));
    }
    let t = Instant::now();
    for k in 0..n {
        let i = k % peers;
        pod.outbound(&snap, me, src, dst(i), Some(&ups[i]))
            .finish(Ok::<(), std::io::Error>(()));
    }
    println!(
        "| connection open + close, 1 of {peers} series | {:.0} |",
        per_op(t, n)
    );

    // First connection of a new label set (creates the series in five families).
    let fresh = Metrics::new(Duration::from_secs(300));
    let pod2 = fresh.pod(&src_w.uid, &src_w.name, &src_w.namespace, src_w.identity());
    let t = Instant::now();
    for (i, u) in ups.iter().enumerate() {
        pod2.outbound(&snap, me, src, dst(i), Some(u))
            .finish(Ok::<(), std::io::Error>(()));
    }
    println!(
        "| connection open + close, new series | {:.0} |",
        per_op(t, peers)
    );

    // One byte-counter update, as the copy loop does per chunk.
    let c = pod.outbound(&snap, me, src, dst(1), Some(&up));
    let n = 20_000_000;
    let t = Instant::now();
    for _ in 0..n {
        c.client_to_server().moved(std::hint::black_box(16384));
    }
    println!("| byte counter update per chunk | {:.1} |", per_op(t, n));
    c.finish(Ok::<(), std::io::Error>(()));

    // Two threads on one series: the shared atomics are contended.
    let threads = 2;
    let n = 100_000;
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (pod, snap, up) = (pod.clone(), &snap, up.clone());
            s.spawn(move || {
                for _ in 0..n {
                    pod.outbound(snap, me, src, dst(1), Some(&up))
                        .finish(Ok::<(), std::io::Error>(()));
                }
            });
        }
    });
    println!(
        "| connection open + close, {threads} threads on one series (per connection, wall) | {:.0} |",
        per_op(t, n * threads)
    );

    let scrape = Instant::now();
    let text = metrics.encode();
    println!(
        "| scrape with {} series ({} KiB) | {:.0} µs |",
        metrics.tracked_series(),
        text.len() / 1024,
        scrape.elapsed().as_secs_f64() * 1e6
    );
    drop(Arc::clone(&metrics));
}
