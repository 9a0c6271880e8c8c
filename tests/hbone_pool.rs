//! The HBONE pool and server on loopback with real TLS: stream accounting, one dial per
//! burst, half-close both ways, idle release.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use meshtunnel::hbone::{self, H2Settings, Pool, PoolKey};
use meshtunnel::identity::{CertManager, Identity, LocalCa, TlsContext};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa)
}

struct Fixture {
    pool: Pool,
    key: PoolKey,
    accepted: Arc<AtomicUsize>,
    /// Drains the server connections open when it fires (as an old ztunnel does on SIGTERM);
    /// later ones are served normally (the new ztunnel's).
    drain: CancellationToken,
    /// How each server connection ended: "ok" or the error.
    ended: Arc<std::sync::Mutex<Vec<String>>>,
}

/// An HBONE server whose every CONNECT stream echoes its bytes back, and a pool dialing it.
async fn fixture(settings: H2Settings) -> Fixture {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let tls = TlsContext::new(&[ca.root().clone()], "cluster.local").unwrap();
    let certs = CertManager::new(ca, Duration::from_secs(3600));
    let server_cfg = tls
        .server_config(certs.get(&id("server")).await.unwrap())
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let srv_settings = settings.clone();
    let drain = CancellationToken::new();
    let drain_srv = drain.clone();
    let ended = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ended_srv = ended.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            acc.fetch_add(1, Ordering::SeqCst);
            let cfg = server_cfg.clone();
            let s = srv_settings.clone();
            let ended = ended_srv.clone();
            let drain = if drain_srv.is_cancelled() {
                CancellationToken::new()
            } else {
                drain_srv.clone()
            };
            tokio::spawn(async move {
                let Ok(tls) = hbone::tls_accept(cfg, tcp).await else {
                    return;
                };
                let stop = CancellationToken::new();
                let r =
                    hbone::serve_draining(tls, &s, drain, stop, |req, mut respond| async move {
                        if req.method() != Method::CONNECT {
                            hbone::reject(respond, StatusCode::BAD_REQUEST);
                            return;
                        }
                        let send = respond.send_response(Response::new(()), false).unwrap();
                        let (a, b) = tokio::io::duplex(256 * 1024);
                        tokio::spawn(async move {
                            let (mut r, mut w) = tokio::io::split(b);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        });
                        let _ = hbone::copy_bidirectional(a, send, req.into_body()).await;
                    })
                    .await;
                ended.lock().unwrap().push(match r {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.to_string(),
                });
            });
        }
    });
    let client_slot = certs.get(&id("client")).await.unwrap();
    let dialer: hbone::Dialer = Arc::new(move |key: PoolKey| {
        let cfg = tls
            .client_config(client_slot.clone(), key.dst.clone())
            .unwrap();
        Box::pin(async move {
            let tcp = TcpStream::connect(key.addr).await?;
            meshtunnel::hbone::tls_connect(cfg, ServerName::IpAddress(key.addr.ip().into()), tcp)
                .await
        })
    });
    Fixture {
        pool: Pool::new(dialer, settings),
        key: PoolKey::new(id("client"), vec![id("server")], addr),
        accepted,
        drain,
        ended,
    }
}

fn connect_req(target: SocketAddr) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .unwrap()
}

/// Opens a tunnel and returns the local end of it as a byte stream.
async fn open(f: &Fixture) -> tokio::io::DuplexStream {
    let t = f
        .pool
        .connect(&f.key, connect_req("10.0.0.1:80".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(t.response.status(), StatusCode::OK);
    let (app, ours) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let _g = t.guard;
        let _ = hbone::copy_bidirectional(ours, t.send, t.response.into_body()).await;
    });
    app
}

#[tokio::test]
async fn eight_mib_round_trips_with_half_close() {
    let f = fixture(H2Settings::default()).await;
    let app = open(&f).await;
    let data: Vec<u8> = (0..8 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
    let (mut r, mut w) = tokio::io::split(app);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        // Half-close: the echo side must see EOF, finish, and its EOF must come back.
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut back))
        .await
        .expect("EOF must propagate back")
        .unwrap();
    writer.await.unwrap();
    assert!(back == data, "echoed bytes differ");
}

#[tokio::test]
async fn a_burst_dials_once_and_streams_overflow_to_a_second_connection() {
    let f = Arc::new(fixture(H2Settings::default()).await);
    let mut tasks = Vec::new();
    for _ in 0..150 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move { open(&f).await }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    assert_eq!(f.pool.dials(), 2, "150 streams at <=100 per connection");
    assert_eq!(f.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_are_released() {
    let settings = H2Settings {
        idle_timeout: Duration::from_millis(200),
        ..H2Settings::default()
    };
    let f = fixture(settings).await;
    let mut app = open(&f).await;
    app.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    app.read_exact(&mut b).await.unwrap();
    assert_eq!(f.pool.open_connections(), 1);
    app.shutdown().await.unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    drop(app);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(f.pool.open_connections(), 0);
    let _again = open(&f).await;
    assert_eq!(f.pool.dials(), 2, "a new caller dials afresh");
}

#[tokio::test]
async fn non_connect_gets_400() {
    let f = fixture(H2Settings::default()).await;
    let req = Request::builder()
        .method(Method::GET)
        .uri("http://10.0.0.1:80/")
        .body(())
        .unwrap();
    let t = f.pool.connect(&f.key, req).await.unwrap();
    assert_eq!(t.response.status(), StatusCode::BAD_REQUEST);
}

/// A peer that drains (ztunnel upgrade) tells the pool with GOAWAY: the tunnels it already
/// carries go on, and new CONNECTs, including the ones racing the GOAWAY, go to a new
/// connection instead of failing.
#[tokio::test]
async fn a_draining_peer_keeps_its_tunnels_and_new_ones_move_to_a_new_connection() {
    let f = Arc::new(fixture(H2Settings::default()).await);
    let old = open(&f).await;
    assert_eq!(f.accepted.load(Ordering::SeqCst), 1);
    // CONNECTs in flight while the GOAWAY arrives, and after it.
    let racing: Vec<_> = (0..50)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i / 5)).await;
                echo_once(open(&f).await, b"new").await
            })
        })
        .collect();
    f.drain.cancel();
    for t in racing {
        t.await.unwrap();
    }
    assert!(
        f.accepted.load(Ordering::SeqCst) >= 2,
        "new tunnels were not moved to a new connection"
    );
    // The tunnel on the draining connection still works to its end.
    echo_once(old, b"old tunnel still served").await;
}

async fn echo_once(app: tokio::io::DuplexStream, msg: &[u8]) {
    let (mut r, mut w) = tokio::io::split(app);
    w.write_all(msg).await.unwrap();
    w.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, msg);
}

/// A stopping ztunnel closes its pool: the peer sees each connection end cleanly (GOAWAY,
/// then close_notify), not a connection that just vanishes, and before `close` returns.
#[tokio::test]
async fn closing_the_pool_ends_its_connections_cleanly() {
    let f = fixture(H2Settings::default()).await;
    echo_once(open(&f).await, b"before close").await;
    assert_eq!(f.pool.open_connections(), 1);
    f.pool.close(Duration::from_secs(5)).await;
    // The server task records the end right after h2 returns; give it a moment.
    for _ in 0..50 {
        if !f.ended.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*f.ended.lock().unwrap(), vec!["ok".to_string()]);
    assert_eq!(f.pool.open_connections(), 0);
    // The pool still works afterwards.
    echo_once(open(&f).await, b"after close").await;
}
