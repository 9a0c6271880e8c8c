//! ztunnel upgrade under traffic, as an operator rolls the DaemonSet (maxSurge 1,
//! maxUnavailable 0): on each node in turn a new ztunnel starts in its own namespace, the agent
//! (the library's ZdsServer, as in cni-agent) hands it every pod, and once it is ready the old one
//! gets SIGTERM. Meanwhile four client loops open connections back to back and long-lived
//! streams stay open: not one connection may be refused or reset, streams that end during the
//! drain finish normally, and the ones still open at CONNECTION_TERMINATION_DEADLINE see a clean
//! EOF.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshtunnel_e2e::apps::{spawn_in, EchoServer};
use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::NodeId;

const DEADLINE: Duration = Duration::from_secs(3);

struct Tally {
    t0: Instant,
    attempted: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    other: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, e: &std::io::Error, what: &str) {
        let counter = match e.kind() {
            ErrorKind::ConnectionRefused => &self.refused,
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                &self.reset
            }
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().unwrap();
        if s.len() < 10 {
            s.push(format!(
                "{what} at {:?}: {e} ({:?})",
                self.t0.elapsed(),
                e.kind()
            ));
        }
    }

    fn failed(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
            + self.reset.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed)
    }

    fn summary(&self) -> String {
        format!(
            "attempted {} ok {} refused {} reset {} other {}; first failures: {:?}",
            self.attempted.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.reset.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
            self.samples.lock().unwrap()
        )
    }
}

/// One short connection: connect, send, half-close, read the whole echo back.
fn short_conn(dst: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(payload)?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::with_capacity(payload.len());
    s.read_to_end(&mut back)?;
    if back != payload {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            format!("echo returned {} of {} bytes", back.len(), payload.len()),
        ));
    }
    Ok(())
}

/// How a long-lived stream ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// We finished it: half-close, echo read to EOF.
    Finished,
    /// ztunnel closed it (deadline) with a FIN: a clean EOF between two pings.
    ClosedCleanly,
    Failed(String),
}

