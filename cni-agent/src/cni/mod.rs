//! The CNI plugin's logic, free of I/O: parse what the runtime handed us, decide, and format what
//! goes back on stdout. The binary wires these to the process environment and the agent socket.

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
