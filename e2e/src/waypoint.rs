//! Fixtures for whole-system waypoint tests: the waypoint binary in a pod's namespace, HTTP
//! backends that report which pod answered and what request they received, and an HBONE
//! client that sends HTTP through the waypoint the way a source ztunnel does (its own pod
//! certificate, CONNECT authority = the original VIP:port).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use meshtunnel::hbone::{Dialer, H2Settings, Pool, PoolKey};
use meshtunnel::identity::{CertManager, CertSlot, Identity, LocalCa, TlsContext};
use rustls::pki_types::ServerName;
use test_support::ChildGuard;

mod backends;
mod exchange;
mod pod_client;
pub use backends::{GrpcBackend, HttpBackend};
pub use pod_client::PodClient;

use crate::mesh::{find_binary, http_in, Mesh, NAMESPACE, TRUST_DOMAIN};

pub const WAYPOINT_SA: &str = "waypoint";

/// The waypoint process, running in a pod namespace with its own identity.
pub struct Waypoint {
    _child: ChildGuard,
    pub pod: &'static str,
    pub routes_dir: PathBuf,
    pub log: PathBuf,
}

impl Waypoint {
    /// Starts `waypoint` in `pod`'s namespace (mesh config and CA of `mesh`, route objects
    /// from a fresh directory) and waits until it is ready.
    pub fn start(mesh: &Mesh, pod: &'static str) -> Result<Waypoint> {
        Self::start_with(
            mesh,
            pod,
            false,
            "info,access=info,waypoint::client_pool=debug",
        )
    }

    /// [`Waypoint::start`] with the release binary and a log filter (benchmarks).
    pub fn start_with(
        mesh: &Mesh,
        pod: &'static str,
        release: bool,
        filter: &str,
    ) -> Result<Waypoint> {
        let routes_dir = mesh.dir.path().join("waypoint-routes");
        std::fs::create_dir_all(&routes_dir)?;
        let log = mesh.dir.path().join("waypoint.log");
        let out = std::fs::File::create(&log)?;
        let bin = find_binary("waypoint", release)?;
        let ns = mesh.pod_ns(pod);
        let mut cmd = ns.command(bin.to_str().unwrap_or("waypoint"));
        cmd.env_clear()
            .env("WAYPOINT_CONFIG_DIR", &routes_dir)
            .env("LOCAL_XDS_PATH", mesh.config_path())
            .env("LOCAL_CA_DIR", mesh.ca_dir())
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("SERVICE_ACCOUNT", WAYPOINT_SA)
            .env("CONFIG_POLL_INTERVAL", "200ms")
            .env("WAYPOINT_HEADER_TIMEOUT", "1s")
            // Idle HBONE connections to the endpoints close soon, so fd counts settle in tests.
            .env("WAYPOINT_POOL_IDLE_TIMEOUT", "2s")
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let wp = Waypoint {
            _child: ns.spawn_command(cmd)?,
            pod,
            routes_dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = SocketAddr::from(([127, 0, 0, 1], 15021));
        loop {
            if let Ok((200, _)) = http_in(ns, ready, "GET", "/healthz/ready") {
                return Ok(wp);
            }
            if Instant::now() > deadline {
                bail!("waypoint not ready\n--- log ---\n{}", wp.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self._child.id()
    }

    /// Open file descriptors of the waypoint process.
    pub fn fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self._child.id()))?.count())
    }

    /// Replaces the route objects with `yaml` and waits until the waypoint's config_dump lists
    /// every `expect` ("Kind ns/name").
    pub fn apply(&self, mesh: &Mesh, yaml: &str, expect: &[&str]) -> Result<()> {
        for e in std::fs::read_dir(&self.routes_dir)? {
            std::fs::remove_file(e?.path())?;
        }
        let tmp = self.routes_dir.join(".routes.yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.routes_dir.join("routes.yaml"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
        loop {
            let dump = http_in(mesh.pod_ns(self.pod), admin, "GET", "/config_dump")
                .map(|(_, b)| b)
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&dump).unwrap_or_default();
            let objects: Vec<String> = v["objects"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if objects.len() == expect.len()
                && expect.iter().all(|e| objects.iter().any(|o| o == e))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "waypoint did not apply {expect:?} (has {objects:?})\n--- log ---\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn identity() -> Identity {
        Identity::new(TRUST_DOMAIN, NAMESPACE, WAYPOINT_SA)
    }
}

/// An answer received through the waypoint.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Reply {
    /// The pod that answered, from the backend's report.
    pub fn pod(&self) -> Option<&str> {
        self.field("pod")
    }

    /// A `name=value` line of the backend's report (pod, namespace, method, target, ...).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
    }

