//! The xDS client's metrics, under upstream ztunnel's names (`istio_xds_*`), plus a NACK
//! counter of our own.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
}

impl XdsMetrics {
    /// Registers under `istio` (upstream's families) and the root registry (ours).
    pub fn register(istio: &mut Registry) -> (Self, impl FnOnce(&mut Registry)) {
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
        let nacks = m.nacks.clone();
        let root = move |r: &mut Registry| {
            r.register(
                "ztunnel_xds_nacks",
                "xDS responses NACKed because some resource was refused, by type",
                nacks,
            );
        };
        (m, root)
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
