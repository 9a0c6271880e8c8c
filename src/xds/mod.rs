//! istiod's delta xDS: ztunnel's workloads, services and policies from the control plane.
pub mod proto;
