use std::future::Future;
use std::time::Duration;

use super::{chain, files, install_binary, ConfChange, InstallConfig, PLUGIN_TYPE};

/// Re-applies the installation every `every` until `shutdown`: another CNI's installer (or an
/// operator) rewriting the primary config would otherwise silently drop us from the chain and
/// let new pods start uncaptured. Polling rather than inotify: it also covers a conf dir that
/// does not exist yet and files replaced by rename, at the cost of a small delay.
pub async fn watch(cfg: InstallConfig, every: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let pass = cfg.clone();
        match tokio::task::spawn_blocking(move || reconcile(&pass)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "keeping meshtunnel-cni installed"),
            Err(e) => tracing::error!(error = %e, "installer pass panicked"),
        }
    }
}

fn reconcile(cfg: &InstallConfig) -> Result<(), super::InstallError> {
    let dst = cfg.cni_bin_dir.join(PLUGIN_TYPE);
    if !files::binary_looks_current(&cfg.plugin_binary, &dst) && install_binary(cfg)? {
        tracing::info!(path = %dst.display(), "restored the plugin binary");
    }
    match chain(cfg)? {
        ConfChange::Unchanged(_) => {}
        ConfChange::Chained(p) => {
            tracing::info!(path = %p.display(), "re-chained meshtunnel-cni into the CNI config")
        }
        ConfChange::Converted { from, to } => tracing::info!(
            from = %from.display(), to = %to.display(),
            "re-chained meshtunnel-cni, converting the CNI config to a conflist"
        ),
    }
    Ok(())
}
