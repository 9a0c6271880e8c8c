//! Sustained new connections through two real ztunnels, the way wrk and most HTTP clients
//! make them: request, a 1 KiB response after which the server closes (`Connection: close`),
//! and the client closes as soon as it has the response, without waiting for the FIN.
//!
//! Issue 12: meshed, wrk's rate fell from ~3.6k/s to ~390/s after ~35k connections. The server's
//! FIN reached the client one HTTP/2 frame (and a reactor turn) after the response, so the
//! client closed first and kept every TIME_WAIT; once its ~28k ephemeral ports to the one
//! destination were all in TIME_WAIT, connects failed or waited (~28k / 60 s ≈ 470/s). The test
//! narrows the client pod's port range to 1,000 so the same wall comes after ~1,000
//! connections instead of ~30,000.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::{run_in, thread_in, Netns, NodeId};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: b1\r\nConnection: close\r\n\r\n";
const RESPONSE: usize = 1024;
const PORTS: u64 = 1000;

#[test]
fn clients_that_close_on_the_response_keep_their_rate() {
    const TOTAL: u64 = 4 * PORTS;
    const WINDOW: u64 = 500;
    const CLIENTS: usize = 8;
    let mesh = Mesh::start(MeshOptions {
        log_level: "warn".into(),
        ..MeshOptions::default()
    })
    .unwrap();
    let (a1, b1) = (mesh.pod_ns("a1"), mesh.pod_ns("b1"));
    // Per network namespace: only the client pod's range shrinks.
    let range = format!("net.ipv4.ip_local_port_range=50000 {}", 50000 + PORTS - 1);
    a1.exec("sysctl", &["-w", &range]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let server = http_close_server(b1, stop.clone());
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let dst: SocketAddr = mesh.addr("b1", 8080);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (done, failures) = (done.clone(), failures.clone());
            thread_in(a1, move || {
                while done.fetch_add(1, Ordering::Relaxed) < TOTAL {
                    if let Err(e) = one_request(dst) {
                        failures.lock().unwrap().push(e.to_string());
                    }
                }
            })
        })
        .collect();
    let mut rates = Vec::new();
    let mut mark = (0u64, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    while mark.0 + WINDOW <= TOTAL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let n = done.load(Ordering::Relaxed).min(TOTAL);
        if n >= mark.0 + WINDOW {
            rates.push((WINDOW as f64 / mark.1.elapsed().as_secs_f64()).round());
            mark = (n, Instant::now());
        }
    }
    let timed_out = Instant::now() >= deadline;
    if timed_out {
        done.store(TOTAL, Ordering::Relaxed);
    }
    for c in clients {
        c.join().unwrap();
    }
    // Who closed first: TIME_WAITs the client holds toward the destination.
    let client_tw = time_waits(a1, &format!("{}:50", mesh.pod_ip("a1")), &dst.to_string());
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    let failures = failures.lock().unwrap();
    eprintln!(
        "rates {rates:?}, client TIME_WAITs {client_tw}, failures {}",
        failures.len()
    );
    assert!(!timed_out, "too slow: {rates:?}\n{}", mesh.logs(NodeId::A));
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} connections failed (first: {:?}); rates {rates:?}",
        failures.len(),
        failures.first()
    );
    // Before the fix the client closed first nearly every time (all 1,000 ports in TIME_WAIT
    // after ~1,000 connections); now the server's FIN arrives with the response, and races
    // the client loses are a few percent (0.5 % with the debug ztunnel, 5-7 % with release).
    assert!(
        client_tw < PORTS / 2,
        "the client holds {client_tw} TIME_WAITs: the server's FIN does not reach it with the response"
    );
    // A shared 2-core machine swings a window by up to ~2x; the collapse was ~10x.
    let (first, last) = (rates[0], *rates.last().unwrap());
    assert!(
        last >= first * 0.3,
        "new connections/s collapsed: {rates:?}"
    );
}

/// Sends the request, reads exactly the response and closes, as wrk does.
fn one_request(dst: SocketAddr) -> std::io::Result<()> {
    let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(10))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(REQUEST)?;
    let mut back = [0u8; RESPONSE];
    c.read_exact(&mut back)
}

/// Lines of `ss` for TIME_WAIT sockets from `local` (a prefix) to `remote`.
fn time_waits(ns: &Netns, local: &str, remote: &str) -> u64 {
    let out = ns.exec("ss", &["-tanH", "state", "time-wait"]).unwrap();
    out.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[2].starts_with(local) && f[3] == remote
        })
        .count() as u64
}

/// On :8080 in `ns`: reads the request, answers 1 KiB and closes first, as a web server does
/// with `Connection: close`.
fn http_close_server(ns: &Netns, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let listener = run_in(ns, || TcpListener::bind("0.0.0.0:8080")).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut c, _)) => {
                    std::thread::spawn(move || {
                        let _ = c.set_nonblocking(false);
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
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    })
}
