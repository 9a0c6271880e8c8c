//! ZDS over real SOCK_SEQPACKET sockets with real netns fds: the client against our server, the
//! client against a hand-driven hostile agent, and our server against a hand-driven ztunnel.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use meshtunnel::zds::proto::{self, workload_request::Payload};
use meshtunnel::zds::raw::{SeqPacket, SeqPacketListener};
use meshtunnel::zds::{run_client, WorkloadHandler, WorkloadInfo, ZdsError, ZdsServer};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The fd-leak test counts /proc/self/fd, which every other test here changes: they hold this
/// shared, the leak test exclusively, each for the whole life of its runtime (whose drop closes
/// whatever its tasks still held).
static FD_LOCK: RwLock<()> = RwLock::new(());

fn run_shared<F: Future<Output = ()>>(test: F) {
    let _shared = FD_LOCK.read().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(test);
}

fn run_exclusive<F: Future<Output = ()>>(test: F) {
    let _exclusive = FD_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(test);
}

const STEP: Duration = Duration::from_secs(10);

/// A unique temp dir per test, removed even when the test panics.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "mt-zds-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("ztunnel.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn netns() -> OwnedFd {
    std::fs::File::open("/proc/self/ns/net")
        .expect("open /proc/self/ns/net")
        .into()
}

/// A brand-new network namespace, like a pod's: made on a throwaway thread (setns/unshare are
/// per thread), it lives exactly as long as the returned fd, so nothing is left behind.
fn fresh_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("open netns"))
    })
    .join()
    .expect("netns thread")
}

fn inode(fd: &OwnedFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::from(fd.try_clone().expect("dup"));
    file.metadata().expect("fstat").ino()
}

/// A regular file: what a confused or hostile agent might pass instead of a netns.
fn not_netns() -> OwnedFd {
    let exe = std::env::current_exe().expect("current exe");
    std::fs::File::open(exe).expect("open regular file").into()
}

fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "default".into(),
        service_account: "sa".into(),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Add(String, WorkloadInfo),
    Del(String),
    Snapshot(HashSet<String>),
    Disconnected,
}

/// Keeps the netns fds it accepted, like ztunnel's proxies would, and reports every call.
struct Recorder {
    events: mpsc::UnboundedSender<Ev>,
    pods: Mutex<HashMap<String, OwnedFd>>,
}

impl Recorder {
    fn uids(&self) -> HashSet<String> {
        self.pods.lock().expect("lock").keys().cloned().collect()
    }
}

impl WorkloadHandler for Recorder {
    async fn add(&self, uid: String, info: WorkloadInfo, netns: OwnedFd) -> Result<(), String> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", netns.as_raw_fd()))
            .map_err(|e| format!("cannot inspect fd: {e}"))?;
        let link = link.to_string_lossy();
        if !link.starts_with("net:[") {
            return Err(format!("not a network namespace: {link}"));
        }
        let _ = self.events.send(Ev::Add(uid.clone(), info));
        self.pods.lock().expect("lock").insert(uid, netns);
        Ok(())
    }
    async fn del(&self, uid: &str) -> Result<(), String> {
        self.pods.lock().expect("lock").remove(uid);
        let _ = self.events.send(Ev::Del(uid.into()));
        Ok(())
    }
    async fn snapshot_complete(&self, present: HashSet<String>) {
        self.pods
            .lock()
            .expect("lock")
            .retain(|uid, _| present.contains(uid));
        let _ = self.events.send(Ev::Snapshot(present));
    }
    fn disconnected(&self) {
        let _ = self.events.send(Ev::Disconnected);
    }
}

