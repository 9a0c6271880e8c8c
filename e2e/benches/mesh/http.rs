//! The HTTP-shaped figures of the mesh bench: sustained new connections as wrk makes them,
//! ztunnel's cost at a fixed request rate, and memory with many open connections.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use test_support::{run_in, thread_in, Netns};

use super::load::connect;

pub const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
pub const RESPONSE: usize = 1024;

/// Port 9002 answers one request with 1 KiB and closes first (`Connection: close`).
pub fn close_server(ns: &Netns) {
    let close = run_in(ns, || TcpListener::bind("0.0.0.0:9002")).unwrap();
    let _ = thread_in(ns, move || {
        for mut c in close.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                let mut got = 0;
                while got < REQUEST.len() {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let _ = c.write_all(&[b'x'; RESPONSE]);
                let _ = c.shutdown(Shutdown::Both);
            });
        }
    });
}

/// Set in the child that holds the server ends of the 10,000 connections: one process may
/// have only as many descriptors as its hard limit (20,000 here, and no CAP_SYS_RESOURCE).
pub const HOLD_SERVER_ENV: &str = "MESHTUNNEL_BENCH_HOLD_SERVER";

/// The child's whole life: on 9003 (in the netns it was started in), send each connection
/// one byte and keep it open until killed.
pub fn hold_server() -> ! {
    let l = TcpListener::bind("0.0.0.0:9003").unwrap();
    let mut held = Vec::new();
    for mut c in l.incoming().flatten() {
        let _ = c.write_all(&[1]);
        held.push(c);
    }
    unreachable!("incoming() never ends")
}

/// Starts [`hold_server`] in `ns` as a child of this bench (killed when the guard drops).
pub fn spawn_hold_server(ns: &Netns) -> test_support::ChildGuard {
    let mut cmd = ns.command(std::env::current_exe().unwrap().to_str().unwrap());
    cmd.env(HOLD_SERVER_ENV, "1");
    ns.spawn_command(cmd).unwrap()
}

/// New connections per second over `dur`, 8 clients each making one request and closing as
/// soon as the response is in (as wrk does): (mean over the run, slowest 5 s window, failed
/// connections).
pub fn sustained_conns(
    ns: &Netns,
    dst: SocketAddr,
    bypass: bool,
    dur: Duration,
) -> (f64, f64, u64) {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    let mut windows = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (done, failed) = (&done, &failed);
            s.spawn(move || {
                let fd = ns.open_fd().unwrap();
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                while start.elapsed() < dur {
                    match one_request(dst, bypass) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let mut mark = (0, Instant::now());
        while start.elapsed() < dur {
            std::thread::sleep(Duration::from_secs(5));
            let n = done.load(Ordering::Relaxed);
            windows.push((n - mark.0) as f64 / mark.1.elapsed().as_secs_f64());
            mark = (n, Instant::now());
        }
    });
    let mean = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let slowest = windows.iter().copied().fold(f64::INFINITY, f64::min);
    (mean, slowest, failed.load(Ordering::Relaxed))
}

fn one_request(dst: SocketAddr, bypass: bool) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if bypass {
        s.set_mark(0x539)?;
    }
    s.connect_timeout(&dst.into(), Duration::from_secs(10))?;
    let mut c = TcpStream::from(s);
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(REQUEST)?;
    let mut back = [0u8; RESPONSE];
    c.read_exact(&mut back)
}

/// 1 KiB request / 1 KiB response at `rps` spread over 16 keep-alive connections for `dur`
/// (the shape of Istio's published ztunnel figure). Returns the requests that completed.
pub fn fixed_rate(ns: &Netns, dst: SocketAddr, rps: u32, dur: Duration) -> u64 {
    let conns = (0..16).map(|_| connect(ns, dst, false)).collect();
    let done = meshtunnel_e2e::load::fixed_rate(conns, rps, dur, |c: &mut TcpStream| {
        let (msg, mut back) = ([7u8; 1024], [0u8; 1024]);
        c.write_all(&msg)?;
        c.read_exact(&mut back)
    });
    assert_eq!(done.failed, 0, "a fixed-rate connection failed");
    done.ok
}

/// Opens `n` meshed connections to the hold server (each confirmed end to end by its byte).
/// Waits (bounded) for the hold server to listen first.
pub fn hold_open(ns: &Netns, dst: SocketAddr, n: usize) -> Vec<TcpStream> {
    let one = || {
        let mut c = connect(ns, dst, false);
        let mut b = [0u8; 1];
        c.read_exact(&mut b).map(|_| c)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match one() {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("hold server not answering: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    std::iter::once(first)
        .chain((1..n).map(|_| one().unwrap()))
        .collect()
}
