//! HBONE client connection pool: HTTP/2 connections keyed by (source identity, destination
//! identities, destination address), each carrying up to `max_streams` CONNECT streams. A
//! burst of callers for a key with no free connection causes one dial, not one each, and
//! when that dial fails the whole burst gets its error: a dead peer costs the burst one
//! connect timeout, not one per caller in turn. A dial (TCP, TLS, HTTP/2 preface) is bounded
//! by the connect timeout plus the handshake timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Request, Response};

use super::stream::h2_io;
use super::transport::ClientTls;
use super::H2Settings;
use crate::identity::Identity;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src: Identity,
    /// Sorted, so the same set always maps to the same key.
    pub dst: Vec<Identity>,
    pub addr: SocketAddr,
}

impl PoolKey {
    pub fn new(src: Identity, mut dst: Vec<Identity>, addr: SocketAddr) -> Self {
        dst.sort();
        dst.dedup();
        PoolKey { src, dst, addr }
    }
}

/// Opens the TLS connection for a key (TCP from the right network namespace, then mTLS).
/// [`super::tls_connect`] does the TLS part.
pub type Dialer =
    Arc<dyn Fn(PoolKey) -> BoxFuture<'static, std::io::Result<ClientTls>> + Send + Sync>;

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Dialer,
    settings: H2Settings,
    keys: Mutex<HashMap<PoolKey, Arc<KeyEntry>>>,
    /// The connections' driver tasks, so [`Pool::close`] can wait for them to finish.
    conn_tasks: tokio_util::task::TaskTracker,
    dials: AtomicU64,
}

#[derive(Default)]
struct KeyEntry {
    /// Held across a dial so concurrent callers wait for its result instead of dialing too.
    dial_lock: tokio::sync::Mutex<()>,
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Dials finished so far, and how the last one failed (None: it succeeded). Both change
    /// only under `dial_lock`, so a caller that queued behind a dial sees that dial's outcome.
    dials_done: AtomicU64,
    last_failure: Mutex<Option<(std::io::ErrorKind, String)>>,
}

struct Conn {
    send: SendRequest<Bytes>,
    streams: AtomicUsize,
    closed: AtomicBool,
    idle_since: Mutex<Instant>,
}

/// Keeps a pooled connection's stream slot taken while a tunnel is open.
pub struct StreamGuard {
    conn: Arc<Conn>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.conn.idle_since) = Instant::now();
        }
    }
}

/// An established CONNECT stream: the server's response plus our sending half.
pub struct Tunnel {
    pub response: Response<RecvStream>,
    pub send: SendStream<Bytes>,
    pub guard: StreamGuard,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub fn new(dialer: Dialer, settings: H2Settings) -> Pool {
        let inner = Arc::new(Inner {
            dialer,
            settings,
            keys: Mutex::new(HashMap::new()),
            dials: AtomicU64::new(0),
            conn_tasks: tokio_util::task::TaskTracker::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap_idle(Arc::downgrade(&inner)));
        }
        Pool { inner }
    }

    /// Sends `req` (a CONNECT) on a pooled connection for `key` and waits for the response.
    /// A request the peer provably did not process (its connection was going away: GOAWAY, or
    /// the stream was refused) is sent again on another connection, so a peer that drains for
    /// an upgrade costs the caller nothing.
    pub async fn connect(&self, key: &PoolKey, req: Request<()>) -> std::io::Result<Tunnel> {
        let mut attempt = 1;
        loop {
            match self.connect_once(key, copy_request(&req)).await {
                Err(Attempt::Unprocessed(e)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(addr = %key.addr, error = %e, attempt, "HBONE peer did not process the CONNECT; retrying on another connection");
                    attempt += 1;
                }
                Err(Attempt::Unprocessed(e) | Attempt::Failed(e)) => return Err(e),
                Ok(t) => return Ok(t),
            }
        }
    }

