//! Our ztunnel against upstream Istio's, side by side on one topology: the cluster fixture
//! (real istiod for xDS and certificates, our node agent, two nodes), where both ztunnels run
//! with the same environment, upstream's DaemonSet's. In each round the direct path, then
//! upstream's ztunnel on both nodes, then ours, each figure of issue 12's table; medians of
//! the rounds at the end.
//!
//! Run:
//!   export MESHTUNNEL_CONTROLPLANE_DIR=...   (the built control plane, as the e2e tests)
//!   MESHTUNNEL_BENCH_UPSTREAM_ZTUNNEL=/path/to/upstream/ztunnel \
//!     cargo bench -p meshtunnel-e2e --bench side_by_side
//! Without MESHTUNNEL_BENCH_UPSTREAM_ZTUNNEL the upstream column is left empty.
//! MESHTUNNEL_BENCH_ROUNDS (default 3), MESHTUNNEL_BENCH_CONN_SECS (new-connection run per
//! round, default 10), MESHTUNNEL_BENCH_BULK_MIB (bytes of each bulk run, default 1024: the
//! 1-stream run also gives CPU per GB, and a run of a second or two keeps that figure from
//! being mostly noise). To look inside: MESHTUNNEL_BENCH_COUNTS=1 prints each meshed phase's
//! system calls and context switches per unit of work (see `mesh/observe.rs`);
//! MESHTUNNEL_BENCH_PERF=DIR records CPU samples of both ztunnels during each meshed 1-stream
//! bulk run and 64 B ping-pong into DIR/<upstream|ours>-round<N>-<bulk|pingpong>.data.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::state::Protocol;
use meshtunnel_e2e::cluster::{Cluster, ClusterOptions, Pod, PodSpec, DATAPLANE_LABEL};
use meshtunnel_e2e::mesh::find_binary;
use test_support::{Netns, NodeId};

#[path = "mesh/http.rs"]
#[allow(dead_code)] // each bench uses a part
mod http;
#[path = "mesh/load.rs"]
#[allow(dead_code)] // each bench uses a part
mod load;
#[path = "mesh/observe.rs"]
mod observe;

use load::{connect, cpu_secs, rss_mib, throughput_of};

/// One implementation's figures from one round (NaN where a figure does not apply).
#[derive(Clone, Copy, Default)]
struct Figures {
    bulk1: f64,
    bulk8: f64,
    p50: f64,
    p99: f64,
    keep_alive: f64,
    new_conns: f64,
    failed_conns: f64,
    rss_idle: f64,
    rss_1000: f64,
    cpu_per_gb: f64,
}

const NAMES: [&str; 3] = ["direct", "upstream", "ours"];

fn main() {
    if std::env::var_os(http::HOLD_SERVER_ENV).is_some() {
        http::hold_server();
    }
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rounds = env_num("MESHTUNNEL_BENCH_ROUNDS", 3) as usize;
    let conn_secs = Duration::from_secs(env_num("MESHTUNNEL_BENCH_CONN_SECS", 10));
    let bulk = env_num("MESHTUNNEL_BENCH_BULK_MIB", 1024) as usize * 1024 * 1024;
    let upstream = std::env::var_os("MESHTUNNEL_BENCH_UPSTREAM_ZTUNNEL").map(PathBuf::from);
    let ours = find_binary("ztunnel", true).expect("our release ztunnel");
    println!("ours: {} (commit {})", ours.display(), our_commit());
    match &upstream {
        Some(u) => println!("upstream: {} ({})", u.display(), version(u)),
        None => println!("upstream: not given (MESHTUNNEL_BENCH_UPSTREAM_ZTUNNEL)"),
    }

    let cluster = Cluster::start(ClusterOptions {
        release_binary: true,
        log_level: "warn".into(),
        ..ClusterOptions::default()
    })
    .expect("cluster");
    cluster
        .create_namespace("demo", &[(DATAPLANE_LABEL, "ambient")])
        .unwrap();
    cluster.create_namespace("plain", &[]).unwrap();
    let pod = |spec: PodSpec| -> Arc<Pod> {
        cluster
            .create_pod(&spec)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.diagnostics()))
    };
    let a1 = pod(PodSpec::new("a1", NodeId::A));
    let b1 = pod(PodSpec::new("b1", NodeId::B));
    let b2 = pod(PodSpec::new("b2", NodeId::B).namespace("plain"));
    for p in [&b1, &b2] {
        let ns = cluster.netns_of(p);
        load::sink_and_echo_servers(ns);
        load::echo_any_and_http_servers(ns);
        http::close_server(ns);
    }
    cluster
        .wait_config(&[&a1, &b1], Protocol::Hbone, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.diagnostics()));
    let client = cluster.netns_of(&a1);

    let mut results: [Vec<Figures>; 3] = Default::default();
    for round in 0..rounds {
        results[0].push(figures(NAMES[0], client, &b2, true, bulk, conn_secs, None));
        for (i, bin) in [(1, upstream.as_deref()), (2, Some(ours.as_path()))] {
            let Some(bin) = bin else { continue };
            let pids = switch_ztunnels(&cluster, bin, client, &b1);
            let name = format!("{}-round{}", NAMES[i], round + 1);
            results[i].push(figures(
                &name,
                client,
                &b1,
                false,
                bulk,
                conn_secs,
                Some(pids),
            ));
        }
        eprintln!("round {} of {rounds} done", round + 1);
        for (i, r) in results.iter().enumerate() {
            if let Some(f) = r.last() {
                eprintln!("  {}: {}", NAMES[i], raw(f));
            }
        }
    }
    report(&results);
}

