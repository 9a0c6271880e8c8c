//! What the agent knows about pods beyond the API's view: what it has done to each (by uid),
//! the netns paths CNI ADD told it, and one lock per pod so that CNI requests, watch events and
//! retries never act on the same pod at once.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::Pod;

use super::netns::NetnsRef;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn of(pod: &Pod) -> PodKey {
        PodKey {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Sent to the ZDS server, not (yet) acked by a ztunnel; no rules installed by this attempt.
    Pending,
    /// ztunnel acked and the rules are in.
    Enrolled,
}

#[derive(Debug, Clone)]
pub struct Tracked {
    pub key: PodKey,
    pub netns: NetnsRef,
    pub phase: Phase,
}

#[derive(Debug, Default)]
pub struct Retry {
    pub attempts: u32,
    pub scheduled: bool,
}

#[derive(Debug, Default)]
pub struct Known {
    /// By pod uid: pods handed to the ZDS server (and maybe captured).
    pub tracked: HashMap<String, Tracked>,
    /// By pod uid: the netns path from the pod's CNI ADD.
    pub cni_netns: HashMap<String, (PodKey, PathBuf)>,
    /// By pod uid: sandboxes torn down by CNI DEL. Their netns may linger for a moment, and must
    /// not be re-enrolled by IP discovery; a new CNI ADD clears the mark.
    pub released: HashMap<String, PodKey>,
    pub retries: HashMap<PodKey, Retry>,
}

impl Known {
    /// Drops what is remembered for uids of `key` other than `current` (the pod was deleted, or
    /// re-created under the same name).
    pub fn forget_other_uids(&mut self, key: &PodKey, current: Option<&str>) {
        let keep = |uid: &String, k: &PodKey| k != key || Some(uid.as_str()) == current;
        self.cni_netns.retain(|uid, (k, _)| keep(uid, k));
        self.released.retain(|uid, k| keep(uid, k));
    }
}

#[derive(Default)]
pub struct State {
    known: Mutex<Known>,
    locks: Mutex<HashMap<PodKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl State {
    pub fn known(&self) -> MutexGuard<'_, Known> {
        // Plain data; a panic while holding it leaves nothing half-updated that matters more than
        // continuing to serve.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialises all work on one pod.
    pub async fn lock(&self, key: &PodKey) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // Drop locks nobody holds or waits for, so the map does not grow with pod churn.
            locks.retain(|k, l| k == key || Arc::strong_count(l) > 1);
            locks.entry(key.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }
}
