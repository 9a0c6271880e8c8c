//! Desired (selection over the watch caches) against actual (what [`State`] says was done) for
//! one pod at a time, with the enrol/unenrol sequences and retries.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use meshtunnel::zds::{WorkloadInfo, ZdsError};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::enrol::{Mesh, StepError};
use super::netns::{self, NetnsError, NetnsRef};
use super::selection::{self, Selection, ENABLED, PENDING};
use super::state::{Phase, PodKey, State, Tracked};
use super::{annotate, AgentConfig};

/// Why a pod is not (un)enrolled yet.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Nothing to act on yet (no netns known and no IP to find it by); the pod's next update
    /// brings another attempt.
    #[error("waiting: {0}")]
    Waiting(String),
    /// A step failed; try again with backoff.
    #[error("{0}")]
    Retry(String),
}

impl From<StepError> for Failure {
    fn from(e: StepError) -> Self {
        Failure::Retry(e.to_string())
    }
}

#[derive(Debug)]
enum FindError {
    NoIp,
    Netns(NetnsError),
}

/// What a reconcile may be asked about.
#[derive(Debug)]
pub enum Trigger {
    Pod(PodKey),
    /// Every pod in the namespace (its labels changed).
    Namespace(String),
    /// Every pod in the caches and every pod we track (after a (re)list).
    All,
}

pub struct Reconciler {
    pub cfg: AgentConfig,
    pub mesh: Mesh,
    pub client: Client,
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub state: State,
    pub triggers: mpsc::UnboundedSender<Trigger>,
}

