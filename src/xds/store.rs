//! What istiod has pushed, by resource name: the xDS half of the config, without I/O. The
//! entries are shared (`Arc`), so building a snapshot after a one-workload change copies
//! pointers, not workloads.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::protocol::{Change, Kind, Resource};
use crate::state::{Policy, Service, Workload};

#[derive(Clone, Debug)]
enum AddressEntry {
    Workload(Arc<Workload>),
    Service(Arc<Service>),
}

/// Ordered by name so a rebuilt snapshot (and who wins a conflict in it) does not depend on
/// hash order.
#[derive(Debug, Default)]
pub struct XdsStore {
    addresses: BTreeMap<String, AddressEntry>,
    policies: BTreeMap<String, Arc<Policy>>,
}

impl XdsStore {
    /// Applies one response's change to the resources of `kind`. A removal of a workload or
    /// service takes its endpoints with it, since endpoints are derived from the workloads.
    pub fn apply(&mut self, kind: Kind, change: Change) {
        for name in change.removals {
            match kind {
                Kind::Address => drop(self.addresses.remove(&name)),
                Kind::Authorization => drop(self.policies.remove(&name)),
            }
        }
        for (name, r) in change.upserts {
            match r {
                Resource::Workload(w) => {
                    self.addresses.insert(name, AddressEntry::Workload(w));
                }
                Resource::Service(s) => {
                    self.addresses.insert(name, AddressEntry::Service(s));
                }
                Resource::Policy(p) => {
                    self.policies.insert(name, p);
                }
            }
        }
    }

    pub fn workloads(&self) -> impl Iterator<Item = Arc<Workload>> + '_ {
        self.addresses.values().filter_map(|e| match e {
            AddressEntry::Workload(w) => Some(w.clone()),
            AddressEntry::Service(_) => None,
        })
    }

    pub fn services(&self) -> impl Iterator<Item = Arc<Service>> + '_ {
        self.addresses.values().filter_map(|e| match e {
            AddressEntry::Service(s) => Some(s.clone()),
            AddressEntry::Workload(_) => None,
        })
    }

    pub fn policies(&self) -> impl Iterator<Item = Arc<Policy>> + '_ {
        self.policies.values().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(uid: &str) -> Resource {
        Resource::Workload(Arc::new(Workload {
            uid: uid.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn upserts_replace_and_removals_remove_by_name() {
        let mut s = XdsStore::default();
        s.apply(
            Kind::Address,
            Change {
                upserts: vec![
                    ("a".into(), w("a")),
                    (
                        "demo/svc".into(),
                        Resource::Service(Arc::new(Service {
                            namespace: "demo".into(),
                            hostname: "svc".into(),
                            ..Default::default()
                        })),
                    ),
                ],
                removals: vec![],
            },
        );
        assert_eq!(s.workloads().count(), 1);
        assert_eq!(s.services().count(), 1);
        s.apply(
            Kind::Address,
            Change {
                upserts: vec![("a".into(), w("a2"))],
                removals: vec!["demo/svc".into()],
            },
        );
        assert_eq!(s.workloads().next().unwrap().uid, "a2");
        assert_eq!(s.services().count(), 0);
        // An Authorization removal never touches addresses of the same name.
        s.apply(
            Kind::Authorization,
            Change {
                upserts: vec![],
                removals: vec!["a".into()],
            },
        );
        assert_eq!(s.workloads().count(), 1);
    }
}
