//! ztunnel's side of waypoints through two real ztunnels: service traffic is steered to the
//! echo service's waypoint with the VIP as the CONNECT authority; the waypoint's own traffic
//! goes direct; the destination app sees the client the waypoint names in `Forwarded`, while
//! L4 policy sees the waypoint; a missing or unreachable waypoint refuses the connection and
//! never sends it around the waypoint.
//!
//! Topology: a1 (client) on node A; a2 on node A is the waypoint pod (service account
//! `waypoint`, enrolled, so ztunnel A captures what it sends); b1 on node B serves the echo
//! service (VIP 10.96.0.10:80 -> 8080).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use meshtunnel::hbone::{self, H2Settings, Pool, PoolKey};
use meshtunnel::identity::{peer_identity, CertManager, Identity, LocalCa, TlsContext};
use meshtunnel::proxy::{new_tcp_socket, PlainSocketFactory};
use meshtunnel_e2e::apps::{connect_from, echo_exact, random_bytes, EchoServer};
use meshtunnel_e2e::mesh::{NAMESPACE, TRUST_DOMAIN};
use meshtunnel_e2e::{Mesh, MeshOptions, PodSpec};
use rustls::pki_types::ServerName;
use socket2::SockAddr;
use test_support::{thread_in, NodeId};
use tokio_util::sync::CancellationToken;

const VIP: &str = "10.96.0.10:80";
/// ztunnel's in-pod mark: sockets carrying it pass the pod's capture rules, as the real
/// waypoint's do (it is not captured; it speaks HBONE itself).
const MARK: u32 = 1337;

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn id(sa: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, NAMESPACE, sa)
}

/// One CONNECT the stand-in waypoint received.
#[derive(Clone, Debug)]
struct Seen {
    authority: String,
    forwarded: Option<String>,
    client: Identity,
}

/// A stand-in for the waypoint, for these tests only: the real waypoint binary (crate
/// `waypoint/`) is built separately and arrives later. This is the least of its data path,
/// made from the library's HBONE server, pool and identity pieces: it terminates HBONE on the
/// waypoint pod's IP:15008 with a certificate for the waypoint's identity, records each
/// CONNECT, and relays it as HBONE with its own certificate to the echo endpoint's pod
/// IP:15008 (authority podIP:targetPort, the `forwarded` header passed on), which is what the
/// real waypoint must do too. It routes only the echo service (the VIP, or b1's address).
struct StandinWaypoint {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl StandinWaypoint {
    fn start(mesh: &Mesh, pod: &str, endpoint: SocketAddr, endpoint_id: Identity) -> Self {
        let ca = LocalCa::load_or_create(&mesh.ca_dir(), TRUST_DOMAIN).unwrap();
        let tls = TlsContext::new(&[ca.root().clone()], TRUST_DOMAIN).unwrap();
        let certs = CertManager::new(Arc::new(ca), Duration::from_secs(3600));
        let slot = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(certs.get(&id("waypoint")))
            .unwrap();
        let listen = mesh.addr(pod, 15008);
        // Bound to the pod's own address with SO_REUSEPORT: ztunnel's in-pod listener is the
        // wildcard 0.0.0.0:15008, and the kernel prefers the exact address.
        let listener = test_support::run_in(mesh.pod_ns(pod), || {
            let s = new_tcp_socket(false, None)?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.bind(&SockAddr::from(listen))?;
            s.listen(128)?;
            Ok::<_, std::io::Error>(std::net::TcpListener::from(s))
        })
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = thread_in(mesh.pod_ns(pod), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(
                listener,
                tls,
                slot,
                endpoint,
                endpoint_id,
                seen2,
                stop2,
            ));
        });
        StandinWaypoint {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for StandinWaypoint {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    tls: TlsContext,
    slot: Arc<meshtunnel::identity::CertSlot>,
    endpoint: SocketAddr,
    endpoint_id: Identity,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let server = tls.server_config(slot.clone()).unwrap();
    // Sockets are made on this thread, which is inside the waypoint pod's namespace.
    let factory = Arc::new(PlainSocketFactory { mark: Some(MARK) });
    let dialer: hbone::Dialer = Arc::new(move |key: PoolKey| {
        let cfg = tls.client_config(slot.clone(), key.dst.clone());
        let factory = factory.clone();
        Box::pin(async move {
            let cfg = cfg.map_err(std::io::Error::other)?;
            let tcp = meshtunnel::proxy::connect(factory.as_ref(), key.addr, None).await?;
            meshtunnel::hbone::tls_connect(cfg, ServerName::IpAddress(key.addr.ip().into()), tcp)
                .await
        })
    });
    let pool = Pool::new(dialer, H2Settings::default());
    let key = PoolKey::new(
        id("waypoint"),
        vec![endpoint_id],
        SocketAddr::new(endpoint.ip(), 15008),
    );
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
        };
        let (server, pool, key, seen, stop) = (
            server.clone(),
            pool.clone(),
            key.clone(),
            seen.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let Ok(tls) = meshtunnel::hbone::tls_accept(server, tcp).await else {
                return;
            };
            let Some(client) = peer_identity(tls.get_ref().1.peer_certificates()) else {
                return;
            };
            let _ = hbone::serve_connection(tls, &H2Settings::default(), stop, |req, respond| {
                relay(
                    req,
                    respond,
                    client.clone(),
                    pool.clone(),
                    key.clone(),
                    endpoint,
                    seen.clone(),
                )
            })
            .await;
        });
    }
}

