//! The waypoint's configuration in file mode: a directory of Kubernetes YAML objects
//! (HTTPRoute, GRPCRoute, VirtualService, DestinationRule, AuthorizationPolicy, Service) turned
//! into one
//! immutable [`WaypointConfig`], plus the local workload/service file ztunnel reads.

mod convert;
mod convert_istio;
mod load;
mod objects;
mod watch;

pub use convert_istio::AppProtocol;
pub use load::{load_dir, LoadError};
// Cluster mode checks and builds API objects with the same conversion as the directory.
pub(crate) use load::parse_documents;
pub use watch::spawn_dir_watcher;

use std::collections::HashMap;

use crate::authz::Policy;
use crate::balance::LbPolicy;
use crate::route::{RouteTable, ServiceRef};

/// One generation of route/policy config.
#[derive(Debug, Default)]
pub struct WaypointConfig {
    pub routes: RouteTable,
    pub policies: Vec<Policy>,
    /// Protocols declared by core/v1 Service objects (appProtocol or port name prefix).
    pub protocols: HashMap<(ServiceRef, u16), AppProtocol>,
    /// Endpoint balancing per service (DestinationRule `trafficPolicy.loadBalancer`).
    pub lb: HashMap<ServiceRef, LbPolicy>,
    /// Objects loaded, as "Kind ns/name" (config_dump).
    pub objects: Vec<String>,
}

impl WaypointConfig {
    /// The balancing policy for `svc`'s endpoints: its DestinationRule's, else least-request
    /// (what istiod configures when a DestinationRule sets none).
    pub fn lb_policy(&self, svc: &ServiceRef) -> LbPolicy {
        self.lb.get(svc).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
