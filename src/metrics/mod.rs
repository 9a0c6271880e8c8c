//! Telemetry: Istio's `istio_tcp_*` counters, per-pod proxy gauges and process metrics, served
//! as OpenMetrics text on `:15020/stats/prometheus`, plus the per-connection access log.
//!
//! Cost on the data path: one label derivation and one map lookup when a connection opens,
//! one atomic add per chunk moved (so byte counters advance while a connection is open), one
//! map lookup when it closes. Series of pods and peers that are gone are dropped after the
//! retention setting, so the label cardinality stays bounded by what is alive.

mod conn;
mod hooks;
mod labels;
mod process;
mod series;
pub mod server;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use conn::{ConnMeter, Direction};
pub use labels::{
    ConnectionView, Reporter, RequestProtocol, ResponseFlags, SecurityPolicy, TrafficLabels, Value,
};
use series::{Owner, Series};

use crate::identity::Identity;

/// Labels of the per-pod gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    pod: String,
    namespace: String,
    direction: &'static str,
}

/// Labels of `ztunnel_waypoint_unavailable`: the waypoint as the config names it, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaypointLabels {
    waypoint: String,
    reason: &'static str,
}

/// The `istio_tcp_*` families.
#[derive(Default)]
struct Traffic {
    opened: Family<TrafficLabels, Counter>,
    closed: Family<TrafficLabels, Counter>,
    failed: Family<TrafficLabels, Counter>,
    /// Bytes from the server to the client (Istio: "sent during response").
    sent: Family<TrafficLabels, Counter>,
    /// Bytes from the client to the server (Istio: "received during request").
    received: Family<TrafficLabels, Counter>,
}

impl Traffic {
    fn remove(&self, labels: &TrafficLabels) {
        for f in ResponseFlags::ALL {
            let l = labels.with_flags(f);
            for fam in [
                &self.opened,
                &self.closed,
                &self.failed,
                &self.sent,
                &self.received,
            ] {
                fam.remove(&l);
            }
        }
    }
}

pub struct Metrics {
    registry: Registry,
    traffic: Traffic,
    series: Series,
    pod_connections: Family<PodLabels, Gauge>,
    active_proxies: Gauge,
    waypoint_unavailable: Family<WaypointLabels, Counter>,
    retention: Duration,
    /// The xDS client's counters (`istio_xds_*`).
    pub xds: crate::xds::metrics::XdsMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// `retention`: how long the series of a pod or peer that is gone stay visible (so a
    /// last scrape sees their final values) before they are dropped.
    pub fn new(retention: Duration) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let traffic = Traffic::default();
        let (xds, register_xds_root) = {
            let istio = registry.sub_registry_with_prefix("istio");
            istio.register(
                "tcp_connections_opened",
                "The total number of TCP connections opened",
                traffic.opened.clone(),
            );
            istio.register(
                "tcp_connections_closed",
                "The total number of TCP connections closed",
                traffic.closed.clone(),
            );
            istio.register(
                "tcp_connections_failed",
                "The total number of TCP connections that could not be established (response_flags says why)",
                traffic.failed.clone(),
            );
            istio.register(
                "tcp_received_bytes",
                "Bytes received from the client during the connection (request direction)",
                traffic.received.clone(),
            );
            istio.register(
                "tcp_sent_bytes",
                "Bytes sent to the client during the connection (response direction)",
                traffic.sent.clone(),
            );
            crate::xds::metrics::XdsMetrics::register(istio, "ztunnel")
        };
        register_xds_root(&mut registry);
        let active_proxies = Gauge::default();
        registry.register(
            "workload_manager_active_proxy_count",
            "Pods whose proxies this ztunnel runs",
            active_proxies.clone(),
        );
        let pod_connections = Family::<PodLabels, Gauge>::default();
        registry.register(
            "ztunnel_pod_active_connections",
            "Open proxied connections per pod and direction",
            pod_connections.clone(),
        );
        let waypoint_unavailable = Family::<WaypointLabels, Counter>::default();
        registry.register(
            "ztunnel_waypoint_unavailable",
            "Connections refused because the destination's waypoint could not be used (never sent around it)",
            waypoint_unavailable.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        Arc::new(Metrics {
            registry,
            traffic,
            series: Series::default(),
            pod_connections,
            active_proxies,
            waypoint_unavailable,
            retention,
            xds,
        })
    }

