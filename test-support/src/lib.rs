//! Network-namespace topologies for meshtunnel's tests, demo and benchmarks.
//!
//! Every name carries a per-run prefix from [`unique_prefix`] so parallel tests, parallel test
//! binaries and other users of this machine never collide, and every guard deletes only what it
//! created — on success, on failure and while unwinding from a panic.

mod netns;
mod prefix;
mod topology;

pub use netns::{run_in, thread_in, ChildGuard, Netns};
pub use prefix::unique_prefix;
pub use topology::{link_nodes, NodeId, Pod, Topology, WireEnd, POD_IF, WIRE_IF};
