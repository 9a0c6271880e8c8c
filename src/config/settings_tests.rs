//! Flag and environment parsing of [`super::Settings`].

use super::*;
use clap::{CommandFactory, Parser};
use std::sync::Mutex;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

// Clap reads the process environment, which all test threads share: every test here that
// parses holds this lock and scrubs the variables it cares about.
static ENV: Mutex<()> = Mutex::new(());

const VARS: &[&str] = &[
    "LOCAL_XDS_PATH",
    "INPOD_UDS",
    "NODE_NAME",
    "TRUST_DOMAIN",
    "CLUSTER_ID",
    "PACKET_MARK",
    "LOCAL_CA_DIR",
    "CA_ADDRESS",
    "CA_ROOT_CA",
    "ALT_CA_HOSTNAME",
    "XDS_ADDRESS",
    "SECRET_TTL",
    "CONNECTION_TERMINATION_DEADLINE",
    "READINESS_ADDR",
    "CONFIG_POLL_INTERVAL",
    "STATS_ADDR",
    "ADMIN_ADDR",
    "METRICS_RETENTION",
    "LOG_FORMAT",
    "RUST_LOG",
    "XDS_ROOT_CA",
    "ALT_XDS_HOSTNAME",
    "AUTH_TOKEN",
    "POD_NAME",
    "POD_NAMESPACE",
    "INSTANCE_IP",
    "CONNECT_TIMEOUT",
    "TLS_HANDSHAKE_TIMEOUT",
    "KEEPALIVE_ENABLED",
    "KEEPALIVE_TIME",
    "KEEPALIVE_INTERVAL",
    "KEEPALIVE_RETRIES",
    "ZTUNNEL_WORKER_THREADS",
];

fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let _g = ENV.lock().unwrap_or_else(|e| e.into_inner());
    for v in VARS {
        std::env::remove_var(v);
    }
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let out = f();
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    out
}

fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
    Cli::try_parse_from(std::iter::once("ztunnel").chain(args.iter().copied())).map(|c| c.settings)
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_setting_has_help_and_an_env_var() {
    let cmd = Cli::command();
    for arg in cmd.get_arguments().filter(|a| a.get_long().is_some()) {
        let name = arg.get_id();
        assert!(arg.get_help().is_some(), "--{name} has no help text");
        assert!(arg.get_env().is_some(), "--{name} has no env var");
    }
}

