//! Puts the plugin where the container runtime finds it: the binary into the CNI bin dir and an
//! entry `{"type":"meshtunnel-cni", ...}` at the end of the plugin list of the node's primary
//! (lexically first) CNI config, which the runtime re-reads for every new pod.
//!
//! Lifecycle: the agent calls [`install`] at start and keeps [`watch`] running, which puts the
//! entry back whenever another CNI (re)writes its config. Neither ever removes anything, so a
//! restart or upgrade of the agent leaves the chain intact and pods keep failing closed while it
//! is away instead of starting uncaptured. Only [`uninstall`] — the explicit `cni-agent uninstall`
//! subcommand, for taking meshtunnel off a node — removes the entry and the binary.

mod conflist;
mod files;
mod watch;

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub use conflist::{ConfError, PLUGIN_TYPE};
pub use watch::watch;

/// Where things go and what our conflist entry says.
#[derive(Debug, Clone)]
pub struct InstallConfig {
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// The `meshtunnel-cni` binary to copy (normally the one shipped beside `cni-agent`).
    pub plugin_binary: PathBuf,
    pub plugin: PluginSettings,
}

/// The plugin's settings, written into its conflist entry (see [`crate::cni`] for their meaning).
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub agent_socket: PathBuf,
    pub agent_timeout_ms: u64,
    pub log_level: String,
    pub exclude_namespaces: Vec<String>,
}

impl PluginSettings {
    fn entry(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "agent_socket": self.agent_socket,
            "agent_timeout_ms": self.agent_timeout_ms,
            "log_level": self.log_level,
            "exclude_namespaces": self.exclude_namespaces,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no CNI config in {0} yet; the node's primary CNI has not written one")]
    NoPrimaryConfig(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: cannot chain into it: {source}", path.display())]
    Conf { path: PathBuf, source: ConfError },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What happened to the primary config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfChange {
    Unchanged(PathBuf),
    Chained(PathBuf),
    /// A single-plugin `.conf` was rewritten as a `.conflist` and the `.conf` removed.
    Converted {
        from: PathBuf,
        to: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub binary_copied: bool,
    pub conf: ConfChange,
}

/// Copies the binary (if it differs) and chains the plugin into the primary config. Idempotent.
pub fn install(cfg: &InstallConfig) -> Result<InstallReport, InstallError> {
    let binary_copied = install_binary(cfg)?;
    let conf = chain(cfg)?;
    Ok(InstallReport {
        binary_copied,
        conf,
    })
}

fn install_binary(cfg: &InstallConfig) -> Result<bool, InstallError> {
    let dst = cfg.cni_bin_dir.join(PLUGIN_TYPE);
    files::install_binary(&cfg.plugin_binary, &dst).map_err(io_err(&dst))
}

/// Makes our entry the last plugin of the primary config, rewriting it only if needed.
pub fn chain(cfg: &InstallConfig) -> Result<ConfChange, InstallError> {
    let dir = &cfg.cni_conf_dir;
    let path = files::conf_files(dir)
        .map_err(io_err(dir))?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimaryConfig(dir.clone()))?;
    let doc = read_json(&path)?;
    let updated =
        conflist::with_entry(&doc, &cfg.plugin.entry()).map_err(|source| InstallError::Conf {
            path: path.clone(),
            source,
        })?;
    let Some(updated) = updated else {
        return Ok(ConfChange::Unchanged(path));
    };
    let mode = files::mode_of(&path, 0o644);
    let is_list = path.extension().is_some_and(|e| e == "conflist") || doc.get("plugins").is_some();
    if is_list {
        write_json(&path, &updated, mode)?;
        return Ok(ConfChange::Chained(path));
    }
    // Runtimes load a .conf as a single plugin, so the chained version must be a .conflist.
    // Written before the .conf goes: a crash in between leaves the .conf first in order, and
    // the next pass converts it again.
    let to = path.with_extension("conflist");
    write_json(&to, &updated, mode)?;
    std::fs::remove_file(&path).map_err(io_err(&path))?;
    Ok(ConfChange::Converted { from: path, to })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UninstallReport {
    pub unchained: Vec<PathBuf>,
    pub binary_removed: bool,
}

/// Removes our entry from every config in the conf dir (the primary may have changed since
/// install) and the binary. A config converted from `.conf` stays a `.conflist`, with the
/// original plugin list.
pub fn uninstall(cni_bin_dir: &Path, cni_conf_dir: &Path) -> Result<UninstallReport, InstallError> {
    let dir = cni_conf_dir;
    let mut unchained = Vec::new();
    for path in files::conf_files(dir).map_err(io_err(dir))? {
        // Someone else's broken file is not ours to fix or to fail on.
        let Ok(doc) = read_json(&path) else { continue };
        if let Some(cleaned) = conflist::without_entry(&doc) {
            write_json(&path, &cleaned, files::mode_of(&path, 0o644))?;
            unchained.push(path);
        }
    }
    let bin = cni_bin_dir.join(PLUGIN_TYPE);
    let binary_removed = match std::fs::remove_file(&bin) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(&bin)(e)),
    };
    Ok(UninstallReport {
        unchained,
        binary_removed,
    })
}

fn read_json(path: &Path) -> Result<Value, InstallError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| InstallError::Json {
        path: path.to_owned(),
        source,
    })
}

fn write_json(path: &Path, doc: &Value, mode: u32) -> Result<(), InstallError> {
    let mut bytes = serde_json::to_vec_pretty(doc).expect("a Value serializes");
    bytes.push(b'\n');
    files::write_atomic(path, &bytes, mode).map_err(io_err(path))
}
