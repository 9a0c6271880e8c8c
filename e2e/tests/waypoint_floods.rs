//! Abuse of the waypoint's inner connections (the HTTP inside an HBONE tunnel), between real
//! ztunnels: an HTTP/2 rapid-reset flood and a CONTINUATION flood are cut off without stalling
//! other clients' streams, and 10,000 requests over short connections leave the waypoint's
//! file descriptors where they were.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel_e2e::waypoint::{GrpcBackend, HboneClient, HttpBackend, Waypoint};
use meshtunnel_e2e::{ExtraService, Mesh, MeshOptions, PodSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GRPC_PORT: u16 = 9090;

fn echo_vip() -> SocketAddr {
    SocketAddr::from(([10, 96, 0, 10], 80))
}

fn grpc_vip() -> SocketAddr {
    SocketAddr::from(([10, 96, 0, 20], GRPC_PORT))
}

/// b1 backs echo (HTTP/1) and grpc (HTTP/2); the waypoint runs in a2, clients send from b2.
fn start() -> (Mesh, Waypoint, Arc<HboneClient>, HttpBackend, GrpcBackend) {
    let mesh = Mesh::start(MeshOptions {
        pods: vec![
            PodSpec::meshed("a1"),
            PodSpec::plain("a2"),
            PodSpec::meshed("b1"),
            PodSpec::plain("b2"),
        ],
        extra_services: vec![ExtraService {
            name: "grpc",
            vip: Ipv4Addr::new(10, 96, 0, 20),
            port: GRPC_PORT,
            target_port: GRPC_PORT,
            endpoints: vec!["b1"],
        }],
        ..MeshOptions::default()
    })
    .unwrap();
    let http = HttpBackend::start(mesh.pod_ns("b1"), ([0, 0, 0, 0], 8080).into(), "b1").unwrap();
    let grpc =
        GrpcBackend::start(mesh.pod_ns("b1"), ([0, 0, 0, 0], GRPC_PORT).into(), "b1").unwrap();
    let wp = Waypoint::start(&mesh, "a2").unwrap();
    let client = Arc::new(HboneClient::new(&mesh, "b2", "a2").unwrap());
    (mesh, wp, client, http, grpc)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK for `POST /` to `echo`: :method POST, :scheme http, :path / (static table), then
/// :authority as a literal without indexing.
const REQUEST_BLOCK: &[u8] = &[0x83, 0x86, 0x84, 0x01, 0x04, b'e', b'c', b'h', b'o'];

/// Frames the waypoint sent back, by type; whether it ended the connection.
#[derive(Debug, Default)]
struct Seen {
    goaway: Option<u32>,
    frames: usize,
    closed: bool,
}

/// Reads the waypoint's side of an inner HTTP/2 connection until it closes or `wait` passes.
async fn read_frames(mut r: tokio::io::ReadHalf<tokio::io::DuplexStream>, wait: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            seen.frames += 1;
            if buf[3] == GOAWAY && len >= 8 {
                seen.goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
            }
            buf.drain(..9 + len);
        }
    }
    seen
}

/// gRPC calls on `clients` in turn until `stop`; the slowest call and any failure.
async fn victims(
    clients: Vec<Arc<HboneClient>>,
    stop: Arc<AtomicBool>,
) -> (usize, Duration, Vec<String>) {
    let (mut calls, mut slowest, mut errors) = (0, Duration::ZERO, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        for c in &clients {
            let t = Instant::now();
            match c.grpc(grpc_vip(), "/pkg.Greeter/Hello").await {
                Ok(r) if r.status == 200 && r.pod() == Some("b1") => {}
                Ok(r) => errors.push(format!("{r:?}")),
                Err(e) => errors.push(format!("{e:#}")),
            }
            calls += 1;
            slowest = slowest.max(t.elapsed());
        }
    }
    (calls, slowest, errors)
}

