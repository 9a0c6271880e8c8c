//! Which label sets are in use and by whom, so series of pods and peers that are gone can be
//! dropped after the retention period instead of piling up for the life of the process.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::{PodLabels, PodMeter, Traffic, TrafficLabels};

/// Who a traffic series belongs to: the local pod whose proxy reported it, and the
/// workload on the other end when the config names one. A series without owners lives while
/// connections on it are open, then for the retention.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct Owner {
    pub pod: String,
    pub peer: Option<String>,
}

/// Counter handles of one label set (response_flags `-`), fetched once per series so a
/// connection does not look them up again.
#[derive(Clone)]
pub(super) struct Cached {
    pub opened: Counter,
    pub closed: Counter,
    pub sent: Counter,
    pub received: Counter,
    /// Connections open on this label set; the connection decrements it on close without
    /// taking the lock. The sweep only drops a series it reads as 0 under the lock, and opens
    /// increment under the lock, so a series in use is never dropped.
    pub open: Arc<AtomicUsize>,
}

struct Entry {
    labels: Arc<TrafficLabels>,
    cached: Cached,
    owners: HashSet<Owner>,
    gone_since: Option<Instant>,
}

struct PodRecord {
    meter: Weak<PodMeter>,
    labels: [PodLabels; 2],
    gauges: [Gauge; 2],
    gone_since: Option<Instant>,
}

impl PodRecord {
    /// Its proxies run, or connections it accepted are still open.
    fn alive(&self) -> bool {
        self.meter.strong_count() > 0 || self.gauges.iter().any(|g| g.get() != 0)
    }
}

#[derive(Default)]
struct Inner {
    traffic: HashMap<Arc<TrafficLabels>, Entry>,
    pods: HashMap<String, PodRecord>,
}

/// Family removals happen under the same lock as opens, so a connection opening on a label set
/// being dropped never ends up holding a counter that is no longer in the family.
#[derive(Default)]
pub(super) struct Series {
    inner: Mutex<Inner>,
}

impl Series {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave a half-updated entry that matters for counting.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().traffic.len()
    }

    pub fn open(
        &self,
        labels: TrafficLabels,
        owner: Option<Owner>,
        traffic: &Traffic,
    ) -> (Arc<TrafficLabels>, Cached) {
        let mut g = self.lock();
        if let Some(e) = g.traffic.get_mut(&labels) {
            e.cached.open.fetch_add(1, Ordering::Relaxed);
            e.gone_since = None;
            if let Some(owner) = owner {
                if !e.owners.contains(&owner) {
                    e.owners.insert(owner);
                }
            }
            return (e.labels.clone(), e.cached.clone());
        }
        let cached = Cached {
            opened: traffic.opened.get_or_create_owned(&labels),
            closed: traffic.closed.get_or_create_owned(&labels),
            sent: traffic.sent.get_or_create_owned(&labels),
            received: traffic.received.get_or_create_owned(&labels),
            open: Arc::new(AtomicUsize::new(1)),
        };
        let labels = Arc::new(labels);
        g.traffic.insert(
            labels.clone(),
            Entry {
                labels: labels.clone(),
                cached: cached.clone(),
                owners: owner.into_iter().collect(),
                gone_since: None,
            },
        );
        (labels, cached)
    }

    /// Counts on a non-default flag (closed or failed with a reason): rare, looked up each time.
    pub fn inc_flagged(&self, family: &Family<TrafficLabels, Counter>, labels: &TrafficLabels) {
        let _g = self.lock();
        family.get_or_create(labels).inc();
    }

    pub fn add_pod(
        &self,
        uid: &str,
        meter: Weak<PodMeter>,
        labels: [PodLabels; 2],
        family: &Family<PodLabels, Gauge>,
    ) -> [Gauge; 2] {
        let mut g = self.lock();
        let gauges = [
            family.get_or_create_owned(&labels[0]),
            family.get_or_create_owned(&labels[1]),
        ];
        g.pods.insert(
            uid.to_owned(),
            PodRecord {
                meter,
                labels,
                gauges: gauges.clone(),
                gone_since: None,
            },
        );
        gauges
    }

    pub fn sweep(
        &self,
        now: Instant,
        retention: Duration,
        peer_alive: &dyn Fn(&str) -> bool,
        traffic: &Traffic,
        pod_family: &Family<PodLabels, Gauge>,
    ) {
        let mut g = self.lock();
        let Inner { traffic: t, pods } = &mut *g;
        let pod_alive = |uid: &str| pods.get(uid).is_some_and(|p| p.meter.strong_count() > 0);
        let expired = |since: &mut Option<Instant>, alive: bool| {
            if alive {
                *since = None;
                return false;
            }
            now.duration_since(*since.get_or_insert(now)) >= retention
        };
        t.retain(|labels, e| {
            e.owners
                .retain(|o| pod_alive(&o.pod) && o.peer.as_deref().is_none_or(peer_alive));
            let alive = e.cached.open.load(Ordering::Relaxed) > 0 || !e.owners.is_empty();
            if expired(&mut e.gone_since, alive) {
                traffic.remove(labels);
                return false;
            }
            true
        });
        let live_labels: HashSet<PodLabels> = pods
            .values()
            .filter(|p| p.alive())
            .flat_map(|p| p.labels.iter().cloned())
            .collect();
        pods.retain(|_, p| {
            let alive = p.alive();
            if expired(&mut p.gone_since, alive) {
                // A pod re-created under the same name shares the gauges; leave them.
                for l in &p.labels {
                    if !live_labels.contains(l) {
                        pod_family.remove(l);
                    }
                }
                return false;
            }
            true
        });
    }
}
