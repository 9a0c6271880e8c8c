//! Wiring of the ztunnel daemon: config, identities, the ZDS client, pod proxies, readiness,
//! metrics, the admin API, and the graceful stop on SIGTERM or `/quitquitquit`.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::{self, Settings};
use crate::identity::{CertManager, LocalCa, TlsContext};
use crate::inpod::{self, PodInfo, ProxyConfig, WorkloadManager};
use crate::logging::LogHandle;
use crate::metrics::Metrics;
use crate::proxy::Ports;
use crate::state::{ConfigSnapshot, State};
use crate::zds;

pub async fn run(settings: Settings, log: LogHandle) -> anyhow::Result<()> {
    // Taken before any thread has entered a pod's namespace.
    let host_netns = Arc::new(inpod::host_netns().context("opening ztunnel's own netns")?);

    let defaults = config::Defaults {
        trust_domain: settings.trust_domain.clone(),
    };
    let snapshot = match &settings.local_xds_path {
        Some(path) => config::load_with(path, &defaults)?,
        None => ConfigSnapshot::empty(),
    };
    let state = Arc::new(State::new(snapshot));
    if let Some(path) = &settings.local_xds_path {
        config::spawn_watcher(
            path.clone(),
            state.clone(),
            settings.config_poll_interval,
            defaults,
        );
    }

    let ca = LocalCa::load_or_create(&settings.local_ca_dir, &settings.trust_domain)?;
    let tls = TlsContext::new(&[ca.root().clone()], &settings.trust_domain)?;
    let certs = CertManager::new(Arc::new(ca), settings.cert_ttl);
    let metrics = Metrics::new(settings.metrics_retention);

    let manager = WorkloadManager::new(
        ProxyConfig {
            node_name: settings.node_name.clone(),
            trust_domain: settings.trust_domain.clone(),
            packet_mark: settings.packet_mark,
            ports: Ports::default(),
            h2: settings.h2(),
            metrics: metrics.clone(),
        },
        state.clone(),
        certs.clone(),
        tls,
        host_netns,
    );

    let stop = CancellationToken::new();
    let readiness = crate::readiness::bind(settings.readiness_addr)
        .await
        .with_context(|| format!("binding readiness on {}", settings.readiness_addr))?;
    let m = manager.clone();
    tokio::spawn(crate::readiness::serve(
        readiness,
        Arc::new(move || m.ready()),
        stop.clone(),
    ));

    let stats = tokio::net::TcpListener::bind(settings.stats_addr)
        .await
        .with_context(|| format!("binding metrics on {}", settings.stats_addr))?;
    tokio::spawn(crate::metrics::server::serve(
        stats,
        metrics.clone(),
        stop.clone(),
    ));
    tokio::spawn(crate::metrics::run_sweeper(
        metrics,
        state.clone(),
        stop.clone(),
    ));
    let shutdown = CancellationToken::new();
    let admin = tokio::net::TcpListener::bind(settings.admin_addr)
        .await
        .with_context(|| format!("binding the admin API on {}", settings.admin_addr))?;
    tokio::spawn(crate::admin::serve(
        admin,
        Arc::new(Admin {
            state,
            manager: manager.clone(),
            certs,
            log,
            shutdown: shutdown.clone(),
        }),
        stop.clone(),
    ));

    let (zds_stop_tx, zds_stop) = tokio::sync::watch::channel(false);
    let zds_task = tokio::spawn(zds::run_client(
        settings.inpod_uds.clone(),
        Arc::new(ZdsHandler(manager.clone())),
        zds_stop,
    ));
    tracing::info!(node = %settings.node_name, zds = %settings.inpod_uds.display(), "ztunnel started");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        _ = shutdown.cancelled() => tracing::info!("admin /quitquitquit: draining"),
    }
    let _ = zds_stop_tx.send(true);
    manager.drain(settings.drain_deadline).await;
    stop.cancel();
    zds_task.abort();
    tracing::info!("ztunnel stopped");
    Ok(())
}

/// Adapts the ZDS protocol's callbacks to the pod proxy manager.
struct ZdsHandler(Arc<WorkloadManager>);

impl zds::WorkloadHandler for ZdsHandler {
    async fn add(
        &self,
        uid: String,
        info: zds::WorkloadInfo,
        netns: std::os::fd::OwnedFd,
    ) -> Result<(), String> {
        let info = PodInfo {
            name: info.name,
            namespace: info.namespace,
            service_account: info.service_account,
        };
        self.0.add(uid, info, netns)
    }

    async fn del(&self, uid: &str) -> Result<(), String> {
        self.0.del(uid);
        Ok(())
    }

    async fn snapshot_complete(&self, present: std::collections::HashSet<String>) {
        self.0.snapshot_complete(&present)
    }

    fn disconnected(&self) {
        self.0.disconnected()
    }
}
