//! The settings of the xDS client, with upstream ztunnel's variable names so its DaemonSet env
//! carries over. Flattened into [`crate::config::Settings`].

use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct XdsSettings {
    /// istiod's delta-xDS address, e.g. https://istiod.istio-system.svc:15012 (http:// for a
    /// plaintext port). Unset or empty: no xDS, the local config file alone is the config.
    #[arg(
        long,
        env = "XDS_ADDRESS",
        value_name = "URI",
        default_value = "",
        value_parser = parse_address
    )]
    pub xds_address: String,

    /// PEM file with the root certificate(s) that istiod's serving certificate chains to.
    #[arg(
        long,
        env = "XDS_ROOT_CA",
        value_name = "FILE",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub xds_root_ca: PathBuf,

    /// Name istiod's certificate is checked against when it differs from the host in
    /// XDS_ADDRESS (e.g. dialling an IP: istiod.istio-system.svc).
    #[arg(long, env = "ALT_XDS_HOSTNAME", value_name = "NAME")]
    pub alt_xds_hostname: Option<String>,

    /// File holding the Kubernetes service account token (audience istio-ca) sent to istiod
    /// as a bearer token; re-read on every connection. A missing file means no token.
    #[arg(
        long,
        env = "AUTH_TOKEN",
        value_name = "FILE",
        default_value = "/var/run/secrets/tokens/istio-token"
    )]
    pub auth_token: PathBuf,

    /// This ztunnel's pod name (downward API), sent to istiod in the node id and metadata.
    #[arg(long, env = "POD_NAME", value_name = "NAME", default_value = "")]
    pub pod_name: String,

    /// This ztunnel's namespace; istiod requires it to match the token's namespace.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        value_name = "NAMESPACE",
        default_value = ""
    )]
    pub pod_namespace: String,

    /// This ztunnel's pod IP, the IP part of the node id (upstream's placeholder when unset).
    #[arg(
        long,
        env = "INSTANCE_IP",
        value_name = "IP",
        default_value = "1.1.1.1"
    )]
    pub instance_ip: IpAddr,
}

impl XdsSettings {
    /// The xDS address, or `None` when xDS is off (unset or empty, as upstream).
    pub fn address(&self) -> Option<&str> {
        Some(self.xds_address.as_str()).filter(|a| !a.is_empty())
    }
}

fn parse_address(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("{e} (expected e.g. https://istiod.istio-system.svc:15012)"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(_)) => Ok(s.to_owned()),
        _ => Err("expected https://host:port (or http:// for a plaintext port)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_scheme_and_a_host() {
        assert!(parse_address("https://istiod.istio-system.svc:15012").is_ok());
        assert!(parse_address("http://10.0.0.1:15010").is_ok());
        assert_eq!(parse_address(" ").unwrap(), "");
        for bad in ["istiod:15012", "ftp://x:1", "https://"] {
            assert!(parse_address(bad).is_err(), "{bad} accepted");
        }
    }
}