pub fn workload_info(pod: &Pod) -> WorkloadInfo {
    WorkloadInfo {
        name: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
    }
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

impl Reconciler {
    pub fn pod(&self, key: &PodKey) -> Option<Arc<Pod>> {
        self.pods
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
    }

    pub fn namespace(&self, ns: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(&ObjectRef::new(ns))
    }

    fn namespace_labels(&self, ns: &str) -> Option<std::collections::BTreeMap<String, String>> {
        self.namespace(ns).and_then(|n| n.metadata.labels.clone())
    }

    /// Brings one pod to what its labels ask for, then schedules a retry if that failed.
    pub async fn reconcile_and_retry(self: Arc<Self>, key: PodKey) {
        let result = self.reconcile(&key).await;
        match result {
            Ok(()) => {
                self.state.known().retries.remove(&key);
            }
            Err(Failure::Waiting(why)) => debug!(pod = %key, %why, "not yet"),
            Err(Failure::Retry(why)) => self.schedule_retry(key, &why),
        }
    }

    fn schedule_retry(self: &Arc<Self>, key: PodKey, why: &str) {
        let delay = {
            let mut known = self.state.known();
            let retry = known.retries.entry(key.clone()).or_default();
            // Several triggers for one pod can fail at once; one attempt is counted (and one
            // retry scheduled) per backoff period.
            if retry.scheduled {
                debug!(pod = %key, reason = %why, "failed again; retry already scheduled");
                return;
            }
            retry.attempts += 1;
            let exp = retry.attempts.saturating_sub(1).min(20);
            let delay = self
                .cfg
                .retry_base
                .saturating_mul(1 << exp)
                .min(self.cfg.retry_max);
            // One miss is routine (e.g. ztunnel reconnecting after a restart); a pod still not
            // reconciled after a few tries is what an operator must see.
            if retry.attempts < 3 {
                info!(pod = %key, attempt = retry.attempts, retry_in = ?delay, reason = %why,
                    "pod not reconciled; will retry");
            } else {
                warn!(pod = %key, attempt = retry.attempts, retry_in = ?delay, reason = %why,
                    "pod not reconciled; will retry");
            }
            retry.scheduled = true;
            delay
        };
        // Weak: a stopped agent must not be kept alive (with its ZDS socket) by pending timers.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(this) = weak.upgrade() else { return };
            if let Some(r) = this.state.known().retries.get_mut(&key) {
                r.scheduled = false;
            }
            let _ = this.triggers.send(Trigger::Pod(key));
        });
    }

    /// Pods whose Add waited for a ztunnel, or that are retrying: worth another go right away
    /// once a ztunnel has connected.
    pub fn waiting_for_ztunnel(&self) -> Vec<PodKey> {
        let known = self.state.known();
        let mut keys: Vec<PodKey> = known
            .tracked
            .values()
            .filter(|t| t.phase == Phase::Pending)
            .map(|t| t.key.clone())
            .chain(known.retries.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    pub fn tracked_keys(&self) -> Vec<PodKey> {
        self.state
            .known()
            .tracked
            .values()
            .map(|t| t.key.clone())
            .collect()
    }

    async fn reconcile(&self, key: &PodKey) -> Result<(), Failure> {
        let _guard = self.state.lock(key).await;
        let pod = self.pod(key);
        let uid = pod.as_ref().and_then(|p| p.metadata.uid.clone());
        // Earlier incarnations of this pod name (deleted, or deleted and re-created) go first.
        let stale: Vec<String> = {
            let mut known = self.state.known();
            known.forget_other_uids(key, uid.as_deref());
            known
                .tracked
                .iter()
                .filter(|(u, t)| &t.key == key && Some(u.as_str()) != uid.as_deref())
                .map(|(u, _)| u.clone())
                .collect()
        };
        for old in stale {
            self.unenrol(key, &old, None).await?;
        }
        let (Some(pod), Some(uid)) = (pod, uid) else {
            return Ok(());
        };
        let ns_labels = self.namespace_labels(&key.namespace);
        match selection::select(&pod, ns_labels.as_ref(), &self.cfg.node_name) {
            Selection::Skip(why) => {
                let tracked = self.state.known().tracked.contains_key(&uid);
                if tracked || selection::redirection_annotation(&pod).is_some() {
                    info!(pod = %key, %uid, reason = why, "pod leaves the mesh");
                    self.unenrol(key, &uid, Some(&pod)).await?;
                }
                Ok(())
            }
            Selection::Mesh => {
                if self.state.known().released.contains_key(&uid) {
                    return Err(Failure::Waiting("sandbox torn down by CNI DEL".into()));
                }
                self.enrol(&pod, &uid, None).await
            }
        }
    }

    /// The enrol sequence; the caller holds the pod's lock. `cni_netns` is the path from a CNI
    /// ADD being served right now.
    pub async fn enrol(
        &self,
        pod: &Pod,
        uid: &str,
        cni_netns: Option<&Path>,
    ) -> Result<(), Failure> {
        let key = PodKey::of(pod);
        let annotation = selection::redirection_annotation(pod);
        let (netns, tracked) = match self.find_netns(pod, uid, cni_netns, true).await {
            Ok(found) => found,
            Err(FindError::NoIp) => return Err(Failure::Waiting("the pod has no IP yet".into())),
            Err(FindError::Netns(e)) => return Err(Failure::Retry(e.to_string())),
        };
        if let Some(t) = &tracked {
            if t.phase == Phase::Enrolled && t.netns.same_as(&netns) {
                if annotation != Some(ENABLED) {
                    self.annotate(&key, Some(ENABLED)).await?;
                }
                return Ok(());
            }
        }
        // A pod captured by an earlier agent run (annotation says so, and its rules are there):
        // it must keep working while ztunnel catches up, so it is never marked pending or
        // touched; ztunnel gets it with the next snapshot.
        let captured = tracked.is_none()
            && annotation == Some(ENABLED)
            && self.mesh.rules_present(&netns).await.unwrap_or(false);
        self.state.known().tracked.insert(
            uid.to_owned(),
            Tracked {
                key: key.clone(),
                netns: netns.clone(),
                phase: Phase::Pending,
            },
        );
        match self.mesh.zds_add(uid, workload_info(pod), &netns).await {
            Ok(()) => {}
            Err(StepError::Zds(ZdsError::NotConnected)) if captured => {
                self.set_phase(uid, Phase::Enrolled);
                info!(pod = %key, %uid, netns = %netns.path.display(),
                    "pod still captured from before the restart; ztunnel gets it when it connects");
                return Ok(());
            }
            Err(e) => {
                if annotation != Some(PENDING) && !captured {
                    if let Err(a) = self.annotate(&key, Some(PENDING)).await {
                        warn!(pod = %key, error = %a, "annotating pending");
                    }
                }
                return Err(Failure::Retry(format!("ztunnel did not take the pod: {e}")));
            }
        }
        let rules = match self.mesh.rules_present(&netns).await {
            Ok(true) => {
                self.mesh.complete_capture(&netns).await;
                Ok(())
            }
            Ok(false) => self.mesh.install_rules(&netns).await,
            Err(e) => Err(e),
        };
        if let Err(e) = rules {
            // ztunnel must not keep a proxy for a pod whose traffic never reaches it.
            self.state.known().tracked.remove(uid);
            if let Err(d) = self.mesh.zds_del(uid).await {
                warn!(pod = %key, error = %d, "removing the pod from ztunnel after a rules failure");
            }
            return Err(Failure::Retry(e.to_string()));
        }
        self.set_phase(uid, Phase::Enrolled);
        info!(pod = %key, %uid, netns = %netns.path.display(), "pod enrolled");
        if annotation != Some(ENABLED) {
            self.annotate(&key, Some(ENABLED)).await?;
        }
        Ok(())
    }

    /// The unenrol sequence; the caller holds the pod's lock. `pod` is `None` once it is deleted.
    pub async fn unenrol(&self, key: &PodKey, uid: &str, pod: Option<&Pod>) -> Result<(), Failure> {
        let (tracked, released) = {
            let known = self.state.known();
            (
                known.tracked.get(uid).cloned(),
                known.released.contains_key(uid),
            )
        };
        // Searching by IP is only safe while the pod's sandbox can still hold that IP: once
        // the sandbox is torn down (CNI DEL, or the pod finished) the IP may already belong to
        // another pod, whose rules must not be removed.
        let search = !released && pod.is_some_and(|p| !selection::is_finished(p));
        let netns = match tracked.map(|t| t.netns) {
            Some(n) if n.reopen().is_ok() => Some(n),
            _ => match pod {
                Some(p) => match self.find_netns(p, uid, None, search).await {
                    Ok((n, _)) => Some(n),
                    Err(FindError::Netns(e @ NetnsError::Ambiguous { .. })) => {
                        return Err(Failure::Retry(e.to_string()))
                    }
                    // Gone with its sandbox: no rules left to remove.
                    Err(_) => None,
                },
                None => None,
            },
        };
        if let Some(netns) = &netns {
            match self.mesh.uninstall_rules(netns).await {
                Ok(()) | Err(StepError::Netns(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Err(e) = self.mesh.zds_del(uid).await {
            // The server has forgotten the pod either way, so a ztunnel that missed this Del
            // drops the pod at its next snapshot.
            warn!(pod = %key, %uid, error = %e, "ztunnel did not confirm the removal");
        }
        self.state.known().tracked.remove(uid);
        if pod.is_some_and(|p| selection::redirection_annotation(p).is_some()) {
            self.annotate(key, None).await?;
        }
        info!(pod = %key, %uid, rules_removed = netns.is_some(), "pod unenrolled");
        Ok(())
    }

    fn set_phase(&self, uid: &str, phase: Phase) {
        if let Some(t) = self.state.known().tracked.get_mut(uid) {
            t.phase = phase;
        }
    }

    async fn annotate(&self, key: &PodKey, value: Option<&str>) -> Result<(), Failure> {
        annotate::set(&self.client, &key.namespace, &key.name, value)
            .await
            .map_err(|e| Failure::Retry(format!("annotating the pod: {e}")))
    }

    /// The pod's netns: the one CNI ADD names, else the one already tracked (if still the same),
    /// else the remembered CNI path, else found by the pod's IPs. Returns the tracked entry too.
    async fn find_netns(
        &self,
        pod: &Pod,
        uid: &str,
        cni_netns: Option<&Path>,
        search_by_ip: bool,
    ) -> Result<(NetnsRef, Option<Tracked>), FindError> {
        let (tracked, remembered) = {
            let known = self.state.known();
            (
                known.tracked.get(uid).cloned(),
                known.cni_netns.get(uid).map(|(_, p)| p.clone()),
            )
        };
        if let Some(path) = cni_netns {
            let (n, _) = NetnsRef::open(path).map_err(FindError::Netns)?;
            return Ok((n, tracked));
        }
        if let Some(t) = &tracked {
            if t.netns.reopen().is_ok() {
                return Ok((t.netns.clone(), tracked));
            }
        }
        if let Some(path) = remembered {
            if let Ok((n, _)) = NetnsRef::open(&path) {
                return Ok((n, tracked));
            }
        }
        let ips = pod_ips(pod);
        if ips.is_empty() || !search_by_ip {
            return Err(FindError::NoIp);
        }
        let scope = self.cfg.discovery.clone();
        let uid = uid.to_owned();
        match tokio::task::spawn_blocking(move || netns::discover(&uid, &ips, &scope)).await {
            Ok(found) => Ok((found.map_err(FindError::Netns)?, tracked)),
            Err(e) => Err(FindError::Netns(NetnsError::Open {
                path: self.cfg.discovery.netns_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })),
        }
    }
}
