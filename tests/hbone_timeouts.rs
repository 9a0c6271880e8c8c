//! Every wait of the HBONE pool and server is bounded: a dial that hangs, a peer that never
//! answers a CONNECT, a client that never sends the HTTP/2 preface, a client that vanishes
//! without a FIN in the middle of a stream, and a burst of callers to a dead peer (which costs
//! the burst one failed dial, not one per caller in turn).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request};
use meshtunnel::hbone::{self, H2Settings, Pool, PoolKey};
use meshtunnel::identity::{CertManager, Identity, LocalCa, TlsContext};
use meshtunnel::proxy::SocketOptions;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa)
}

fn req() -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())
        .unwrap()
}

/// Short bounds: a 200 ms connect timeout and a 100 ms handshake timeout.
fn short() -> H2Settings {
    H2Settings {
        handshake_timeout: Duration::from_millis(100),
        sockets: SocketOptions {
            connect_timeout: Duration::from_millis(200),
            ..SocketOptions::default()
        },
        ..H2Settings::default()
    }
}

fn key() -> PoolKey {
    PoolKey::new(
        id("client"),
        vec![id("server")],
        "127.0.0.1:1".parse().unwrap(),
    )
}

#[tokio::test]
async fn a_burst_to_a_dead_peer_waits_for_one_dial() {
    let dials = Arc::new(AtomicUsize::new(0));
    let d = dials.clone();
    // Each dial takes 300 ms and fails, like a SYN timeout.
    let dialer: hbone::Dialer = Arc::new(move |_key| {
        d.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer dropped the SYN",
            ))
        })
    });
    let pool = Pool::new(dialer, H2Settings::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(
            async move { pool.connect(&key(), req()).await },
        ));
    }
    for t in tasks {
        let e = t.await.unwrap().err().expect("a dead peer cannot succeed");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    }
    let took = start.elapsed();
    assert_eq!(dials.load(Ordering::SeqCst), 1, "the burst shared one dial");
    assert!(took < Duration::from_millis(900), "took {took:?}");
    // A caller arriving after the failure tries again (no lasting negative cache).
    assert!(pool.connect(&key(), req()).await.is_err());
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_dial_that_never_finishes_is_cut_at_the_deadline() {
    let dialer: hbone::Dialer = Arc::new(|_key| Box::pin(std::future::pending()));
    let pool = Pool::new(dialer, short());
    let start = Instant::now();
    let e = pool.connect(&key(), req()).await.err().unwrap();
    let took = start.elapsed();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    // Connect timeout plus handshake timeout: 300 ms.
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "took {took:?}"
    );
}

/// A real mTLS HBONE server whose handler never answers; the pool gives up on the CONNECT.
#[tokio::test]
async fn a_peer_that_never_answers_the_connect_is_given_up() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let tls = TlsContext::new(&[ca.root().clone()], "cluster.local").unwrap();
    let certs = CertManager::new(ca, Duration::from_secs(3600));
    let server_cfg = tls
        .server_config(certs.get(&id("server")).await.unwrap())
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = hbone::tls_accept(server_cfg, tcp).await.unwrap();
        let _ = hbone::serve_connection(tls, &H2Settings::default(), s, |_req, respond| {
            async move {
                // Holds the stream open without a response.
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(respond);
            }
        })
        .await;
    });
    let slot = certs.get(&id("client")).await.unwrap();
    let dialer: hbone::Dialer = Arc::new(move |key: PoolKey| {
        let cfg = tls.client_config(slot.clone(), key.dst.clone()).unwrap();
        Box::pin(async move {
            let tcp = TcpStream::connect(key.addr).await?;
            meshtunnel::hbone::tls_connect(cfg, ServerName::IpAddress(key.addr.ip().into()), tcp)
                .await
        })
    });
    let pool = Pool::new(dialer, short());
    let key = PoolKey::new(id("client"), vec![id("server")], addr);
    let start = Instant::now();
    let e = pool.connect(&key, req()).await.err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    stop.cancel();
}

#[tokio::test]
async fn a_client_that_never_sends_the_preface_is_dropped() {
    let (server_end, _client_end) = tokio::io::duplex(1024);
    let start = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        hbone::serve_connection(
            server_end,
            &short(),
            CancellationToken::new(),
            |_, _| async {},
        ),
    )
    .await
    .expect("serve_connection must give up on its own");
    assert!(r.is_err(), "a silent client is an error");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_secs(2),
        "took {took:?}"
    );
}

/// A client gone without a FIN (its pod's veth deleted, say) sends nothing more, not even a
/// pong: the server must close the connection and end its streams, whose app connections
/// would otherwise stay open until TCP keepalive gives up.
#[tokio::test]
async fn a_client_that_vanishes_mid_stream_is_released_by_the_pings() {
    let (server_end, client_end) = tokio::io::duplex(64 * 1024);
    let settings = H2Settings {
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(100),
        ..short()
    };
    let (stream_ended_tx, stream_ended) = tokio::sync::oneshot::channel::<()>();
    let stream_ended_tx = std::sync::Mutex::new(Some(stream_ended_tx));
    let server = tokio::spawn(async move {
        hbone::serve_connection(
            server_end,
            &settings,
            CancellationToken::new(),
            |req, _respond| {
                let tx = stream_ended_tx.lock().unwrap().take();
                async move {
                    let mut body = req.into_body();
                    // Ends (None or an error) only when the connection goes.
                    while let Some(Ok(_)) = body.data().await {}
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                }
            },
        )
        .await
    });
    let (mut client, conn) = h2::client::handshake(client_end).await.unwrap();
    let (freeze_tx, freeze) = tokio::sync::oneshot::channel::<()>();
    // Drives the client until frozen, then holds its end open without ever reading: a peer
    // that is simply no longer there.
    let client_task = tokio::spawn(async move {
        let mut conn = conn;
        tokio::select! {
            _ = &mut conn => {}
            _ = freeze => {}
        }
        std::future::pending::<()>().await;
        drop(conn);
    });
    let (_resp, mut send) = client.send_request(req(), false).unwrap();
    send.send_data(bytes::Bytes::from_static(b"hello"), false)
        .unwrap();
    // Let the stream reach the server and a ping or two be answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!server.is_finished(), "an answering client must be kept");
    freeze_tx.send(()).unwrap();
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server must give up on a silent client")
        .unwrap();
    assert!(r.is_err(), "a vanished client is an error: {r:?}");
    tokio::time::timeout(Duration::from_secs(1), stream_ended)
        .await
        .expect("the stream's handler must see its end")
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    client_task.abort();
}
