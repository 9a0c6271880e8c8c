//! The control-plane side of the waypoint in cluster mode, on `/stats/prometheus` beside the
//! request metrics: istiod's workload xDS (the library client's families, `istio_xds_*` and
//! `waypoint_xds_*`), the Kubernetes API watches (`waypoint_kube_*`: objects accepted or
//! refused per kind, watch errors and relists), and how many services this waypoint serves.

use std::sync::Arc;

use meshtunnel::state::State;
use meshtunnel::xds::metrics::XdsMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::served::served_services;
use crate::route::ServiceRef;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    kind: String,
    /// `accepted` or `refused`.
    result: &'static str,
}

/// What the object watch records: conversions and the watches' own trouble.
#[derive(Clone, Debug, Default)]
pub struct KubeMetrics {
    objects: Family<ObjectLabels, Counter>,
    watch_errors: Family<KindLabels, Counter>,
    watch_relists: Family<KindLabels, Counter>,
}

impl KubeMetrics {
    /// An object version of `kind` converted (`ok`) or was refused.
    pub fn checked(&self, kind: &str, ok: bool) {
        self.objects
            .get_or_create(&ObjectLabels {
                kind: kind.to_owned(),
                result: if ok { "accepted" } else { "refused" },
            })
            .inc();
    }

    /// The watch of `kind` failed (it retries with backoff).
    pub fn watch_error(&self, kind: &str) {
        self.watch_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The watch of `kind` started over from a full list (not counting the first).
    pub fn relisted(&self, kind: &str) {
        self.watch_relists
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }
}

/// The services this waypoint serves, counted from istiod's view when scraped (nothing runs
/// between scrapes).
#[derive(Debug)]
struct ServedServices {
    mesh: Arc<State>,
    gateway: ServiceRef,
}

impl Collector for ServedServices {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let n = served_services(&self.mesh.current(), &self.gateway).len();
        let gauge = ConstGauge::new(n as i64);
        let metric = encoder.encode_descriptor(
            "waypoint_served_services",
            "Services whose waypoint (istio.io/use-waypoint, as istiod resolves it) is this one.",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Everything cluster mode records.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    pub xds: XdsMetrics,
    pub kube: KubeMetrics,
}

impl ClusterMetrics {
    /// Registers every family in `registry` (the one `/stats/prometheus` encodes).
    pub fn register(registry: &mut Registry, mesh: Arc<State>, gateway: ServiceRef) -> Self {
        let (xds, register_xds_root) =
            XdsMetrics::register(registry.sub_registry_with_prefix("istio"), "waypoint");
        register_xds_root(registry);
        let kube = KubeMetrics::default();
        registry.register(
            "waypoint_kube_objects",
            "Object versions from the Kubernetes API the waypoint converted (accepted) or refused, by kind",
            kube.objects.clone(),
        );
        registry.register(
            "waypoint_kube_watch_errors",
            "Kubernetes API watch failures (retried with backoff), by kind",
            kube.watch_errors.clone(),
        );
        registry.register(
            "waypoint_kube_watch_relists",
            "Kubernetes API watches started over from a full list after the first (expired resourceVersion, desync), by kind",
            kube.watch_relists.clone(),
        );
        registry.register_collector(Box::new(ServedServices { mesh, gateway }));
        ClusterMetrics { xds, kube }
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
