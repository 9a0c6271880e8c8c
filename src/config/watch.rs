use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{error, info};

use super::local::{parse_with, ConfigError, Defaults};
use super::sources::ConfigSources;

/// Keeps the file's part of `sources` in step with the local config file at `path`, checking every `interval`.
///
/// The first check happens at once and applies the file, so a caller may start from an empty
/// snapshot. A file that cannot be read or parsed leaves the config in force untouched and is
/// logged once per distinct error; the task never ends on its own (abort the handle to stop).
///
/// This polls instead of using inotify: a Kubernetes ConfigMap volume updates by swapping a
/// symlinked directory and editors save by writing a new file and renaming it, and both
/// leave an inotify watch on the old inode. Reading a small file once a second is cheap and
/// sees every such replacement.
pub fn spawn_watcher(
    path: PathBuf,
    sources: Arc<ConfigSources>,
    interval: Duration,
    defaults: Defaults,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut watcher = Watcher {
            path,
            defaults,
            last_seen: None,
            last_error: None,
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            watcher.poll(&sources).await;
        }
    })
}

struct Watcher {
    path: PathBuf,
    defaults: Defaults,
    /// Content of the last successful read, good or bad, so an unchanged file is not
    /// re-parsed (or its error re-logged) every tick.
    last_seen: Option<Vec<u8>>,
    last_error: Option<String>,
}

impl Watcher {
    async fn poll(&mut self, sources: &ConfigSources) {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(source) => {
                return self.report(ConfigError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        if self.last_seen.as_ref() == Some(&bytes) {
            // Readable again after a read error: a later failure deserves a fresh log line.
            self.last_error = None;
            return;
        }
        let result = match std::str::from_utf8(&bytes) {
            Ok(text) => parse_with(text, &self.path, &self.defaults),
            Err(e) => Err(ConfigError::Parse {
                path: self.path.clone(),
                location: None,
                message: format!("not UTF-8 text: {e}"),
            }),
        };
        self.last_seen = Some(bytes);
        match result {
            Ok(snapshot) => {
                let (w, s, p) = (
                    snapshot.workloads().count(),
                    snapshot.services().count(),
                    snapshot.policies().count(),
                );
                sources.set_file(snapshot);
                self.last_error = None;
                info!(
                    path = %self.path.display(),
                    workloads = w,
                    services = s,
                    policies = p,
                    generation = sources.state().generation(),
                    "applied local config"
                );
            }
            Err(e) => self.report(e),
        }
    }

    fn report(&mut self, e: ConfigError) {
        let msg = e.to_string();
        if self.last_error.as_ref() != Some(&msg) {
            error!(error = %msg, "local config not applied; the previous config stays in force");
            self.last_error = Some(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ConfigSnapshot, State};

    #[tokio::test]
    async fn each_poll_applies_only_new_good_content() {
        let dir =
            std::env::temp_dir().join(format!("meshtunnel-watch-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("zt.yaml");
        let _ = std::fs::remove_file(&path);
        let state = Arc::new(State::new(ConfigSnapshot::empty()));
        let sources = ConfigSources::new(state.clone(), false);
        let mut w = Watcher {
            path: path.clone(),
            defaults: Defaults::default(),
            last_seen: None,
            last_error: None,
        };

        w.poll(&sources).await;
        let missing = w.last_error.clone().expect("missing file reported");
        assert!(missing.contains("cannot read"), "{missing}");
        w.poll(&sources).await;
        assert_eq!(w.last_error.as_ref(), Some(&missing));

        std::fs::write(&path, "workloads: [\n").unwrap();
        w.poll(&sources).await;
        assert_ne!(w.last_error.as_ref(), Some(&missing));
        assert_eq!(state.generation(), 0);

        std::fs::write(&path, "workloads: []\n").unwrap();
        w.poll(&sources).await;
        assert_eq!(w.last_error, None);
        assert_eq!(state.generation(), 1);
        // Unchanged content is not re-applied.
        w.poll(&sources).await;
        assert_eq!(state.generation(), 1);

        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        w.poll(&sources).await;
        assert!(w.last_error.as_ref().unwrap().contains("UTF-8"));
        assert_eq!(state.generation(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
