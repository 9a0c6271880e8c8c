//! The waypoint's flags and environment variables (Istio's names where Istio has one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use meshtunnel::config::LogFormat;
use meshtunnel::xds::XdsSettings;

#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// HBONE listener (mTLS HTTP/2 CONNECT).
    #[arg(long, env = "WAYPOINT_HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,
    /// `/stats/prometheus`.
    #[arg(long, env = "WAYPOINT_STATS_ADDR", default_value = "0.0.0.0:15020")]
    pub stats_addr: SocketAddr,
    /// `/healthz/ready`.
    #[arg(long, env = "WAYPOINT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Admin API (config_dump, logging); loopback only.
    #[arg(long, env = "WAYPOINT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Directory of Kubernetes YAML objects: HTTPRoute, GRPCRoute, VirtualService,
    /// AuthorizationPolicy, Service. Watched.
    #[arg(long, env = "WAYPOINT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// The local workload/service config ztunnel reads (upstream's local-config schema).
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,
    /// Directory of the local CA (root-cert.pem + ca-key.pem).
    #[arg(long, env = "LOCAL_CA_DIR", default_value = "/var/run/meshtunnel/ca")]
    pub local_ca_dir: PathBuf,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The waypoint's namespace (its identity's `ns`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The waypoint's service account (its identity's `sa`).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    pub service_account: String,
    /// Istio's root namespace: GatewayClass-targeted policies live there.
    #[arg(long, env = "ISTIO_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    #[arg(long, env = "CERT_TTL", value_parser = humantime::parse_duration, default_value = "24h")]
    pub cert_ttl: Duration,
    #[arg(long, env = "CONFIG_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "1s")]
    pub config_poll_interval: Duration,
    /// Bound on dialing an endpoint (TCP + TLS + CONNECT).
    #[arg(long, env = "WAYPOINT_CONNECT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    pub connect_timeout: Duration,
    /// Pooled upstream connections (HBONE to endpoints, and HTTP inside them) unused this
    /// long are closed / not reused.
    #[arg(long, env = "WAYPOINT_POOL_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub pool_idle_timeout: Duration,
    /// A client must finish its request headers within this.
    #[arg(long, env = "WAYPOINT_HEADER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// Largest request head accepted (bytes); larger is answered 431.
    #[arg(long, env = "WAYPOINT_MAX_HEADER_BYTES", default_value_t = 60 * 1024)]
    pub max_header_bytes: usize,
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub cluster: ClusterSettings,
}

/// Cluster mode (XDS_ADDRESS set): objects from the Kubernetes API, workloads and services
/// from istiod's workload xDS, the certificate from istiod's CA. Upstream names throughout
/// (ztunnel's for xDS and the CA, istiod's waypoint Deployment's for the rest).
#[derive(Args, Debug, Clone)]
pub struct ClusterSettings {
    /// XDS_ADDRESS, XDS_ROOT_CA, ALT_XDS_HOSTNAME, AUTH_TOKEN (the projected `istio-token`,
    /// audience istio-ca, of the waypoint's own service account), POD_NAME, POD_NAMESPACE,
    /// INSTANCE_IP: as ztunnel reads them.
    #[command(flatten)]
    pub xds: XdsSettings,
    /// The Istio CA; unset or empty: XDS_ADDRESS (istiod serves both).
    #[arg(long, env = "CA_ADDRESS", value_name = "URL")]
    pub ca_address: Option<String>,
    /// PEM roots of the CA's serving certificate; also what the mesh trusts.
    #[arg(
        long,
        env = "CA_ROOT_CA",
        value_name = "FILE",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root_ca: PathBuf,
    #[arg(long, env = "ALT_CA_HOSTNAME", value_name = "NAME")]
    pub alt_ca_hostname: Option<String>,
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// The node the pod runs on (istiod's waypoint Deployment sets ISTIO_META_NODE_NAME).
    #[arg(long, env = "ISTIO_META_NODE_NAME", default_value = "")]
    pub node_name: String,
    /// The waypoint's Gateway (class istio-waypoint) in POD_NAMESPACE. istiod's waypoint
    /// Deployment sets ISTIO_META_WORKLOAD_NAME to its Deployment's name, which is the
    /// Gateway's. Services whose waypoint is this Gateway's Service are the ones it serves.
    #[arg(long, env = "ISTIO_META_WORKLOAD_NAME", default_value = "")]
    pub gateway_name: String,
    /// Write route status (our own `parents[]` entry, controllerName below).
    #[arg(long, env = "WAYPOINT_WRITE_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub write_status: bool,
    /// The kubeconfig; unset: in-cluster config (or ~/.kube/config), as cni-agent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

impl ClusterSettings {
    /// XDS_ADDRESS, when cluster mode is on.
    pub fn xds_address(&self) -> Option<&str> {
        self.xds.address()
    }

    /// CA_ADDRESS, else XDS_ADDRESS; empty meaning unset.
    pub fn ca_address(&self) -> Option<String> {
        match self.ca_address.as_deref().map(str::trim) {
            Some(a) if !a.is_empty() => Some(a.to_owned()),
            _ => self.xds_address().map(str::to_owned),
        }
    }
}