/// Replaces both nodes' ztunnels with `bin` and waits until a1 reaches b1 through them over
/// HBONE (config and certificates in). Returns their pids.
fn switch_ztunnels(cluster: &Cluster, bin: &Path, client: &Netns, b1: &Pod) -> [u32; 2] {
    for id in [NodeId::A, NodeId::B] {
        cluster.kill_ztunnel(id);
    }
    for id in [NodeId::A, NodeId::B] {
        cluster.start_ztunnel_binary(id, bin).unwrap();
    }
    for id in [NodeId::A, NodeId::B] {
        cluster
            .wait_ready(id, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{} not ready: {e}", bin.display()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = load::try_connect(client, b1.addr(9001), false).and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.write_all(&[1u8; 1024])?;
            let mut back = [0u8; 1024];
            c.read_exact(&mut back)
        });
        if ok.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: a1 -> b1 not answering: {ok:?}\n{}",
            bin.display(),
            cluster.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The comparison is only fair if both carry it over mTLS (HBONE), not plain TCP.
    let metrics = cluster.metrics(NodeId::B).unwrap_or_default();
    assert!(
        metrics.contains("connection_security_policy=\"mutual_tls\""),
        "{}: node B's metrics show no mTLS connection",
        bin.display()
    );
    std::thread::sleep(Duration::from_secs(1));
    [
        cluster.ztunnel_pid(NodeId::A).unwrap(),
        cluster.ztunnel_pid(NodeId::B).unwrap(),
    ]
}

