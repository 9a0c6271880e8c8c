//! One waypoint hop against the ztunnel-only path, measured in the same run. Both paths carry
//! the same request the same way: an HBONE CONNECT from pod b2 (b2's certificate), one HTTP/1.1
//! GET with a 1 KiB answer per CONNECT. "ztunnel only" goes to b1's ztunnel (b1:15008,
//! authority b1:8080); "waypoint" goes to the waypoint in a2 (authority = the echo VIP), which
//! routes and opens its own HBONE to b1's ztunnel.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p meshtunnel-e2e --bench waypoint`
//! (`--profile dev` builds only this client unoptimised, skipping a release build of the
//! e2e dev-dependencies; the proxies measured are the release binaries either way).
//!
//! Then the fixed-rate cost in the shape of Istio's published waypoint figure: an app in the
//! meshed pod a1 sends `GET /pad/1024` over 16 keep-alive HTTP/1.1 connections at a fixed
//! rate, either to the echo VIP (ztunnel A steers it to the waypoint in a2, which sends it on
//! to ztunnel B) or straight to b1:8080 (ztunnel A to ztunnel B only). The CPU seconds per
//! second of the waypoint and of both ztunnels come from /proc/PID/stat.
//!
//! Knobs (environment): `WAYPOINT_BENCH_ONLY=fixed` skips the connect-per-request figures;
//! `WAYPOINT_BENCH_SECS` (20) is the length of each fixed-rate run; `WAYPOINT_BENCH_RATES`
//! (`1000,2000`) the rates; `WAYPOINT_BENCH_PATHS` (`direct,waypoint`) which paths run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::identity::Identity;
use meshtunnel_e2e::apps::connect_from;
use meshtunnel_e2e::load::{self, KeepAlive};
use meshtunnel_e2e::mesh::{NAMESPACE, TRUST_DOMAIN};
use meshtunnel_e2e::waypoint::{HboneClient, HttpBackend, Waypoint, WAYPOINT_SA};
use meshtunnel_e2e::{Mesh, MeshOptions, PodSpec};
use test_support::NodeId;

const PATH: &str = "/pad/1024";

