//! Whole-system fixtures, shared by the demo, the e2e tests and the benchmarks so they all
//! exercise the same set-up:
//! * [`mesh`] — a two-node mesh of network namespaces with real ztunnel processes, where the
//!   test plays the CNI agent itself (a ZDS server and `redirect::install`);
//! * [`cluster`] — the whole system: a Kubernetes API stand-in with the real kubectl, per node a
//!   real `cni-agent run` and `ztunnel`, pods made by the real CNI chain, and an istiod stand-in
//!   that renders ztunnel's config from the pods. Enrolment is driven by labels alone;
//! * [`proc_stats`] — fds, sockets and memory of a process, TCP states in a netns (leak checks).

pub mod apps;
pub mod cluster;
pub mod conformance;
pub mod load;
pub mod mesh;
pub mod proc_stats;
pub mod waypoint;
pub mod wire;

pub use mesh::{ExtraService, Mesh, MeshOptions, PodSpec};
