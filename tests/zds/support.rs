//! What every ZDS test here shares: runtimes that keep the fd-leak test alone, temp dirs,
//! network namespaces, and a ztunnel-side client that records every handler call.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use meshtunnel::zds::{run_client, WorkloadHandler, WorkloadInfo};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The fd-leak test counts /proc/self/fd, which every other test here changes: they hold this
/// shared, the leak test exclusively, each for the whole life of its runtime (whose drop closes
/// whatever its tasks still held).
pub(crate) static FD_LOCK: RwLock<()> = RwLock::new(());

pub(crate) fn run_shared<F: Future<Output = ()>>(test: F) {
    let _shared = FD_LOCK.read().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(test);
}

pub(crate) fn run_exclusive<F: Future<Output = ()>>(test: F) {
    let _exclusive = FD_LOCK.write().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(test);
}

pub(crate) const STEP: Duration = Duration::from_secs(10);

/// A unique temp dir per test, removed even when the test panics.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    pub(crate) fn new() -> Self {
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
    pub(crate) fn sock(&self) -> PathBuf {
        self.0.join("ztunnel.sock")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn netns() -> OwnedFd {
    std::fs::File::open("/proc/self/ns/net")
        .expect("open /proc/self/ns/net")
        .into()
}

/// A brand-new network namespace, like a pod's: made on a throwaway thread (setns/unshare are
/// per thread), it lives exactly as long as the returned fd, so nothing is left behind.
pub(crate) fn fresh_netns() -> OwnedFd {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").expect("open netns"))
    })
    .join()
    .expect("netns thread")
}

pub(crate) fn inode(fd: &OwnedFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::from(fd.try_clone().expect("dup"));
    file.metadata().expect("fstat").ino()
}

/// A regular file: what a confused or hostile agent might pass instead of a netns.
pub(crate) fn not_netns() -> OwnedFd {
    let exe = std::env::current_exe().expect("current exe");
    std::fs::File::open(exe).expect("open regular file").into()
}

pub(crate) fn info(name: &str) -> WorkloadInfo {
    WorkloadInfo {
        name: name.into(),
        namespace: "default".into(),
        service_account: "sa".into(),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    Add(String, WorkloadInfo),
    Del(String),
    Snapshot(HashSet<String>),
    Disconnected,
}

/// Keeps the netns fds it accepted, like ztunnel's proxies would, and reports every call.
pub(crate) struct Recorder {
    pub(crate) events: mpsc::UnboundedSender<Ev>,
    pub(crate) pods: Mutex<HashMap<String, OwnedFd>>,
}

impl Recorder {
    pub(crate) fn uids(&self) -> HashSet<String> {
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
pub(crate) struct Ztunnel {
    pub(crate) handler: Arc<Recorder>,
    pub(crate) events: mpsc::UnboundedReceiver<Ev>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: JoinHandle<()>,
}

impl Ztunnel {
    pub(crate) fn start(path: &Path) -> Self {
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
    pub(crate) async fn next(&mut self) -> Ev {
        tokio::time::timeout(STEP, self.events.recv())
            .await
            .expect("timed out waiting for a handler call")
            .expect("client gone")
    }
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("client did not stop")
            .expect("client panicked");
    }
}

pub(crate) fn set(uids: &[&str]) -> HashSet<String> {
    uids.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}
