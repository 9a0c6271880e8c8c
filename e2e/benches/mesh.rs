//! Benchmarks on the two-node netns mesh. Every figure is printed next to the direct,
//! un-meshed path measured in the same run: a1 -> b2 with ztunnel's bypass mark (b2 is not
//! meshed) against a1 -> b1 through both ztunnels over HBONE.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p meshtunnel-e2e`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::NodeId;

#[path = "mesh/http.rs"]
mod http;
#[path = "mesh/load.rs"]
#[allow(dead_code)] // each bench uses a part
mod load;
#[path = "mesh/observe.rs"]
#[allow(dead_code)] // each bench uses a part
mod observe;
#[path = "mesh/profile.rs"]
mod profile;

use load::{
    connect, conns_per_sec, cpu_secs, latency, rss_mib, sink_and_echo_servers, throughput, BULK,
};

fn main() {
    if std::env::var_os(http::HOLD_SERVER_ENV).is_some() {
        http::hold_server();
    }
    // 10,000 open connections take ~20k descriptors here (client and hold server) and in
    // each ztunnel, which inherits this limit; root may raise the hard limit.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const FILES: u64 = 1 << 17;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if setrlimit(Resource::RLIMIT_NOFILE, FILES, FILES.max(hard)).is_err() {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, soft.max(hard), hard);
        }
    }
    let sustained_for = Duration::from_secs(
        std::env::var("MESHTUNNEL_BENCH_SUSTAINED_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    // Extra environment for both ztunnels, `K=V,K=V` (e.g. allocator tuning to compare).
    let env = std::env::var("MESHTUNNEL_BENCH_ZTUNNEL_ENV")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mesh = Mesh::start(MeshOptions {
        release_binary: true,
        log_level: "warn".into(),
        env,
        ..MeshOptions::default()
    })
    .expect("mesh");
    let rss_start = rss_mib(mesh.ztunnel_pid(NodeId::A).unwrap());
    for pod in ["b1", "b2"] {
        sink_and_echo_servers(mesh.pod_ns(pod));
        http::close_server(mesh.pod_ns(pod));
    }
    if let Ok(kind) = std::env::var("MESHTUNNEL_BENCH_PROFILE") {
        profile::run(&mesh, &kind);
        return;
    }
    let direct = |port| mesh.addr("b2", port);
    let meshed = |port| mesh.addr("b1", port);
    let a1 = mesh.pod_ns("a1");
    println!("| metric | direct | meshed | meshed/direct |");
    println!("|---|---|---|---|");
    for streams in [1usize, 8] {
        let d = throughput(a1, direct(9000), streams, true);
        let m = throughput(a1, meshed(9000), streams, false);
        row(
            &format!("bulk throughput, {streams} stream(s) (Gbit/s)"),
            d,
            m,
        );
    }
    let (d50, d99) = latency(a1, direct(9001), true, 1024);
    let (m50, m99) = latency(a1, meshed(9001), false, 1024);
    row("1 KiB req/resp latency p50 (µs)", d50, m50);
    row("1 KiB req/resp latency p99 (µs)", d99, m99);
    let d = conns_per_sec(a1, direct(9001), true);
    let m = conns_per_sec(a1, meshed(9001), false);
    row("new connections per second", d, m);
    let (d, d_min, d_fail) = http::sustained_conns(a1, direct(9002), true, sustained_for);
    let (m, m_min, m_fail) = http::sustained_conns(a1, meshed(9002), false, sustained_for);
    let secs = sustained_for.as_secs();
    row(
        &format!("new connections/s sustained over {secs} s (8 wrk-like clients, HTTP close)"),
        d,
        m,
    );
    row("  the same, slowest 5 s window", d_min, m_min);
    row(
        "  the same, failed connections",
        d_fail as f64,
        m_fail as f64,
    );

    let pid_a = mesh.ztunnel_pid(NodeId::A).unwrap();
    let pid_b = mesh.ztunnel_pid(NodeId::B).unwrap();
    println!("\n| ztunnel | value |\n|---|---|");
    println!(
        "| RSS idle, node A: pods enrolled, before any traffic / after the runs above (MiB) | {rss_start:.1} / {:.1} |",
        rss_mib(pid_a)
    );
    let held: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = connect(a1, meshed(9001), false);
            s.write_all(&[0u8; 1024]).unwrap();
            let mut b = [0u8; 1024];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "| RSS with 1,000 open connections, node A / node B (MiB) | {:.1} / {:.1} |",
        rss_mib(pid_a),
        rss_mib(pid_b)
    );
    drop(held);

    // ztunnel-only cost of 1,000 requests/s (1 KiB each way, 16 keep-alive connections).
    let secs = 20.0;
    let (a0, b0) = (cpu_secs(pid_a), cpu_secs(pid_b));
    let n = http::fixed_rate(a1, meshed(9001), 1000, Duration::from_secs_f64(secs));
    let rate = n as f64 / secs;
    let per_k = |cpu: f64| cpu / secs / (rate / 1000.0);
    println!(
        "| vCPU per 1,000 req/s of 1 KiB (measured at {rate:.0}/s), ztunnel A / B | {:.3} / {:.3} |",
        per_k(cpu_secs(pid_a) - a0),
        per_k(cpu_secs(pid_b) - b0)
    );
    println!(
        "| RSS after that load, node A / node B (MiB) | {:.1} / {:.1} |",
        rss_mib(pid_a),
        rss_mib(pid_b)
    );
    let hold = http::spawn_hold_server(mesh.pod_ns("b1"));
    let held = http::hold_open(a1, meshed(9003), 10_000);
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "| RSS with 10,000 open connections, node A / node B (MiB) | {:.1} / {:.1} |",
        rss_mib(pid_a),
        rss_mib(pid_b)
    );
    drop(held);
    drop(hold);
    std::thread::sleep(Duration::from_secs(1));

    let cpu0 = cpu_secs(pid_a) + cpu_secs(pid_b);
    throughput(a1, meshed(9000), 1, false);
    let cpu = cpu_secs(pid_a) + cpu_secs(pid_b) - cpu0;
    println!(
        "| CPU seconds per GB, both ztunnels | {:.2} |",
        cpu / (BULK as f64 / 1e9)
    );
}

fn row(name: &str, direct: f64, meshed: f64) {
    println!(
        "| {name} | {direct:.2} | {meshed:.2} | {:.2} |",
        meshed / direct
    );
}
