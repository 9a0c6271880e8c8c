//! The workload model (workloads, services, authorization policies) and the lookups the proxy
//! makes on every connection.
//!
//! A config generation is an immutable [`ConfigSnapshot`]; [`State`] holds the current one and
//! swaps it whole, so readers never see a half-applied update. Where the config comes from
//! (the local file today, istiod's xDS later) is the business of [`crate::config`].

mod local;
mod policy;
mod service;
mod snapshot;
mod store;
mod waypoint;
mod workload;

pub use local::{LocalPod, LOCAL_WORKLOAD_WAIT};
pub use policy::{
    Action, Cidr, CidrParseError, Match, Policy, Scope, ServiceAccountMatch, StringMatch,
};
pub use service::Service;
pub use snapshot::{ConfigSnapshot, ResolveError, SnapshotError, Upstream};
pub use store::State;
pub use waypoint::{Route, WaypointGap, WaypointHop};
pub use workload::{
    GatewayAddress, GatewayDestination, HealthStatus, NetworkAddress, NetworkAddressParseError,
    NetworkMode, Protocol, Workload, WorkloadInfo,
};

#[cfg(test)]
mod waypoint_tests;