/// A running client and the means to observe and stop it.
struct Ztunnel {
    handler: Arc<Recorder>,
    events: mpsc::UnboundedReceiver<Ev>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Ztunnel {
    fn start(path: &Path) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let handler = Arc::new(Recorder {
            events: tx,
            pods: Mutex::new(HashMap::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_client(path.to_path_buf(), handler.clone(), stop_rx));
        Self {
            handler,
            events,
            stop,
            task,
        }
    }
    async fn next(&mut self) -> Ev {
        tokio::time::timeout(STEP, self.events.recv())
            .await
            .expect("timed out waiting for a handler call")
            .expect("client gone")
    }
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("client did not stop")
            .expect("client panicked");
    }
}

fn set(uids: &[&str]) -> HashSet<String> {
    uids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn snapshot_add_del_and_resnapshot_on_reconnect() {
    run_shared(async {
        let dir = TestDir::new();
        let server = ZdsServer::bind(dir.sock()).expect("bind");
        // Pods known before any ztunnel connects are recorded and wait for the snapshot.
        for uid in ["pod-a", "pod-b"] {
            let err = server
                .add(uid, info(uid), netns())
                .await
                .expect_err("nobody");
            assert!(matches!(err, ZdsError::NotConnected), "{err}");
        }

        let mut zt = Ztunnel::start(&dir.sock());
        assert_eq!(zt.next().await, Ev::Add("pod-a".into(), info("pod-a")));
        assert_eq!(zt.next().await, Ev::Add("pod-b".into(), info("pod-b")));
        assert_eq!(zt.next().await, Ev::Snapshot(set(&["pod-a", "pod-b"])));
        assert_eq!(server.connection_count(), 1);

        // A pod with its own netns: ztunnel must receive that very namespace.
        let pod_ns = fresh_netns();
        let pod_ino = inode(&pod_ns);
        assert_ne!(pod_ino, inode(&netns()), "unshare gave the host netns");
        server
            .add("pod-c", info("pod-c"), pod_ns)
            .await
            .expect("add c");
        assert_eq!(zt.next().await, Ev::Add("pod-c".into(), info("pod-c")));
        let got = zt.handler.pods.lock().expect("lock")["pod-c"]
            .try_clone()
            .expect("dup");
        assert_eq!(inode(&got), pod_ino);
        drop(got);
        server.del("pod-a").await.expect("del a");
        assert_eq!(zt.next().await, Ev::Del("pod-a".into()));
        assert_eq!(zt.handler.uids(), set(&["pod-b", "pod-c"]));

        // The handler's nack comes back as the server's error.
        let err = server
            .add("pod-bad", info("pod-bad"), not_netns())
            .await
            .expect_err("nack");
        assert!(
            matches!(&err, ZdsError::Nack(m) if m.contains("not a network namespace")),
            "{err}"
        );
        server.del("pod-bad").await.expect("del bad");
        assert_eq!(zt.next().await, Ev::Del("pod-bad".into()));

        // The agent restarts knowing only pod-b: ztunnel reconnects and drops pod-c.
        drop(server);
        assert_eq!(zt.next().await, Ev::Disconnected);
        let server = ZdsServer::bind(dir.sock()).expect("rebind");
        let _ = server.add("pod-b", info("pod-b"), netns()).await;
        // pod-b arrives in the snapshot or, if ztunnel won the race to connect, as a live Add
        // after an empty snapshot; either way pod-c must be gone and pod-b kept.
        let (mut added, mut snapshot) = (false, None);
        while !added || snapshot.is_none() {
            match zt.next().await {
                Ev::Add(uid, _) if uid == "pod-b" => added = true,
                Ev::Snapshot(present) => snapshot = Some(present),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(!snapshot.unwrap_or_default().contains("pod-c"));
        assert_eq!(zt.handler.uids(), set(&["pod-b"]));
        zt.shutdown().await;
    });
}

/// Plays the agent by hand.
struct RawAgent {
    conn: SeqPacket,
}

impl RawAgent {
    async fn accept(listener: &SeqPacketListener) -> Self {
        let conn = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("ztunnel did not connect")
            .expect("accept");
        let hello = tokio::time::timeout(STEP, conn.recv())
            .await
            .expect("no hello")
            .expect("recv hello");
        assert_eq!(hello.data, [0x08, 0x01], "ZdsHello{{version: V1}}");
        assert!(hello.fds.is_empty());
        Self { conn }
    }

    /// Sends raw bytes and returns the Ack's error (empty = ok), or None if ztunnel hung up.
    async fn send_raw(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Option<String> {
        self.conn.send(data, fds).await.ok()?;
        let reply = tokio::time::timeout(STEP, self.conn.recv())
            .await
            .expect("no reply")
            .ok()?;
        if reply.data.is_empty() {
            return None;
        }
        let resp = proto::WorkloadResponse::decode(reply.data.as_slice()).expect("decode ack");
        match resp.payload {
            Some(proto::workload_response::Payload::Ack(ack)) => Some(ack.error),
            None => panic!("response without ack"),
        }
    }

    async fn send(&self, p: Payload, fds: &[BorrowedFd<'_>]) -> Option<String> {
        let data = proto::WorkloadRequest { payload: Some(p) }.encode_to_vec();
        self.send_raw(&data, fds).await
    }
}

fn add(uid: &str) -> Payload {
    Payload::Add(proto::AddWorkload {
        uid: uid.into(),
        workload_info: Some(info(uid).into_proto()),
    })
}
fn keep(uid: &str) -> Payload {
    Payload::Keep(proto::KeepWorkload { uid: uid.into() })
}
fn del(uid: &str) -> Payload {
    Payload::Del(proto::DelWorkload { uid: uid.into() })
}
fn snapshot_sent() -> Payload {
    Payload::SnapshotSent(proto::SnapshotSent {})
}

trait IntoProto {
    fn into_proto(self) -> proto::WorkloadInfo;
}
impl IntoProto for WorkloadInfo {
    fn into_proto(self) -> proto::WorkloadInfo {
        proto::WorkloadInfo {
            name: self.name,
            namespace: self.namespace,
            service_account: self.service_account,
        }
    }
}

#[track_caller]
fn assert_nack(reply: Option<String>, needle: &str) {
    let msg = reply.expect("ztunnel hung up instead of nacking");
    assert!(msg.contains(needle), "nack {msg:?} lacks {needle:?}");
}

/// Every kind of bad request: each is nacked or drops the connection, and ztunnel keeps serving.
async fn hostile_session(dir: &TestDir) {
    let listener = SeqPacketListener::bind(&dir.sock()).expect("bind");
    let mut zt = Ztunnel::start(&dir.sock());
    let agent = RawAgent::accept(&listener).await;

    let ns = netns();
    let ns2 = netns();
    let file = not_netns();
    // Snapshot: Keep needs no fd and no handler call; rejected Adds are not present.
    assert_eq!(agent.send(keep("kept"), &[]).await.as_deref(), Some(""));
    assert_nack(
        agent.send(add("nofd"), &[]).await,
        "exactly one netns fd, got 0",
    );
    assert_nack(
        agent.send(add("twofds"), &[ns.as_fd(), ns2.as_fd()]).await,
        "exactly one netns fd, got 2",
    );
    assert_nack(
        agent.send(keep("k2"), &[ns.as_fd()]).await,
        "not AddWorkload",
    );
    assert_eq!(agent.send(snapshot_sent(), &[]).await.as_deref(), Some(""));
    assert_eq!(zt.next().await, Ev::Snapshot(set(&["kept"])));

    assert_nack(
        agent.send(add("file"), &[file.as_fd()]).await,
        "not a network namespace",
    );
    assert_nack(
        agent.send(keep("late"), &[]).await,
        "KeepWorkload after SnapshotSent",
    );
    assert_nack(agent.send(snapshot_sent(), &[]).await, "SnapshotSent twice");
    assert_nack(agent.send(del("x"), &[ns.as_fd()]).await, "not AddWorkload");
    assert_nack(agent.send(add(""), &[ns.as_fd()]).await, "empty uid");
    assert_nack(agent.send(del(""), &[]).await, "empty uid");
    // Field 4 is no request type: decodes to an empty payload.
    assert_nack(agent.send_raw(&[0x22, 0x00], &[]).await, "no known payload");
    // After all that, a valid Add still works on the same connection.
    assert_eq!(
        agent.send(add("good"), &[ns.as_fd()]).await.as_deref(),
        Some("")
    );
    assert_eq!(zt.next().await, Ev::Add("good".into(), info("good")));

    // Undecodable bytes (with an fd riding along) are fatal: ztunnel hangs up and reconnects.
    assert_eq!(agent.send_raw(&[0xff; 7], &[ns.as_fd()]).await, None);
    assert_eq!(zt.next().await, Ev::Disconnected);
    let agent = RawAgent::accept(&listener).await;
    assert_eq!(
        agent.send(add("good"), &[ns.as_fd()]).await.as_deref(),
        Some("")
    );
    assert_eq!(zt.next().await, Ev::Add("good".into(), info("good")));
    assert_eq!(agent.send(snapshot_sent(), &[]).await.as_deref(), Some(""));
    assert_eq!(zt.next().await, Ev::Snapshot(set(&["good"])));

    // An oversized datagram is fatal too.
    assert_eq!(agent.send_raw(&[0x0a; 5000], &[]).await, None);
    assert_eq!(zt.next().await, Ev::Disconnected);
    let agent = RawAgent::accept(&listener).await;
    assert_eq!(agent.send(snapshot_sent(), &[]).await.as_deref(), Some(""));
    assert_eq!(zt.next().await, Ev::Snapshot(set(&[])));
    assert!(
        zt.handler.uids().is_empty(),
        "snapshot without 'good' drops it"
    );
    assert_eq!(
        agent.send(add("later"), &[ns.as_fd()]).await.as_deref(),
        Some("")
    );
    assert_eq!(zt.next().await, Ev::Add("later".into(), info("later")));
    assert_eq!(agent.send(del("later"), &[]).await.as_deref(), Some(""));
    assert_eq!(zt.next().await, Ev::Del("later".into()));

    zt.shutdown().await;
}

#[test]
fn hostile_agent_gets_nacks_or_a_reconnect() {
    run_shared(async {
        let dir = TestDir::new();
        hostile_session(&dir).await;
    });
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

#[test]
fn no_fd_leaks() {
    run_exclusive(async {
        let before = open_fds();
        {
            let dir = TestDir::new();
            hostile_session(&dir).await;
        }
        {
            let dir = TestDir::new();
            let server = ZdsServer::bind(dir.sock()).expect("bind");
            let _ = server.add("pod-a", info("pod-a"), netns()).await;
            let mut zt = Ztunnel::start(&dir.sock());
            assert_eq!(zt.next().await, Ev::Add("pod-a".into(), info("pod-a")));
            assert_eq!(zt.next().await, Ev::Snapshot(set(&["pod-a"])));
            server
                .add("pod-bad", info("pod-bad"), not_netns())
                .await
                .expect_err("nack");
            server.del("pod-a").await.expect("del");
            server.del("pod-bad").await.expect("del");
            zt.shutdown().await;
            drop(server);
        }
        // Server connection tasks end asynchronously after the drop.
        let mut after = open_fds();
        for _ in 0..50 {
            if after <= before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = open_fds();
        }
        assert_eq!(after, before, "fds leaked");
    });
}

/// Plays ztunnel by hand against our server.
async fn raw_ztunnel(path: &Path, version: i32) -> SeqPacket {
    let conn = SeqPacket::connect(path).expect("connect");
    let hello = proto::ZdsHello { version }.encode_to_vec();
    conn.send(&hello, &[]).await.expect("send hello");
    conn
}

async fn recv_request(conn: &SeqPacket) -> (Payload, usize) {
    let d = tokio::time::timeout(STEP, conn.recv())
        .await
        .expect("no request")
        .expect("recv");
    let req = proto::WorkloadRequest::decode(d.data.as_slice()).expect("decode request");
    (req.payload.expect("payload"), d.fds.len())
}

async fn ack(conn: &SeqPacket, error: &str) {
    let resp = proto::WorkloadResponse {
        payload: Some(proto::workload_response::Payload::Ack(proto::Ack {
            error: error.into(),
        })),
    };
    conn.send(&resp.encode_to_vec(), &[]).await.expect("ack");
}

#[test]
fn server_sends_snapshot_and_reports_nacks() {
    run_shared(async {
        let dir = TestDir::new();
        let server = Arc::new(ZdsServer::bind(dir.sock()).expect("bind"));
        let _ = server.add("p1", info("p1"), netns()).await;

        let zt = raw_ztunnel(&dir.sock(), proto::ZdsVersion::V1 as i32).await;
        let (req, fds) = recv_request(&zt).await;
        assert_eq!(req, add("p1"));
        assert_eq!(fds, 1, "Add carries exactly one fd");
        ack(&zt, "").await;
        let (req, fds) = recv_request(&zt).await;
        assert_eq!((req, fds), (snapshot_sent(), 0));
        ack(&zt, "").await;

        let s = server.clone();
        let pending = tokio::spawn(async move { s.del("p1").await });
        let (req, fds) = recv_request(&zt).await;
        assert_eq!((req, fds), (del("p1"), 0));
        ack(&zt, "no such pod").await;
        let err = pending.await.expect("join").expect_err("nack");
        assert!(
            matches!(&err, ZdsError::Nack(m) if m == "no such pod"),
            "{err}"
        );

        // A second ztunnel becomes the target of Add; both get Del.
        let zt2 = raw_ztunnel(&dir.sock(), proto::ZdsVersion::V1 as i32).await;
        let (req, _) = recv_request(&zt2).await;
        assert_eq!(
            req,
            snapshot_sent(),
            "p1 was deleted, so the snapshot is empty"
        );
        ack(&zt2, "").await;
        let s = server.clone();
        let pending = tokio::spawn(async move { s.add("p2", info("p2"), netns()).await });
        let (req, fds) = recv_request(&zt2).await;
        assert_eq!((req, fds), (add("p2"), 1));
        ack(&zt2, "").await;
        pending.await.expect("join").expect("add acked");

        // A ztunnel that hangs up mid-request fails the request instead of hanging it.
        let s = server.clone();
        let pending = tokio::spawn(async move { s.del("p2").await });
        let _ = recv_request(&zt).await;
        ack(&zt, "").await;
        let _ = recv_request(&zt2).await;
        drop(zt2);
        let err = pending.await.expect("join").expect_err("lost");
        assert!(matches!(err, ZdsError::ConnectionLost(_)), "{err}");
        tokio::time::timeout(STEP, async {
            while server.connection_count() != 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("dead connection not dropped");
    });
}

#[test]
fn server_rejects_wrong_hello() {
    run_shared(async {
        let dir = TestDir::new();
        let server = ZdsServer::bind(dir.sock()).expect("bind");
        for version in [0, 2] {
            let zt = raw_ztunnel(&dir.sock(), version).await;
            let d = tokio::time::timeout(STEP, zt.recv())
                .await
                .expect("server kept a bad connection")
                .expect("recv");
            assert!(d.data.is_empty(), "expected hang-up, got {:?}", d.data);
        }
        let zt = SeqPacket::connect(&dir.sock()).expect("connect");
        zt.send(b"\xff\xff\xff", &[]).await.expect("send");
        let d = tokio::time::timeout(STEP, zt.recv())
            .await
            .expect("kept")
            .expect("recv");
        assert!(d.data.is_empty());
        assert_eq!(server.connection_count(), 0);
    });
}

#[test]
fn snapshot_waits_until_ready_and_synced_connections_count() {
    run_shared(async {
        let dir = TestDir::new();
        let server = ZdsServer::bind_not_ready(dir.sock()).expect("bind");
        let mut synced = server.synced_connections();
        let zt = raw_ztunnel(&dir.sock(), proto::ZdsVersion::V1 as i32).await;
        // Connected, but the agent is still resyncing: no snapshot, and adds are only recorded.
        let held = tokio::time::timeout(Duration::from_millis(300), zt.recv()).await;
        assert!(held.is_err(), "snapshot sent before mark_ready");
        let err = server
            .add("p1", info("p1"), netns())
            .await
            .expect_err("held");
        assert!(matches!(err, ZdsError::NotConnected), "{err}");
        assert_eq!(*synced.borrow_and_update(), 0);

        server.mark_ready();
        let (req, fds) = recv_request(&zt).await;
        assert_eq!((req, fds), (add("p1"), 1));
        ack(&zt, "").await;
        let (req, _) = recv_request(&zt).await;
        assert_eq!(req, snapshot_sent());
        ack(&zt, "").await;
        tokio::time::timeout(STEP, synced.changed())
            .await
            .expect("no sync notification")
            .expect("sender alive");
        assert_eq!(*synced.borrow(), 1);
    });
}

/// An add right as the agent becomes ready, while the held-back ztunnel has not registered
/// yet, waits for that ztunnel's snapshot and gets a real ack instead of NotConnected (a CNI
/// ADD racing a restarted agent's resync).
#[test]
fn an_add_racing_mark_ready_waits_for_the_held_back_ztunnel() {
    run_shared(async {
        let dir = TestDir::new();
        let server = ZdsServer::bind_not_ready(dir.sock()).expect("bind");
        let zt = raw_ztunnel(&dir.sock(), proto::ZdsVersion::V1 as i32).await;
        assert!(!server.wait_ready(Duration::from_millis(200)).await);
        // Let the connection task get as far as waiting for readiness.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let peer = async {
            // The snapshot (carrying p1 or not), SnapshotSent, then the add's own Add of p1:
            // ack everything until that last one.
            let mut seen = Vec::new();
            loop {
                let (req, _) = recv_request(&zt).await;
                ack(&zt, "").await;
                let done = req == add("p1") && seen.contains(&snapshot_sent());
                seen.push(req);
                if done {
                    return seen;
                }
            }
        };
        server.mark_ready();
        assert!(server.wait_ready(Duration::from_millis(10)).await);
        let (added, seen) = tokio::join!(server.add("p1", info("p1"), netns()), peer);
        added.expect("the add waited for the ztunnel and got its ack");
        assert_eq!(seen.last(), Some(&add("p1")), "{seen:?}");
    });
}

#[test]
fn dropping_a_server_leaves_a_newer_servers_socket() {
    run_shared(async {
        let dir = TestDir::new();
        let old = ZdsServer::bind(dir.sock()).expect("bind old");
        // An upgrade: the new agent binds the same path while the old one is still running.
        let new = ZdsServer::bind(dir.sock()).expect("bind new");
        drop(old);
        assert!(
            dir.sock().exists(),
            "old server removed the new server's socket"
        );
        drop(new);
        assert!(!dir.sock().exists());
    });
}
