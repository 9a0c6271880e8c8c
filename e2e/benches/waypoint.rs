//! One waypoint hop against the ztunnel-only path, measured in the same run. Both paths carry
//! the same request the same way: an HBONE CONNECT from pod b2 (b2's certificate), one HTTP/1.1
//! GET with a 1 KiB answer per CONNECT. "ztunnel only" goes to b1's ztunnel (b1:15008,
//! authority b1:8080); "waypoint" goes to the waypoint in a2 (authority = the echo VIP), which
//! routes and opens its own HBONE to b1's ztunnel.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p meshtunnel-e2e --bench waypoint`
//! (`--profile dev` builds only this client unoptimised, skipping a release build of the
//! e2e dev-dependencies; the proxies measured are the release binaries either way).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::identity::Identity;
use meshtunnel_e2e::mesh::{NAMESPACE, TRUST_DOMAIN};
use meshtunnel_e2e::waypoint::{HboneClient, HttpBackend, Waypoint};
use meshtunnel_e2e::{Mesh, MeshOptions, PodSpec};

const PATH: &str = "/pad/1024";

fn main() {
    let mesh = Mesh::start(MeshOptions {
        pods: vec![
            PodSpec::meshed("a1"),
            PodSpec::plain("a2"),
            PodSpec::meshed("b1"),
            PodSpec::plain("b2"),
        ],
        release_binary: true,
        log_level: "warn".into(),
        ..MeshOptions::default()
    })
    .expect("mesh");
    let _backend = HttpBackend::start(
        mesh.pod_ns("b1"),
        SocketAddr::from(([0, 0, 0, 0], 8080)),
        "b1",
    )
    .expect("backend");
    let wp = Waypoint::start_with(&mesh, "a2", true, "warn").expect("waypoint");
    let via_wp = Arc::new(HboneClient::new(&mesh, "b2", "a2").expect("client"));
    let b1 = Identity::new(TRUST_DOMAIN, NAMESPACE, &mesh.spec("b1").service_account);
    let direct = Arc::new(
        HboneClient::to(
            &mesh,
            "b2",
            SocketAddr::new(mesh.pod_ip("b1").into(), 15008),
            b1,
        )
        .expect("client"),
    );
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    let b1_app = mesh.addr("b1", 8080);

    println!("| metric | ztunnel only | via waypoint | added |");
    println!("|---|---|---|---|");
    let (d50, d99) = latency(&mesh, &direct, b1_app, 2000);
    let (w50, w99) = latency(&mesh, &via_wp, vip, 2000);
    println!(
        "| latency p50 (µs), sequential | {d50:.0} | {w50:.0} | {:.0} |",
        w50 - d50
    );
    println!(
        "| latency p99 (µs), sequential | {d99:.0} | {w99:.0} | {:.0} |",
        w99 - d99
    );
    let d = rate(&mesh, &direct, b1_app, 32, Duration::from_secs(5));
    let w = rate(&mesh, &via_wp, vip, 32, Duration::from_secs(5));
    println!(
        "| requests/s, 32 concurrent | {d:.0} | {w:.0} | {:.2}x |",
        w / d
    );

    // Cost of the waypoint at a fixed rate, per 1000 requests/s.
    let fixed = 500.0;
    let (cpu0, _) = cpu_and_rss(wp.pid());
    let t = Instant::now();
    let sent = paced(&mesh, &via_wp, vip, fixed, Duration::from_secs(5));
    let secs = t.elapsed().as_secs_f64();
    let (cpu1, rss) = cpu_and_rss(wp.pid());
    let achieved = sent as f64 / secs;
    let cpu_per_s = (cpu1 - cpu0) / secs;
    println!(
        "\n| waypoint at {achieved:.0} req/s of 1 KiB | value |\n|---|---|\n| CPU (cores) per 1000 req/s | {:.3} |\n| RSS (MiB) | {rss:.1} |\n| RSS (MiB) per 1000 req/s | {:.1} |",
        cpu_per_s * 1000.0 / achieved,
        rss * 1000.0 / achieved
    );
    println!("(Envoy as Istio's waypoint, published for 1.24: 0.25 vCPU and 60 MB per 1000 req/s of 1 KiB)");
}

fn latency(mesh: &Mesh, c: &HboneClient, dst: SocketAddr, n: usize) -> (f64, f64) {
    mesh.rt.block_on(async {
        // Warm the pooled HBONE connection first.
        for _ in 0..50 {
            let _ = c.request(dst, "GET", PATH, &[]).await;
        }
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = c.request(dst, "GET", PATH, &[]).await.expect("request");
            assert_eq!(r.status, 200, "{r:?}");
            took.push(t.elapsed().as_secs_f64() * 1e6);
        }
        took.sort_by(|a, b| a.total_cmp(b));
        (took[n / 2], took[n * 99 / 100])
    })
}

fn rate(mesh: &Mesh, c: &Arc<HboneClient>, dst: SocketAddr, conc: usize, dur: Duration) -> f64 {
    mesh.rt.block_on(async {
        let end = Instant::now() + dur;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..conc {
            let c = c.clone();
            set.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    if matches!(c.request(dst, "GET", PATH, &[]).await, Ok(r) if r.status == 200) {
                        n += 1;
                    }
                }
                n
            });
        }
        let mut total = 0;
        while let Some(n) = set.join_next().await {
            total += n.expect("task");
        }
        total as f64 / dur.as_secs_f64()
    })
}

fn paced(mesh: &Mesh, c: &Arc<HboneClient>, dst: SocketAddr, per_sec: f64, dur: Duration) -> u64 {
    mesh.rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
        let end = Instant::now() + dur;
        let mut set = tokio::task::JoinSet::new();
        let mut sent = 0;
        while Instant::now() < end {
            tick.tick().await;
            let c = c.clone();
            set.spawn(async move { c.request(dst, "GET", PATH, &[]).await.map(|r| r.status) });
            sent += 1;
        }
        while set.join_next().await.is_some() {}
        sent
    })
}

/// CPU seconds used so far and resident set (MiB) of a process.
fn cpu_and_rss(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0))
        / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (cpu, rss_kib / 1024.0)
}
