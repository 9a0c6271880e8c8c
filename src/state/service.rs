use std::collections::HashMap;

use serde::Serialize;

use super::workload::{GatewayAddress, NetworkAddress};

/// A service: virtual IPs that stand for the workloads naming it in their `services` map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    /// Service port → target port; a target of 0 means "ask each endpoint" (named ports).
    pub ports: HashMap<u16, u16>,
    /// Identities an HBONE client accepts from this service's endpoints, besides their own.
    pub subject_alt_names: Vec<String>,
    pub waypoint: Option<GatewayAddress>,
}

impl Service {
    /// The key workloads use for this service in their `services` map.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}
