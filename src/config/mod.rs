//! Where ztunnel's settings and mesh config come from: command-line flags and environment
//! variables ([`Settings`]), and the local config file that stands in for istiod
//! ([`load`], [`parse`], [`spawn_watcher`]).

mod local;
mod settings;
mod watch;

pub use local::{load, load_with, parse, parse_with, ConfigError, Defaults};
pub use settings::{LogFormat, Settings};
pub use watch::spawn_watcher;
