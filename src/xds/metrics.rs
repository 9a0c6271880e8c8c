//! The xDS client's metrics, under upstream ztunnel's names (`istio_xds_*`), plus a NACK
//! counter and a connection-state gauge of our own, named under the binary's prefix
//! (`ztunnel_xds_*`, `waypoint_xds_*`: the client is shared, the process differs).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::proto::discovery::DeltaDiscoveryResponse;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Termination {
    pub reason: Reason,
}

/// Why a stream ended, with upstream's label values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Reason {
    /// Could not connect or open the stream.
    ConnectionError,
    /// The stream failed after it was open.
    Error,
    /// istiod ended the stream cleanly (e.g. its max connection age).
    Complete,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeUrl {
    pub url: String,
}

#[derive(Clone, Debug, Default)]
pub struct XdsMetrics {
    terminations: Family<Termination, Counter>,
    messages: Family<TypeUrl, Counter>,
    bytes: Family<TypeUrl, Counter>,
    nacks: Family<TypeUrl, Counter>,
    connected: Gauge,
}

impl XdsMetrics {
    /// Registers under `istio` (upstream's families) and the root registry (ours, named
    /// `<component>_xds_*`: `ztunnel`, `waypoint`).
    pub fn register(
        istio: &mut Registry,
        component: &'static str,
    ) -> (Self, impl FnOnce(&mut Registry)) {
        let m = XdsMetrics::default();
        istio.register(
            "xds_connection_terminations",
            "Completed connections to the xDS server, by reason",
            m.terminations.clone(),
        );
        istio.register(
            "xds_message",
            "xDS responses received, by type",
            m.messages.clone(),
        );
        istio.register_with_unit(
            "xds_message",
            "Bytes of resources received over xDS, by type",
            Unit::Bytes,
            m.bytes.clone(),
        );
        let (nacks, connected) = (m.nacks.clone(), m.connected.clone());
        let root = move |r: &mut Registry| {
            r.register(
                format!("{component}_xds_nacks"),
                "xDS responses NACKed because some resource was refused, by type",
                nacks,
            );
            r.register(
                format!("{component}_xds_connected"),
                "1 while the xDS stream to istiod is open, else 0",
                connected,
            );
        };
        (m, root)
    }

    /// The stream to istiod opened (`true`) or ended.
    pub fn connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }

    pub fn terminated(&self, reason: Reason) {
        self.terminations
            .get_or_create(&Termination { reason })
            .inc();
    }

    pub fn received(&self, r: &DeltaDiscoveryResponse) {
        let url = TypeUrl {
            url: r.type_url.clone(),
        };
        self.messages.get_or_create(&url).inc();
        let bytes: usize = r
            .resources
            .iter()
            .filter_map(|x| x.resource.as_ref())
            .map(|a| a.value.len())
            .sum();
        self.bytes.get_or_create(&url).inc_by(bytes as u64);
    }

    pub fn nacked(&self, type_url: &str) {
        self.nacks
            .get_or_create(&TypeUrl {
                url: type_url.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_families_carry_the_component_and_the_connection_state() {
        let mut root = Registry::default();
        let (m, register_root) =
            XdsMetrics::register(root.sub_registry_with_prefix("istio"), "waypoint");
        register_root(&mut root);
        let text = |r: &Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, r).unwrap();
            out
        };
        assert!(text(&root).contains("waypoint_xds_connected 0"));
        m.connected(true);
        m.nacked("type.googleapis.com/istio.workload.Address");
        m.terminated(Reason::Complete);
        let t = text(&root);
        for want in [
            "waypoint_xds_connected 1",
            "waypoint_xds_nacks_total{url=\"type.googleapis.com/istio.workload.Address\"} 1",
            "istio_xds_connection_terminations_total{reason=\"Complete\"} 1",
        ] {
            assert!(t.contains(want), "{want} not in\n{t}");
        }
        m.connected(false);
        assert!(text(&root).contains("waypoint_xds_connected 0"));
    }
}
