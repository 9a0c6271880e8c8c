//! The node agent: watches Namespaces and this node's Pods, captures the pods that belong in the
//! mesh (DESIGN.md §4) and serves the CNI plugin's requests.
//!
//! * [`selection`] — which pods belong (pure).
//! * [`watch`] — the watch caches; every change becomes a reconcile trigger.
//! * [`reconcile`] — desired vs actual per pod, the enrol/unenrol sequences, retries.
//! * [`enrol`] — the steps: ZDS to ztunnel, in-pod redirect rules.
//! * [`netns`] — finding a pod's netns (CNI path, or by its IP) and holding on to it;
//!   [`cgroup`] tells which pod a process belongs to.
//! * [`annotate`] — the `ambient.istio.io/redirection` annotation.
//! * [`cni`] — CNI ADD/DEL from the plugin socket.
//! * [`state`] — what was done to which pod, and per-pod locks.

mod annotate;
mod cgroup;
mod cni;
mod enrol;
mod netns;
mod reconcile;
pub mod selection;
mod state;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use meshtunnel::redirect::{Backend, RedirectConfig};
use meshtunnel::zds::ZdsServer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use cni::PodEnroller;
pub use netns::Discovery;

use enrol::Mesh;
use reconcile::{Reconciler, Trigger};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Only pods scheduled here are watched and captured.
    pub node_name: String,
    /// Where ztunnel connects (ZDS); the agent listens.
    pub ztunnel_uds: PathBuf,
    pub backend: Backend,
    pub redirect: RedirectConfig,
    /// Where a pod's netns is searched for by its IP.
    pub discovery: Discovery,
    pub retry_base: Duration,
    /// The longest wait between two attempts for a pod that should be captured but is not.
    pub retry_max: Duration,
    /// How long CNI ADD waits for the pod to appear in the watch cache before asking the API.
    pub pod_wait: Duration,
}

impl AgentConfig {
    pub fn new(node_name: String) -> AgentConfig {
        AgentConfig {
            node_name,
            ztunnel_uds: meshtunnel::zds::DEFAULT_SOCKET_PATH.into(),
            backend: Backend::Nftables,
            redirect: RedirectConfig::default(),
            discovery: Discovery::default(),
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            pod_wait: Duration::from_secs(5),
        }
    }
}

/// A running agent. Dropping it stops the watches and reconciles and closes the ZDS socket;
/// captured pods stay captured (a restart must not disturb them).
pub struct Agent {
    reconciler: Arc<Reconciler>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Binds the ZDS socket and starts watching. Must run inside a tokio runtime.
    pub fn start(cfg: AgentConfig, client: Client) -> anyhow::Result<Agent> {
        if let Some(dir) = cfg.ztunnel_uds.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let zds = ZdsServer::bind_not_ready(&cfg.ztunnel_uds)
            .with_context(|| format!("binding the ZDS socket {}", cfg.ztunnel_uds.display()))?;
        let mut synced = zds.synced_connections();
        let (triggers, mut trigger_rx) = mpsc::unbounded_channel();
        let caches = watch::start(&client, &cfg.node_name, triggers.clone());
        info!(node = %cfg.node_name, backend = ?cfg.backend, zds = %cfg.ztunnel_uds.display(),
            "node agent started");
        let reconciler = Arc::new(Reconciler {
            mesh: Mesh {
                zds,
                backend: cfg.backend,
                redirect: cfg.redirect.clone(),
            },
            cfg,
            client,
            pods: caches.pods,
            namespaces: caches.namespaces,
            state: Default::default(),
            triggers: triggers.clone(),
        });
        let mut tasks = caches.tasks;

        let r = reconciler.clone();
        tasks.push(tokio::spawn(async move {
            // Deciding with half a picture could unenrol pods captured through their namespace
            // label: nothing runs before both caches have listed once.
            if r.pods.wait_until_ready().await.is_err()
                || r.namespaces.wait_until_ready().await.is_err()
            {
                return;
            }
            info!("watch caches synced; reconciling every pod");
            // ztunnel's first snapshot waits for this pass: it must name every pod that is
            // still captured, or ztunnel would drop their proxies.
            let pass = futures_util::future::join_all(
                keys(&r, Trigger::All)
                    .into_iter()
                    .map(|k| r.clone().reconcile_and_retry(k)),
            );
            if tokio::time::timeout(INITIAL_PASS_LIMIT, pass)
                .await
                .is_err()
            {
                warn!("the first reconcile pass is slow; serving ztunnel anyway");
            }
            r.mesh.zds.mark_ready();
            info!("pods resynced; ztunnel snapshots enabled");
            while let Some(trigger) = trigger_rx.recv().await {
                dispatch(&r, trigger);
            }
        }));

        let r = reconciler.clone();
        tasks.push(tokio::spawn(async move {
            while synced.changed().await.is_ok() {
                for key in r.waiting_for_ztunnel() {
                    if triggers.send(Trigger::Pod(key)).is_err() {
                        return;
                    }
                }
            }
        }));
        Ok(Agent { reconciler, tasks })
    }

    /// The plugin server's view of this agent.
    pub fn enroller(&self) -> Arc<PodEnroller> {
        Arc::new(PodEnroller(self.reconciler.clone()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Bounds how long a restarted agent keeps ztunnel waiting for its snapshot.
const INITIAL_PASS_LIMIT: Duration = Duration::from_secs(20);

fn dispatch(r: &Arc<Reconciler>, trigger: Trigger) {
    for key in keys(r, trigger) {
        tokio::spawn(r.clone().reconcile_and_retry(key));
    }
}

fn keys(r: &Reconciler, trigger: Trigger) -> Vec<state::PodKey> {
    let mut keys = match trigger {
        Trigger::Pod(key) => vec![key],
        Trigger::Namespace(ns) => r
            .pods
            .state()
            .iter()
            .map(|p| state::PodKey::of(p))
            .filter(|k| k.namespace == ns)
            .collect(),
        Trigger::All => {
            let mut keys: Vec<_> = r
                .pods
                .state()
                .iter()
                .map(|p| state::PodKey::of(p))
                .collect();
            keys.extend(r.tracked_keys());
            keys
        }
    };
    keys.sort();
    keys.dedup();
    keys
}
