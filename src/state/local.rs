//! A pod this ztunnel proxies, and how it finds its own workload in the config.

use std::sync::Arc;
use std::time::Duration;

use super::{ConfigSnapshot, State, Workload, WorkloadInfo};

/// How long a connection of a pod waits for the pod's workload to appear in the config
/// before going on without it (upstream ztunnel waits the same 5 s). The agent can hand a pod
/// over before istiod has pushed its workload.
pub const LOCAL_WORKLOAD_WAIT: Duration = Duration::from_secs(5);

/// A pod on this node as ZDS describes it. Its workload is looked up by [`WorkloadInfo`] among
/// the workloads of this node, never by the ZDS uid (a Kubernetes pod UID, which istiod does
/// not use as the workload uid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    /// This ztunnel's NODE_NAME; empty matches workloads of any node.
    pub node: String,
    pub info: WorkloadInfo,
}

impl LocalPod {
    pub fn new(node: impl Into<String>, info: WorkloadInfo) -> Self {
        LocalPod {
            node: node.into(),
            info,
        }
    }

    /// The pod's workload in `snapshot`, if it is there.
    pub fn find<'a>(&self, snapshot: &'a ConfigSnapshot) -> Option<&'a Arc<Workload>> {
        snapshot.local_workload(&self.node, &self.info)
    }

    /// The current config and the pod's workload in it, waiting up to `deadline` for a config
    /// that has it. On timeout: the config at that time and None.
    pub async fn wait(
        &self,
        state: &State,
        deadline: Duration,
    ) -> (Arc<ConfigSnapshot>, Option<Arc<Workload>>) {
        // Subscribed before the first look, so a config landing in between is not missed.
        let mut changes = state.subscribe();
        let timeout = tokio::time::sleep(deadline);
        tokio::pin!(timeout);
        loop {
            let snapshot = state.current();
            if let Some(w) = self.find(&snapshot).cloned() {
                return (snapshot, Some(w));
            }
            tokio::select! {
                _ = &mut timeout => return (snapshot, None),
                r = changes.changed() => if r.is_err() { return (snapshot, None) },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str, node: &str) -> Workload {
        Workload {
            uid: uid.into(),
            name: "web-0".into(),
            namespace: "demo".into(),
            service_account: "web".into(),
            node: node.into(),
            ..Default::default()
        }
    }

    fn web() -> LocalPod {
        LocalPod::new(
            "node-a",
            WorkloadInfo {
                name: "web-0".into(),
                namespace: "demo".into(),
                service_account: "web".into(),
            },
        )
    }

    #[tokio::test]
    async fn wait_returns_a_workload_that_arrives_later() {
        let state = Arc::new(State::new(ConfigSnapshot::empty()));
        let s = state.clone();
        let push = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Another node's copy first: must not satisfy the wait.
            s.replace(ConfigSnapshot::new(vec![workload("b", "node-b")], vec![], vec![]).unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
            let both = vec![
                workload("b", "node-b"),
                workload("Kubernetes//Pod/demo/web-0", "node-a"),
            ];
            s.replace(ConfigSnapshot::new(both, vec![], vec![]).unwrap());
        });
        let (snap, w) = web().wait(&state, Duration::from_secs(5)).await;
        assert_eq!(w.unwrap().uid, "Kubernetes//Pod/demo/web-0");
        assert_eq!(snap.workloads().count(), 2);
        push.await.unwrap();
    }

    #[tokio::test]
    async fn wait_gives_up_at_the_deadline() {
        let state =
            State::new(ConfigSnapshot::new(vec![workload("b", "node-b")], vec![], vec![]).unwrap());
        let start = std::time::Instant::now();
        let (snap, w) = web().wait(&state, Duration::from_millis(100)).await;
        assert!(w.is_none());
        assert_eq!(snap.workloads().count(), 1);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