    /// OpenMetrics text of everything.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Registers a pod proxy. Its gauges live as long as the returned handle (held by the
    /// pod's proxies), then for the retention period.
    pub fn pod(
        self: &Arc<Self>,
        uid: &str,
        name: &str,
        namespace: &str,
        identity: Identity,
    ) -> Arc<PodMeter> {
        let labels = |direction| PodLabels {
            pod: name.to_owned(),
            namespace: namespace.to_owned(),
            direction,
        };
        let meter = Arc::new_cyclic(|weak| {
            let [outbound, inbound] = self.series.add_pod(
                uid,
                weak.clone(),
                [
                    labels(Reporter::Source.direction()),
                    labels(Reporter::Destination.direction()),
                ],
                &self.pod_connections,
            );
            PodMeter {
                metrics: Arc::downgrade(self),
                uid: uid.to_owned(),
                identity,
                outbound,
                inbound,
            }
        });
        self.active_proxies.inc();
        meter
    }

    /// Drops series nothing alive refers to any more and that have been idle for the
    /// retention period. `peer_alive` says whether a peer workload uid is still in the config.
    pub fn sweep(&self, now: Instant, peer_alive: &dyn Fn(&str) -> bool) {
        self.series.sweep(
            now,
            self.retention,
            peer_alive,
            &self.traffic,
            &self.pod_connections,
        );
    }

    /// Number of traffic label sets currently tracked (for tests and the bench).
    pub fn tracked_series(&self) -> usize {
        self.series.len()
    }
}

/// Runs [`Metrics::sweep`] periodically until `stop`.
pub async fn run_sweeper(
    metrics: Arc<Metrics>,
    state: Arc<crate::state::State>,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = (metrics.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snap = state.current();
        metrics.sweep(Instant::now(), &|uid| snap.workload_by_uid(uid).is_some());
    }
}

/// One pod proxy's handle on the metrics.
pub struct PodMeter {
    metrics: Weak<Metrics>,
    uid: String,
    identity: Identity,
    outbound: Gauge,
    inbound: Gauge,
}

impl PodMeter {
    /// Counts a connection opening now. `peer_uid`: the workload on the other end, when
    /// the config knows it (its series go when it leaves the config).
    fn open(
        self: &Arc<Self>,
        view: &ConnectionView<'_>,
        peer_uid: Option<&str>,
        log: conn::LogContext,
    ) -> ConnMeter {
        let labels = TrafficLabels::from_view(view);
        let gauge = match view.reporter {
            Reporter::Source => self.outbound.clone(),
            Reporter::Destination => self.inbound.clone(),
        };
        let Some(metrics) = self.metrics.upgrade() else {
            return ConnMeter::detached(labels, gauge, log);
        };
        // A peer known by its certificate but not named by the config (a new pod whose
        // workload istiod has not pushed yet, a client from elsewhere): nothing tells when it
        // is gone, so its series is kept only while in use and for the retention after.
        // Owned by the pod, every new identity reaching a long-lived pod would add series for
        // the pod's whole life.
        let owner = match peer_uid {
            None if labels.names_peer_identity() => None,
            peer => Some(Owner {
                pod: self.uid.clone(),
                peer: peer.map(str::to_owned),
            }),
        };
        let (labels, cached) = metrics.series.open(labels, owner, &metrics.traffic);
        ConnMeter::new(metrics, labels, cached, gauge, log)
    }
}

impl PodMeter {
    /// Counts a connection refused because its waypoint `waypoint` is unusable for `reason`.
    pub fn waypoint_unavailable(&self, waypoint: &str, reason: crate::state::WaypointGap) {
        if let Some(m) = self.metrics.upgrade() {
            m.waypoint_unavailable
                .get_or_create(&WaypointLabels {
                    waypoint: waypoint.to_owned(),
                    reason: reason.as_label(),
                })
                .inc();
        }
    }
}

impl Drop for PodMeter {
    fn drop(&mut self) {
        if let Some(m) = self.metrics.upgrade() {
            m.active_proxies.dec();
        }
    }
}

pub use conn::LogContext;

#[cfg(test)]
mod tests;
