//! Wiring of the ztunnel daemon: config, identities, the ZDS client, pod proxies, readiness,
//! metrics, the admin API, and the graceful stop on SIGTERM or `/quitquitquit`.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::{self, Settings};
use crate::identity::{CertManager, CertSource, IstioCa, IstioCaSettings, LocalCa, TlsContext};
use crate::inpod::{self, ProxyConfig, WorkloadManager};
use crate::logging::LogHandle;
use crate::metrics::Metrics;
use crate::proxy::Ports;
use crate::state::{ConfigSnapshot, State};
use crate::workers::Workers;
use crate::xds::{self, status::XdsStatus};
use crate::zds;

/// Runs the daemon on the caller's runtime (the control plane), with the pods' proxies on
/// `workers`. Returns once the proxies have drained.
pub async fn run(settings: Settings, log: LogHandle, workers: Workers) -> anyhow::Result<()> {
    // Taken before any thread has entered a pod's namespace.
    let host_netns = Arc::new(inpod::host_netns().context("opening ztunnel's own netns")?);

    let defaults = config::Defaults {
        trust_domain: settings.trust_domain.clone(),
    };
    let xds_address = settings.xds.address().map(str::to_owned);
    let state = Arc::new(State::new(ConfigSnapshot::empty()));
    let sources = Arc::new(config::ConfigSources::new(
        state.clone(),
        xds_address.is_some(),
    ));
    if let Some(path) = &settings.local_xds_path {
        sources.set_file(config::load_with(path, &defaults)?);
        config::spawn_watcher(
            path.clone(),
            sources.clone(),
            settings.config_poll_interval,
            defaults,
        );
    }
    let stop = CancellationToken::new();
    let metrics = Metrics::new(settings.metrics_retention);
    let xds_status = xds_address.as_deref().map(|a| Arc::new(XdsStatus::new(a)));
    if let Some(status) = &xds_status {
        let cfg = xds::ClientConfig::new(
            &settings.xds,
            &settings.node_name,
            &settings.cluster_id,
            &settings.trust_domain,
        );
        tokio::spawn(xds::run(
            cfg,
            sources.clone(),
            status.clone(),
            metrics.xds.clone(),
            stop.clone(),
        ));
    }

    let (source, roots) = cert_source(&settings)?;
    let tls = TlsContext::new(&roots, &settings.trust_domain)?;
    tracing::info!(source = %source.describe(), "workload certificates");
    let certs = CertManager::new(source, settings.cert_ttl);

    let manager = WorkloadManager::new(
        ProxyConfig {
            node_name: settings.node_name.clone(),
            trust_domain: settings.trust_domain.clone(),
            packet_mark: settings.packet_mark,
            ports: Ports::default(),
            h2: settings.h2(),
            metrics: metrics.clone(),
            workers,
        },
        state.clone(),
        certs.clone(),
        tls,
        host_netns,
    );

    let readiness = crate::readiness::bind(settings.readiness_addr)
        .await
        .with_context(|| format!("binding readiness on {}", settings.readiness_addr))?;
    let m = manager.clone();
    let xds_ready = xds_status.clone();
    tokio::spawn(crate::readiness::serve(
        readiness,
        Arc::new(move || {
            // Serving pods with a config istiod has not finished sending would refuse or
            // misroute their first connections.
            if xds_ready.as_ref().is_some_and(|x| !x.synced()) {
                return Err("waiting for istiod's first xDS push".into());
            }
            m.ready()
        }),
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
            sources,
            local_file: settings.local_xds_path.clone(),
            xds: xds_status,
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

/// The Istio CA when one is configured (CA_ADDRESS, else XDS_ADDRESS), else the local CA; and
/// the roots the mesh trusts with it.
fn cert_source(
    settings: &Settings,
) -> anyhow::Result<(CertSource, Vec<rustls::pki_types::CertificateDer<'static>>)> {
    let Some(address) = settings.istio_ca_address() else {
        let ca = LocalCa::load_or_create(&settings.local_ca_dir, &settings.trust_domain)?;
        let roots = ca.roots().to_vec();
        return Ok((CertSource::Local(Arc::new(ca)), roots));
    };
    let ca = IstioCa::new(IstioCaSettings {
        address,
        root_ca: settings.ca_root_ca.clone(),
        alt_hostname: settings.alt_ca_hostname.clone(),
        // One token for xDS and the CA, as upstream (AUTH_TOKEN).
        token_path: settings.xds.auth_token.clone(),
        cluster_id: settings.cluster_id.clone(),
        impersonate: true,
    })?;
    // The mesh trusts CA_ROOT_CA: every chain the CA returns is checked to lead there.
    let roots = ca.roots().to_vec();
    Ok((CertSource::Istio(Arc::new(ca)), roots))
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
        self.0.add(uid, info, netns).await
    }

    async fn del(&self, uid: &str) -> Result<(), String> {
        self.0.del(uid).await;
        Ok(())
    }

    async fn snapshot_complete(&self, present: std::collections::HashSet<String>) {
        self.0.snapshot_complete(&present)
    }

    fn disconnected(&self) {
        self.0.disconnected()
    }
}
