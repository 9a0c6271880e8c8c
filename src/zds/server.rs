//! The agent side of ZDS: listens for ztunnel, replays the known pods as a snapshot on every new
//! connection, then forwards Add (to the newest connection) and Del (to all). Used by the
//! cni-agent and by tests that play the agent.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::proto::{self, workload_request::Payload};
use super::protocol::WorkloadInfo;
use super::seqpacket::{SeqPacket, SeqPacketListener};

/// A ztunnel that says nothing is not worth a task forever.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A ztunnel that never acks would block every later request on its connection; past this it is
/// considered dead and dropped (it will reconnect and get a snapshot).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to ztunnel did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("no ztunnel is connected; the pod is recorded and will be sent in the next snapshot")]
    NotConnected,
    #[error("ztunnel rejected the request: {0}")]
    Nack(String),
    #[error("ztunnel connection lost: {0}")]
    ConnectionLost(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

struct Pod {
    info: WorkloadInfo,
    netns: OwnedFd,
}

/// A request queued for one connection's task, which keeps one request in flight at a time.
struct Job {
    request: Vec<u8>,
    fd: Option<OwnedFd>,
    reply: oneshot::Sender<Result<(), ZdsError>>,
}

struct Conn {
    id: u64,
    jobs: mpsc::UnboundedSender<Job>,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Pod>,
    /// Oldest first: the last one is the newest ztunnel.
    conns: Vec<Conn>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    /// ztunnel connections that said Hello and are not registered yet (held back until the
    /// agent is ready, or about to register): each takes a snapshot carrying every pod
    /// recorded by then.
    waiting: std::sync::atomic::AtomicUsize,
    /// Bumped each time a ztunnel connection has taken its snapshot, so the agent can resend pods
    /// that were waiting for a ztunnel (see [`ZdsServer::synced_connections`]).
    synced: watch::Sender<u64>,
    /// Snapshots are held back until this is true (see [`ZdsServer::bind_not_ready`]).
    ready: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data that is still consistent
        // enough to keep serving; refusing all later requests would be worse.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The listening agent. Dropping it stops accepting, closes every connection and removes the
/// socket file.
pub struct ZdsServer {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    path: PathBuf,
    /// (device, inode) of the socket file we bound, so Drop does not remove a newer agent's.
    identity: Option<(u64, u64)>,
}

impl ZdsServer {
    /// Listens at `path` (replacing a stale socket file). Must be called within a tokio runtime.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let server = Self::bind_not_ready(path)?;
        server.mark_ready();
        Ok(server)
    }

    /// Like [`ZdsServer::bind`], but a connecting ztunnel gets its snapshot only after
    /// [`ZdsServer::mark_ready`]. A restarted agent needs this: ztunnel drops every proxy the
    /// snapshot does not name, so a snapshot sent before the agent has re-registered its running
    /// pods would cut them off.
    pub fn bind_not_ready(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let listener = SeqPacketListener::bind(&path)?;
        let identity = std::fs::symlink_metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            synced: watch::channel(0).0,
            ready: watch::channel(false).0,
        });
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        Ok(Self {
            shared,
            stop,
            path,
            identity,
        })
    }

    /// Lets snapshots go out: every pod known so far has been added.
    pub fn mark_ready(&self) {
        self.shared.ready.send_replace(true);
    }

    /// Waits (up to `within`) until snapshots may go out ([`ZdsServer::mark_ready`]); whether
    /// they may. A CNI ADD that arrives while a restarted agent resyncs waits for this rather
    /// than fail for want of a ztunnel that is in fact connected and held back.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let mut ready = self.shared.ready.subscribe();
        tokio::time::timeout(within, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits (up to `within`) until a ztunnel is connected and served (registered for Adds);
    /// whether one is. After an agent restart ztunnel reconnects with a backoff: a CNI ADD in
    /// that window waits for it rather than fail a pod that could start a moment later.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut synced = self.shared.synced.subscribe();
        loop {
            if !self.shared.lock().conns.is_empty() {
                return true;
            }
            match tokio::time::timeout_at(deadline, synced.changed()).await {
                Ok(Ok(())) => {}
                _ => return !self.shared.lock().conns.is_empty(),
            }
        }
    }

    /// Counts ztunnel connections that have been sent (and acked) their snapshot. A change means a
    /// ztunnel is ready for Adds: pods whose Add failed for want of one can be retried now.
    pub fn synced_connections(&self) -> watch::Receiver<u64> {
        self.shared.synced.subscribe()
    }

    /// Records the pod and sends it to the newest ztunnel, waiting for its Ack. With no ztunnel
    /// connected the pod is still recorded (the next connection gets it in its snapshot).
    pub async fn add(&self, uid: &str, info: WorkloadInfo, netns: OwnedFd) -> Result<(), ZdsError> {
        if uid.is_empty() {
            return Err(ZdsError::Invalid("empty uid".into()));
        }
        let (conn, dup, mut synced, registering) = {
            let mut state = self.shared.lock();
            let dup = netns.try_clone()?;
            state.pods.insert(
                uid.to_owned(),
                Pod {
                    info: info.clone(),
                    netns,
                },
            );
            // Read under the lock: a connection leaves `waiting` under it as it registers.
            // Only once ready: before that, held-back connections wait for the agent itself
            // (whose resync records pods through here).
            let registering = *self.shared.ready.borrow()
                && self
                    .shared
                    .waiting
                    .load(std::sync::atomic::Ordering::Acquire)
                    > 0;
            (
                state.conns.last().map(|c| c.jobs.clone()),
                dup,
                self.shared.synced.subscribe(),
                registering,
            )
        };
        let conn = match conn {
            Some(c) => c,
            // A ztunnel was let through a moment ago and is about to take its snapshot: wait
            // for it (bounded), then Add on its connection for a real ack (a repeat of the
            // snapshot's, which ztunnel treats as the same pod).
            None if registering => {
                let _ = tokio::time::timeout(ACK_TIMEOUT, synced.changed()).await;
                let newest = self.shared.lock().conns.last().map(|c| c.jobs.clone());
                newest.ok_or(ZdsError::NotConnected)?
            }
            None => return Err(ZdsError::NotConnected),
        };
        request(&conn, encode_add(uid, info), Some(dup)).await
    }

    /// Forgets the pod and tells every connected ztunnel. Returns the first failure, if any; a
    /// ztunnel that missed the Del will not find the pod in its next snapshot anyway.
    pub async fn del(&self, uid: &str) -> Result<(), ZdsError> {
        let conns: Vec<_> = {
            let mut state = self.shared.lock();
            state.pods.remove(uid);
            state.conns.iter().map(|c| c.jobs.clone()).collect()
        };
        let msg = proto::WorkloadRequest {
            payload: Some(Payload::Del(proto::DelWorkload {
                uid: uid.to_owned(),
            })),
        }
        .encode_to_vec();
        // Queue on every connection first so they work in parallel, then collect.
        let pending: Vec<_> = conns
            .iter()
            .map(|c| enqueue(c, msg.clone(), None))
            .collect();
        let mut first_err = None;
        for p in pending {
            if let Err(e) = wait(p).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// How many ztunnel connections have said Hello and are being served.
    pub fn connection_count(&self) -> usize {
        self.shared.lock().conns.len()
    }
}

impl Drop for ZdsServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        // An upgraded agent may already have bound its own socket at the path; leave that one.
        let still_ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| Some((m.dev(), m.ino())) == self.identity);
        if still_ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn encode_add(uid: &str, info: WorkloadInfo) -> Vec<u8> {
    proto::WorkloadRequest {
        payload: Some(Payload::Add(proto::AddWorkload {
            uid: uid.to_owned(),
            workload_info: Some(info.into()),
        })),
    }
    .encode_to_vec()
}

