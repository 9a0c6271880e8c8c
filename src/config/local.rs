//! The local config file: upstream ztunnel's local-config YAML, so one file drives either
//! implementation.
//!
//! ```yaml
//! workloads:            # optional; each entry = upstream Workload fields + `services`
//! - uid: Kubernetes//Pod/demo/web-0     # default: <clusterId>//Pod/<namespace>/<name>
//!   name: web-0
//!   namespace: demo                     # required
//!   serviceAccount: web                 # default: default
//!   trustDomain: cluster.local          # default: cluster.local
//!   workloadIps: [10.244.1.2]
//!   protocol: HBONE                     # HBONE | TCP (default TCP)
//!   node: node-a
//!   services:                           # required, may be {}
//!     demo/web.demo.svc.cluster.local: {80: 8080}
//!   waypoint:                         # optional: traffic addressed to this pod's IP
//!     destination: /10.96.0.99          # goes through this waypoint (`network/ip` or
//!     hboneMtlsPort: 15008              # `namespace/hostname` of the waypoint's service)
//! services:             # optional
//! - {name: web, namespace: demo, hostname: web.demo.svc.cluster.local,
//!    vips: [/10.96.0.10], ports: {80: 8080},
//!    waypoint: {destination: demo/waypoint.demo.svc.cluster.local, hboneMtlsPort: 15008}}
//! policies:             # optional; see crate::state::Policy
//! ```
//! Unknown fields are refused; upstream fields we do not use yet are accepted and ignored.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::state::{
    ConfigSnapshot, GatewayAddress, HealthStatus, NetworkAddress, NetworkMode, Policy, Protocol,
    Service, SnapshotError, Workload,
};

// Upstream's defaults for fields istiod leaves empty.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// Why a local config file was not applied. Every message starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not valid YAML, or not the schema. `message` names the place in the document
    /// (e.g. `workloads[0]`) when serde_yaml knows it.
    #[error("{}{}: {message}", path.display(), Loc(*location))]
    Parse {
        path: PathBuf,
        /// 1-based line and column.
        location: Option<(usize, usize)>,
        message: String,
    },
    /// Well-formed but meaningless: `item` is e.g. `workloads[2] (demo/web-0)`.
    #[error("{}: {item}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        item: String,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Conflict {
        path: PathBuf,
        #[source]
        source: SnapshotError,
    },
}

struct Loc(Option<(usize, usize)>);

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, col)) => write!(f, ":{line}:{col}"),
            None => Ok(()),
        }
    }
}

/// What a workload entry gets for a field it leaves out, where the answer depends on how this
/// ztunnel is deployed rather than on the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// The mesh's trust domain (`TRUST_DOMAIN`): a workload without `trustDomain` is in it.
    pub trust_domain: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
        }
    }
}

/// Reads and parses the file at `path` with the default [`Defaults`].
pub fn load(path: &Path) -> Result<ConfigSnapshot, ConfigError> {
    load_with(path, &Defaults::default())
}

/// Reads and parses the file at `path`.
pub fn load_with(path: &Path, defaults: &Defaults) -> Result<ConfigSnapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_with(&text, path, defaults)
}

/// Parses `text` with the default [`Defaults`]; `origin` only names the file in errors.
pub fn parse(text: &str, origin: &Path) -> Result<ConfigSnapshot, ConfigError> {
    parse_with(text, origin, &Defaults::default())
}

/// Parses `text`; `origin` only names the file in errors.
pub fn parse_with(
    text: &str,
    origin: &Path,
    defaults: &Defaults,
) -> Result<ConfigSnapshot, ConfigError> {
    let file: File = if is_blank(text) {
        // serde_yaml calls an empty document an error; an emptied file means "no config".
        File::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| yaml_error(e, origin))?
    };
    file.into_snapshot(origin, defaults)
}

fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---")
}

