//! `MESHTUNNEL_BENCH_PROFILE=bulk|conns|pingpong`: instead of the table, one meshed workload
//! repeated for `MESHTUNNEL_BENCH_PROFILE_SECS` (default 15), reported as the CPU time both
//! ztunnels spent on it (per GB, per 1,000 connections, or per 1 KiB round trip). `MESHTUNNEL_BENCH_PROFILE=open`: only the
//! memory each open, idle meshed connection costs each ztunnel (see [`open_conns`]). CPU time moves less with other load on the
//! machine than throughput does, so A/B runs of two builds (`MESHTUNNEL_BIN_DIR`) compare it.
//! With `MESHTUNNEL_BENCH_PERF=FILE`, `perf record -e cpu-clock -g` samples both ztunnels
//! during the workload into FILE.

use std::time::{Duration, Instant};

use meshtunnel_e2e::Mesh;
use test_support::NodeId;

use super::http;
use super::load::{cpu_secs, rss_mib, throughput, BULK};

pub fn run(mesh: &Mesh, kind: &str) {
    let secs: u64 = std::env::var("MESHTUNNEL_BENCH_PROFILE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dur = Duration::from_secs(secs);
    let a1 = mesh.pod_ns("a1");
    let pids = [NodeId::A, NodeId::B].map(|n| mesh.ztunnel_pid(n).expect("ztunnel running"));
    if kind == "open" {
        open_conns(mesh, pids);
        return;
    }
    let cpu = || cpu_secs(pids[0]) + cpu_secs(pids[1]);
    // One connection first, so the pooled HBONE connection and certificates exist.
    throughput(a1, mesh.addr("b1", 9000), 1, false);
    let perf = std::env::var("MESHTUNNEL_BENCH_PERF")
        .ok()
        .map(|out| super::observe::perf_record(&out, pids));
    let cpu0 = cpu();
    let start = Instant::now();
    match kind {
        "bulk" => {
            let mut bytes = 0usize;
            let mut gbits = Vec::new();
            while start.elapsed() < dur {
                gbits.push(throughput(a1, mesh.addr("b1", 9000), 1, false));
                bytes += BULK;
            }
            let used = cpu() - cpu0;
            println!(
                "bulk, 1 stream: {:.2} GB in {:.1} s, {:.2} Gbit/s median; both ztunnels {used:.2} CPU s = {:.3} CPU s/GB",
                bytes as f64 / 1e9,
                start.elapsed().as_secs_f64(),
                median(gbits),
                used / (bytes as f64 / 1e9)
            );
        }
        "conns" => {
            let (mean, slowest, failed) =
                http::sustained_conns(a1, mesh.addr("b1", 9002), false, dur);
            let n = mean * start.elapsed().as_secs_f64();
            let used = cpu() - cpu0;
            println!(
                "new connection per request: {n:.0} connections, {mean:.0}/s (slowest 5 s {slowest:.0}/s, {failed} failed); both ztunnels {used:.2} CPU s = {:.1} CPU ms per 1,000 connections",
                used / n * 1e6
            );
        }
        "pingpong" => {
            use std::io::{Read, Write};
            let mut c = super::load::connect(a1, mesh.addr("b1", 9001), false);
            let (msg, mut back) = ([7u8; 1024], [0u8; 1024]); // port 9001 echoes 1 KiB messages
            let mut n = 0u64;
            while start.elapsed() < dur {
                c.write_all(&msg).unwrap();
                c.read_exact(&mut back).unwrap();
                n += 1;
            }
            let used = cpu() - cpu0;
            println!(
                "1 KiB ping-pong on one connection: {n} round trips, {:.0}/s; both ztunnels {used:.2} CPU s = {:.1} CPU µs per round trip",
                n as f64 / start.elapsed().as_secs_f64(),
                used / n as f64 * 1e6
            );
        }
        other => panic!("MESHTUNNEL_BENCH_PROFILE={other}: want bulk, conns, pingpong or open"),
    }
    if let Some(p) = perf {
        super::observe::stop(p);
    }
}

/// RSS of both ztunnels with 1, 1,000 and 10,000 idle connections held open to the hold
/// server (each got one byte from the server), and the growth per connection above the one.
/// No bulk traffic first, so the heap holds no buffers from earlier runs.
fn open_conns(mesh: &Mesh, pids: [u32; 2]) {
    let a1 = mesh.pod_ns("a1");
    let _hold = http::spawn_hold_server(mesh.pod_ns("b1"));
    let dst = mesh.addr("b1", 9003);
    let settle = || std::thread::sleep(Duration::from_millis(1000));
    let rss = || pids.map(rss_mib);
    let one = http::hold_open(a1, dst, 1);
    settle();
    let base = rss();
    println!(
        "RSS with 1 open connection, node A / B: {:.1} / {:.1} MiB",
        base[0], base[1]
    );
    for n in [1_000usize, 10_000] {
        let held = http::hold_open(a1, dst, n);
        settle();
        let now = rss();
        let per = |i: usize| (now[i] - base[i]) * 1024.0 * 1024.0 / 1000.0 / n as f64;
        println!(
            "RSS with {n} more open connections, node A / B: {:.1} / {:.1} MiB = {:.1} / {:.1} KB per connection",
            now[0],
            now[1],
            per(0),
            per(1)
        );
        drop(held);
        settle();
    }
    drop(one);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