/// Runs `flood` on tunnels of `attacker`, one after the other for `FLOOD_FOR` (each new
/// tunnel once the waypoint ended the previous one), while victims call the gRPC service from
/// another stream of the same HBONE connection and from a connection of their own. Returns
/// what the attacker saw from the waypoint on each tunnel.
fn flood_with_victims(
    mesh: &Mesh,
    wp: &Waypoint,
    attacker: &Arc<HboneClient>,
    name: &str,
    flood: Vec<Vec<u8>>,
) -> Vec<Seen> {
    const FLOOD_FOR: Duration = Duration::from_secs(3);
    let other = Arc::new({
        let _rt = mesh.rt.enter();
        attacker.fresh()
    });
    mesh.rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let v = tokio::spawn(victims(vec![attacker.clone(), other], stop.clone()));
        let started = Instant::now();
        let mut rounds = Vec::new();
        let mut written = 0;
        while started.elapsed() < FLOOD_FOR {
            let tunnel = attacker.duplex(grpc_vip()).await.unwrap();
            let (r, mut w) = tokio::io::split(tunnel);
            let reader = tokio::spawn(read_frames(r, Duration::from_secs(20)));
            for chunk in &flood {
                // The waypoint may stop reading or close: either ends this round.
                match tokio::time::timeout(Duration::from_secs(5), w.write_all(chunk)).await {
                    Ok(Ok(())) => written += 1,
                    _ => break,
                }
            }
            let _ = w.shutdown().await;
            rounds.push(reader.await.unwrap());
        }
        stop.store(true, Ordering::Relaxed);
        let (calls, slowest, errors) = v.await.unwrap();
        eprintln!(
            "{name}: {} rounds, {written} chunks of {} written in {:?}; first round: {:?}; \
             victims: {calls} calls, slowest {slowest:?}, {} errors",
            rounds.len(),
            flood.len(),
            started.elapsed(),
            rounds.first(),
            errors.len()
        );
        assert!(
            errors.is_empty(),
            "{name}: other streams failed: {errors:?}\n--- waypoint ---\n{}",
            wp.logs()
                .lines()
                .filter(|l| l.contains("fail") || l.contains("error") || l.contains("status=503"))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(calls >= 10, "{name}: the victims made only {calls} calls");
        assert!(
            slowest < Duration::from_secs(1),
            "{name}: a victim call took {slowest:?}"
        );
        rounds
    })
}

