//! The CNI plugin's logic, free of I/O: parse what the runtime handed us, decide, and format what
//! goes back on stdout. The binary wires these to the process environment and the agent socket.
//!
//! Behaviour (CNI spec 1.0.0; configs in 0.3.0, 0.3.1, 0.4.0 and 1.0.0 accepted):
//! * ADD needs `prevResult` (we are only ever chained). A pod named by `CNI_ARGS`
//!   (`K8S_POD_NAMESPACE` + `K8S_POD_NAME`) outside `exclude_namespaces` is sent to the agent;
//!   "not meshed" or "enrolled" → `prevResult` is printed back in the config's version. Anything
//!   else — agent error, no agent, no answer within `agent_timeout_ms`, a garbled answer — fails
//!   the ADD (fail closed), with code 11 when retrying may help and 100/101 otherwise. Containers
//!   without Kubernetes pod args are not pods and pass through untouched.
//! * DEL tells the agent, waiting at most two seconds, and always succeeds: a stuck DEL would
//!   keep the pod from ever being deleted, and the agent also learns of deletions from the API.
//! * CHECK succeeds (for configs ≥ 0.4.0, which introduced it). VERSION lists our versions.
//!
//! Plugin keys in the config: `agent_socket` (default `/var/run/meshtunnel/cni-plugin.sock`),
//! `agent_timeout_ms` (default 30000), `log_level` (`error|warn|info|debug`, to stderr),
//! `exclude_namespaces` (default none; the installer writes `kube-system`).

mod args;
mod config;
mod env;
mod error;
mod plugin;
mod result;
mod version;

pub use config::{DEFAULT_AGENT_SOCKET, DEFAULT_AGENT_TIMEOUT_MS};
pub use env::CniEnv;
pub use error::{CniError, Code};
pub use plugin::{
    finish_add, parse, AddPlan, AgentOutcome, DelPlan, Failure, Invocation, LogLevel, Settings,
};
pub use version::{version_reply, Version, SUPPORTED_VERSIONS};