/// Pings every 20 ms until `finish`, then half-closes and reads the rest.
fn long_stream(dst: SocketAddr, finish: Arc<AtomicBool>) -> StreamEnd {
    let run = || -> std::io::Result<StreamEnd> {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let ping = *b"0123456789abcdef";
        let mut pong = [0u8; 16];
        while !finish.load(Ordering::Relaxed) {
            s.write_all(&ping)?;
            let mut got = 0;
            while got < pong.len() {
                match s.read(&mut pong[got..])? {
                    0 if got == 0 => return Ok(StreamEnd::ClosedCleanly),
                    0 => return Ok(StreamEnd::Failed("EOF in the middle of an echo".into())),
                    n => got += n,
                }
            }
            if pong != ping {
                return Ok(StreamEnd::Failed("echo differs".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s.shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(if rest.is_empty() {
            StreamEnd::Finished
        } else {
            StreamEnd::Failed(format!(
                "{} unexpected bytes after the last echo",
                rest.len()
            ))
        })
    };
    run().unwrap_or_else(|e| StreamEnd::Failed(format!("{e} ({:?})", e.kind())))
}

/// A stream whose server never reads (b1:8081): the client writes until every buffer on the way
/// is full, so when the deadline cuts it, ztunnel's socket still holds unread bytes, the case in
/// which a plain close sends RST. Returns how the client saw it end.
fn stalled_stream(dst: SocketAddr) -> StreamEnd {
    let run = || -> std::io::Result<StreamEnd> {
        let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut w = s.try_clone()?;
        // Blocks once the buffers are full; fails once the connection is gone.
        let writer = std::thread::spawn(move || {
            let chunk = vec![7u8; 64 * 1024];
            while w.write_all(&chunk).is_ok() {}
        });
        let mut r = &s;
        let mut b = [0u8; 1];
        let end = match r.read(&mut b) {
            Ok(0) => StreamEnd::ClosedCleanly,
            Ok(_) => StreamEnd::Failed("the sink sent data".into()),
            Err(e) => StreamEnd::Failed(format!("{e} ({:?})", e.kind())),
        };
        // Our FIN (or the reset) ends the writer.
        let _ = s.shutdown(Shutdown::Both);
        let _ = writer.join();
        Ok(end)
    };
    run().unwrap_or_else(|e| StreamEnd::Failed(format!("{e} ({:?})", e.kind())))
}

/// A server in `ns` that accepts and never reads; stops when `stop` is set.
fn sink(mesh: &Mesh, pod: &str, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let l = test_support::run_in(mesh.pod_ns(pod), || {
        std::net::TcpListener::bind(("0.0.0.0", port))
    })
    .unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((c, _)) => held.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// Long-lived streams from a1 and a2 to b1: `finishers` end 1 s after `finish_at` is set,
/// `lingerers` never end by themselves.
struct Streams {
    finish: Arc<AtomicBool>,
    finishers: Vec<JoinHandle<StreamEnd>>,
    lingerers: Vec<JoinHandle<StreamEnd>>,
}

fn open_streams(mesh: &Mesh, dst: SocketAddr) -> Streams {
    let finish = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let mut s = Streams {
        finish: finish.clone(),
        finishers: Vec::new(),
        lingerers: Vec::new(),
    };
    for pod in ["a1", "a2"] {
        let f = finish.clone();
        s.finishers
            .push(spawn_in(mesh.pod_ns(pod), move || long_stream(dst, f)));
        let n = never.clone();
        s.lingerers
            .push(spawn_in(mesh.pod_ns(pod), move || long_stream(dst, n)));
    }
    // Let them connect through the ztunnel that is about to be replaced.
    std::thread::sleep(Duration::from_millis(300));
    s
}

fn check_streams(s: Streams, label: &str) {
    for h in s.finishers {
        let end = h.join().unwrap();
        assert_eq!(
            end,
            StreamEnd::Finished,
            "{label}: a stream ending during the drain"
        );
    }
    for h in s.lingerers {
        let end = h.join().unwrap();
        assert_eq!(
            end,
            StreamEnd::ClosedCleanly,
            "{label}: a stream still open at the drain deadline"
        );
    }
}

/// Upgrades `node`'s ztunnel while the long-lived streams run: the finishers end during the
/// drain, the lingerers are cut at the deadline.
fn upgrade_with_streams(mesh: &mut Mesh, node: NodeId, dst: SocketAddr, t0: Instant) {
    let streams = open_streams(mesh, dst);
    // Cut at node A's deadline, ztunnel A holds unread bytes of the client; at node B's, the
    // HBONE peer of ztunnel A goes away under a full stream.
    let sink_addr = SocketAddr::new(dst.ip(), 8081);
    let stalled = spawn_in(mesh.pod_ns("a1"), move || stalled_stream(sink_addr));
    std::thread::sleep(Duration::from_millis(300));
    let finish = streams.finish.clone();
    let finisher = std::thread::spawn(move || {
        // Ends the finishers a second into the drain: the old ztunnel serves them to the end.
        std::thread::sleep(Duration::from_millis(1500));
        finish.store(true, Ordering::Relaxed);
    });
    let (status, took) = mesh
        .upgrade_ztunnel(node, DEADLINE + Duration::from_secs(10))
        .unwrap();
    finisher.join().unwrap();
    assert!(
        status.success(),
        "old ztunnel on {node:?} exited with {status}"
    );
    // The lingerers kept it until the deadline.
    assert!(
        took >= DEADLINE,
        "old ztunnel on {node:?} exited after {took:?}, before the {DEADLINE:?} deadline"
    );
    eprintln!(
        "{node:?}: old ztunnel stopped {took:?} after SIGTERM (at {:?})",
        t0.elapsed()
    );
    check_streams(streams, &format!("{node:?}"));
    // The lingerers were wound down (END_STREAM both ways), not reset: the ztunnel on the
    // other node, which stayed, logged them as ordinary closes. (The stalled stream to 8081
    // cannot end that way: its bytes never drain, so it is cut.)
    let peer = if node == NodeId::A {
        NodeId::B
    } else {
        NodeId::A
    };
    let port = format!(":{}", dst.port());
    let reset: Vec<String> = mesh
        .logs(peer)
        .lines()
        .filter(|l| l.contains("connection complete") && l.contains(&port) && l.contains("error"))
        .map(str::to_owned)
        .collect();
    assert!(
        reset.is_empty(),
        "{peer:?} saw streams of the upgrade of {node:?} end in an error: {reset:#?}"
    );
    assert_eq!(
        stalled.join().unwrap(),
        StreamEnd::ClosedCleanly,
        "{node:?}: a stream with unread bytes cut at the deadline"
    );
}

#[test]
fn ztunnel_upgrade_loses_no_connection() {
    let mut mesh = Mesh::start(MeshOptions {
        env: vec![(
            "CONNECTION_TERMINATION_DEADLINE".into(),
            format!("{}s", DEADLINE.as_secs()),
        )],
        // e.g. UPGRADE_LOG=info,meshtunnel::proxy::outbound=debug to see why a connection failed.
        log_level: std::env::var("UPGRADE_LOG").unwrap_or("info".into()),
        ..MeshOptions::default()
    })
    .unwrap();
    let _echo = EchoServer::start(mesh.pod_ns("b1"), "0.0.0.0:8080".parse().unwrap()).unwrap();
    let sink_stop = Arc::new(AtomicBool::new(false));
    let sink = sink(&mesh, "b1", 8081, sink_stop.clone());
    let dst = mesh.addr("b1", 8080);

    let tally = Arc::new(Tally {
        t0: Instant::now(),
        attempted: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        reset: AtomicU64::new(0),
        other: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = ["a1", "a1", "a2", "a2"]
        .into_iter()
        .enumerate()
        .map(|(i, pod)| {
            let (tally, stop) = (tally.clone(), stop.clone());
            spawn_in(mesh.pod_ns(pod), move || {
                let payload = format!("loop {i} says hello").into_bytes();
                while !stop.load(Ordering::Relaxed) {
                    tally.attempted.fetch_add(1, Ordering::Relaxed);
                    match short_conn(dst, &payload) {
                        Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            tally.fail(&e, pod);
                            0
                        }
                    };
                }
            })
        })
        .collect();

    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    // Client side first (the pods' outbound listeners), then the server side (b1's HBONE
    // listener, which node A's pooled HBONE connections point at).
    upgrade_with_streams(&mut mesh, NodeId::A, dst, tally.t0);
    std::thread::sleep(Duration::from_secs(1));
    upgrade_with_streams(&mut mesh, NodeId::B, dst, tally.t0);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    let elapsed = started.elapsed();
    sink_stop.store(true, Ordering::Relaxed);
    sink.join().unwrap();
    let attempted = tally.attempted.load(Ordering::Relaxed);
    eprintln!(
        "upgrade under load: {} in {elapsed:?} ({:.0}/s)",
        tally.summary(),
        attempted as f64 / elapsed.as_secs_f64()
    );
    assert!(
        attempted > 1000,
        "too little traffic to mean anything: {attempted}"
    );
    if tally.failed() > 0 {
        // The ztunnels' warnings say which side gave up on which connection.
        for node in [NodeId::A, NodeId::B] {
            for l in mesh
                .logs(node)
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("DEBUG"))
            {
                eprintln!("{node:?}: {l}");
            }
        }
    }
    assert_eq!(tally.failed(), 0, "{}", tally.summary());

    // The new ztunnels serve both nodes on their own.
    test_support::run_in(mesh.pod_ns("a1"), || {
        short_conn(dst, b"after both upgrades")
    })
    .unwrap();
    for node in [NodeId::A, NodeId::B] {
        mesh.wait_ready(node, Duration::from_secs(5)).unwrap();
    }
}
