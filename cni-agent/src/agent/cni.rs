//! The plugin's requests: CNI ADD decides and captures synchronously (the app container must not
//! start uncaptured), CNI DEL forgets quickly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use tracing::{info, warn};

use super::reconcile::{Failure, Reconciler};
use super::selection::{self, Selection};
use super::state::PodKey;
use crate::protocol::{EnrollRequest, PodRef, ReleaseRequest};
use crate::server::{Decision, Enroller};

/// How long CNI DEL waits for ztunnel's Ack before leaving the Del to finish on its own.
const DEL_WAIT: Duration = Duration::from_secs(1);
const CACHE_POLL: Duration = Duration::from_millis(50);
/// How long an ADD waits for the agent's resync, then for a ztunnel (whose reconnect backoff
/// is capped at 5 s); well within the plugin's own timeout for the agent.
const ZTUNNEL_WAIT: Duration = Duration::from_secs(6);

/// The node agent as seen by the plugin server.
pub struct PodEnroller(pub(super) Arc<Reconciler>);

impl Enroller for PodEnroller {
    async fn enroll(&self, req: EnrollRequest) -> Result<Decision, String> {
        let r = &self.0;
        let key = PodKey {
            namespace: req.pod.namespace.clone(),
            name: req.pod.name.clone(),
        };
        let pod = lookup_pod(r, &req.pod).await?;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if uid.is_empty() {
            return Err(format!("pod {key} has no uid"));
        }
        {
            let mut known = r.state.known();
            known
                .cni_netns
                .insert(uid.clone(), (key.clone(), PathBuf::from(&req.netns)));
            known.released.remove(&uid);
        }
        let ns_labels = lookup_namespace_labels(r, &key.namespace).await?;
        match selection::select(&pod, ns_labels.as_ref(), &r.cfg.node_name) {
            Selection::Skip(why) => {
                info!(pod = %key, %uid, reason = why, "CNI ADD: not for the mesh");
                Ok(Decision::NotMeshed)
            }
            Selection::Mesh => {
                // Right after a restart of the agent (it resyncs before it serves ztunnel) or of
                // ztunnel (it reconnects with a backoff) there is briefly no ztunnel to take the
                // pod: wait for one (bounded) rather than fail an ADD that would work a moment
                // later. Still fails closed when none comes.
                if !r.mesh.zds.wait_ready(ZTUNNEL_WAIT).await
                    || !r.mesh.zds.wait_connected(ZTUNNEL_WAIT).await
                {
                    warn!(pod = %key, %uid, waited = ?ZTUNNEL_WAIT, "CNI ADD: no ztunnel connected");
                }
                let _guard = r.state.lock(&key).await;
                match r
                    .enrol(&pod, &uid, Some(std::path::Path::new(&req.netns)))
                    .await
                {
                    Ok(()) => Ok(Decision::Enrolled),
                    Err(Failure::Waiting(why) | Failure::Retry(why)) => {
                        warn!(pod = %key, %uid, reason = %why, "CNI ADD: could not capture; failing the ADD");
                        Err(format!("capturing pod {key}: {why}"))
                    }
                }
            }
        }
    }

    async fn release(&self, req: ReleaseRequest) {
        let r = self.0.clone();
        let key = PodKey {
            namespace: req.pod.namespace.clone(),
            name: req.pod.name.clone(),
        };
        let uids: Vec<String> = {
            let mut known = r.state.known();
            let uids: Vec<String> = if req.pod.uid.is_empty() {
                // An old runtime without K8S_POD_UID: every incarnation we know under the name.
                known
                    .tracked
                    .iter()
                    .filter(|(_, t)| t.key == key)
                    .map(|(u, _)| u.clone())
                    .collect()
            } else {
                vec![req.pod.uid.clone()]
            };
            for uid in &uids {
                known.cni_netns.remove(uid);
                known.tracked.remove(uid);
                known.released.insert(uid.clone(), key.clone());
            }
            uids
        };
        let del = tokio::spawn(async move {
            for uid in uids {
                match r.mesh.zds_del(&uid).await {
                    Ok(()) => info!(pod = %key, %uid, "CNI DEL: removed from ztunnel"),
                    Err(e) => {
                        warn!(pod = %key, %uid, error = %e, "CNI DEL: ztunnel did not confirm")
                    }
                }
            }
        });
        let _ = tokio::time::timeout(DEL_WAIT, del).await;
    }
}

/// The pod from the watch cache, waiting a little for it (the API has the pod before the kubelet
/// builds its sandbox, but our watch may lag), then straight from the API.
async fn lookup_pod(r: &Reconciler, pod: &PodRef) -> Result<Pod, String> {
    let key = PodKey {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
    };
    let matches = |p: &Pod| pod.uid.is_empty() || p.metadata.uid.as_deref() == Some(&pod.uid);
    let deadline = Instant::now() + r.cfg.pod_wait;
    loop {
        if let Some(p) = r.pod(&key).filter(|p| matches(p)) {
            return Ok((*p).clone());
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(CACHE_POLL).await;
    }
    let api: Api<Pod> = Api::namespaced(r.client.clone(), &pod.namespace);
    match api.get_opt(&pod.name).await {
        Ok(Some(p)) if matches(&p) => Ok(p),
        Ok(Some(p)) => Err(format!(
            "pod {key} has uid {:?}, the runtime asked for {:?}",
            p.metadata.uid, pod.uid
        )),
        Ok(None) => Err(format!("pod {key} does not exist in the API")),
        Err(e) => Err(format!("looking up pod {key}: {e}")),
    }
}

async fn lookup_namespace_labels(
    r: &Reconciler,
    ns: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    if let Some(n) = r.namespace(ns) {
        return Ok(n.metadata.labels.clone());
    }
    let api: Api<Namespace> = Api::all(r.client.clone());
    match api.get_opt(ns).await {
        Ok(n) => Ok(n.and_then(|n| n.metadata.labels)),
        Err(e) => Err(format!("looking up namespace {ns}: {e}")),
    }
}