async fn relay(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    client: Identity,
    pool: Pool,
    key: PoolKey,
    endpoint: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let forwarded = req
        .headers()
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock().unwrap().push(Seen {
        authority: authority.clone(),
        forwarded: forwarded.clone(),
        client,
    });
    if req.method() != Method::CONNECT || (authority != VIP && authority != endpoint.to_string()) {
        hbone::reject(respond, StatusCode::NOT_FOUND);
        return;
    }
    let mut up = Request::builder()
        .method(Method::CONNECT)
        .uri(endpoint.to_string());
    if let Some(f) = &forwarded {
        up = up.header(http::header::FORWARDED, f);
    }
    let t = match pool.connect(&key, up.body(()).unwrap()).await {
        Ok(t) if t.response.status() == StatusCode::OK => t,
        Ok(t) => return hbone::reject(respond, t.response.status()),
        Err(_) => return hbone::reject(respond, StatusCode::SERVICE_UNAVAILABLE),
    };
    let Ok(down) = respond.send_response(Response::new(()), false) else {
        return;
    };
    let _guard = t.guard;
    let (a, b) = tokio::io::duplex(256 * 1024);
    let _ = tokio::join!(
        hbone::copy_bidirectional(a, down, req.into_body()),
        hbone::copy_bidirectional(b, t.send, t.response.into_body()),
    );
}

fn waypoint_at(ip: impl std::fmt::Display) -> String {
    format!("{{destination: \"/{ip}\", hboneMtlsPort: 15008}}")
}

/// Sends a line and reads: true if it came back, false if the connection was closed.
fn echoed(mut c: TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let msg = b"waypoint-ping\n";
    if c.write_all(msg).is_err() {
        return false;
    }
    let mut back = [0u8; 14];
    match c.read_exact(&mut back) {
        Ok(()) => {
            assert_eq!(&back, msg);
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ) =>
        {
            false
        }
        Err(e) => panic!("neither echoed nor closed: {e}"),
    }
}

fn logs(mesh: &Mesh) -> String {
    format!(
        "--- ztunnel A ---\n{}\n--- ztunnel B ---\n{}",
        mesh.logs(NodeId::A),
        mesh.logs(NodeId::B)
    )
}

