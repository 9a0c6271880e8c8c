//! Whole-system fixtures: a two-node mesh of network namespaces with real ztunnel processes,
//! real in-pod redirect rules and a ZDS server playing the CNI agent. Shared by the demo, the
//! e2e tests and the benchmarks so they all exercise the same set-up.

pub mod apps;
pub mod cluster;
pub mod mesh;
pub mod wire;

pub use mesh::{Mesh, MeshOptions, PodSpec};
