use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// ztunnel's process settings. Each one is a flag and an environment variable; where upstream
/// ztunnel reads one, the variable has upstream's name, so its DaemonSet env carries over.
/// Flags win over the environment.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct Settings {
    /// Local config file (upstream ztunnel's local-config YAML: workloads, services, policies)
    /// used instead of istiod; reloaded when it changes.
    #[arg(long, env = "LOCAL_XDS_PATH", value_name = "FILE")]
    pub local_xds_path: Option<PathBuf>,

    /// Unix socket on which the CNI agent serves ZDS (the agent listens, ztunnel connects).
    #[arg(
        long,
        env = "INPOD_UDS",
        value_name = "PATH",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    pub inpod_uds: PathBuf,

    /// Name of the Kubernetes node this ztunnel runs on; workloads whose `node` matches are
    /// local. Empty (the default) means unknown: set it from the downward API in a cluster.
    #[arg(long, env = "NODE_NAME", value_name = "NAME", default_value = "")]
    pub node_name: String,

    /// Trust domain of the identities this ztunnel issues and accepts.
    #[arg(
        long,
        env = "TRUST_DOMAIN",
        value_name = "DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,

    /// Cluster this ztunnel belongs to (a telemetry label and part of derived workload uids).
    #[arg(
        long,
        env = "CLUSTER_ID",
        value_name = "ID",
        default_value = "Kubernetes"
    )]
    pub cluster_id: String,

    /// SO_MARK put on sockets ztunnel opens inside pods, so the pod's redirect rules let them
    /// pass. Decimal or 0x-hex; must match the CNI agent's rules.
    #[arg(
        long,
        env = "PACKET_MARK",
        value_name = "MARK",
        default_value = "1337",
        value_parser = parse_mark
    )]
    pub packet_mark: u32,

    /// Directory holding the local CA that signs workload certificates when no external CA is
    /// used: root-cert.pem + ca-key.pem, or Istio's plug-in layout (ca-cert.pem, ca-key.pem,
    /// root-cert.pem, cert-chain.pem).
    #[arg(
        long,
        env = "LOCAL_CA_DIR",
        value_name = "DIR",
        default_value = "/var/run/ztunnel/ca"
    )]
    pub local_ca_dir: PathBuf,

    /// Address of the Istio CA (istiod's IstioCertificateService), e.g.
    /// `https://istiod.istio-system.svc:15012`. When set (or, failing that, when XDS_ADDRESS
    /// is), certificates come from it instead of the local CA. Empty means unset.
    #[arg(long, env = "CA_ADDRESS", value_name = "URL")]
    pub ca_address: Option<String>,

    /// PEM roots that sign the Istio CA's serving certificate; also what the mesh trusts.
    #[arg(
        long,
        env = "CA_ROOT_CA",
        value_name = "FILE",
        default_value = "./var/run/secrets/istio/root-cert.pem"
    )]
    pub ca_root_ca: PathBuf,

    /// Name to verify the Istio CA's certificate against (and send as SNI) when it is not the
    /// host of CA_ADDRESS.
    #[arg(long, env = "ALT_CA_HOSTNAME", value_name = "NAME")]
    pub alt_ca_hostname: Option<String>,

    /// Lifetime of issued workload certificates (e.g. 24h, 90m); they are renewed at half-life.
    #[arg(
        long,
        env = "SECRET_TTL",
        value_name = "DURATION",
        default_value = "24h",
        value_parser = parse_duration
    )]
    pub cert_ttl: Duration,

    /// On shutdown, how long open connections may drain before they are closed.
    #[arg(
        long,
        env = "CONNECTION_TERMINATION_DEADLINE",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub drain_deadline: Duration,

    /// Address of the readiness endpoint (/healthz/ready).
    #[arg(
        long,
        env = "READINESS_ADDR",
        value_name = "ADDR",
        default_value = "[::]:15021"
    )]
    pub readiness_addr: SocketAddr,

    /// Address of the metrics endpoint (/stats/prometheus, OpenMetrics text).
    #[arg(
        long,
        env = "STATS_ADDR",
        value_name = "ADDR",
        default_value = "[::]:15020"
    )]
    pub stats_addr: SocketAddr,

    /// Address of the admin API (/config_dump, /logging, /quitquitquit). It can change the
    /// log level and stop ztunnel, so it only binds to a loopback address.
    #[arg(
        long,
        env = "ADMIN_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:15000",
        value_parser = parse_admin_addr
    )]
    pub admin_addr: SocketAddr,

    /// How long the metric series of a pod (or peer workload) that is gone stay exported
    /// before they are dropped, so a last scrape sees their final values.
    #[arg(
        long,
        env = "METRICS_RETENTION",
        value_name = "DURATION",
        default_value = "5m",
        value_parser = parse_duration
    )]
    pub metrics_retention: Duration,

    /// How often the local config file is checked for changes.
    #[arg(
        long,
        env = "CONFIG_POLL_INTERVAL",
        value_name = "DURATION",
        default_value = "1s",
        value_parser = parse_poll_interval
    )]
    pub config_poll_interval: Duration,

    /// istiod's delta xDS (XDS_ADDRESS, XDS_ROOT_CA, ALT_XDS_HOSTNAME, AUTH_TOKEN, ...).
    #[command(flatten)]
    pub xds: crate::xds::XdsSettings,

    /// How long a TCP connect (to a destination, a peer's 15008, or the app) may take before
    /// the connection fails (upstream: 10 s, fixed).
    #[arg(
        long,
        env = "CONNECT_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub connect_timeout: Duration,

    /// How long the TLS handshake and HTTP/2 preface of a HBONE connection may take, on
    /// either side, before it is closed.
    #[arg(
        long,
        env = "TLS_HANDSHAKE_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub handshake_timeout: Duration,

    /// TCP keepalive on every socket the proxies open or accept, so a peer that vanished is
    /// noticed and its connection released.
    #[arg(long, env = "KEEPALIVE_ENABLED", value_name = "BOOL", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub keepalive_enabled: bool,

    /// Idle time before the first keepalive probe.
    #[arg(
        long,
        env = "KEEPALIVE_TIME",
        value_name = "DURATION",
        default_value = "180s",
        value_parser = parse_positive_duration
    )]
    pub keepalive_time: Duration,

    /// Time between keepalive probes.
    #[arg(
        long,
        env = "KEEPALIVE_INTERVAL",
        value_name = "DURATION",
        default_value = "180s",
        value_parser = parse_positive_duration
    )]
    pub keepalive_interval: Duration,

    /// Unanswered keepalive probes before the connection is dropped.
    #[arg(long, env = "KEEPALIVE_RETRIES", value_name = "N", default_value_t = 9,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub keepalive_retries: u32,

    /// HTTP/2 flow-control window of each HBONE stream (upstream's setting and default).
    #[arg(long, env = "HTTP2_STREAM_WINDOW_SIZE", value_name = "BYTES",
          default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(65_535..=0x7FFF_FFFF))]
    pub http2_stream_window_size: u32,

    /// HTTP/2 flow-control window of each HBONE connection (upstream's setting and default).
    #[arg(long, env = "HTTP2_CONNECTION_WINDOW_SIZE", value_name = "BYTES",
          default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(65_535..=0x7FFF_FFFF))]
    pub http2_connection_window_size: u32,

    /// Largest HTTP/2 frame a peer may send us (upstream's setting; HTTP/2 allows 16 KiB to
    /// 16 MiB - 1).
    #[arg(long, env = "HTTP2_FRAME_SIZE", value_name = "BYTES",
          default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u32).range(16_384..=16_777_215))]
    pub http2_frame_size: u32,

    /// Threads that carry traffic (each connection stays on one): a number, or a share of the
    /// CPUs the process may use such as `50%` (upstream's setting and default, 2: a node proxy
    /// is sized per node, not per core). The control plane runs on the main thread besides.
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS", value_name = "N|PCT%", default_value = "2",
          value_parser = parse_worker_threads)]
    pub worker_threads: usize,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter in tracing's env-filter syntax, e.g. `info` or `info,meshtunnel::proxy=debug`.
    #[arg(
        long,
        env = "RUST_LOG",
        value_name = "FILTER",
        default_value = "info",
        value_parser = parse_log_filter
    )]
    pub log_level: String,
}