#[test]
fn defaults() {
    let s = with_env(&[], || parse(&[])).unwrap();
    assert_eq!(s.local_xds_path, None);
    assert_eq!(s.inpod_uds, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
    assert_eq!(s.node_name, "");
    assert_eq!(s.trust_domain, "cluster.local");
    assert_eq!(s.cluster_id, "Kubernetes");
    assert_eq!(s.packet_mark, 0x539);
    assert_eq!(s.local_ca_dir, PathBuf::from("/var/run/ztunnel/ca"));
    assert_eq!(s.cert_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(s.drain_deadline, Duration::from_secs(5));
    assert_eq!(s.readiness_addr, "[::]:15021".parse().unwrap());
    assert_eq!(s.config_poll_interval, Duration::from_secs(1));
    assert_eq!(s.stats_addr, "[::]:15020".parse().unwrap());
    assert_eq!(s.admin_addr, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(s.metrics_retention, Duration::from_secs(300));
    assert_eq!(s.log_format, LogFormat::Plain);
    assert_eq!(s.log_level, "info");
    assert_eq!(s.xds.address(), None);
    assert_eq!(
        s.xds.auth_token,
        PathBuf::from("/var/run/secrets/tokens/istio-token")
    );
    assert_eq!(s.istio_ca_address(), None);
    assert_eq!(
        s.ca_root_ca,
        PathBuf::from("./var/run/secrets/istio/root-cert.pem")
    );
}

#[test]
fn istio_ca_address_falls_back_to_xds_address() {
    let xds = [("XDS_ADDRESS", "https://istiod:15012")];
    let s = with_env(&xds, || parse(&[])).unwrap();
    let got = s.istio_ca_address();
    assert_eq!(got.as_deref(), Some("https://istiod:15012"));
    let both = [
        ("XDS_ADDRESS", "https://istiod:15012"),
        ("CA_ADDRESS", "https://ca:15012"),
    ];
    let got = with_env(&both, || parse(&[]).unwrap().istio_ca_address());
    assert_eq!(got.as_deref(), Some("https://ca:15012"));
    // An empty CA_ADDRESS means no Istio CA, as upstream.
    let off = [("XDS_ADDRESS", "https://istiod:15012"), ("CA_ADDRESS", "")];
    assert_eq!(
        with_env(&off, || parse(&[]).unwrap().istio_ca_address()),
        None
    );
    // The data path's bounds default to upstream's values.
    let h2 = s.h2();
    assert_eq!(h2.sockets, crate::proxy::SocketOptions::default());
    assert_eq!(h2.handshake_timeout, Duration::from_secs(10));
}

#[test]
fn timeouts_and_keepalive_use_upstream_names() {
    let vars = [
        ("CONNECT_TIMEOUT", "2s"),
        ("TLS_HANDSHAKE_TIMEOUT", "500ms"),
        ("KEEPALIVE_TIME", "30s"),
        ("KEEPALIVE_INTERVAL", "5s"),
        ("KEEPALIVE_RETRIES", "3"),
    ];
    let h2 = with_env(&vars, || parse(&[])).unwrap().h2();
    assert_eq!(h2.sockets.connect_timeout, Duration::from_secs(2));
    assert_eq!(h2.handshake_timeout, Duration::from_millis(500));
    assert_eq!(
        h2.sockets.keepalive,
        Some(crate::proxy::Keepalive {
            time: Duration::from_secs(30),
            interval: Duration::from_secs(5),
            retries: 3
        })
    );
    let off = with_env(&[("KEEPALIVE_ENABLED", "false")], || parse(&[])).unwrap();
    assert_eq!(off.h2().sockets.keepalive, None);
}

#[test]
fn env_overrides_and_flags_win() {
    let vars = [
        ("LOCAL_XDS_PATH", "/etc/zt.yaml"),
        ("NODE_NAME", "node-a"),
        ("PACKET_MARK", "0x111"),
        ("SECRET_TTL", "24h0m0s"),
        ("CONNECTION_TERMINATION_DEADLINE", "500ms"),
        ("CONFIG_POLL_INTERVAL", "50ms"),
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info,meshtunnel=debug"),
    ];
    let s = with_env(&vars, || parse(&[])).unwrap();
    assert_eq!(s.local_xds_path, Some(PathBuf::from("/etc/zt.yaml")));
    assert_eq!(s.node_name, "node-a");
    assert_eq!(s.packet_mark, 0x111);
    assert_eq!(s.cert_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(s.drain_deadline, Duration::from_millis(500));
    assert_eq!(s.config_poll_interval, Duration::from_millis(50));
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.log_level, "info,meshtunnel=debug");

    let s = with_env(&vars, || {
        parse(&["--node-name", "node-b", "--cert-ttl", "1h"])
    })
    .unwrap();
    assert_eq!(s.node_name, "node-b");
    assert_eq!(s.cert_ttl, Duration::from_secs(3600));
}

#[test]
fn bad_values_are_refused_with_the_setting_named() {
    for (args, needle) in [
        (&["--cert-ttl", "24"][..], "--cert-ttl"),
        (&["--packet-mark", "0"], "--packet-mark"),
        (&["--packet-mark", "0xzz"], "--packet-mark"),
        (&["--config-poll-interval", "0s"], "--config-poll-interval"),
        (&["--readiness-addr", "15021"], "--readiness-addr"),
        (&["--log-format", "xml"], "--log-format"),
        (&["--admin-addr", "0.0.0.0:15000"], "loopback"),
        (&["--admin-addr", "10.0.0.1:15000"], "--admin-addr"),
        (&["--metrics-retention", "5"], "--metrics-retention"),
        (&["--connect-timeout", "0s"], "--connect-timeout"),
        (
            &["--tls-handshake-timeout", "0s"],
            "--tls-handshake-timeout",
        ),
        (&["--keepalive-retries", "0"], "--keepalive-retries"),
        (&["--keepalive-enabled", "maybe"], "--keepalive-enabled"),
    ] {
        let e = with_env(&[], || parse(args)).unwrap_err().to_string();
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    let e = with_env(&[("SECRET_TTL", "forever")], || parse(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("forever"), "{e}");
}

#[test]
fn worker_threads_are_a_count_or_a_share_of_the_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (given, want) in [
        (None, Some(2)),
        (Some("1"), Some(1)),
        (Some("8"), Some(8)),
        (Some("100%"), Some(cpus)),
        (Some("1%"), Some(1)),
        (Some("0"), None),
        (Some("0%"), None),
        (Some("101%"), None),
        (Some("two"), None),
        (Some("-1"), None),
    ] {
        let vars: Vec<(&str, &str)> = given
            .map(|g| ("ZTUNNEL_WORKER_THREADS", g))
            .into_iter()
            .collect();
        let got = with_env(&vars, || parse(&[]).map(|s| s.worker_threads).ok());
        assert_eq!(got, want, "ZTUNNEL_WORKER_THREADS={given:?}");
    }
}
