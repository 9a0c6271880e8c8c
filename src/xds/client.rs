//! The delta-ADS connection to istiod: gRPC over TLS, bearer token and `clusterid` header,
//! reconnect with backoff. Between connections the last config stays in force and the session
//! remembers what it holds, so the next stream only receives what changed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::{debug, info, warn};

use super::convert::Defaults;
use super::metrics::{Reason, XdsMetrics};
use super::proto::core::Node;
use super::proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use super::proto::discovery::DeltaDiscoveryRequest;
use super::protocol::Session;
use super::settings::XdsSettings;
use super::status::{Push, XdsStatus};
use crate::config::ConfigSources;

const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// istiod's full push for a big cluster can be large; upstream allows 200 MiB.
const MAX_MESSAGE: usize = 200 * 1024 * 1024;
/// At most this many waiting responses are applied with one snapshot rebuild.
const MAX_BATCH: usize = 64;

/// Everything a connection needs, fixed at start.
pub struct ClientConfig {
    pub address: String,
    pub root_ca: std::path::PathBuf,
    pub alt_hostname: Option<String>,
    pub token_path: std::path::PathBuf,
    pub cluster_id: String,
    pub node: Node,
    pub defaults: Defaults,
}

impl ClientConfig {
    /// ztunnel's client (node type `ztunnel`).
    pub fn new(s: &XdsSettings, node_name: &str, cluster_id: &str, trust_domain: &str) -> Self {
        Self::for_proxy("ztunnel", s, node_name, cluster_id, trust_domain)
    }

    /// A client that says it is a `proxy_type` (istiod's node types: `ztunnel`, `waypoint`);
    /// istiod serves the workload API to any of them.
    pub fn for_proxy(
        proxy_type: &str,
        s: &XdsSettings,
        node_name: &str,
        cluster_id: &str,
        trust_domain: &str,
    ) -> Self {
        ClientConfig {
            address: s.xds_address.clone(),
            root_ca: s.xds_root_ca.clone(),
            alt_hostname: s.alt_xds_hostname.clone(),
            token_path: s.auth_token.clone(),
            cluster_id: cluster_id.to_owned(),
            node: super::node::build(proxy_type, s, node_name, cluster_id, std::env::vars()),
            defaults: Defaults {
                trust_domain: trust_domain.to_owned(),
            },
        }
    }
}