    /// Every value the backend received for request header `name` (lower-case), in order.
    pub fn request_header(&self, name: &str) -> Vec<&str> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("header ")?.split_once('='))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }
}

/// Sends HTTP/1.1 requests through the waypoint from `pod`'s namespace, over HBONE with the
/// pod's own certificate.
pub struct HboneClient {
    pool: Pool,
    key: PoolKey,
    dialer: Dialer,
    _cert: Arc<CertSlot>,
}

impl HboneClient {
    pub fn new(mesh: &Mesh, from_pod: &str, waypoint_pod: &str) -> Result<HboneClient> {
        let addr = SocketAddr::new(mesh.pod_ip(waypoint_pod).into(), 15008);
        Self::to(mesh, from_pod, addr, Waypoint::identity())
    }

    /// A client of any HBONE server: `server` (ip:15008) presenting `identity`; with a pod's
    /// ztunnel as the server this is the path without a waypoint.
    pub fn to(
        mesh: &Mesh,
        from_pod: &str,
        server: SocketAddr,
        identity: Identity,
    ) -> Result<HboneClient> {
        let id = Identity::new(
            TRUST_DOMAIN,
            NAMESPACE,
            &mesh.spec(from_pod).service_account,
        );
        Self::with_identity(mesh, from_pod, server, identity, id)
    }

