//! An in-memory stand-in for the Kubernetes API server, serving core/v1 namespaces and pods over
//! plain HTTP with the real JSON shapes, so that the `kube` crate's client and watcher and the
//! real `kubectl` work against it unchanged. For tests and the demo only; never shipped.
//!
//! ```no_run
//! let api = kube_standin::KubeStandin::start("127.0.0.1:0".parse().unwrap()).unwrap();
//! api.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig")).unwrap();
//! // KUBECONFIG=/tmp/kubeconfig kubectl get pods -A
//! ```

mod clock;
mod discovery;
mod kubeconfig;
mod openapi;
mod paging;
mod patch;
mod proto;
mod render;
mod resource;
mod routes;
mod selector;
mod server;
mod status;
mod store;
mod table;
mod watch;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch as signal;

pub use kubeconfig::{kubeconfig, write_kubeconfig};
pub use resource::Resource;
pub use status::ApiError;

use patch::PatchKind;
use store::{StatusMode, Store};

/// Namespaces every real cluster has; objects created without a namespace land in `default`.
const SEED_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// Options for [`KubeStandin`]; [`KubeStandin::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Builder {
    history_limit: usize,
    bookmark_interval: Duration,
    seed_namespaces: bool,
    log_requests: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(30),
            seed_namespaces: true,
            log_requests: false,
        }
    }
}

impl Builder {
    /// How many changes are kept for watches to resume from; older resourceVersions get 410.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes;
        self
    }

    /// How often watches that asked for `allowWatchBookmarks` get a BOOKMARK.
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// Whether to create `default` and `kube-system` at start (default: yes).
    pub fn seed_namespaces(mut self, seed: bool) -> Self {
        self.seed_namespaces = seed;
        self
    }

    /// Logs each request line (method, URI, Accept, Content-Type) and status to stderr.
    pub fn log_requests(mut self, log: bool) -> Self {
        self.log_requests = log;
        self
    }

    /// Binds `addr` (port 0 picks a free one) and serves on a background thread.
    pub fn start(self, addr: SocketAddr) -> io::Result<KubeStandin> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Store::new(self.history_limit));
        if self.seed_namespaces {
            for ns in SEED_NAMESPACES {
                let obj = serde_json::json!({"metadata": {"name": ns}});
                store
                    .create(Resource::Namespace, None, obj, StatusMode::All)
                    .expect("seeding an empty store cannot fail");
            }
        }
        let server = Arc::new(server::Server {
            store: store.clone(),
            bookmark_interval: self.bookmark_interval,
            server_address: addr.to_string(),
            log_requests: self.log_requests,
        });
        let (stop_tx, stop_rx) = signal::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("kube-standin-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => server::serve(listener, server, stop_rx).await,
                        Err(e) => eprintln!("kube-standin: cannot register listener: {e}"),
                    }
                });
                // Dropping the runtime here cancels open connections and watches.
            })?;
        Ok(KubeStandin {
            addr,
            store,
            stop: stop_tx,
            thread: Some(thread),
        })
    }
}

/// A running stand-in. Dropping it stops the server and closes every connection.
pub struct KubeStandin {
    addr: SocketAddr,
    store: Arc<Store>,
    stop: signal::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

fn resource_of(obj: &Value) -> Result<Resource, ApiError> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    Resource::from_kind(kind)
        .ok_or_else(|| ApiError::bad_request(format!("unsupported kind {kind:?}")))
}

fn namespace_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

impl KubeStandin {
    /// Starts with default options; see [`Builder`].
    pub fn start(addr: SocketAddr) -> io::Result<Self> {
        Builder::default().start(addr)
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL clients use, e.g. `http://127.0.0.1:6443`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kubeconfig text for this server (see [`kubeconfig()`]).
    pub fn kubeconfig(&self) -> String {
        kubeconfig::kubeconfig(&self.url())
    }

    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        kubeconfig::write_kubeconfig(path, &self.url())
    }

    /// Creates an object whose `kind` is `Namespace` or `Pod`. Unlike a POST, a `status`
    /// given here is kept, so tests can create pods that are already running.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let resource = resource_of(&obj)?;
        let ns = namespace_of(&obj).map(str::to_string);
        self.store
            .create(resource, ns.as_deref(), obj, StatusMode::All)
    }

    /// Creates the object, or replaces it whole (status included) if it exists, regardless
    /// of resourceVersion.
    pub fn apply(&self, mut obj: Value) -> Result<Value, ApiError> {
        let resource = resource_of(&obj)?;
        let ns = namespace_of(&obj).map(str::to_string);
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if self.store.get(resource, ns.as_deref(), &name).is_none() {
            return self
                .store
                .create(resource, ns.as_deref(), obj, StatusMode::All);
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        self.store
            .update(resource, ns.as_deref(), &name, obj, StatusMode::All)
    }

    pub fn get(&self, resource: Resource, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.store.get(resource, namespace, name)
    }

    /// All objects of `resource`, in one namespace or (with `None`) all of them.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.store.list(resource, namespace, |_| true).0
    }

    /// Applies a JSON merge patch (RFC 7386), status included.
    pub fn merge_patch(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        self.store.patch(
            resource,
            namespace,
            name,
            PatchKind::Merge,
            patch,
            StatusMode::All,
        )
    }

    pub fn delete(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.store.delete(resource, namespace, name)
    }

    /// The resourceVersion of the latest change.
    pub fn resource_version(&self) -> u64 {
        self.store.resource_version()
    }

    /// Drops all retained watch history and ends open watches, like an API server restart
    /// after etcd compaction: clients resuming from any resourceVersion they hold get
    /// 410 Gone and must re-list.
    pub fn expire_history(&self) {
        self.store.expire_history()
    }

    /// How many watch streams are open, so tests can wait for a client's watch to be
    /// established before making the changes it should see.
    pub fn active_watches(&self) -> usize {
        self.store.active_watches()
    }

    /// Ends open watches; history is kept, so clients resume without re-listing.
    pub fn close_watches(&self) {
        self.store.close_watches()
    }
}

impl Drop for KubeStandin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