fn figures(
    name: &str,
    client: &Netns,
    server: &Pod,
    bypass: bool,
    bulk: usize,
    conn_secs: Duration,
    pids: Option<[u32; 2]>,
) -> Figures {
    let mut f = Figures {
        rss_idle: f64::NAN,
        rss_1000: f64::NAN,
        cpu_per_gb: f64::NAN,
        ..Figures::default()
    };
    let rss = |p: [u32; 2]| rss_mib(p[0]) + rss_mib(p[1]);
    let cpu = |p: [u32; 2]| cpu_secs(p[0]) + cpu_secs(p[1]);
    if let Some(p) = pids {
        f.rss_idle = rss(p);
    }
    // Counts and profiles (see `mesh/observe.rs`), meshed runs only.
    let watch = |phase: &str, profile: bool| {
        let label = format!("{name}, {phase}");
        pids.map(|p| observe::Watch::start(p, label, profile.then(|| format!("{name}-{phase}"))))
    };
    let end = |w: Option<observe::Watch>, units: f64, unit: &str| {
        if let Some(w) = w {
            w.end(units, unit);
        }
    };
    let w = watch("bulk", true);
    let cpu0 = pids.map(cpu);
    f.bulk1 = throughput_of(client, server.addr(9000), 1, bypass, bulk);
    if let (Some(p), Some(c0)) = (pids, cpu0) {
        f.cpu_per_gb = (cpu(p) - c0) / (bulk as f64 / 1e9);
    }
    end(w, bulk as f64 / 1e6, "MB");
    f.bulk8 = throughput_of(client, server.addr(9000), 8, bypass, bulk);
    let w = watch("pingpong", true);
    (f.p50, f.p99) = load::latency(client, server.addr(9004), bypass, 64);
    end(w, load::LATENCY_ROUND_TRIPS as f64, "round trip");
    let keep_alive_secs = Duration::from_secs(5);
    let w = watch("keep-alive", false);
    f.keep_alive = load::keep_alive_rps(client, server.addr(9005), bypass, keep_alive_secs);
    end(w, f.keep_alive * keep_alive_secs.as_secs_f64(), "request");
    let w = watch("new connections", false);
    let (mean, _slowest, failed) =
        http::sustained_conns(client, server.addr(9002), bypass, conn_secs);
    (f.new_conns, f.failed_conns) = (mean, failed as f64);
    end(w, mean * conn_secs.as_secs_f64(), "connection");
    if let Some(p) = pids {
        std::thread::sleep(Duration::from_secs(1));
        let held: Vec<TcpStream> = (0..1000)
            .map(|_| {
                let mut s = connect(client, server.addr(9001), bypass);
                s.write_all(&[0u8; 1024]).unwrap();
                let mut b = [0u8; 1024];
                s.read_exact(&mut b).unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        f.rss_1000 = rss(p);
        drop(held);
    }
    f
}

fn raw(f: &Figures) -> String {
    format!(
        "1 stream {:.2} Gbit/s, 8 streams {:.2}, 64 B p50/p99 {:.0}/{:.0} µs, keep-alive {:.0} rps, new conns {:.0}/s ({} failed), RSS idle {:.1} MiB, RSS 1,000 conns {:.1} MiB, CPU {:.2} s/GB",
        f.bulk1, f.bulk8, f.p50, f.p99, f.keep_alive, f.new_conns, f.failed_conns, f.rss_idle, f.rss_1000, f.cpu_per_gb
    )
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

fn report(results: &[Vec<Figures>; 3]) {
    let m = |pick: fn(&Figures) -> f64| -> [f64; 3] {
        [0, 1, 2].map(|i| median(results[i].iter().map(pick)))
    };
    let cell = |x: f64, digits: usize| {
        if x.is_nan() {
            "–".to_owned()
        } else {
            format!("{x:.digits$}")
        }
    };
    println!(
        "\n{} round(s), medians\n\n| figure | direct | upstream | ours | ours / upstream |\n|---|---|---|---|---|",
        results[2].len()
    );
    let row = |name: &str, v: [f64; 3], digits: usize, ratio: f64| {
        println!(
            "| {name} | {} | {} | {} | {} |",
            cell(v[0], digits),
            cell(v[1], digits),
            cell(v[2], digits),
            cell(ratio, 2)
        );
    };
    let plain = |name: &str, pick: fn(&Figures) -> f64, digits: usize| {
        let v = m(pick);
        row(name, v, digits, v[2] / v[1]);
    };
    plain("iperf-like bulk, 1 stream (Gbit/s)", |f| f.bulk1, 2);
    plain("iperf-like bulk, 8 streams (Gbit/s)", |f| f.bulk8, 2);
    // Latency: the ratio of what each ztunnel pair adds to the direct path.
    for (name, pick) in [
        (
            "64 B ping-pong p50 (µs; ratio of added latency)",
            (|f| f.p50) as fn(&Figures) -> f64,
        ),
        ("64 B ping-pong p99 (µs; ratio of added latency)", |f| {
            f.p99
        }),
    ] {
        let v = m(pick);
        row(name, v, 0, (v[2] - v[0]) / (v[1] - v[0]));
    }
    plain("HTTP/1.1 keep-alive, 1 conn (req/s)", |f| f.keep_alive, 0);
    plain(
        "new connection per request, 8 clients (conn/s)",
        |f| f.new_conns,
        0,
    );
    plain("  failed connections in that run", |f| f.failed_conns, 0);
    plain("RSS idle, both nodes (MiB)", |f| f.rss_idle, 1);
    plain(
        "RSS with 1,000 open connections, both nodes (MiB)",
        |f| f.rss_1000,
        1,
    );
    plain("CPU seconds per GB, both ztunnels", |f| f.cpu_per_gb, 2);
}

/// The first line `BIN version` prints, or why not.
fn version(bin: &Path) -> String {
    match std::process::Command::new(bin).arg("version").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("no version output")
            .chars()
            .take(160)
            .collect(),
        Err(e) => format!("not runnable: {e}"),
    }
}

/// This checkout's commit (with `-dirty` when the tree has changes), which the release
/// ztunnel is assumed to be built from.
fn our_commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    format!(
        "{}{}",
        git(&["rev-parse", "--short", "HEAD"]),
        if dirty { "-dirty" } else { "" }
    )
}
