//! Wiring: identity and certificate, the workload config and the route directory (both
//! watched), the listeners; runs until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use meshtunnel::config::{self as mesh_config, Defaults};
use meshtunnel::hbone::H2Settings;
use meshtunnel::identity::{CertManager, CertSource, Identity, LocalCa, TlsContext};
use meshtunnel::state::{ConfigSnapshot, State};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{load_dir, spawn_dir_watcher};
use crate::settings::Settings;
use crate::shared::{Limits, Shared};
use crate::state::ConfigCell;
use crate::telemetry::Telemetry;
use crate::upstream::Upstreams;

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))
}

/// File mode: the local workload file and the object directory, both watched.
fn start_file_mode(s: &Settings, mesh: &Arc<State>, cell: &Arc<ConfigCell>) -> anyhow::Result<()> {
    let defaults = Defaults {
        trust_domain: s.trust_domain.clone(),
    };
    if let Some(p) = &s.local_xds_path {
        mesh.replace(mesh_config::load_with(p, &defaults)?);
        let sources = Arc::new(meshtunnel::config::ConfigSources::new(mesh.clone(), false));
        mesh_config::spawn_watcher(p.clone(), sources, s.config_poll_interval, defaults);
    }
    if let Some(dir) = &s.config_dir {
        // A bad directory at start is fatal (nothing to keep); later it only logs.
        cell.replace(load_dir(dir, &s.root_namespace)?);
        spawn_dir_watcher(
            dir.clone(),
            s.root_namespace.clone(),
            cell.clone(),
            s.config_poll_interval,
        );
    }
    Ok(())
}

/// The waypoint's certificate. From istiod's CA it is retried with backoff (istiod may start
/// after the waypoint); the local CA either works or does not.
async fn first_certificate(
    certs: &Arc<CertManager>,
    identity: &Identity,
    retry: bool,
) -> anyhow::Result<Arc<meshtunnel::identity::CertSlot>> {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match certs.get(identity).await {
            Ok(c) => return Ok(c),
            Err(e) if retry => {
                tracing::warn!(identity = %identity, error = %e, retry_in = ?backoff, "no certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(15));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn run(s: Settings) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let xds_address = s.cluster.xds_address().map(str::to_owned);
    anyhow::ensure!(
        xds_address.is_none() || (s.config_dir.is_none() && s.local_xds_path.is_none()),
        "XDS_ADDRESS (cluster mode) and WAYPOINT_CONFIG_DIR / LOCAL_XDS_PATH (file mode) exclude each other"
    );
    let mesh = Arc::new(State::new(ConfigSnapshot::empty()));
    let cell = Arc::new(ConfigCell::default());
    let mut telemetry = Telemetry::default();
    let mut sync = None;
    let (certs, tls) = match &xds_address {
        None => {
            start_file_mode(&s, &mesh, &cell)?;
            let ca = LocalCa::load_or_create(&s.local_ca_dir, &s.trust_domain)?;
            let tls = TlsContext::new(ca.roots(), &s.trust_domain)?;
            (CertManager::new(Arc::new(ca), s.cert_ttl), tls)
        }
        Some(address) => {
            // Cluster mode: istiod's workload xDS, the Kubernetes API, istiod's CA.
            let gateway = crate::cluster::gateway(&s)?;
            let metrics = crate::cluster::metrics::ClusterMetrics::register(
                telemetry.registry_mut(),
                mesh.clone(),
                gateway,
            );
            sync = Some(
                crate::cluster::start(
                    &s,
                    address,
                    cell.clone(),
                    mesh.clone(),
                    metrics,
                    stop.clone(),
                )
                .await?,
            );
            let ca_address = s.cluster.ca_address().unwrap_or_else(|| address.clone());
            let ca = crate::cluster::istio_ca(&s, ca_address)?;
            let tls = TlsContext::new(ca.roots(), &s.trust_domain)?;
            (
                CertManager::new(CertSource::Istio(Arc::new(ca)), s.cert_ttl),
                tls,
            )
        }
    };
    let identity = Identity::new(&s.trust_domain, &s.namespace, &s.service_account);
    let cert = first_certificate(&certs, &identity, xds_address.is_some()).await?;
    if let Some(sync) = &sync {
        sync.wait().await;
    }
    let server_tls = tls.server_config(cert.clone())?;
    let h2 = H2Settings {
        idle_timeout: s.pool_idle_timeout,
        ..H2Settings::default()
    };

    let telemetry = Arc::new(telemetry);
    let shared = Arc::new(Shared {
        mesh: mesh.clone(),
        config: cell.clone(),
        upstreams: Upstreams::new(tls.clone(), cert.clone(), h2.clone(), s.connect_timeout),
        telemetry: telemetry.clone(),
        limits: Limits {
            header_timeout: s.header_timeout,
            max_header_bytes: s.max_header_bytes,
            upstream_idle_timeout: s.pool_idle_timeout,
            ..Limits::default()
        },
    });

    let hbone = bind(s.hbone_addr, "HBONE").await?;
    let stats = bind(s.stats_addr, "metrics").await?;
    let admin = bind(s.admin_addr, "the admin API").await?;
    let ready = bind(s.readiness_addr, "readiness").await?;
    tokio::spawn(crate::server::serve(
        hbone,
        server_tls,
        shared,
        h2,
        stop.clone(),
    ));
    tokio::spawn(crate::admin::serve_stats(stats, telemetry, stop.clone()));
    tokio::spawn(crate::admin::serve_admin(
        admin,
        Arc::new(crate::admin::Admin {
            mesh,
            config: cell,
            cert,
        }),
        stop.clone(),
    ));
    tokio::spawn(crate::admin::serve_readiness(ready, stop.clone()));
    tracing::info!(identity = %identity, hbone = %s.hbone_addr, "waypoint started");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("waypoint stopping");
    stop.cancel();
    Ok(())
}
