use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::snapshot::ConfigSnapshot;

/// Shared, swappable current config. Readers take an `Arc` of the whole generation, so one
/// connection sees one consistent config even while a reload lands.
#[derive(Debug)]
pub struct State {
    // The lock is held only to clone or swap the Arc, never across other work, so readers on
    // the per-connection path do not wait behind a reload's parsing.
    current: RwLock<Arc<ConfigSnapshot>>,
    generation: watch::Sender<u64>,
}

impl State {
    /// Generation 0 is `snapshot`; each [`State::replace`] adds one.
    pub fn new(snapshot: ConfigSnapshot) -> Self {
        State {
            current: RwLock::new(Arc::new(snapshot)),
            generation: watch::Sender::new(0),
        }
    }

    pub fn current(&self) -> Arc<ConfigSnapshot> {
        // A panic elsewhere cannot leave a half-swapped Arc behind, so a poisoned lock still
        // holds a whole snapshot.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn replace(&self, snapshot: ConfigSnapshot) {
        let new = Arc::new(snapshot);
        let old = {
            let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *cur, new)
        };
        // Subscribers may re-read state (e.g. re-check policies) as soon as they are woken.
        self.generation.send_modify(|g| *g += 1);
        // Dropping the old generation outside the lock keeps a large free off the write path.
        drop(old);
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Wakes on every [`State::replace`]; the value is the new generation number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Workload;

    #[tokio::test]
    async fn replace_swaps_and_notifies() {
        let state = State::new(ConfigSnapshot::empty());
        let mut rx = state.subscribe();
        let before = state.current();
        let w = Workload {
            uid: "u1".into(),
            ..Default::default()
        };
        state.replace(ConfigSnapshot::new(vec![w], vec![], vec![]).unwrap());
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);
        assert_eq!(state.generation(), 1);
        assert!(state.current().workload_by_uid("u1").is_some());
        // Holders of the old generation keep seeing it unchanged.
        assert_eq!(before.workloads().count(), 0);
    }
}
