//! meshtunnel's CNI side: the chained plugin (`meshtunnel-cni`) and the node agent's pieces that
//! serve it (`cni-agent`).
//!
//! * [`cni`] — everything the plugin decides, as pure functions over its environment and stdin,
//!   so the binary's `main` only does I/O.
//! * [`client`] — the plugin's blocking, deadline-bound call to the agent.
//! * [`protocol`] — the internal plugin ↔ agent wire format (documented there).
//! * [`server`] — the agent's listener for plugin requests and the [`server::Enroller`] seam the
//!   Kubernetes-watching agent implements.
//! * [`install`] — copying the plugin into the CNI bin dir and chaining it into the node's
//!   primary CNI config, plus a watcher that keeps it chained.

pub mod agent;
pub mod client;
pub mod cni;
pub mod install;
pub mod protocol;
pub mod server;
