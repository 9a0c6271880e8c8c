//! meshtunnel: the shared library behind the `ztunnel` binary (and, later, `waypoint` and
//! `cni-agent`). Modules are grouped by the seam they own; see ARCHITECTURE.md for the data flow.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod authz;
pub mod config;
pub mod copy;
pub mod debug;
pub mod hbone;
pub mod identity;
pub mod inpod;
pub mod local_http;
pub mod logging;
pub mod memcpy;
pub mod metrics;
pub mod proxy;
pub mod readiness;
pub mod redirect;
pub mod state;
pub mod workers;
pub mod xds;
pub mod zds;
