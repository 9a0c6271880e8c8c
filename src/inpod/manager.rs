//! Turns ZDS requests into per-pod proxies: one set of listeners per pod, keyed by uid and
//! the inode of its network namespace.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;

use super::{InpodNetns, InpodSocketFactory};
use crate::hbone::{Dialer, H2Settings, Pool};
use crate::identity::{CertManager, CertSlot, Identity, TlsContext};
use crate::proxy::{self, Lifecycle, Ports, ProxyInputs, SocketFactory};
use crate::state::State;

/// The pod as the CNI agent describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

/// Node-wide settings every pod proxy shares.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node_name: String,
    pub trust_domain: String,
    pub packet_mark: u32,
    pub ports: Ports,
    pub h2: H2Settings,
    pub metrics: Arc<crate::metrics::Metrics>,
}

struct Pod {
    inode: u64,
    info: PodInfo,
    life: Lifecycle,
}

/// What the admin API and readiness report about a pod proxy.
#[derive(Clone, Debug)]
pub struct PodStatus {
    pub uid: String,
    pub info: PodInfo,
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
    pub fn add(&self, uid: String, info: PodInfo, netns: OwnedFd) -> Result<(), String> {
        let result = self.try_add(&uid, info, netns);
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

    fn try_add(&self, uid: &str, info: PodInfo, netns: OwnedFd) -> Result<(), String> {
        if uid.is_empty() {
            return Err("empty uid".into());
        }
        let netns = InpodNetns::new(self.host_netns.clone(), netns)
            .map_err(|e| format!("pod {uid}: {e}"))?;
        if let Some(w) = self.state.current().workload_by_uid(uid) {
            if !w.node.is_empty() && w.node != self.cfg.node_name {
                return Err(format!(
                    "pod {uid} runs on node {:?} per the config, not on this node {:?}",
                    w.node, self.cfg.node_name
                ));
            }
        }
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
            .map_err(|e| format!("pod {uid}: {e}"))?;
        let inode = netns.inode();
        let factory: Arc<dyn SocketFactory> = Arc::new(InpodSocketFactory::new(
            Arc::new(netns),
            self.cfg.packet_mark,
        ));
        let pool = Pool::new(
            dialer(factory.clone(), self.tls.clone(), cert.clone()),
            self.cfg.h2.clone(),
        );
        let life = Lifecycle::default();
        let inputs = Arc::new(ProxyInputs {
            uid: uid.to_owned(),
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
        proxy::start(inputs, pool)
            .map_err(|e| format!("pod {uid}: opening listeners in its netns: {e}"))?;
        let old = lock(&self.pods).insert(
            uid.to_owned(),
            Pod {
                inode,
                info: info.clone(),
                life,
            },
        );
        if let Some(old) = old {
            old.life.close();
            tracing::info!(%uid, "pod sandbox replaced; old proxies closed");
        }
        tracing::info!(%uid, pod = %info.name, namespace = %info.namespace, %identity, netns = inode, "pod proxies started");
        Ok(())
    }

    /// Stops pod `uid`'s listeners and closes its connections. Unknown uids are fine: the
    /// agent sends Del to every ztunnel.
    pub fn del(&self, uid: &str) {
        lock(&self.readiness).failed.remove(uid);
        if let Some(p) = lock(&self.pods).remove(uid) {
            p.life.close();
            tracing::info!(%uid, pod = %p.info.name, "pod proxies removed");
        }
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
            self.del(&uid);
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
        let lives: Vec<Lifecycle> = lock(&self.pods).values().map(|p| p.life.clone()).collect();
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
    }
}

/// Dials HBONE from the pod's own namespace, so the peer sees the pod's IP as the source.
fn dialer(factory: Arc<dyn SocketFactory>, tls: TlsContext, cert: Arc<CertSlot>) -> Dialer {
    Arc::new(move |key| {
        let (factory, tls, cert) = (factory.clone(), tls.clone(), cert.clone());
        Box::pin(async move {
            let cfg = tls
                .client_config(cert, key.dst.clone())
                .map_err(std::io::Error::other)?;
            let tcp = proxy::connect(factory.as_ref(), key.addr, None).await?;
            tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::IpAddress(key.addr.ip().into()), tcp)
                .await
        })
    })
}
