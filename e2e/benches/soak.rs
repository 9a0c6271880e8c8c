//! Soak (issue 13): 100,000 connections through the release ztunnels of the two-node mesh, in
//! rounds that each mix
//! * short connections from a1 to b1, a third of them half-closed by the client first (it
//!   shuts its write side and reads the echo to EOF), the rest closed by the client outright;
//! * idle connections from a1, held past the TCP keepalive time and the HBONE ping interval,
//!   then used again and closed;
//! * peers that vanish without a FIN: connections from a2 whose every packet between a2 and
//!   the wire is then dropped (a black hole on node A, as a dead node or a pulled cable), the
//!   app in a2 closing its end meanwhile; the path comes back only after ztunnel's HBONE pings
//!   had every reason to give up on it.
//!
//! Printed: a table over time of the TCP states in the netns where the ztunnels' sockets live
//! (both nodes, a1, a2, b1), which must return to no CLOSE-WAIT and no FIN-WAIT-2 after each
//! round, and the ztunnels' RSS after the warm-up round against the end (within 10 %).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p meshtunnel-e2e --bench soak`.
//! `MESHTUNNEL_SOAK_CONNS` sets the total (default 100,000).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshtunnel_e2e::apps::EchoServer;
use meshtunnel_e2e::proc_stats;
use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::{thread_in, Netns, NodeId};

const ROUNDS: u64 = 4;
const VANISHING_PER_ROUND: u64 = 250;
const IDLE_PER_ROUND: u64 = 250;
const CLIENT_THREADS: u64 = 4;
/// TCP keepalive of the ztunnels' sockets in this run (upstream's default waits 180 s).
const KEEPALIVE_TIME: Duration = Duration::from_secs(5);
/// Idle connections are held this long: past the TCP keepalive time and the HBONE ping
/// interval (10 s).
const IDLE_FOR: Duration = Duration::from_secs(15);
/// The vanished peers' path stays black-holed this long: past the HBONE ping interval plus
/// its answer timeout (10 s + 20 s), so both ztunnels must have given up on it on their own.
const BLACKHOLE_FOR: Duration = Duration::from_secs(35);
const PORT: u16 = 8080;