fn yaml_error(e: serde_yaml::Error, origin: &Path) -> ConfigError {
    let location = e.location().map(|l| (l.line(), l.column()));
    let mut message = e.to_string();
    // serde_yaml appends the position to its message; it goes in front instead, once.
    if let Some((line, col)) = location {
        message = message.replacen(&format!(" at line {line} column {col}"), "", 1);
    }
    ConfigError::Parse {
        path: origin.to_owned(),
        location,
        message,
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct File {
    #[serde(default)]
    workloads: Vec<FileWorkload>,
    #[serde(default)]
    services: Vec<FileService>,
    #[serde(default)]
    policies: Vec<Policy>,
}

/// Upstream's `LocalWorkload` flattens its Workload into the entry; serde cannot combine
/// `flatten` with `deny_unknown_fields`, so the fields are spelled out here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileWorkload {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    trust_domain: String,
    #[serde(default)]
    workload_ips: Vec<IpAddr>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
    services: HashMap<String, HashMap<u16, u16>>,
    #[serde(default)]
    waypoint: Option<GatewayAddress>,
    #[serde(default)]
    network_gateway: Option<GatewayAddress>,
    #[serde(default)]
    network_mode: NetworkMode,
    #[serde(default)]
    status: HealthStatus,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    authorization_policies: Vec<String>,
    // Upstream fields with no meaning here yet; accepted so upstream files load.
    #[allow(dead_code)]
    native_tunnel: Option<IgnoredAny>,
    #[allow(dead_code)]
    application_tunnel: Option<IgnoredAny>,
    #[allow(dead_code)]
    locality: Option<IgnoredAny>,
    #[allow(dead_code)]
    capacity: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileService {
    name: String,
    namespace: String,
    hostname: String,
    #[serde(default)]
    vips: Vec<NetworkAddress>,
    #[serde(default)]
    ports: HashMap<u16, u16>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    waypoint: Option<GatewayAddress>,
    // Upstream fields with no meaning here yet; endpoints come from the workloads' `services`.
    #[allow(dead_code)]
    endpoints: Option<IgnoredAny>,
    #[allow(dead_code)]
    load_balancer: Option<IgnoredAny>,
    #[allow(dead_code)]
    ip_families: Option<IgnoredAny>,
    #[allow(dead_code)]
    canonical: Option<IgnoredAny>,
}

fn or_default(s: String, default: &str) -> String {
    if s.is_empty() {
        default.to_owned()
    } else {
        s
    }
}

fn is_namespaced_host(key: &str) -> bool {
    matches!(key.split_once('/'), Some((ns, host)) if !ns.is_empty() && !host.is_empty())
}

impl File {
    fn into_snapshot(
        self,
        origin: &Path,
        defaults: &Defaults,
    ) -> Result<ConfigSnapshot, ConfigError> {
        let invalid = |item: String, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            item,
            message,
        };
        let mut workloads = Vec::with_capacity(self.workloads.len());
        for (i, w) in self.workloads.into_iter().enumerate() {
            let item = format!("workloads[{i}] ({}/{})", w.namespace, w.name);
            workloads.push(w.into_workload(defaults).map_err(|m| invalid(item, m))?);
        }
        let mut services = Vec::with_capacity(self.services.len());
        for (i, s) in self.services.into_iter().enumerate() {
            let item = format!("services[{i}] ({}/{})", s.namespace, s.hostname);
            services.push(s.into_service().map_err(|m| invalid(item, m))?);
        }
        for (i, p) in self.policies.iter().enumerate() {
            if p.name.is_empty() || p.namespace.is_empty() {
                return Err(invalid(
                    format!("policies[{i}]"),
                    "name and namespace must not be empty".into(),
                ));
            }
        }
        ConfigSnapshot::new(workloads, services, self.policies).map_err(|source| {
            ConfigError::Conflict {
                path: origin.to_owned(),
                source,
            }
        })
    }
}

impl FileWorkload {
    fn into_workload(self, defaults: &Defaults) -> Result<Workload, String> {
        if self.namespace.is_empty() {
            return Err("namespace must not be empty".into());
        }
        if let Some(bad) = self.services.keys().find(|k| !is_namespaced_host(k)) {
            return Err(format!("services key {bad:?} is not `namespace/hostname`"));
        }
        let cluster_id = or_default(self.cluster_id, DEFAULT_CLUSTER_ID);
        let uid = match (self.uid.is_empty(), self.name.is_empty()) {
            (false, _) => self.uid,
            // Mirrors the uid Kubernetes-sourced workloads get upstream.
            (true, false) => format!("{cluster_id}//Pod/{}/{}", self.namespace, self.name),
            (true, true) => return Err("needs a uid or a name".into()),
        };
        Ok(Workload {
            uid,
            name: self.name,
            namespace: self.namespace,
            service_account: or_default(self.service_account, DEFAULT_SERVICE_ACCOUNT),
            trust_domain: or_default(self.trust_domain, &defaults.trust_domain),
            workload_ips: self.workload_ips,
            protocol: self.protocol,
            node: self.node,
            network: self.network,
            services: self.services,
            waypoint: self.waypoint,
            network_gateway: self.network_gateway,
            network_mode: self.network_mode,
            status: self.status,
            hostname: self.hostname,
            cluster_id,
            workload_name: self.workload_name,
            workload_type: self.workload_type,
            canonical_name: self.canonical_name,
            canonical_revision: self.canonical_revision,
            authorization_policies: self.authorization_policies,
        })
    }
}

impl FileService {
    fn into_service(self) -> Result<Service, String> {
        if self.namespace.is_empty() || self.hostname.is_empty() {
            return Err("namespace and hostname must not be empty".into());
        }
        Ok(Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            vips: self.vips,
            ports: self.ports,
            subject_alt_names: self.subject_alt_names,
            waypoint: self.waypoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/zt.yaml")
    }

    fn err(text: &str) -> String {
        parse(text, p()).unwrap_err().to_string()
    }

    const MINIMAL: &str = "\
workloads:
- name: web-0
  namespace: demo
  workloadIps: [10.0.0.1]
  services: {}
";

    #[test]
    fn defaults_fill_in_like_upstream() {
        let s = parse(MINIMAL, p()).unwrap();
        let w = s.workloads().next().unwrap();
        assert_eq!(w.uid, "Kubernetes//Pod/demo/web-0");
        assert_eq!(
            w.identity().to_string(),
            "spiffe://cluster.local/ns/demo/sa/default"
        );
        assert_eq!(w.protocol, Protocol::Tcp);
    }

    #[test]
    fn blank_files_are_empty_config() {
        for text in ["", "\n# nothing yet\n", "{}", "---\n"] {
            let s = parse(text, p()).unwrap();
            assert_eq!(s.workloads().count(), 0, "{text:?}");
        }
    }

    #[test]
    fn unknown_field_names_field_and_line() {
        let text = MINIMAL.replace("workloadIps", "workloadIpz");
        let e = err(&text);
        assert!(
            e.starts_with("/etc/zt.yaml:4:3: workloads[0]: unknown field `workloadIpz`"),
            "{e}"
        );
        assert!(err("workload: []\n").contains("unknown field `workload`"));
    }

    #[test]
    fn upstream_only_fields_are_accepted() {
        let text = format!(
            "{MINIMAL}  capacity: 2\n  locality: {{region: r}}\n  nativeTunnel: false\n\
             services:\n- {{name: s, namespace: demo, hostname: s.demo, vips: [/10.96.0.1], \
             ports: {{80: 80}}, endpoints: {{}}, canonical: true, ipFamilies: IPv4}}\n"
        );
        parse(&text, p()).unwrap();
    }

    #[test]
    fn waypoints_use_upstream_shape() {
        let text = format!(
            "{MINIMAL}  waypoint: {{destination: /10.96.0.99, hboneMtlsPort: 15008}}\n\
             services:\n- {{name: s, namespace: demo, hostname: s.demo, vips: [/10.96.0.1], \
             waypoint: {{destination: demo/wp.demo.svc.cluster.local, hboneMtlsPort: 15008}}}}\n"
        );
        let s = parse(&text, p()).unwrap();
        let w = s.workloads().next().unwrap().waypoint.clone().unwrap();
        assert_eq!(w.destination.to_string(), "/10.96.0.99");
        assert_eq!(w.hbone_mtls_port, 15008);
        let sw = s.services().next().unwrap().waypoint.clone().unwrap();
        assert_eq!(sw.destination.to_string(), "demo/wp.demo.svc.cluster.local");
        let e = err(&text.replace("hboneMtlsPort", "hboneMtlsPortt"));
        assert!(e.contains("unknown field `hboneMtlsPortt`"), "{e}");
    }

    #[test]
    fn services_map_is_required() {
        let e = err("workloads:\n- name: a\n  namespace: demo\n");
        assert!(e.contains("missing field `services`"), "{e}");
    }

    #[test]
    fn malformed_yaml_names_line() {
        let e = err("workloads:\n- name: a\n  namespace: [demo\n");
        assert!(e.starts_with("/etc/zt.yaml:"), "{e}");
        let ConfigError::Parse { location, .. } = parse("a: [\n", p()).unwrap_err() else {
            panic!()
        };
        assert!(location.is_some());
    }

    #[test]
    fn bad_values_are_refused() {
        let e = err(&MINIMAL.replace("10.0.0.1", "10.0.0.256"));
        assert!(e.starts_with("/etc/zt.yaml:4:"), "{e}");
        let e = err(&MINIMAL.replace("services: {}", "services: {echo: {80: 8080}}"));
        assert_eq!(
            e,
            "/etc/zt.yaml: workloads[0] (demo/web-0): services key \"echo\" is not `namespace/hostname`"
        );
        let e = err("services:\n- {name: s, namespace: d, hostname: h, vips: [10.96.0.1]}\n");
        assert!(e.contains("network/ip"), "{e}");
        let pol =
            "policies:\n- name: p\n  namespace: demo\n  scope: Namespace\n  action: Allow\n  \
                   rules: [[[{sourceIps: [10.0.0.0/33]}]]]\n";
        let e = err(pol);
        assert!(
            e.starts_with("/etc/zt.yaml:6:") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let e = err(&pol.replace("Allow", "Permit"));
        assert!(e.contains("unknown variant `Permit`"), "{e}");
        let e = err(&pol.replace("Namespace", "Cluster"));
        assert!(e.contains("unknown variant `Cluster`"), "{e}");
    }

    #[test]
    fn duplicate_uid_names_both_items() {
        let text = "workloads:\n\
                    - {name: a, namespace: demo, workloadIps: [10.0.0.1], services: {}}\n\
                    - {name: a, namespace: demo, workloadIps: [10.0.0.2], services: {}}\n";
        let e = err(text);
        assert_eq!(
            e,
            "/etc/zt.yaml: workloads[1]: duplicate uid \"Kubernetes//Pod/demo/a\" (also workloads[0])"
        );
    }
}
