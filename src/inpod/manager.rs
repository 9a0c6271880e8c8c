//! Turns ZDS requests into per-pod proxies: one set of listeners per pod, keyed by uid and
//! the inode of its network namespace.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;

use super::{InpodNetns, InpodSocketFactory};
use crate::hbone::{self, Dialer, H2Settings, Pool};
use crate::identity::{CertManager, CertSlot, Identity, TlsContext};
use crate::proxy::{self, Lifecycle, Ports, ProxyInputs, SocketFactory};
use crate::state::{LocalPod, State, WorkloadInfo, LOCAL_WORKLOAD_WAIT};
use crate::workers::Workers;

/// Node-wide settings every pod proxy shares.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node_name: String,
    pub trust_domain: String,
    pub packet_mark: u32,
    pub ports: Ports,
    pub h2: H2Settings,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The data path's threads: each pod gets a set of listeners and an HBONE pool on each.
    pub workers: Workers,
}

struct Pod {
    inode: u64,
    info: WorkloadInfo,
    life: Lifecycle,
    /// The pod's outbound HBONE connections, one pool per worker, closed cleanly when
    /// ztunnel stops.
    pools: Vec<Pool>,
}

/// What the admin API and readiness report about a pod proxy.
#[derive(Clone, Debug)]
pub struct PodStatus {
    pub uid: String,
    pub info: WorkloadInfo,
    pub netns_inode: u64,
}

pub struct WorkloadManager {
    cfg: ProxyConfig,
    state: Arc<State>,
    certs: Arc<CertManager>,
    tls: TlsContext,
    host_netns: Arc<OwnedFd>,
    pods: Mutex<HashMap<String, Pod>>,
    readiness: Mutex<Readiness>,
}