    /// [`HboneClient::to`] presenting `id`'s certificate instead of the pod's own (a client
    /// that stands for a pod of another namespace).
    pub fn with_identity(
        mesh: &Mesh,
        from_pod: &str,
        server: SocketAddr,
        identity: Identity,
        id: Identity,
    ) -> Result<HboneClient> {
        let ca = LocalCa::load_or_create(&mesh.ca_dir(), TRUST_DOMAIN)?;
        let tls = TlsContext::new(&[ca.root().clone()], TRUST_DOMAIN)?;
        let certs = {
            let _guard = mesh.rt.enter();
            CertManager::new(Arc::new(ca), Duration::from_secs(3600))
        };
        let cert = mesh.rt.block_on(certs.get(&id))?;
        let _guard = mesh.rt.enter();
        let ns_fd = Arc::new(mesh.pod_ns(from_pod).open_fd()?);
        let (c, t) = (cert.clone(), tls.clone());
        let dialer: Dialer = Arc::new(move |key: PoolKey| {
            let (cert, tls, fd) = (c.clone(), t.clone(), ns_fd.clone());
            Box::pin(async move {
                let cfg = tls
                    .client_config(cert, key.dst.clone())
                    .map_err(std::io::Error::other)?;
                let addr = key.addr;
                // The socket is made on a fresh thread inside the pod's namespace (setns is
                // per thread and must not leak into the runtime's threads), then driven by tokio.
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let r = nix::sched::setns(&*fd, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::other)
                        .and_then(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
                    let _ = tx.send(r);
                });
                let std_tcp = rx.await.map_err(std::io::Error::other)??;
                std_tcp.set_nonblocking(true)?;
                let tcp = tokio::net::TcpStream::from_std(std_tcp)?;
                meshtunnel::hbone::tls_connect(cfg, ServerName::IpAddress(addr.ip().into()), tcp)
                    .await
            })
        });
        let pool = Pool::new(dialer.clone(), H2Settings::default());
        let key = PoolKey::new(id, vec![identity], server);
        Ok(HboneClient {
            pool,
            key,
            dialer,
            _cert: cert,
        })
    }

    /// The same client with a pool of its own: its first request opens a new HBONE (TCP and
    /// TLS) connection, closed when it is dropped. Needs the mesh's runtime entered.
    pub fn fresh(&self) -> HboneClient {
        HboneClient {
            pool: Pool::new(self.dialer.clone(), H2Settings::default()),
            key: self.key.clone(),
            dialer: self.dialer.clone(),
            _cert: self._cert.clone(),
        }
    }

    /// A tunnel to `dst` as a byte stream (for raw HTTP/2 or HTTP/1 bytes written by a test).
    pub async fn duplex(&self, dst: SocketAddr) -> Result<tokio::io::DuplexStream> {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(dst.to_string())
            .body(())?;
        let tunnel = self.pool.connect(&self.key, req).await?;
        if tunnel.response.status() != 200 {
            bail!("CONNECT answered {}", tunnel.response.status());
        }
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (send, recv) = (tunnel.send, tunnel.response.into_body());
        let guard = tunnel.guard;
        tokio::spawn(async move {
            let _slot = guard;
            let _ = meshtunnel::hbone::copy_bidirectional(far, send, recv).await;
        });
        Ok(near)
    }

    /// Sends `bytes` inside one tunnel to `dst` and returns what comes back until the waypoint
    /// ends the stream (or `wait` passes), with the time that took.
    pub async fn raw(
        &self,
        dst: SocketAddr,
        bytes: &[u8],
        wait: Duration,
    ) -> Result<(Vec<u8>, Duration)> {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(dst.to_string())
            .body(())?;
        let start = Instant::now();
        let mut tunnel = self.pool.connect(&self.key, req).await?;
        if tunnel.response.status() != 200 {
            bail!("CONNECT answered {}", tunnel.response.status());
        }
        tunnel
            .send
            .send_data(Bytes::copy_from_slice(bytes), false)?;
        let mut body = tunnel.response.into_body();
        let mut raw = Vec::new();
        let read = async {
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else { break };
                let _ = body.flow_control().release_capacity(chunk.len());
                raw.extend_from_slice(&chunk);
            }
        };
        let _ = tokio::time::timeout(wait, read).await;
        Ok((raw, start.elapsed()))
    }

    /// One HTTP/2 (prior knowledge) POST to `dst` through the waypoint, as a gRPC client sends
    /// it; the reply's `grpc-status` trailer is added to its headers.
    pub async fn grpc(&self, dst: SocketAddr, path: &str) -> Result<Reply> {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(dst.to_string())
            .body(())?;
        let work = async {
            let tunnel = self.pool.connect(&self.key, req).await?;
            if tunnel.response.status() != 200 {
                bail!("CONNECT answered {}", tunnel.response.status());
            }
            let (near, far) = tokio::io::duplex(64 * 1024);
            let (send, recv) = (tunnel.send, tunnel.response.into_body());
            let guard = tunnel.guard;
            tokio::spawn(async move {
                let _slot = guard;
                let _ = meshtunnel::hbone::copy_bidirectional(far, send, recv).await;
            });
            exchange::grpc_on(near, path).await
        };
        tokio::time::timeout(Duration::from_secs(15), work)
            .await
            .context("gRPC request through the waypoint timed out")?
    }

    /// One request to `dst` (the original destination) through the waypoint.
    pub async fn request(
        &self,
        dst: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        self.request_to_host(dst, method, path, "echo", headers)
            .await
    }

    /// [`HboneClient::request`] with `Host: host`, unless `headers` carry a Host of their own.
    pub async fn request_to_host(
        &self,
        dst: SocketAddr,
        method: &str,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(dst.to_string())
            .body(())?;
        let work = async {
            let mut tunnel = self.pool.connect(&self.key, req).await?;
            if tunnel.response.status() != 200 {
                bail!("CONNECT answered {}", tunnel.response.status());
            }
            let head = exchange::request_head(method, path, host, headers);
            tunnel.send.send_data(Bytes::from(head), false)?;
            let mut body = tunnel.response.into_body();
            let mut raw = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
                raw.extend_from_slice(&chunk);
            }
            exchange::parse_reply(&raw)
        };
        tokio::time::timeout(Duration::from_secs(15), work)
            .await
            .context("request through the waypoint timed out")?
    }
}
