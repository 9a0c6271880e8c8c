//! One snapshot from two sources: the local file and istiod's xDS. Either may be absent. With
//! both, istiod's entries win over the file's for the same uid, service or policy (upstream
//! loads its local config into the same state xDS then updates), and an address two entries
//! claim stays with the first; every such conflict is kept for the config dump instead of
//! failing the whole config.

use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::state::{ConfigSnapshot, State};
use crate::xds::protocol::{Change, Kind};
use crate::xds::store::XdsStore;

#[derive(Debug)]
pub struct ConfigSources {
    state: Arc<State>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    file: Option<ConfigSnapshot>,
    /// `None` when this ztunnel has no xDS source.
    xds: Option<XdsStore>,
    conflicts: Vec<String>,
}

impl ConfigSources {
    /// `xds`: whether istiod is a source; without it the file's snapshot is published as is.
    pub fn new(state: Arc<State>, xds: bool) -> Self {
        ConfigSources {
            state,
            inner: Mutex::new(Inner {
                xds: xds.then(XdsStore::default),
                ..Default::default()
            }),
        }
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// A new good version of the local file.
    pub fn set_file(&self, snapshot: ConfigSnapshot) {
        let mut inner = self.lock();
        if inner.xds.is_none() {
            self.state.replace(snapshot);
            return;
        }
        inner.file = Some(snapshot);
        self.publish(&mut inner);
    }

    /// One handled xDS response. Ignored when xDS is not a source.
    pub fn apply_xds(&self, kind: Kind, change: Change) {
        self.apply_xds_batch([(kind, change)]);
    }

    /// Several handled responses, in order, published as one snapshot.
    pub fn apply_xds_batch(&self, changes: impl IntoIterator<Item = (Kind, Change)>) {
        let mut inner = self.lock();
        let Some(xds) = inner.xds.as_mut() else {
            return;
        };
        let mut any = false;
        for (kind, change) in changes {
            xds.apply(kind, change);
            any = true;
        }
        if any {
            self.publish(&mut inner);
        }
    }

    /// Entries left out of (or addresses not indexed in) the current snapshot, and why.
    pub fn conflicts(&self) -> Vec<String> {
        self.lock().conflicts.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Publishing replaces whole values; a panic mid-way leaves the last published state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &mut Inner) {
        let Some(xds) = &inner.xds else { return };
        let file = inner.file.as_ref();
        let (snapshot, conflicts) = ConfigSnapshot::merged(
            xds.workloads()
                .chain(file.into_iter().flat_map(|f| f.workloads().cloned())),
            xds.services()
                .chain(file.into_iter().flat_map(|f| f.services().cloned())),
            xds.policies()
                .chain(file.into_iter().flat_map(|f| f.policies().cloned())),
        );
        let conflicts: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
        if conflicts != inner.conflicts && !conflicts.is_empty() {
            warn!(
                count = conflicts.len(),
                first = %conflicts[0],
                "config entries conflict; the first of each stays in force (see /config_dump)"
            );
        }
        inner.conflicts = conflicts;
        self.state.replace(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Workload;
    use crate::xds::protocol::Resource;

    fn w(uid: &str, ip: &str) -> Workload {
        Workload {
            uid: uid.into(),
            namespace: "demo".into(),
            workload_ips: vec![ip.parse().unwrap()],
            ..Default::default()
        }
    }

    fn upsert(name: &str, wl: Workload) -> Change {
        Change {
            upserts: vec![(name.into(), Resource::Workload(Arc::new(wl)))],
            removals: vec![],
        }
    }

    #[test]
    fn file_only_publishes_the_file_as_is() {
        let state = Arc::new(State::new(ConfigSnapshot::empty()));
        let s = ConfigSources::new(state.clone(), false);
        s.set_file(ConfigSnapshot::new(vec![w("f", "10.0.0.1")], vec![], vec![]).unwrap());
        assert!(state.current().workload_by_uid("f").is_some());
        // Without an xDS source, xDS changes are ignored.
        s.apply_xds(Kind::Address, upsert("x", w("x", "10.0.0.2")));
        assert!(state.current().workload_by_uid("x").is_none());
    }

    #[test]
    fn file_and_xds_combine_and_xds_wins_a_clash() {
        let state = Arc::new(State::new(ConfigSnapshot::empty()));
        let s = ConfigSources::new(state.clone(), true);
        s.set_file(
            ConfigSnapshot::new(
                vec![w("f", "10.0.0.1"), w("shared", "10.0.0.3")],
                vec![],
                vec![],
            )
            .unwrap(),
        );
        s.apply_xds(Kind::Address, upsert("x", w("x", "10.0.0.2")));
        let mut from_xds = w("shared", "10.0.0.4");
        from_xds.node = "node-x".into();
        s.apply_xds(Kind::Address, upsert("shared", from_xds));
        let cur = state.current();
        assert!(cur.workload_by_uid("f").is_some());
        assert!(cur.workload_by_uid("x").is_some());
        assert_eq!(cur.workload_by_uid("shared").unwrap().node, "node-x");
        assert!(cur.workload_by_ip("10.0.0.3".parse().unwrap()).is_none());
        assert_eq!(s.conflicts().len(), 1, "{:?}", s.conflicts());

        // Removing the xDS entry lets the file's one back in; the file update keeps xDS's.
        s.apply_xds(
            Kind::Address,
            Change {
                upserts: vec![],
                removals: vec!["shared".into()],
            },
        );
        assert!(state
            .current()
            .workload_by_ip("10.0.0.3".parse().unwrap())
            .is_some());
        let before = state.generation();
        s.apply_xds_batch([
            (Kind::Address, upsert("y", w("y", "10.0.0.5"))),
            (Kind::Address, upsert("z", w("z", "10.0.0.6"))),
        ]);
        assert_eq!(state.generation(), before + 1, "one snapshot for the batch");
        assert!(state.current().workload_by_uid("z").is_some());
        s.set_file(ConfigSnapshot::empty());
        let cur = state.current();
        assert!(cur.workload_by_uid("f").is_none());
        assert!(cur.workload_by_uid("x").is_some());
        assert!(s.conflicts().is_empty());
    }
}