    async fn connect_once(&self, key: &PoolKey, req: Request<()>) -> Result<Tunnel, Attempt> {
        let entry = {
            let mut keys = lock(&self.inner.keys);
            keys.entry(key.clone()).or_default().clone()
        };
        let conn = match self.take(&entry) {
            Some(c) => c,
            None => {
                let dials_seen = entry.dials_done.load(Ordering::Acquire);
                let _dialing = entry.dial_lock.lock().await;
                match self.take(&entry) {
                    Some(c) => c,
                    None => {
                        if entry.dials_done.load(Ordering::Acquire) != dials_seen {
                            if let Some((kind, msg)) = lock(&entry.last_failure).clone() {
                                return Err(Attempt::Failed(std::io::Error::new(
                                    kind,
                                    format!("{msg} (the dial this request waited for)"),
                                )));
                            }
                        }
                        let dialed = Box::pin(self.dial(key)).await;
                        *lock(&entry.last_failure) =
                            dialed.as_ref().err().map(|e| (e.kind(), e.to_string()));
                        entry.dials_done.fetch_add(1, Ordering::AcqRel);
                        let c = dialed.map_err(Attempt::Failed)?;
                        c.streams.fetch_add(1, Ordering::AcqRel);
                        lock(&entry.conns).push(c.clone());
                        c
                    }
                }
            }
        };
        let guard = StreamGuard { conn: conn.clone() };
        let exchange = async {
            let mut send = conn.send.clone().ready().await?;
            let (resp, stream) = send.send_request(req, false)?;
            Ok::<_, h2::Error>((resp.await?, stream))
        };
        // The peer answers once it has dialed its app, which its own connect timeout bounds;
        // a peer that never answers must not hold the caller (dropping the stream resets it).
        let settings = &self.inner.settings;
        let wait = settings.sockets.connect_timeout + settings.handshake_timeout;
        let result = match tokio::time::timeout(wait, exchange).await {
            Ok(r) => r,
            Err(_) => {
                return Err(Attempt::Failed(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no CONNECT response from {} within {wait:?}", key.addr),
                )))
            }
        };
        match result {
            Ok((response, send)) => Ok(Tunnel {
                response,
                send,
                guard,
            }),
            Err(e) => {
                // A connection-level failure must not be handed out again; a refused or reset
                // stream leaves the connection usable.
                if e.is_io() || e.is_go_away() {
                    conn.closed.store(true, Ordering::Release);
                }
                Err(if unprocessed(&e) {
                    Attempt::Unprocessed(h2_io(e))
                } else {
                    Attempt::Failed(h2_io(e))
                })
            }
        }
    }

    /// Closes every pooled connection the way HTTP/2 means it (GOAWAY, then TLS close_notify and
    /// FIN once its streams are done) and waits until they are closed, up to `within`. For a
    /// ztunnel about to exit, whose connections would otherwise just vanish under the peer.
    /// Later calls to `connect` still work (and dial anew).
    pub async fn close(&self, within: Duration) {
        // Dropping a connection's last SendRequest is what lets h2 wind it down.
        lock(&self.inner.keys).clear();
        let tasks = &self.inner.conn_tasks;
        tasks.close();
        let _ = tokio::time::timeout(within, tasks.wait()).await;
        tasks.reopen();
    }

    /// Number of connections dialed so far (tests and metrics).
    pub fn dials(&self) -> u64 {
        self.inner.dials.load(Ordering::Relaxed)
    }

    /// Open connections across all keys.
    pub fn open_connections(&self) -> usize {
        let keys = lock(&self.inner.keys);
        keys.values()
            .map(|e| {
                lock(&e.conns)
                    .iter()
                    .filter(|c| !c.closed.load(Ordering::Acquire))
                    .count()
            })
            .sum()
    }

    fn take(&self, entry: &KeyEntry) -> Option<Arc<Conn>> {
        let max = self.inner.settings.max_streams as usize;
        let mut conns = lock(&entry.conns);
        conns.retain(|c| !c.closed.load(Ordering::Acquire));
        conns.iter().find_map(|c| {
            c.streams
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()
                .map(|_| c.clone())
        })
    }

    async fn dial(&self, key: &PoolKey) -> std::io::Result<Arc<Conn>> {
        self.inner.dials.fetch_add(1, Ordering::Relaxed);
        let settings = &self.inner.settings;
        let deadline = settings.sockets.connect_timeout + settings.handshake_timeout;
        let handshake = async {
            let tls = (self.inner.dialer)(key.clone()).await?;
            // The dialer may not know our keepalive settings; the pool's connection gets them.
            settings
                .sockets
                .apply(socket2::SockRef::from(tls.get_ref().0))?;
            settings
                .client()
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(h2_io)
        };
        let (send, mut connection) = match tokio::time::timeout(deadline, handshake).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("HBONE dial to {} timed out after {deadline:?}", key.addr),
                ))
            }
        };
        let conn = Arc::new(Conn {
            send,
            streams: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        let ping = connection.ping_pong();
        let weak = Arc::downgrade(&conn);
        let (interval, timeout) = (
            self.inner.settings.keepalive_interval,
            self.inner.settings.keepalive_timeout,
        );
        let addr = key.addr;
        self.inner.conn_tasks.spawn(async move {
            tokio::select! {
                r = &mut connection => if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "HBONE connection ended");
                },
                _ = super::keepalive::until_peer_silent(ping, interval, timeout) => {
                    tracing::warn!(%addr, "HBONE keepalive timed out, closing connection");
                }
            }
            if let Some(c) = weak.upgrade() {
                c.closed.store(true, Ordering::Release);
            }
        });
        Ok(conn)
    }
}

/// Tries per CONNECT: a draining peer refuses at most the streams in flight when its GOAWAY
/// arrives, and the retry goes to a connection dialed after it.
const MAX_ATTEMPTS: u32 = 3;

enum Attempt {
    /// The peer did not act on the request: safe to send it again elsewhere.
    Unprocessed(std::io::Error),
    Failed(std::io::Error),
}

/// Whether HTTP/2 guarantees the peer did not process the stream: the peer's GOAWAY (h2 fails
/// only the streams above its last-stream-id, and new requests, with it) or REFUSED_STREAM.
fn unprocessed(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote()) || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

/// The same CONNECT again (a `Request<()>` is not `Clone`).
fn copy_request(req: &Request<()>) -> Request<()> {
    let mut out = Request::new(());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    out
}

async fn reap_idle(inner: Weak<Inner>) {
    loop {
        let period = match inner.upgrade() {
            Some(i) => (i.settings.idle_timeout / 4).max(Duration::from_millis(50)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(i) = inner.upgrade() else { return };
        let timeout = i.settings.idle_timeout;
        let mut keys = lock(&i.keys);
        keys.retain(|_, entry| {
            let mut conns = lock(&entry.conns);
            // Dropping the last SendRequest lets h2 send GOAWAY and close the connection.
            conns.retain(|c| {
                !c.closed.load(Ordering::Acquire)
                    && (c.streams.load(Ordering::Acquire) > 0
                        || lock(&c.idle_since).elapsed() < timeout)
            });
            !conns.is_empty() || Arc::strong_count(entry) > 1
        });
    }
}