type Pending = Result<oneshot::Receiver<Result<(), ZdsError>>, ZdsError>;

fn enqueue(conn: &mpsc::UnboundedSender<Job>, request: Vec<u8>, fd: Option<OwnedFd>) -> Pending {
    let (reply, rx) = oneshot::channel();
    conn.send(Job { request, fd, reply })
        .map_err(|_| ZdsError::ConnectionLost("connection closed".into()))?;
    Ok(rx)
}

async fn wait(pending: Pending) -> Result<(), ZdsError> {
    pending?
        .await
        .map_err(|_| ZdsError::ConnectionLost("connection closed before the ack".into()))?
}

async fn request(
    conn: &mpsc::UnboundedSender<Job>,
    request: Vec<u8>,
    fd: Option<OwnedFd>,
) -> Result<(), ZdsError> {
    wait(enqueue(conn, request, fd)).await
}

async fn accept_loop(
    listener: SeqPacketListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let sock = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match sock {
            Ok(sock) => {
                tokio::spawn(serve_conn(sock, shared.clone(), stop.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on a listener that stays readable.
                warn!("ZDS accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(sock: SeqPacket, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        r = conn_main(&sock, &shared) => if let Err(e) = r {
            warn!("ZDS connection dropped: {e}");
        },
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// Counts a connection in [`Shared::waiting`] until it registers or its task ends.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Waiting(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Removes the connection from the shared list when its task ends, however it ends.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.lock().conns.retain(|c| c.id != self.id);
    }
}

async fn conn_main(sock: &SeqPacket, shared: &Shared) -> Result<(), ZdsError> {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, sock.recv())
        .await
        .map_err(|_| ZdsError::ConnectionLost("no ZdsHello in time".into()))??;
    if hello.data.is_empty() {
        return Err(ZdsError::ConnectionLost("closed before ZdsHello".into()));
    }
    let version = proto::ZdsHello::decode(hello.data.as_slice())
        .map_err(|e| ZdsError::Invalid(format!("undecodable ZdsHello: {e}")))?
        .version;
    if version != proto::ZdsVersion::V1 as i32 {
        return Err(ZdsError::Invalid(format!(
            "unsupported ZDS version {version}"
        )));
    }

    let mut ready = shared.ready.subscribe();
    if !*ready.borrow() {
        debug!("ztunnel connected; holding its snapshot until the agent has resynced");
    }
    // Until then the connection is not registered, so add() reports NotConnected and the pod
    // goes out with the snapshot.
    let waiting = Waiting::new(shared);
    let _ = ready.wait_for(|r| *r).await;
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel();
    // Taking the snapshot and publishing the connection under one lock means every add() either
    // is in this snapshot or is queued on this connection after it, never neither.
    let (registration, snapshot) = {
        let mut state = shared.lock();
        let mut snapshot = Vec::with_capacity(state.pods.len());
        for (uid, pod) in &state.pods {
            snapshot.push((encode_add(uid, pod.info.clone()), pod.netns.try_clone()?));
        }
        state.next_id += 1;
        let id = state.next_id;
        state.conns.push(Conn { id, jobs: jobs_tx });
        drop(waiting);
        (Registration { shared, id }, snapshot)
    };
    info!(
        id = registration.id,
        pods = snapshot.len(),
        "ztunnel connected; sending snapshot"
    );

    for (msg, fd) in snapshot {
        if let Err(reason) = exchange(sock, &msg, Some(fd)).await? {
            warn!("ztunnel rejected a snapshot pod: {reason}");
        }
    }
    let snapshot_sent = proto::WorkloadRequest {
        payload: Some(Payload::SnapshotSent(proto::SnapshotSent {})),
    }
    .encode_to_vec();
    if let Err(reason) = exchange(sock, &snapshot_sent, None).await? {
        warn!("ztunnel rejected SnapshotSent: {reason}");
    }
    debug!(id = registration.id, "snapshot acknowledged");
    shared.synced.send_modify(|n| *n += 1);

    loop {
        tokio::select! {
            job = jobs.recv() => {
                // The sender lives in the shared list until this task ends, so None cannot happen
                // while we are registered; end quietly if it ever does.
                let Some(job) = job else { return Ok(()) };
                match exchange(sock, &job.request, job.fd).await {
                    Ok(r) => { let _ = job.reply.send(r.map_err(ZdsError::Nack)); }
                    Err(e) => {
                        let _ = job.reply.send(Err(ZdsError::ConnectionLost(e.to_string())));
                        return Err(e);
                    }
                }
            }
            dgram = sock.recv() => {
                let dgram = dgram?;
                if dgram.data.is_empty() {
                    info!(id = registration.id, "ztunnel disconnected");
                    return Ok(());
                }
                return Err(ZdsError::Invalid("ztunnel sent a message with no request pending".into()));
            }
        }
    }
}

/// Sends one request and waits for its Ack. Outer error: the connection is unusable. Inner error:
/// ztunnel nacked with this reason.
async fn exchange(
    sock: &SeqPacket,
    request: &[u8],
    fd: Option<OwnedFd>,
) -> Result<Result<(), String>, ZdsError> {
    match &fd {
        Some(fd) => sock.send(request, &[fd.as_fd()]).await?,
        None => sock.send(request, &[]).await?,
    }
    // Our copy of the fd is no longer needed once the kernel has passed it on.
    drop(fd);
    let reply = tokio::time::timeout(ACK_TIMEOUT, sock.recv())
        .await
        .map_err(|_| ZdsError::ConnectionLost("no ack in time".into()))??;
    if reply.data.is_empty() {
        return Err(ZdsError::ConnectionLost(
            "closed while a request was pending".into(),
        ));
    }
    let response = proto::WorkloadResponse::decode(reply.data.as_slice())
        .map_err(|e| ZdsError::Invalid(format!("undecodable WorkloadResponse: {e}")))?;
    match response.payload {
        Some(proto::workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
        Some(proto::workload_response::Payload::Ack(ack)) => Ok(Err(ack.error)),
        None => Err(ZdsError::Invalid("WorkloadResponse without an ack".into())),
    }
}