#[derive(Default)]
struct Readiness {
    snapshot_done: bool,
    /// Pods the agent asked for that we could not start, with why.
    failed: HashMap<String, String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkloadManager {
    pub fn new(
        cfg: ProxyConfig,
        state: Arc<State>,
        certs: Arc<CertManager>,
        tls: TlsContext,
        host_netns: Arc<OwnedFd>,
    ) -> Arc<Self> {
        Arc::new(WorkloadManager {
            cfg,
            state,
            certs,
            tls,
            host_netns,
            pods: Mutex::new(HashMap::new()),
            readiness: Mutex::new(Readiness::default()),
        })
    }

    /// Starts (or keeps) the proxies of pod `uid`. Idempotent for the same netns; a new netns
    /// for a known uid (sandbox re-created) replaces the old proxies.
    pub async fn add(&self, uid: String, info: WorkloadInfo, netns: OwnedFd) -> Result<(), String> {
        let result = self.try_add(&uid, info, netns).await;
        let mut r = lock(&self.readiness);
        match &result {
            Ok(()) => {
                r.failed.remove(&uid);
            }
            Err(e) => {
                r.failed.insert(uid.clone(), e.clone());
            }
        }
        result
    }

    async fn try_add(&self, uid: &str, info: WorkloadInfo, netns: OwnedFd) -> Result<(), String> {
        if uid.is_empty() {
            return Err("empty uid".into());
        }
        let netns = InpodNetns::new(self.host_netns.clone(), netns)
            .map_err(|e| format!("pod {uid}: {e}"))?;
        {
            let pods = lock(&self.pods);
            if let Some(p) = pods.get(uid) {
                if p.inode == netns.inode() {
                    return Ok(());
                }
            }
        }
        let identity = Identity::new(
            &self.cfg.trust_domain,
            &info.namespace,
            &info.service_account,
        );
        let cert = self
            .certs
            .get(&identity)
            .await
            .map_err(|e| format!("pod {uid}: {e}"))?;
        let inode = netns.inode();
        let factory: Arc<dyn SocketFactory> = Arc::new(InpodSocketFactory::new(
            Arc::new(netns),
            self.cfg.packet_mark,
        ));
        let dial = dialer(
            factory.clone(),
            self.tls.clone(),
            cert.clone(),
            self.cfg.h2.sockets,
        );
        let workers: Vec<(tokio::runtime::Handle, Pool)> = self
            .cfg
            .workers
            .handles()
            .iter()
            .map(|h| (h.clone(), Pool::new(dial.clone(), self.cfg.h2.clone())))
            .collect();
        let life = Lifecycle::default();
        let pod = LocalPod::new(self.cfg.node_name.clone(), info.clone());
        tokio::spawn(report_workload_arrival(
            self.state.clone(),
            uid.to_owned(),
            pod.clone(),
            life.force_close.clone(),
        ));
        let inputs = Arc::new(ProxyInputs {
            uid: uid.to_owned(),
            pod,
            identity: identity.clone(),
            state: self.state.clone(),
            tls: self.tls.clone(),
            cert,
            factory,
            h2: self.cfg.h2.clone(),
            ports: self.cfg.ports,
            life: life.clone(),
            meter: self
                .cfg
                .metrics
                .pod(uid, &info.name, &info.namespace, identity.clone()),
        });
        proxy::start(inputs, &workers)
            .map_err(|e| format!("pod {uid}: opening listeners in its netns: {e}"))?;
        let old = lock(&self.pods).insert(
            uid.to_owned(),
            Pod {
                inode,
                info: info.clone(),
                life,
                pools: workers.into_iter().map(|(_, p)| p).collect(),
            },
        );
        if let Some(old) = old {
            old.life.close();
            tracing::info!(%uid, "pod sandbox replaced; old proxies closed");
        }
        tracing::info!(%uid, pod = %info.name, namespace = %info.namespace, %identity, netns = inode, "pod proxies started");
        Ok(())
    }

    /// Stops pod `uid`'s listeners and closes its connections, and returns once the listeners
    /// are closed (bounded by [`LISTENERS_CLOSE_WAIT`]): the agent takes the Ack to mean that
    /// nothing of ours accepts in the pod any more. Unknown uids are fine: the agent sends Del
    /// to every ztunnel.
    pub async fn del(&self, uid: &str) {
        let Some(life) = self.remove(uid) else {
            return;
        };
        let closed = life.listeners_closed.cancelled();
        if tokio::time::timeout(LISTENERS_CLOSE_WAIT, closed)
            .await
            .is_err()
        {
            tracing::warn!(%uid, waited = ?LISTENERS_CLOSE_WAIT, "pod's listeners not closed yet");
        }
    }

    /// Forgets pod `uid` and starts closing its proxies (see [`Lifecycle::close`]).
    fn remove(&self, uid: &str) -> Option<Lifecycle> {
        lock(&self.readiness).failed.remove(uid);
        let p = lock(&self.pods).remove(uid)?;
        p.life.close();
        tracing::info!(%uid, pod = %p.info.name, "pod proxies removed");
        Some(p.life)
    }

    /// The agent's snapshot is complete: pods it did not name are gone.
    pub fn snapshot_complete(&self, present: &HashSet<String>) {
        let stale: Vec<String> = lock(&self.pods)
            .keys()
            .filter(|uid| !present.contains(*uid))
            .cloned()
            .collect();
        for uid in stale {
            tracing::info!(%uid, "pod not in the agent's snapshot");
            self.remove(&uid);
        }
        let mut r = lock(&self.readiness);
        r.snapshot_done = true;
        r.failed.retain(|uid, _| present.contains(uid));
    }

    /// The agent connection dropped: readiness waits for the next snapshot.
    pub fn disconnected(&self) {
        lock(&self.readiness).snapshot_done = false;
    }

    /// Ok when the first snapshot is in and no pod is pending; else the reason.
    pub fn ready(&self) -> Result<(), String> {
        let r = lock(&self.readiness);
        if !r.snapshot_done {
            return Err("waiting for the CNI agent's workload snapshot".into());
        }
        match r.failed.iter().next() {
            None => Ok(()),
            Some((uid, why)) => Err(format!(
                "{} pod(s) pending, e.g. {uid}: {why}",
                r.failed.len()
            )),
        }
    }

    /// NODE_NAME: pods find their workloads among this node's.
    pub fn node_name(&self) -> &str {
        &self.cfg.node_name
    }

    pub fn pods(&self) -> Vec<PodStatus> {
        let mut out: Vec<PodStatus> = lock(&self.pods)
            .iter()
            .map(|(uid, p)| PodStatus {
                uid: uid.clone(),
                info: p.info.clone(),
                netns_inode: p.inode,
            })
            .collect();
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    /// Graceful stop: refuse new connections everywhere, let open ones finish until
    /// `deadline`, then close what is left.
    pub async fn drain(&self, deadline: std::time::Duration) {
        let (lives, pools): (Vec<Lifecycle>, Vec<Vec<Pool>>) = lock(&self.pods)
            .values()
            .map(|p| (p.life.clone(), p.pools.clone()))
            .unzip();
        for l in &lives {
            l.stop_accept.cancel();
            l.tracker.close();
        }
        let all = futures_util::future::join_all(lives.iter().map(|l| l.tracker.wait()));
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                ?deadline,
                "drain deadline reached; closing remaining connections"
            );
        }
        for l in &lives {
            l.close();
        }
        // The cut connections close with FIN (see proxy::CLOSE_BUDGET); exiting before they
        // have would leave the kernel to reset them.
        let closing = futures_util::future::join_all(lives.iter().map(|l| l.tracker.wait()));
        let _ = tokio::time::timeout(proxy::CLOSE_BUDGET, closing).await;
        // Then the HBONE connections this node opened: GOAWAY and close_notify rather than a
        // connection that vanishes when the process exits.
        futures_util::future::join_all(pools.iter().flatten().map(|p| p.close(POOL_CLOSE))).await;
    }
}

