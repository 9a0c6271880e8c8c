//! Process-wide tracing setup. `RUST_LOG` (the `--log-level` setting) picks verbosity per
//! module; `--log-format json` gives one JSON object per line for log pipelines. The filter
//! can be changed while running (admin `/logging`) through the handle [`init`] returns.
//!
//! Access log lines use the target `access`: `connection opened` at debug, `connection
//! complete` at info (so `RUST_LOG=info` shows one line per connection, `access=off` none).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogFormat;

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle {
    reload: Option<reload::Handle<EnvFilter, Registry>>,
    current: Arc<Mutex<String>>,
}

impl LogHandle {
    /// The filter in force, in env-filter syntax.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the filter (`debug`, `info,meshtunnel::proxy=trace`, ...). A bad filter is
    /// refused and the old one stays.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let new = EnvFilter::try_new(filter).map_err(|e| format!("bad log filter: {e}"))?;
        let reload = self
            .reload
            .as_ref()
            .ok_or("logging was set up by someone else; cannot change it")?;
        reload.reload(new).map_err(|e| e.to_string())?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_owned();
        Ok(())
    }
}

pub fn init(level: &str, format: LogFormat) -> LogHandle {
    let (level, filter) = match EnvFilter::try_new(level) {
        Ok(f) => (level, f),
        Err(_) => ("info", EnvFilter::new("info")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    // Colour only for a person at a terminal, not in files and log collectors.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Plain => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
    LogHandle {
        reload: installed.is_ok().then_some(handle),
        current: Arc::new(Mutex::new(level.to_owned())),
    }
}
