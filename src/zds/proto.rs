//! Generated protobuf types for package `istio.workload.zds` (see `proto/zds.proto`).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
