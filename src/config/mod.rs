//! Where ztunnel's settings and mesh config come from: command-line flags and environment
//! variables ([`Settings`]), and the local config file that stands in for istiod
//! ([`load`], [`parse`], [`spawn_watcher`]), and how it combines with istiod's xDS
//! ([`ConfigSources`]).

mod local;
mod settings;
mod sources;
mod watch;

pub use local::{load, load_with, parse, parse_with, ConfigError, Defaults};
pub use settings::{LogFormat, Settings};
pub use sources::ConfigSources;
pub use watch::spawn_watcher;
