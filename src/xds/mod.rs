//! istiod's delta xDS: ztunnel's workloads, services and policies from the control plane.
mod convert;
pub mod proto;
pub mod protocol;
pub mod store;
