//! Hostile and broken peers against a real ztunnel's :15008, and a server with the wrong
//! identity against a real ztunnel client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use meshtunnel::identity::{CertManager, Identity, LocalCa, TlsContext};
use meshtunnel_e2e::apps::{connect_from, echo_exact, EchoServer};
use meshtunnel_e2e::mesh::TRUST_DOMAIN;
use meshtunnel_e2e::{Mesh, MeshOptions, PodSpec};
use rustls::pki_types::ServerName;
use test_support::{run_in, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// A TCP connection from node A's namespace (outside every pod) to `dst`.
fn tcp_from_node_a(mesh: &Mesh, dst: SocketAddr) -> TcpStream {
    let std = run_in(mesh.topo.node(NodeId::A), || {
        std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })
    .unwrap();
    std.set_nonblocking(true).unwrap();
    let _rt = mesh.rt.enter();
    TcpStream::from_std(std).unwrap()
}

/// Client TLS config presenting a cert for `client` issued by `ca`, expecting `server`.
fn client_tls(
    ca: LocalCa,
    trust_root: &LocalCa,
    client: &Identity,
    server: Identity,
) -> Arc<rustls::ClientConfig> {
    let tls = TlsContext::new(&[trust_root.root().clone()], TRUST_DOMAIN).unwrap();
    let certs = CertManager::new(Arc::new(ca), Duration::from_secs(3600));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let slot = rt.block_on(certs.get(client)).unwrap();
    tls.client_config(slot, vec![server]).unwrap()
}

fn b1_identity() -> Identity {
    Identity::new(TRUST_DOMAIN, "demo", "sa-b1")
}

#[test]
fn hostile_hbone_clients_get_refused_and_ztunnel_keeps_serving() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let hbone = mesh.addr("b1", 15008);
    let mesh_ca = LocalCa::load_or_create(&mesh.ca_dir(), TRUST_DOMAIN).unwrap();
    let client = Identity::new(TRUST_DOMAIN, "demo", "attacker");

    mesh.rt.block_on(async {
        // Random bytes: the connection is closed, nothing reaches the app.
        let mut s = tcp_from_node_a(&mesh, hbone);
        let junk: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let _ = s.write_all(&junk).await;
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "ztunnel kept a garbage connection open");

        // A client certificate from another CA: the handshake fails.
        let foreign = LocalCa::generate(TRUST_DOMAIN).unwrap();
        let cfg = client_tls(foreign, &mesh_ca, &client, b1_identity());
        let tcp = tcp_from_node_a(&mesh, hbone);
        let name = ServerName::IpAddress(hbone.ip().into());
        let res = async {
            let mut tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            // TLS 1.3: the server's verdict on our certificate arrives after our Finished.
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
            let mut b = [0u8; 1];
            let n = tls.read(&mut b).await?;
            Ok::<usize, std::io::Error>(n)
        }
        .await;
        assert!(
            !matches!(res, Ok(n) if n > 0),
            "foreign client got an answer: {res:?}"
        );

        // A valid mesh certificate: status codes for bad requests.
        let cfg = client_tls(
            LocalCa::load_or_create(&mesh.ca_dir(), TRUST_DOMAIN).unwrap(),
            &mesh_ca,
            &client,
            b1_identity(),
        );
        let tcp = tcp_from_node_a(&mesh, hbone);
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::IpAddress(hbone.ip().into()), tcp)
            .await
            .unwrap();
        let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let cases = [
            (
                Method::GET,
                format!("http://{}:8080/", mesh.pod_ip("b1")),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::CONNECT,
                format!("{}:8080", mesh.pod_ip("b2")),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::CONNECT,
                "not-an-ip:8080".to_owned(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::CONNECT,
                format!("{}:9999", mesh.pod_ip("b1")),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                Method::CONNECT,
                format!("{}:8080", mesh.pod_ip("b1")),
                StatusCode::OK,
            ),
        ];
        for (method, uri, want) in cases {
            let req = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .body(())
                .unwrap();
            h2 = h2.ready().await.unwrap();
            let (resp, _send) = h2.send_request(req, false).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), want, "{method} {uri}");
        }
    });
    // Only the last, valid CONNECT reached the app.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(echo.peers().len(), 1, "{:?}", echo.peers());

    // And the mesh still carries a normal pod's traffic.
    let conn = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080)).unwrap();
    echo_exact(conn, b"still serving").unwrap();
}

#[test]
fn client_refuses_a_server_with_an_unexpected_identity() {
    let mut pods = MeshOptions::default().pods;
    // The agent tells ztunnel B that b1 runs as "impostor"; the config says sa-b1.
    for p in pods.iter_mut().filter(|p| p.name == "b1") {
        *p = PodSpec {
            zds_service_account: Some("impostor".into()),
            ..p.clone()
        };
    }
    let mesh = Mesh::start(MeshOptions {
        pods,
        ..MeshOptions::default()
    })
    .unwrap();
    let echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let result = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080))
        .and_then(|c| echo_exact(c, b"secret"));
    assert!(result.is_err(), "connection to an impostor succeeded");
    assert!(echo.peers().is_empty(), "bytes reached the impostor's app");
    assert!(
        mesh.logs(NodeId::A).contains("unexpected identity"),
        "ztunnel A did not report the identity mismatch"
    );
}