/// Runs until `stop`: connects, applies pushes to `sources`, reconnects with backoff.
pub async fn run(
    cfg: ClientConfig,
    sources: Arc<ConfigSources>,
    status: Arc<XdsStatus>,
    metrics: XdsMetrics,
    stop: CancellationToken,
) {
    let mut session = Session::new(cfg.node.clone(), cfg.defaults.clone());
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let result = tokio::select! {
            r = stream_once(&cfg, &mut session, &sources, &status, &metrics) => r,
            _ = stop.cancelled() => return,
        };
        let (error, got_response) = match result {
            Ok(()) => {
                metrics.terminated(Reason::Complete);
                ("stream closed by istiod".to_owned(), true)
            }
            Err(StreamError {
                error,
                got_response,
                opened,
            }) => {
                metrics.terminated(if opened {
                    Reason::Error
                } else {
                    Reason::ConnectionError
                });
                (format!("{error:#}"), got_response)
            }
        };
        // A stream that worked is a normal reconnect (istiod's max connection age); only
        // repeated failures slow down.
        if got_response {
            backoff = INITIAL_BACKOFF;
        }
        warn!(address = %cfg.address, error = %error, retry_in = ?backoff,
              "xDS stream ended; the config in force stays until istiod is back");
        status.disconnected(error);
        metrics.connected(false);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

struct StreamError {
    error: anyhow::Error,
    got_response: bool,
    /// The stream was open (else: could not connect or open it).
    opened: bool,
}

impl<E: Into<anyhow::Error>> From<E> for StreamError {
    fn from(e: E) -> Self {
        StreamError {
            error: e.into(),
            got_response: false,
            opened: false,
        }
    }
}

async fn channel(cfg: &ClientConfig) -> anyhow::Result<Channel> {
    let mut ep = Endpoint::from_shared(cfg.address.clone())
        .with_context(|| format!("XDS_ADDRESS {:?}", cfg.address))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if ep.uri().scheme_str() == Some("https") {
        let pem = tokio::fs::read(&cfg.root_ca)
            .await
            .with_context(|| format!("reading XDS_ROOT_CA {}", cfg.root_ca.display()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(name) = &cfg.alt_hostname {
            tls = tls.domain_name(name.clone());
        }
        ep = ep.tls_config(tls).context("TLS settings for istiod")?;
    }
    ep.connect()
        .await
        .with_context(|| format!("connecting to istiod at {}", cfg.address))
}

/// The token is re-read per connection: the kubelet rotates the projected file.
async fn add_headers<T>(cfg: &ClientConfig, req: &mut tonic::Request<T>) -> anyhow::Result<()> {
    let md = req.metadata_mut();
    match tokio::fs::read(&cfg.token_path).await {
        Ok(t) => {
            let t = String::from_utf8(t).context("AUTH_TOKEN file is not UTF-8")?;
            let t = t.trim();
            if t.is_empty() {
                return Err(anyhow!(
                    "AUTH_TOKEN file {} is empty",
                    cfg.token_path.display()
                ));
            }
            md.insert(
                "authorization",
                format!("Bearer {t}")
                    .parse()
                    .context("token is not a header value")?,
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            debug!(path = %cfg.token_path.display(), "no token file; connecting without one");
        }
        Err(e) => {
            return Err(
                anyhow!(e).context(format!("reading AUTH_TOKEN {}", cfg.token_path.display()))
            )
        }
    }
    md.insert(
        "clusterid",
        cfg.cluster_id
            .parse()
            .context("CLUSTER_ID is not a header value")?,
    );
    Ok(())
}

async fn stream_once(
    cfg: &ClientConfig,
    session: &mut Session,
    sources: &ConfigSources,
    status: &XdsStatus,
    metrics: &XdsMetrics,
) -> Result<(), StreamError> {
    let channel = channel(cfg).await?;
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    for r in session.initial_requests() {
        tx.try_send(r).map_err(|_| anyhow!("request queue full"))?;
    }
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut req = tonic::Request::new(outbound);
    add_headers(cfg, &mut req).await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let mut inbound = client
        .delta_aggregated_resources(req)
        .await
        .context("opening DeltaAggregatedResources")?
        .into_inner();
    info!(address = %cfg.address, "xDS stream established");
    status.connected(SystemTime::now());
    metrics.connected(true);
    let mut got_response = false;
    loop {
        let first = match inbound.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(StreamError {
                    error: anyhow!(e).context("xDS stream"),
                    got_response,
                    opened: true,
                })
            }
        };
        got_response = true;
        // Responses already waiting are applied together, so a burst of small pushes costs one
        // snapshot rebuild instead of one each; bounded so the ACKs do not wait long.
        let mut batch = vec![first];
        let mut end = None;
        while batch.len() < MAX_BATCH {
            match inbound.message().now_or_never() {
                Some(Ok(Some(r))) => batch.push(r),
                Some(Ok(None)) => {
                    end = Some(Ok(()));
                    break;
                }
                Some(Err(e)) => {
                    end = Some(Err(StreamError {
                        error: anyhow!(e).context("xDS stream"),
                        got_response,
                        opened: true,
                    }));
                    break;
                }
                None => break,
            }
        }
        let mut changes = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for resp in batch {
            metrics.received(&resp);
            let nonce = resp.nonce.clone();
            let (n_res, n_rm) = (resp.resources.len(), resp.removed_resources.len());
            let h = session.on_response(resp);
            let nack = h.reply.error_detail.as_ref().map(|e| e.message.clone());
            if let Some(kind) = h.kind {
                status.pushed(
                    Push {
                        kind,
                        system_version: &h.system_version,
                        nonce: &nonce,
                        held: session.held(kind),
                        nack: nack.as_deref(),
                    },
                    session.synced(),
                    SystemTime::now(),
                );
                debug!(type_ = kind.name(), resources = n_res, removed = n_rm, %nonce, "xDS push received");
                changes.push((kind, h.change));
            }
            if let Some(why) = &nack {
                metrics.nacked(&h.reply.type_url);
                warn!(%nonce, error = %why, "NACK: resources refused, the rest of the push applied");
            }
            if h.became_synced {
                info!("first xDS push of every type applied");
            }
            replies.push(h.reply);
        }
        // Applied before the ACKs go out: an ACK means "in force".
        sources.apply_xds_batch(changes);
        for reply in replies {
            if tx.send(reply).await.is_err() {
                return Err(StreamError {
                    error: anyhow!("request stream closed"),
                    got_response,
                    opened: true,
                });
            }
        }
        if let Some(end) = end {
            return end;
        }
    }
}
