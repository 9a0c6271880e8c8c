//! Keeps the route/policy config in step with the object directory. Polls (like ztunnel's
//! local-config watcher) because ConfigMap volumes and editors replace files by rename,
//! which an inotify watch on the old inode misses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::load::load_dir;
use crate::state::ConfigCell;

/// Applies the directory at once, then re-reads it every `interval`; a directory that fails
/// to load leaves the config in force and is logged once per distinct error.
pub fn spawn_dir_watcher(
    dir: PathBuf,
    root_namespace: String,
    cell: Arc<ConfigCell>,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_seen: Option<Vec<(PathBuf, Vec<u8>)>> = None;
        let mut last_error: Option<String> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snapshot = match fingerprint(&dir).await {
                Ok(s) => s,
                Err(e) => {
                    report(&mut last_error, format!("{}: {e}", dir.display()));
                    continue;
                }
            };
            if last_seen.as_ref() == Some(&snapshot) {
                continue;
            }
            last_seen = Some(snapshot);
            let (d, ns) = (dir.clone(), root_namespace.clone());
            match tokio::task::spawn_blocking(move || load_dir(&d, &ns)).await {
                Ok(Ok(cfg)) => {
                    tracing::info!(dir = %dir.display(), objects = cfg.objects.len(), policies = cfg.policies.len(), "route config applied");
                    last_error = None;
                    cell.replace(cfg);
                }
                Ok(Err(e)) => report(&mut last_error, format!("{e}; keeping the previous config")),
                Err(e) => report(&mut last_error, format!("config load task failed: {e}")),
            }
        }
    })
}

fn report(last: &mut Option<String>, msg: String) {
    if last.as_deref() != Some(msg.as_str()) {
        tracing::error!("route config refused: {msg}");
        *last = Some(msg);
    }
}

async fn fingerprint(dir: &std::path::Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir).await?;
    while let Some(e) = rd.next_entry().await? {
        let p = e.path();
        if p.is_file() {
            out.push((p.clone(), tokio::fs::read(&p).await.unwrap_or_default()));
        }
    }
    out.sort();
    Ok(out)
}