fn main() {
    let total: u64 = std::env::var("MESHTUNNEL_SOAK_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mesh = Mesh::start(MeshOptions {
        release_binary: true,
        log_level: "warn".into(),
        env: vec![
            (
                "KEEPALIVE_TIME".into(),
                format!("{}s", KEEPALIVE_TIME.as_secs()),
            ),
            ("KEEPALIVE_INTERVAL".into(), "2s".into()),
            ("KEEPALIVE_RETRIES".into(), "3".into()),
        ],
        ..MeshOptions::default()
    })
    .expect("mesh");
    let _echo = EchoServer::start(mesh.pod_ns("b1"), SocketAddr::from(([0, 0, 0, 0], PORT)))
        .expect("echo server");
    let dst = mesh.addr("b1", PORT);
    // One client address to one server address and port, ~1,200 connections/s on a quiet
    // machine: more than the ~28k ephemeral ports a 4-tuple family has per 60 s of TIME-WAIT,
    // so connects fail for the bench's own reasons. The TIME-WAITs sit in a1 (the clients close
    // first) and in b1, where ztunnel B dialed the app from a1's address and, passing the
    // client's FIN on, closed first too. Both reuse ports as a busy host would.
    for pod in ["a1", "b1"] {
        mesh.pod_ns(pod)
            .exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.tcp_tw_reuse=1",
                    "net.ipv4.ip_local_port_range=1024 65535",
                ],
            )
            .expect("port reuse in the pods");
    }
    let pids = [
        mesh.ztunnel_pid(NodeId::A).unwrap(),
        mesh.ztunnel_pid(NodeId::B).unwrap(),
    ];
    let watched: Vec<&Netns> = vec![
        mesh.topo.node(NodeId::A),
        mesh.topo.node(NodeId::B),
        mesh.pod_ns("a1"),
        mesh.pod_ns("a2"),
        mesh.pod_ns("b1"),
    ];
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let rows = Mutex::new(Vec::<Row>::new());
    let sample = |label: &str| {
        let r = Row::take(label, start, &done, &watched, pids);
        rows.lock().unwrap().push(r.clone());
        r
    };
    let stop_sampler = AtomicBool::new(false);
    let mut warm_rss = [0u64; 2];
    let per_round = total / ROUNDS;
    std::thread::scope(|s| {
        // Stops the sampler also when a round panics (the scope waits for it).
        let _stop = StopOnDrop(&stop_sampler);
        s.spawn(|| {
            // Every 5 s while the rounds run.
            while !stop_sampler.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    if stop_sampler.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                sample("");
            }
        });
        for round in 1..=ROUNDS {
            run_round(&mesh, dst, per_round, &done, &failed);
            let peek = || Row::take("", start, &done, &watched, pids);
            let settled = settle(&peek, &sample, round);
            if round == 1 {
                warm_rss = [settled.rss_kib[0], settled.rss_kib[1]];
            }
        }
        stop_sampler.store(true, Ordering::Relaxed);
    });
    let end = sample("end");
    print_table(&rows.lock().unwrap());
    println!();
    println!("| | ztunnel A | ztunnel B |");
    println!("|---|---|---|");
    println!(
        "| RSS after warm-up round (MiB) | {:.1} | {:.1} |",
        warm_rss[0] as f64 / 1024.0,
        warm_rss[1] as f64 / 1024.0
    );
    println!(
        "| RSS at the end (MiB) | {:.1} | {:.1} |",
        end.rss_kib[0] as f64 / 1024.0,
        end.rss_kib[1] as f64 / 1024.0
    );
    let growth = |i: usize| (end.rss_kib[i] as f64 / warm_rss[i] as f64 - 1.0) * 100.0;
    println!(
        "| end vs warm-up | {:+.1} % | {:+.1} % |",
        growth(0),
        growth(1)
    );
    println!("| open fds at the end | {} | {} |", end.fds[0], end.fds[1]);
    println!(
        "\n{} connections in {:.0?}, {} failed (vanished peers' connections are not counted as failures)",
        done.load(Ordering::Relaxed),
        start.elapsed(),
        failed.load(Ordering::Relaxed)
    );
    let ok = end.half_closed() == 0
        && growth(0) <= 10.0
        && growth(1) <= 10.0
        && failed.load(Ordering::Relaxed) == 0;
    println!(
        "verdict: {}",
        if ok {
            "no failed connection, CLOSE-WAIT/FIN-WAIT-2 back to zero, RSS within 10 %"
        } else {
            "NOT within bounds"
        }
    );
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One round: vanishing peers from a2, idle connections from a1, short and half-closed ones
/// from a1, then the idle ones used again and the black hole lifted.
fn run_round(mesh: &Mesh, dst: SocketAddr, n: u64, done: &AtomicU64, failed: &AtomicU64) {
    let a2 = mesh.pod_ns("a2");
    let vanishing = open_echoed(a2, dst, VANISHING_PER_ROUND);
    done.fetch_add(vanishing.len() as u64, Ordering::Relaxed);
    let hole = Blackhole::install(mesh.topo.node(NodeId::A), mesh.pod_ip("a2"));
    let down_at = Instant::now();
    // The app in a2 closes its end; ztunnel A can pass nothing on to b1's side any more.
    drop(vanishing);

    let a1 = mesh.pod_ns("a1");
    let idle = open_echoed(a1, dst, IDLE_PER_ROUND);
    let idle_since = Instant::now();
    let short = n.saturating_sub(VANISHING_PER_ROUND + IDLE_PER_ROUND);
    let workers: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let count = short / CLIENT_THREADS + u64::from(t < short % CLIENT_THREADS);
            thread_in(a1, move || {
                let mut fails = 0u64;
                for i in 0..count {
                    if let Err(e) = short_connection(dst, i % 3 == 0) {
                        if fails == 0 {
                            eprintln!("soak: first failed short connection of a client: {e}");
                        }
                        fails += 1;
                    }
                }
                (count, fails)
            })
        })
        .collect();
    for w in workers {
        let (count, fails) = w.join().expect("client thread");
        done.fetch_add(count, Ordering::Relaxed);
        failed.fetch_add(fails, Ordering::Relaxed);
    }
    std::thread::sleep(IDLE_FOR.saturating_sub(idle_since.elapsed()));
    // Past the keepalive: each idle connection still carries bytes, then closes.
    let idle_count = idle.len() as u64;
    let idle_failed = idle
        .into_iter()
        .filter(|s| echo_on(s, b"still here").is_err())
        .count() as u64;
    done.fetch_add(idle_count, Ordering::Relaxed);
    failed.fetch_add(idle_failed, Ordering::Relaxed);
    std::thread::sleep(BLACKHOLE_FOR.saturating_sub(down_at.elapsed()));
    drop(hole);
}

