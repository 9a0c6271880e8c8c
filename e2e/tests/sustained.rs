//! Sustained new connections through two real ztunnels: more than 40,000 short connections
//! from a1 to b1, each one HTTP-style exchange (request, 1 KiB response, the server closes
//! first, as with `Connection: close`), all riding one pooled HBONE connection. The rate of
//! the last window must not collapse against the first (issue 12: after ~2^15 streams on one
//! pooled connection, new connections/s fell from ~3.6k to ~390).
//!
//! Note: with this client and server (debug build, ~1k connections/s) the collapse has not
//! been reproduced; the test guards the stream count, it does not yet pin the cause.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::{run_in, thread_in, NodeId};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: b1\r\nConnection: close\r\n\r\n";
const RESPONSE: usize = 1024;

#[test]
fn forty_thousand_short_connections_keep_their_rate() {
    const TOTAL: u64 = 42_000;
    const WINDOW: u64 = 6_000;
    const CLIENTS: usize = 8;
    let mesh = Mesh::start(MeshOptions {
        log_level: "warn".into(),
        ..MeshOptions::default()
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let listener = run_in(mesh.pod_ns("b1"), || TcpListener::bind("0.0.0.0:8080")).unwrap();
    listener.set_nonblocking(true).unwrap();
    let s = stop.clone();
    let server = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
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
                        // The server closes first, as a web server does with Connection: close.
                        let _ = c.shutdown(Shutdown::Both);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });

    let done = Arc::new(AtomicU64::new(0));
    let dst: SocketAddr = mesh.addr("b1", 8080);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let done = done.clone();
        clients.push(thread_in(mesh.pod_ns("a1"), move || {
            while done.fetch_add(1, Ordering::Relaxed) < TOTAL {
                let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(10)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                c.write_all(REQUEST).unwrap();
                let mut back = Vec::with_capacity(RESPONSE);
                c.read_to_end(&mut back).unwrap();
                assert_eq!(back.len(), RESPONSE);
            }
        }));
    }
    let mut rates = Vec::new();
    let mut mark = (0u64, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(300);
    while mark.0 + WINDOW <= TOTAL {
        std::thread::sleep(Duration::from_millis(20));
        let n = done.load(Ordering::Relaxed).min(TOTAL);
        if n >= mark.0 + WINDOW {
            let rate = (n - mark.0) as f64 / mark.1.elapsed().as_secs_f64();
            eprintln!("connections {n}: {rate:.0}/s");
            rates.push(rate.round());
            mark = (n, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "too slow: {rates:?}\n{}",
            mesh.logs(NodeId::A)
        );
    }
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    // The reported collapse was ~10x (3.6k/s to 390/s); a shared 2-core machine swings a
    // window by up to ~2x, so the bound sits between the two.
    let first = rates[0];
    let last = *rates.last().unwrap();
    assert!(
        last >= first * 0.3,
        "new connections/s collapsed over {TOTAL} connections: {rates:?}"
    );
}