#[test]
fn h2_floods_on_the_inner_connection_do_not_stall_other_streams() {
    let (mesh, wp, client, _http, _grpc) = start();
    let r = mesh
        .rt
        .block_on(client.grpc(grpc_vip(), "/pkg.Greeter/Hello"))
        .unwrap();
    assert_eq!((r.status, r.pod()), (200, Some("b1")), "{r:?}");

    // Rapid reset: 20,000 streams each opened and cancelled at once (CVE-2023-44487).
    let mut chunks = Vec::new();
    let mut first = PREFACE.to_vec();
    frame(&mut first, SETTINGS, 0, 0, &[]);
    chunks.push(first);
    for batch in 0..200u32 {
        let mut c = Vec::new();
        for i in 0..100u32 {
            let stream = 1 + 2 * (batch * 100 + i);
            frame(&mut c, HEADERS, END_HEADERS, stream, REQUEST_BLOCK);
            frame(&mut c, RST_STREAM, 0, stream, &8u32.to_be_bytes());
        }
        chunks.push(c);
    }
    let rounds = flood_with_victims(&mesh, &wp, &client, "rapid reset", chunks);
    // The waypoint ended every flooding connection rather than serve 20,000 streams, with
    // ENHANCE_YOUR_CALM (0xb). (A round's GOAWAY can be lost when the tunnel ends while the
    // attacker is still writing: the tunnel is reset and its unread bytes dropped; what
    // matters is that every round ends and the victims keep being served.)
    let calm = rounds.iter().filter(|s| s.goaway == Some(0xb)).count();
    eprintln!(
        "rapid reset: {calm} of {} rounds saw GOAWAY ENHANCE_YOUR_CALM",
        rounds.len()
    );
    assert!(
        rounds.iter().all(|s| s.closed),
        "a flooding connection stayed open"
    );
    assert!(
        calm * 2 > rounds.len(),
        "{calm} of {} rounds ended with ENHANCE_YOUR_CALM",
        rounds.len()
    );

    // CONTINUATION flood: one header block that never ends (CVE-2024-27316 and kin), 16 MiB
    // of CONTINUATION frames against a 60 KiB header list limit.
    let mut first = PREFACE.to_vec();
    frame(&mut first, SETTINGS, 0, 0, &[]);
    let mut block = REQUEST_BLOCK.to_vec();
    // A literal header "x-big" whose value claims 10,000,000 bytes (HPACK integer, 7-bit prefix).
    block.extend_from_slice(&[0x00, 0x05, b'x', b'-', b'b', b'i', b'g', 0x7f]);
    let mut n: u32 = 10_000_000 - 127;
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
    frame(&mut first, HEADERS, END_STREAM, 1, &block);
    let mut chunks = vec![first];
    for _ in 0..1024 {
        let mut c = Vec::new();
        frame(&mut c, CONTINUATION, 0, 1, &[b'a'; 16384]);
        chunks.push(c);
    }
    let rounds = flood_with_victims(&mesh, &wp, &client, "CONTINUATION flood", chunks);
    let goaway = rounds.iter().filter(|s| s.goaway.is_some()).count();
    eprintln!(
        "CONTINUATION flood: {goaway} of {} rounds saw GOAWAY",
        rounds.len()
    );
    assert!(
        rounds.iter().all(|s| s.closed),
        "a flooding connection stayed open"
    );
    assert!(goaway > 0, "no round ended with a GOAWAY: {rounds:?}");

    // Still serving, and nothing panicked.
    let r = mesh
        .rt
        .block_on(client.grpc(grpc_vip(), "/pkg.Greeter/Hello"))
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!wp.logs().contains("panicked"), "{}", wp.logs());
}

#[test]
fn fds_back_to_baseline_after_10000_short_connections() {
    let (mesh, wp, client, _http, _grpc) = start();
    // Warm up (config, pools, the upstream HBONE connection), then let idle connections close.
    let r = mesh
        .rt
        .block_on(client.fresh().request(echo_vip(), "GET", "/public", &[]))
        .unwrap();
    assert_eq!((r.status, r.pod()), (200, Some("b1")), "{r:?}");
    drop(client);
    std::thread::sleep(Duration::from_millis(500));
    let before = wp.fds().unwrap();

    // Every request on a connection of its own: HBONE (TCP + TLS) to the waypoint, one
    // HTTP/1.1 request with `Connection: close`, then the client drops the connection.
    const N: usize = 10_000;
    let base = Arc::new(HboneClient::new(&mesh, "b2", "a2").unwrap());
    let started = Instant::now();
    let failures = mesh.rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let (mut sent, mut done, mut failures) = (0, 0, Vec::new());
        while done < N {
            while sent < N && set.len() < 16 {
                let c = base.fresh();
                set.spawn(async move { c.request(echo_vip(), "GET", "/public", &[]).await });
                sent += 1;
            }
            let Some(r) = set.join_next().await else {
                break;
            };
            done += 1;
            match r.unwrap() {
                Ok(r) if r.status == 200 => {}
                Ok(r) => failures.push(format!("{r:?}")),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        failures
    });
    let took = started.elapsed();
    drop(base);
    assert!(
        failures.is_empty(),
        "{} of {N} failed, first {:?}\n--- waypoint ---\n{}",
        failures.len(),
        failures.first(),
        wp.logs()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let during = wp.fds().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = during;
    while after > before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = wp.fds().unwrap();
    }
    eprintln!(
        "{N} requests over short connections in {took:?}: waypoint fds {before} before, \
         {during} right after, {after} settled"
    );
    assert!(after <= before + 2, "fds grew from {before} to {after}");
    assert!(!wp.logs().contains("panicked"), "the waypoint panicked");
}
