//! In-pod mode: ztunnel runs in the node's namespace but opens each meshed pod's listeners
//! and outgoing sockets inside that pod's network namespace, received from the CNI agent.

mod manager;
mod netns;
mod socket_factory;

pub use manager::{PodStatus, ProxyConfig, WorkloadManager};
pub use netns::{host_netns, InpodNetns, NetnsError};
pub use socket_factory::InpodSocketFactory;