/// Writes the config with `waypoint` on the echo service and waits until ztunnel A applied it.
fn set_waypoint(mesh: &Mesh, waypoint: &str) {
    let applied = || mesh.logs(NodeId::A).matches("applied local config").count();
    let before = applied();
    mesh.write_config_full(&mesh.opts.pods, "", Some(waypoint))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while applied() == before {
        assert!(
            Instant::now() < deadline,
            "config not applied\n{}",
            logs(mesh)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(mesh: &Mesh, waypoint: &str, reason: &str) -> f64 {
    let text = mesh.metrics(NodeId::A).unwrap();
    let want = format!(
        "ztunnel_waypoint_unavailable_total{{waypoint=\"{waypoint}\",reason=\"{reason}\"}}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn service_traffic_goes_through_its_waypoint_and_never_around_it() {
    let mut waypoint_pod = PodSpec::meshed("a2");
    waypoint_pod.service_account = "waypoint".into();
    let mesh = Mesh::start(MeshOptions {
        pods: vec![
            PodSpec::meshed("a1"),
            waypoint_pod,
            PodSpec::meshed("b1"),
            PodSpec::plain("b2"),
        ],
        echo_waypoint: None,
        ..MeshOptions::default()
    })
    .unwrap();
    let a1: IpAddr = mesh.pod_ip("a1").into();
    let a2: IpAddr = mesh.pod_ip("a2").into();
    let echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let wp = StandinWaypoint::start(&mesh, "a2", mesh.addr("b1", 8080), id("sa-b1"));
    set_waypoint(&mesh, &waypoint_at(a2));
    let vip: SocketAddr = VIP.parse().unwrap();

    // a1 -> VIP: through the waypoint, authority VIP:port, a1's identity, a1 named in
    // Forwarded; b1's app sees a1 (ztunnel B trusts Forwarded from b1's waypoint).
    let conn = connect_from(mesh.pod_ns("a1"), vip).unwrap();
    echo_exact(conn, &random_bytes(256 * 1024))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&mesh)));
    let seen = wp.seen();
    assert_eq!(seen.len(), 1, "{seen:?}\n{}", logs(&mesh));
    assert_eq!(seen[0].authority, VIP);
    assert_eq!(seen[0].client, id("sa-a1"));
    let fwd = seen[0].forwarded.clone().unwrap_or_default();
    assert!(fwd.contains(&format!("for=\"{a1}:")), "{fwd}");
    assert!(fwd.contains("host=echo.demo.svc.cluster.local"), "{fwd}");
    assert_eq!(
        echo.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![a1]
    );

    // The waypoint pod's own connection to the VIP (captured by ztunnel A) goes straight to
    // the endpoint, not back into the waypoint.
    let conn = connect_from(mesh.pod_ns("a2"), vip).unwrap();
    assert!(echoed(conn), "{}", logs(&mesh));
    assert_eq!(
        wp.seen().len(),
        1,
        "looped through the waypoint: {:?}",
        wp.seen()
    );
    assert_eq!(echo.peers().last().unwrap().ip(), a2);

    // Workload-addressed traffic to b1 (which has no workload waypoint) is not steered.
    let conn = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080)).unwrap();
    assert!(echoed(conn));
    assert_eq!(wp.seen().len(), 1);
    assert_eq!(echo.peers().last().unwrap().ip(), a1);

    // A waypoint the config does not know: refused, counted, logged, never sent direct.
    let peers = echo.peers().len();
    let unknown = "10.244.1.250";
    set_waypoint(&mesh, &waypoint_at(unknown));
    let conn = connect_from(mesh.pod_ns("a1"), vip).unwrap();
    assert!(!echoed(conn), "sent around a missing waypoint");
    assert_eq!(echo.peers().len(), peers, "reached the endpoint directly");
    let name = format!("/{unknown}");
    assert!(
        metric(&mesh, &name, "unknown") >= 1.0,
        "{}",
        mesh.metrics(NodeId::A).unwrap()
    );
    assert!(
        mesh.logs(NodeId::A)
            .lines()
            .any(|l| l.contains("waypoint cannot be used") && l.contains(&name)),
        "{}",
        logs(&mesh)
    );

    // A known waypoint that does not answer (b2 runs nothing on 15008): same.
    let b2 = mesh.pod_ip("b2");
    set_waypoint(&mesh, &waypoint_at(b2));
    let conn = connect_from(mesh.pod_ns("a1"), vip).unwrap();
    assert!(!echoed(conn), "sent around an unreachable waypoint");
    assert_eq!(echo.peers().len(), peers, "reached the endpoint directly");
    assert!(metric(&mesh, &format!("/{b2}"), "unreachable") >= 1.0);
    assert_eq!(wp.seen().len(), 1);
}