/// Samples every second until no socket is half-closed in the watched namespaces (at most
/// 60 s); returns the last sample.
fn settle(peek: &dyn Fn() -> Row, sample: &dyn Fn(&str) -> Row, round: u64) -> Row {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let r = peek();
        if r.half_closed() == 0 || Instant::now() > until {
            return sample(&format!("round {round} settled"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `n` connections from `ns` to `dst`, each with one echo done, left open.
fn open_echoed(ns: &Netns, dst: SocketAddr, n: u64) -> Vec<TcpStream> {
    thread_in(ns, move || {
        (0..n)
            .filter_map(|_| {
                let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                echo_on(&s, b"hello").ok()?;
                Some(s)
            })
            .collect()
    })
    .join()
    .expect("opening connections")
}

fn echo_on(mut s: &TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

/// One short connection: an echo, then either a half-close and a read to EOF (the server
/// closes after the client's FIN), or a plain close by the client.
fn short_connection(dst: SocketAddr, half_close: bool) -> std::io::Result<()> {
    let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    echo_on(&s, b"ping")?;
    if half_close {
        s.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        (&s).read_to_end(&mut rest)?;
    }
    Ok(())
}

/// Drops every packet to and from `ip` crossing `node` (a forward-hook table of its own),
/// until dropped.
struct Blackhole<'a> {
    node: &'a Netns,
    table: String,
}

impl<'a> Blackhole<'a> {
    fn install(node: &'a Netns, ip: std::net::Ipv4Addr) -> Blackhole<'a> {
        let table = format!("soak_blackhole_{}", std::process::id());
        let script = format!(
            "add table ip {table}\n\
             add chain ip {table} blackhole {{ type filter hook forward priority -10; }}\n\
             add rule ip {table} blackhole ip saddr {ip} drop\n\
             add rule ip {table} blackhole ip daddr {ip} drop\n"
        );
        let file = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&file, script).expect("nft script");
        let r = node.exec("nft", &["-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        r.expect("installing the black hole");
        Blackhole { node, table }
    }
}

impl Drop for Blackhole<'_> {
    fn drop(&mut self) {
        let _ = self
            .node
            .exec("nft", &["delete", "table", "ip", &self.table]);
    }
}

#[derive(Clone)]
struct Row {
    label: String,
    at: Duration,
    done: u64,
    states: BTreeMap<String, usize>,
    rss_kib: [u64; 2],
    fds: [usize; 2],
}

impl Row {
    fn take(
        label: &str,
        start: Instant,
        done: &AtomicU64,
        watched: &[&Netns],
        pids: [u32; 2],
    ) -> Row {
        let mut states = BTreeMap::new();
        for ns in watched {
            for (k, v) in proc_stats::tcp_states(ns).unwrap_or_default() {
                *states.entry(k).or_insert(0) += v;
            }
        }
        Row {
            label: label.to_owned(),
            at: start.elapsed(),
            done: done.load(Ordering::Relaxed),
            states,
            rss_kib: pids.map(|p| proc_stats::rss_kib(p).unwrap_or(0)),
            fds: pids.map(|p| proc_stats::fds(p).map_or(0, |f| f.0)),
        }
    }

    fn state(&self, s: &str) -> usize {
        self.states.get(s).copied().unwrap_or(0)
    }

    fn half_closed(&self) -> usize {
        self.state("CLOSE-WAIT") + self.state("FIN-WAIT-2")
    }
}

fn print_table(rows: &[Row]) {
    println!("| t (s) | connections | ESTAB | CLOSE-WAIT | FIN-WAIT-2 | FIN-WAIT-1 | TIME-WAIT | RSS A (MiB) | RSS B (MiB) | fds A | fds B | |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {:.0} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
            r.at.as_secs_f64(),
            r.done,
            r.state("ESTAB"),
            r.state("CLOSE-WAIT"),
            r.state("FIN-WAIT-2"),
            r.state("FIN-WAIT-1"),
            r.state("TIME-WAIT"),
            r.rss_kib[0] as f64 / 1024.0,
            r.rss_kib[1] as f64 / 1024.0,
            r.fds[0],
            r.fds[1],
            r.label
        );
    }
}