fn main() {
    let mesh = Mesh::start(MeshOptions {
        pods: vec![
            PodSpec::meshed("a1"),
            // The waypoint's pod: ztunnel A checks the waypoint's certificate against it.
            PodSpec {
                service_account: WAYPOINT_SA.into(),
                ..PodSpec::plain("a2")
            },
            PodSpec::meshed("b1"),
            PodSpec::plain("b2"),
        ],
        release_binary: true,
        // The config watcher's line tells when ztunnel A steers the echo service.
        log_level: "warn,meshtunnel::config::watch=info".into(),
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

    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    if env("WAYPOINT_BENCH_ONLY", "") != "fixed" {
        connect_per_request(&mesh, &wp, &direct, &via_wp, vip, b1_app);
    }
    steer_echo_to_waypoint(&mesh);
    let secs: u64 = env("WAYPOINT_BENCH_SECS", "20")
        .parse()
        .expect("WAYPOINT_BENCH_SECS");
    let rates: Vec<u32> = env("WAYPOINT_BENCH_RATES", "1000,2000")
        .split(',')
        .map(|r| r.trim().parse().expect("WAYPOINT_BENCH_RATES"))
        .collect();
    let paths = env("WAYPOINT_BENCH_PATHS", "direct,waypoint");
    eprintln!("waypoint pid {}", wp.pid());
    println!("\nFixed rate, 16 keep-alive HTTP/1.1 connections from a1, GET with a 1 KiB answer, {secs} s each:\n");
    println!("| rate | path | req/s done | waypoint CPU (cores) | ztunnels A+B CPU (cores) | all CPU per 1000 req/s | waypoint RSS (MiB) |");
    println!("|---|---|---|---|---|---|---|");
    for &rps in &rates {
        let mut all = Vec::new();
        for (name, dst) in [("ztunnel only", b1_app), ("via waypoint", vip)] {
            let key = if dst == vip { "waypoint" } else { "direct" };
            if !paths.split(',').any(|p| p.trim() == key) {
                continue;
            }
            let c = fixed_rate_cost(&mesh, &wp, dst, rps, Duration::from_secs(secs));
            println!(
                "| {rps} | {name} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} |",
                c.rps,
                c.waypoint,
                c.ztunnels,
                (c.waypoint + c.ztunnels) * 1000.0 / c.rps,
                c.waypoint_rss
            );
            all.push(c);
        }
        if let [d, w] = all[..] {
            println!(
                "| {rps} | waypoint per 1000 req/s | | {:.3} | | {:.2}x the ztunnel-only path | {:.1} |",
                w.waypoint * 1000.0 / w.rps,
                (w.waypoint + w.ztunnels) / (d.waypoint + d.ztunnels),
                w.waypoint_rss
            );
        }
    }
    println!("(Envoy as Istio's waypoint, published for 1.24: 0.25 vCPU and 60 MB per 1000 req/s of 1 KiB)");
}

/// The first figures: a new HBONE CONNECT and `Connection: close` per request (the worst case).
fn connect_per_request(
    mesh: &Mesh,
    wp: &Waypoint,
    direct: &Arc<HboneClient>,
    via_wp: &Arc<HboneClient>,
    vip: SocketAddr,
    b1_app: SocketAddr,
) {
    let (mesh, direct, via_wp) = (mesh, direct, via_wp);
    println!("| metric | ztunnel only | via waypoint | added |");
    println!("|---|---|---|---|");
    let (d50, d99) = latency(mesh, direct, b1_app, 2000);
    let (w50, w99) = latency(mesh, via_wp, vip, 2000);
    println!(
        "| latency p50 (µs), sequential | {d50:.0} | {w50:.0} | {:.0} |",
        w50 - d50
    );
    println!(
        "| latency p99 (µs), sequential | {d99:.0} | {w99:.0} | {:.0} |",
        w99 - d99
    );
    let d = rate(mesh, direct, b1_app, 32, Duration::from_secs(5));
    let w = rate(mesh, via_wp, vip, 32, Duration::from_secs(5));
    println!(
        "| requests/s, 32 concurrent | {d:.0} | {w:.0} | {:.2}x |",
        w / d
    );

    // Cost of the waypoint at a fixed rate, per 1000 requests/s, a CONNECT per request.
    let fixed = 500.0;
    let (cpu0, _) = cpu_and_rss(wp.pid());
    let t = Instant::now();
    let sent = paced(mesh, via_wp, vip, fixed, Duration::from_secs(5));
    let secs = t.elapsed().as_secs_f64();
    let (cpu1, rss) = cpu_and_rss(wp.pid());
    let achieved = sent as f64 / secs;
    let cpu_per_s = (cpu1 - cpu0) / secs;
    println!(
        "\n| waypoint at {achieved:.0} req/s of 1 KiB, a CONNECT each | value |\n|---|---|\n| CPU (cores) per 1000 req/s | {:.3} |\n| RSS (MiB) | {rss:.1} |\n| RSS (MiB) per 1000 req/s | {:.1} |",
        cpu_per_s * 1000.0 / achieved,
        rss * 1000.0 / achieved
    );
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

/// Binds the echo service to the waypoint in a2 and waits until ztunnel A applied it.
fn steer_echo_to_waypoint(mesh: &Mesh) {
    let applied = || mesh.logs(NodeId::A).matches("applied local config").count();
    let before = applied();
    let waypoint = format!(
        "{{destination: \"/{}\", hboneMtlsPort: 15008}}",
        mesh.pod_ip("a2")
    );
    mesh.write_config_full(&mesh.opts.pods, "", Some(&waypoint))
        .expect("config");
    let deadline = Instant::now() + Duration::from_secs(15);
    while applied() == before {
        assert!(
            Instant::now() < deadline,
            "ztunnel A did not apply the waypoint"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU cores used (CPU seconds per second) at a fixed rate, and the waypoint's RSS after it.
#[derive(Clone, Copy)]
struct Cost {
    rps: f64,
    waypoint: f64,
    ztunnels: f64,
    waypoint_rss: f64,
}

fn fixed_rate_cost(mesh: &Mesh, wp: &Waypoint, dst: SocketAddr, rps: u32, dur: Duration) -> Cost {
    let host = if dst.port() == 80 { "echo" } else { "b1" };
    let conns: Vec<KeepAlive> = (0..16)
        .map(|_| {
            KeepAlive::new(
                connect_from(mesh.pod_ns("a1"), dst).expect("connect"),
                host,
                PATH,
            )
        })
        .collect::<Result<_, _>>()
        .expect("connection");
    let zpids = [NodeId::A, NodeId::B].map(|n| mesh.ztunnel_pid(n).expect("ztunnel pid"));
    let ztunnels_cpu = || zpids.iter().map(|&p| cpu_and_rss(p).0).sum::<f64>();
    let (w0, z0) = (cpu_and_rss(wp.pid()).0, ztunnels_cpu());
    let t = Instant::now();
    let done = load::fixed_rate(conns, rps, dur, |c| {
        c.exchange()?;
        if c.body().len() < 1024 {
            return Err(std::io::Error::other("answer shorter than 1 KiB"));
        }
        Ok(())
    });
    let secs = t.elapsed().as_secs_f64();
    let ((w1, rss), z1) = (cpu_and_rss(wp.pid()), ztunnels_cpu());
    assert_eq!(done.failed, 0, "a keep-alive connection to {dst} failed");
    Cost {
        rps: done.ok as f64 / secs,
        waypoint: (w1 - w0) / secs,
        ztunnels: (z1 - z0) / secs,
        waypoint_rss: rss,
    }
}
