//! Generated protobuf types for istiod's delta xDS (see `proto/`), under their proto package
//! paths, with short names for the packages the rest of `xds` uses.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/xds.rs"));

pub use envoy::config::core::v3 as core;
pub use envoy::service::discovery::v3 as discovery;
pub use google::rpc;
pub use istio::security;
pub use istio::workload;
