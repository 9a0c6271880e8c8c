//! The workloads both mesh benches run (the mesh bench and the side-by-side one): servers in
//! a pod, the bulk, ping-pong and connection clients, and a ztunnel's RSS and CPU time.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use test_support::{run_in, thread_in, Netns};

pub const BULK: usize = 256 * 1024 * 1024;

/// Port 9000 swallows bytes; port 9001 echoes fixed 1 KiB messages.
pub fn sink_and_echo_servers(ns: &Netns) {
    let sink = run_in(ns, || TcpListener::bind("0.0.0.0:9000")).unwrap();
    let echo = run_in(ns, || TcpListener::bind("0.0.0.0:9001")).unwrap();
    let _ = thread_in(ns, move || {
        for c in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let _ = thread_in(ns, move || {
        for c in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = c.set_nodelay(true);
                let mut buf = [0u8; 1024];
                while c.read_exact(&mut buf).is_ok() {
                    if c.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// A connection from pod a1; `bypass` marks it 0x539 so the pod's capture rules let it pass.
pub fn connect(ns: &Netns, dst: SocketAddr, bypass: bool) -> TcpStream {
    try_connect(ns, dst, bypass).expect("connect")
}

pub fn try_connect(ns: &Netns, dst: SocketAddr, bypass: bool) -> std::io::Result<TcpStream> {
    run_in(ns, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if bypass {
            s.set_mark(0x539)?;
        }
        s.set_tcp_nodelay(true)?;
        s.connect_timeout(&dst.into(), Duration::from_secs(5))?;
        Ok::<_, std::io::Error>(TcpStream::from(s))
    })
}

pub fn throughput(ns: &Netns, dst: SocketAddr, streams: usize, bypass: bool) -> f64 {
    throughput_of(ns, dst, streams, bypass, BULK)
}

/// [`throughput`] for `bytes` in all.
pub fn throughput_of(
    ns: &Netns,
    dst: SocketAddr,
    streams: usize,
    bypass: bool,
    bytes: usize,
) -> f64 {
    let conns: Vec<TcpStream> = (0..streams).map(|_| connect(ns, dst, bypass)).collect();
    let per = bytes / streams;
    let start = Instant::now();
    std::thread::scope(|s| {
        for mut c in conns {
            s.spawn(move || {
                let buf = vec![0x5au8; 256 * 1024];
                let mut left = per;
                while left > 0 {
                    let n = left.min(buf.len());
                    c.write_all(&buf[..n]).unwrap();
                    left -= n;
                }
                c.shutdown(Shutdown::Write).unwrap();
                let mut b = [0u8; 1];
                let _ = c.read(&mut b); // wait for the sink to finish reading
            });
        }
    });
    (bytes as f64 * 8.0) / start.elapsed().as_secs_f64() / 1e9
}

/// Round trips one [`latency`] call makes, the first 200 of them as warm-up.
pub const LATENCY_ROUND_TRIPS: usize = 5200;

/// Ping-pong of `size`-byte messages on one connection: (p50, p99) round trip in µs.
pub fn latency(ns: &Netns, dst: SocketAddr, bypass: bool, size: usize) -> (f64, f64) {
    let mut c = connect(ns, dst, bypass);
    let msg = vec![7u8; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(5000);
    for i in 0..LATENCY_ROUND_TRIPS {
        let t = Instant::now();
        c.write_all(&msg).unwrap();
        c.read_exact(&mut back).unwrap();
        if i >= 200 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (p(0.50), p(0.99))
}

pub fn conns_per_sec(ns: &Netns, dst: SocketAddr, bypass: bool) -> f64 {
    let fd = ns.open_fd().unwrap();
    let dur = Duration::from_secs(3);
    let start = Instant::now();
    let total: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let fd = fd.as_fd().try_clone_to_owned().unwrap();
                s.spawn(move || {
                    nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    let mut n = 0;
                    while start.elapsed() < dur {
                        let s = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::STREAM,
                            None,
                        )
                        .unwrap();
                        if bypass {
                            s.set_mark(0x539).unwrap();
                        }
                        s.connect(&dst.into()).unwrap();
                        let mut c = TcpStream::from(s);
                        c.write_all(&[1u8; 1024]).unwrap();
                        let mut b = [0u8; 1024];
                        c.read_exact(&mut b).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

pub fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

pub fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Port 9004 echoes whatever it reads (any message size); port 9005 is an HTTP/1.1 keep-alive
/// server answering every request with a 612-byte body (nginx's default page, as wrk fetches).
pub fn echo_any_and_http_servers(ns: &Netns) {
    let echo = run_in(ns, || TcpListener::bind("0.0.0.0:9004")).unwrap();
    let http = run_in(ns, || TcpListener::bind("0.0.0.0:9005")).unwrap();
    let _ = thread_in(ns, move || {
        for c in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = c.set_nodelay(true);
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let _ = thread_in(ns, move || {
        for c in http.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = c.set_nodelay(true);
                let response = http_response();
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if c.write_all(&response).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

const HTTP_BODY: usize = 612;
const KEEP_ALIVE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n";

fn http_response() -> Vec<u8> {
    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {HTTP_BODY}\r\n\r\n").into_bytes();
    r.resize(r.len() + HTTP_BODY, b'x');
    r
}

/// Requests per second on one HTTP/1.1 keep-alive connection, one request at a time (wrk
/// with one connection and one thread) for `dur`.
pub fn keep_alive_rps(ns: &Netns, dst: SocketAddr, bypass: bool, dur: Duration) -> f64 {
    let mut c = connect(ns, dst, bypass);
    let mut back = vec![0u8; http_response().len()];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        c.write_all(KEEP_ALIVE_REQUEST).unwrap();
        c.read_exact(&mut back).unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}