impl Settings {
    /// The HBONE and socket settings these flags describe.
    pub fn h2(&self) -> crate::hbone::H2Settings {
        crate::hbone::H2Settings {
            handshake_timeout: self.handshake_timeout,
            stream_window: self.http2_stream_window_size,
            connection_window: self.http2_connection_window_size,
            max_frame_size: self.http2_frame_size,
            sockets: crate::proxy::SocketOptions {
                connect_timeout: self.connect_timeout,
                keepalive: self.keepalive_enabled.then_some(crate::proxy::Keepalive {
                    time: self.keepalive_time,
                    interval: self.keepalive_interval,
                    retries: self.keepalive_retries,
                }),
            },
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e} (write a duration with units, e.g. 500ms, 30s, 24h)"))
}

fn parse_poll_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    // A zero interval would make the watcher spin on the file.
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Timeouts and keepalive periods: zero would fail every connection or probe continuously.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    match parsed {
        // Mark 0 is "unmarked": the redirect rules would capture ztunnel's own sockets.
        Ok(0) => Err("must not be 0".into()),
        Ok(m) => Ok(m),
        Err(e) => Err(format!("{e} (expected a decimal or 0x-hex number)")),
    }
}

fn parse_admin_addr(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|e| format!("{e} (expected ip:port, e.g. 127.0.0.1:15000)"))?;
    if !a.ip().is_loopback() {
        return Err(format!(
            "{} is not a loopback address: the admin API must not be reachable from the network",
            a.ip()
        ));
    }
    Ok(a)
}

impl Settings {
    /// The Istio CA to use, if any: CA_ADDRESS, else XDS_ADDRESS (istiod serves both on
    /// :15012), empty meaning unset.
    pub fn istio_ca_address(&self) -> Option<String> {
        let non_empty = |s: String| Some(s).filter(|s| !s.trim().is_empty());
        match &self.ca_address {
            Some(a) => non_empty(a.clone()),
            None => self.xds.address().map(str::to_owned),
        }
    }
}

/// `N` (at least 1) or `P%` of the CPUs this process may run on (at least 1).
fn parse_worker_threads(s: &str) -> Result<usize, String> {
    let s = s.trim();
    if let Some(pct) = s.strip_suffix('%') {
        let pct: usize = pct
            .trim()
            .parse()
            .ok()
            .filter(|p| (1..=100).contains(p))
            .ok_or_else(|| format!("{s:?}: a share of the CPUs is 1% to 100%"))?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        return Ok((cpus * pct / 100).max(1));
    }
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?}: want a thread count of 1 or more, or a share such as 50%"
        )),
    }
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
