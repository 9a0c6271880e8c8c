//! Real TLS 1.3 handshakes over in-memory pipes: the verifiers are the security boundary, so
//! they are tested with real certificates, good and bad.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

pub(super) fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa)
}

pub(super) struct Side {
    pub(super) ctx: TlsContext,
    pub(super) mgr: Arc<CertManager>,
}

pub(super) fn side(ca: LocalCa) -> Side {
    let ctx = TlsContext::new(&[ca.root().clone()], "cluster.local").unwrap();
    Side {
        ctx,
        mgr: CertManager::new(Arc::new(ca), Duration::from_secs(3600)),
    }
}

/// Runs one handshake; returns (client result, server result, identity the server saw).
pub(super) async fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> (Result<(), String>, Result<Option<Identity>, String>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let srv = tokio::spawn(async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(b)
            .await
            .map_err(|e| e.to_string())?;
        let peer = peer_identity(tls.get_ref().1.peer_certificates());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let cli = async {
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    }
    .await;
    let srv = srv.await.unwrap();
    (cli, srv)
}

#[tokio::test]
async fn mutual_tls_between_workloads_of_one_ca() {
    let s = side(LocalCa::generate("cluster.local").unwrap());
    let server = s
        .ctx
        .server_config(s.mgr.get(&id("server")).await.unwrap())
        .unwrap();
    let client = s
        .ctx
        .client_config(s.mgr.get(&id("client")).await.unwrap(), vec![id("server")])
        .unwrap();
    let (c, srv) = handshake(client, server).await;
    assert_eq!(c, Ok(()));
    assert_eq!(srv, Ok(Some(id("client"))));
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let s = side(LocalCa::generate("cluster.local").unwrap());
    let server = s
        .ctx
        .server_config(s.mgr.get(&id("impostor")).await.unwrap())
        .unwrap();
    let client = s
        .ctx
        .client_config(s.mgr.get(&id("client")).await.unwrap(), vec![id("server")])
        .unwrap();
    let (c, srv) = handshake(client, server).await;
    assert!(c.unwrap_err().contains("NotValidForName"));
    assert!(srv.is_err(), "server must not complete: {srv:?}");
}

#[tokio::test]
async fn server_refuses_client_from_another_ca() {
    let good = side(LocalCa::generate("cluster.local").unwrap());
    let foreign = side(LocalCa::generate("cluster.local").unwrap());
    let server = good
        .ctx
        .server_config(good.mgr.get(&id("server")).await.unwrap())
        .unwrap();
    // The attacker trusts our root (to get past its own check) but signs with its own CA.
    let client = good
        .ctx
        .client_config(
            foreign.mgr.get(&id("client")).await.unwrap(),
            vec![id("server")],
        )
        .unwrap();
    let (_, srv) = handshake(client, server).await;
    let err = srv.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_foreign_trust_domain() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let ctx = TlsContext::new(&[ca.root().clone()], "cluster.local").unwrap();
    let mgr = CertManager::new(ca.clone(), Duration::from_secs(3600));
    let server = ctx
        .server_config(mgr.get(&id("server")).await.unwrap())
        .unwrap();
    let other_td = Identity::new("evil.example", "demo", "client");
    let client = ctx
        .client_config(mgr.get(&other_td).await.unwrap(), vec![id("server")])
        .unwrap();
    let (_, srv) = handshake(client, server).await;
    assert!(srv.is_err());
}

#[tokio::test]
async fn expired_server_certificate_is_refused() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let ctx = TlsContext::new(&[ca.root().clone()], "cluster.local").unwrap();
    let mgr = CertManager::new(ca.clone(), Duration::from_secs(3600));
    let old = ca
        .issue_window(
            &id("server"),
            SystemTime::now() - Duration::from_secs(7200),
            Duration::from_secs(3600),
        )
        .unwrap();
    let slot = CertSlot::for_test(old);
    let server = ctx.server_config(slot).unwrap();
    let client = ctx
        .client_config(mgr.get(&id("client")).await.unwrap(), vec![id("server")])
        .unwrap();
    let (c, _) = handshake(client, server).await;
    let err = c.unwrap_err();
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn leaf_carries_exactly_one_spiffe_uri() {
    let ca = LocalCa::generate("cluster.local").unwrap();
    let cert = ca.issue(&id("web"), Duration::from_secs(60)).unwrap();
    assert_eq!(identity_of(&cert.chain[0]), Ok(id("web")));
    let half = cert.refresh_at().duration_since(cert.not_before).unwrap();
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert_eq!(half, life / 2);
}

#[test]
fn ca_directory_is_created_then_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let created = LocalCa::load_or_create(dir.path(), "cluster.local").unwrap();
    let reloaded = LocalCa::load_or_create(dir.path(), "cluster.local").unwrap();
    assert_eq!(created.root(), reloaded.root());
    // A leaf from the reloaded CA chains to the original root.
    let leaf = reloaded.issue(&id("x"), Duration::from_secs(60)).unwrap();
    let ctx = TlsContext::new(&[created.root().clone()], "cluster.local").unwrap();
    drop((ctx, leaf));
    std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
    let err = LocalCa::load_or_create(dir.path(), "cluster.local")
        .err()
        .unwrap();
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
}

#[tokio::test]
async fn slots_are_shared_while_held_and_refreshed_at_half_life() {
    let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
    let mgr = CertManager::new(ca, Duration::from_secs(2));
    let a = mgr.get(&id("web")).await.unwrap();
    let b = mgr.get(&id("web")).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let first = a.info().not_after;
    // ttl 2 s + 300 s back-dating: refresh_at is in the past already, so it refreshes at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(a.info().not_after, first, "certificate was not refreshed");
    assert_eq!(mgr.certificates().len(), 1);
    drop((a, b));
    assert!(mgr.certificates().is_empty());
}
