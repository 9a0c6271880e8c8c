//! Cluster mode: the waypoint's objects from the Kubernetes API ([`watch`], checked one by one
//! in [`store`]), workloads and services from istiod's workload xDS and its certificate from
//! istiod's CA (the ztunnel library's clients), which services it serves ([`served`]), the
//! route status it writes ([`status`]) and the metrics of all this ([`metrics`]).

pub mod metrics;
mod served;
mod status;
mod store;
#[cfg(test)]
mod test_mesh;
mod watch;

use std::sync::{Arc, Mutex};

use anyhow::Context;
use meshtunnel::config::ConfigSources;
use meshtunnel::identity::{IstioCa, IstioCaSettings};
use meshtunnel::state::State;
use meshtunnel::xds;
use tokio_util::sync::CancellationToken;

use crate::route::ServiceRef;
use crate::settings::Settings;
use crate::state::ConfigCell;

pub use store::Scope;

/// The proxy type the waypoint gives istiod in its node id (istio-agent's `proxy waypoint`).
const PROXY_TYPE: &str = "waypoint";

/// The waypoint's Gateway: ISTIO_META_WORKLOAD_NAME in POD_NAMESPACE.
pub fn gateway(s: &Settings) -> anyhow::Result<ServiceRef> {
    anyhow::ensure!(
        !s.cluster.gateway_name.is_empty(),
        "cluster mode needs the waypoint's Gateway name (ISTIO_META_WORKLOAD_NAME, as istiod's waypoint Deployment sets it)"
    );
    Ok(ServiceRef::new(&s.namespace, &s.cluster.gateway_name))
}

/// istiod's CA, asked for the waypoint's own identity (its own token; no impersonation).
pub fn istio_ca(s: &Settings, address: String) -> anyhow::Result<IstioCa> {
    Ok(IstioCa::new(IstioCaSettings {
        address,
        root_ca: s.cluster.ca_root_ca.clone(),
        alt_hostname: s.cluster.alt_ca_hostname.clone(),
        token_path: s.cluster.xds.auth_token.clone(),
        cluster_id: s.cluster.cluster_id.clone(),
        impersonate: false,
    })?)
}

/// Starts the workload xDS client feeding `mesh`; the returned status says when it synced.
fn start_xds(
    s: &Settings,
    address: &str,
    mesh: Arc<State>,
    metrics: xds::metrics::XdsMetrics,
    stop: CancellationToken,
) -> Arc<xds::status::XdsStatus> {
    let status = Arc::new(xds::status::XdsStatus::new(address));
    let mut xs = s.cluster.xds.clone();
    // The waypoint's namespace is its identity's (istiod checks it against the token's).
    xs.pod_namespace = s.namespace.clone();
    let cfg = xds::ClientConfig::for_proxy(
        PROXY_TYPE,
        &xs,
        &s.cluster.node_name,
        &s.cluster.cluster_id,
        &s.trust_domain,
    );
    let sources = Arc::new(ConfigSources::new(mesh, true));
    tokio::spawn(xds::run(cfg, sources, status.clone(), metrics, stop));
    status
}

async fn kube_client(s: &Settings) -> anyhow::Result<kube::Client> {
    let config = match &s.cluster.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the API server (no KUBECONFIG, not in a cluster)")?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// What cluster mode waits for before the waypoint opens its listeners (and so before it is
/// ready): istiod's first push of every type and a first complete list of every kind. Until
/// then no request is served, so none passes before its AuthorizationPolicies are in force.
pub struct Sync {
    xds: Arc<xds::status::XdsStatus>,
    store: Arc<Mutex<store::ObjectStore>>,
}

impl Sync {
    fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.xds.synced() {
            out.push("istiod's workload xDS");
        }
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(
            watch::KINDS
                .iter()
                .map(|k| k.2)
                .filter(|kind| !store.listed(kind)),
        );
        out
    }

    pub async fn wait(&self) {
        let start = std::time::Instant::now();
        let mut logged = std::time::Duration::ZERO;
        loop {
            let missing = self.missing();
            if missing.is_empty() {
                tracing::info!(after = ?start.elapsed(), "config from istiod and the API in hand");
                return;
            }
            if start.elapsed() >= logged + std::time::Duration::from_secs(10) {
                logged = start.elapsed();
                tracing::warn!(waiting_for = ?missing, "not serving yet");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Starts xDS and the object watch (and, when asked, the status writer).
pub async fn start(
    s: &Settings,
    address: &str,
    cell: Arc<ConfigCell>,
    mesh: Arc<State>,
    metrics: metrics::ClusterMetrics,
    stop: CancellationToken,
) -> anyhow::Result<Sync> {
    let xds = start_xds(s, address, mesh.clone(), metrics.xds, stop.clone());
    let store = start_objects(s, cell, mesh, xds.clone(), metrics.kube, stop).await?;
    Ok(Sync { xds, store })
}

/// Watches the objects into `cell` and, when asked, writes route status.
async fn start_objects(
    s: &Settings,
    cell: Arc<ConfigCell>,
    mesh: Arc<State>,
    xds: Arc<xds::status::XdsStatus>,
    metrics: metrics::KubeMetrics,
    stop: CancellationToken,
) -> anyhow::Result<Arc<Mutex<store::ObjectStore>>> {
    let gateway = gateway(s)?;
    let client = kube_client(s).await?;
    let scope = Scope {
        root_namespace: s.root_namespace.clone(),
        gateway: (gateway.namespace.clone(), gateway.name.clone()),
    };
    let store = Arc::new(Mutex::new(store::ObjectStore::new(metrics.clone())));
    watch::spawn(
        client.clone(),
        scope,
        store.clone(),
        cell,
        metrics,
        stop.clone(),
    );
    if s.cluster.write_status {
        status::spawn(
            client,
            gateway,
            store.clone(),
            mesh,
            xds,
            s.config_poll_interval,
            stop,
        );
    }
    Ok(store)
}
