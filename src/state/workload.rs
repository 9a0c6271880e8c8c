use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// How peers reach a workload: through its node's ztunnel (HBONE) or directly (plain TCP,
/// a workload outside the ambient mesh). YAML spelling follows upstream: `HBONE` / `TCP`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "HBONE")]
    Hbone,
    /// Upstream's default: a workload that says nothing about tunnelling is not in the mesh.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
}

/// Whether a workload may receive new connections as a service endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// Host-network pods share their node's IP, so they must stay out of the by-IP index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NetworkMode {
    #[default]
    Standard,
    HostNetwork,
}

/// An IP qualified by the network it lives in; written `network/ip` (`/10.96.0.10` for the
/// default, unnamed network), as upstream does, so it can also key YAML maps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected `network/ip` (e.g. `/10.96.0.10` for the default network), got {0:?}")]
pub struct NetworkAddressParseError(pub String);

impl FromStr for NetworkAddress {
    type Err = NetworkAddressParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, ip) = s
            .split_once('/')
            .ok_or_else(|| NetworkAddressParseError(s.to_owned()))?;
        let address = ip
            .parse()
            .map_err(|_| NetworkAddressParseError(s.to_owned()))?;
        Ok(NetworkAddress {
            network: network.to_owned(),
            address,
        })
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetworkAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a waypoint (or network gateway) is: a fixed address, or a service by `namespace/hostname`.
/// Both are written as one `a/b` string upstream; an IP after the slash decides which it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    Address(NetworkAddress),
    Hostname { namespace: String, hostname: String },
}

impl fmt::Display for GatewayDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayDestination::Address(a) => a.fmt(f),
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => write!(f, "{namespace}/{hostname}"),
        }
    }
}

impl Serialize for GatewayDestination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GatewayDestination {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(addr) = s.parse::<NetworkAddress>() {
            return Ok(GatewayDestination::Address(addr));
        }
        match s.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {
                Ok(GatewayDestination::Hostname {
                    namespace: ns.to_owned(),
                    hostname: host.to_owned(),
                })
            }
            _ => Err(serde::de::Error::custom(format!(
                "expected `network/ip` or `namespace/hostname`, got {s:?}"
            ))),
        }
    }
}

/// A waypoint or network gateway reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    pub hbone_mtls_port: u16,
}

/// Who a pod is, as the CNI agent tells it over ZDS: what ties a pod on this node to its
/// workload in the config (istiod names workloads `<cluster>//Pod/<ns>/<name>`, not by the
/// Kubernetes pod UID that ZDS carries, so the uids cannot be compared).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

impl WorkloadInfo {
    /// Whether `w` is this pod's workload, ignoring where it runs.
    pub fn matches(&self, w: &Workload) -> bool {
        w.name == self.name
            && w.namespace == self.namespace
            && w.service_account == self.service_account
    }
}

impl fmt::Display for WorkloadInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (service account {})",
            self.namespace, self.name, self.service_account
        )
    }
}

/// One workload (usually a pod) as the control plane describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub workload_ips: Vec<IpAddr>,
    pub protocol: Protocol,
    pub node: String,
    pub network: String,
    /// `"<service namespace>/<service hostname>"` → service port → target port. Membership
    /// here is what makes this workload an endpoint of that service.
    pub services: HashMap<String, HashMap<u16, u16>>,
    pub waypoint: Option<GatewayAddress>,
    pub network_gateway: Option<GatewayAddress>,
    pub network_mode: NetworkMode,
    pub status: HealthStatus,
    pub hostname: String,
    pub cluster_id: String,
    /// Telemetry labels (`destination_workload`, canonical service/revision).
    pub workload_name: String,
    pub workload_type: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    /// `namespace/name` keys of WorkloadSelector-scoped policies that select this workload.
    pub authorization_policies: Vec<String>,
}

impl Workload {
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The target port this workload serves `service_port` of service `key` on, if it says.
    pub fn target_port(&self, key: &str, service_port: u16) -> Option<u16> {
        self.services
            .get(key)?
            .get(&service_port)
            .copied()
            .filter(|p| *p != 0)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_address_round_trips() {
        let a: NetworkAddress = "/10.96.0.10".parse().unwrap();
        assert_eq!(a.network, "");
        assert_eq!(a.address, "10.96.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(a.to_string(), "/10.96.0.10");
        let b: NetworkAddress = "net1/fd00::1".parse().unwrap();
        assert_eq!(b.to_string(), "net1/fd00::1");
        for bad in ["10.96.0.10", "/10.96.0", "net/host"] {
            assert!(bad.parse::<NetworkAddress>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn gateway_destination_picks_address_or_hostname() {
        let a: GatewayDestination = serde_yaml::from_str("/10.0.0.9").unwrap();
        assert!(matches!(a, GatewayDestination::Address(_)));
        let h: GatewayDestination = serde_yaml::from_str("demo/waypoint.demo.svc").unwrap();
        assert_eq!(h.to_string(), "demo/waypoint.demo.svc");
        assert!(serde_yaml::from_str::<GatewayDestination>("nowhere").is_err());
    }

    #[test]
    fn protocol_uses_upstream_spelling() {
        assert_eq!(
            serde_yaml::from_str::<Protocol>("HBONE").unwrap(),
            Protocol::Hbone
        );
        assert_eq!(
            serde_yaml::from_str::<Protocol>("TCP").unwrap(),
            Protocol::Tcp
        );
        assert!(serde_yaml::from_str::<Protocol>("Hbone").is_err());
    }
}
