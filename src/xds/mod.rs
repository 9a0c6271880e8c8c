//! istiod's delta xDS: ztunnel's workloads, services and policies from the control plane.
mod convert;
pub mod proto;
pub mod protocol;
mod settings;
pub mod store;
pub use settings::XdsSettings;
mod client;
mod node;
pub mod status;
pub use client::{run, ClientConfig};
pub use convert::Defaults;
pub mod metrics;
