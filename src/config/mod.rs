//! Where ztunnel's settings and mesh config come from: command-line flags and environment
//! variables ([`Settings`]), and the local config file that stands in for istiod
//! ([`load`], [`parse`], [`spawn_watcher`]).

mod local;

pub use local::{load, parse, ConfigError};