/// How long a Del waits for the pod's listeners to close on the worker threads (they close as
/// soon as a worker runs its accept loop, which is at once unless it is stuck).
const LISTENERS_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a stopping ztunnel waits for its HBONE connections to close cleanly.
const POOL_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Logs whether pod `uid`'s workload is in the config: nothing when it is already there; else
/// that the pod waits, then when it arrives, or a warning if it has not after
/// [`LOCAL_WORKLOAD_WAIT`] (the pod's proxies keep running and pick it up whenever it comes).
async fn report_workload_arrival(
    state: Arc<State>,
    uid: String,
    pod: LocalPod,
    stop: tokio_util::sync::CancellationToken,
) {
    if pod.find(&state.current()).is_some() {
        return;
    }
    tracing::info!(%uid, pod = %pod.info, node = %pod.node, "pod's workload not in the config yet; its connections wait for it");
    let mut warned = false;
    loop {
        let wait = if warned {
            std::time::Duration::MAX
        } else {
            LOCAL_WORKLOAD_WAIT
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            (_, w) = pod.wait(&state, wait) => match w {
                Some(w) => {
                    tracing::info!(%uid, pod = %pod.info, workload = %w.uid, "pod's workload arrived in the config");
                    return;
                }
                None if !warned => {
                    tracing::warn!(%uid, pod = %pod.info, node = %pod.node, waited = ?LOCAL_WORKLOAD_WAIT,
                        "pod's workload still not in the config (no workload of that name, namespace and service account on this node); HBONE connections to it are refused until it arrives");
                    warned = true;
                }
                None => {}
            },
        }
    }
}

/// Dials HBONE from the pod's own namespace, so the peer sees the pod's IP as the source.
/// Connect timeout and keepalive are the configured ones (CONNECT_TIMEOUT, KEEPALIVE_*).
fn dialer(
    factory: Arc<dyn SocketFactory>,
    tls: TlsContext,
    cert: Arc<CertSlot>,
    sockets: proxy::SocketOptions,
) -> Dialer {
    Arc::new(move |key| {
        let (factory, tls, cert, sockets) = (factory.clone(), tls.clone(), cert.clone(), sockets);
        Box::pin(async move {
            let cfg = tls
                .client_config(cert, key.dst.clone())
                .map_err(std::io::Error::other)?;
            let tcp = proxy::connect_with(factory.as_ref(), key.addr, None, &sockets).await?;
            hbone::tls_connect(cfg, ServerName::IpAddress(key.addr.ip().into()), tcp).await
        })
    })
}
