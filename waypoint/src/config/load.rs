//! Reading the object directory: every `*.yaml`/`*.yml` file, every `---` document in it.
//! An object that cannot be used refuses the whole generation with file:line, so a typo never
//! half-applies a config.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::convert;
use super::convert_istio::{self, app_protocol};
use super::objects::*;
use super::WaypointConfig;
use crate::route::{RouteTable, ServiceRef};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Object {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(serde::Deserialize)]
struct WithSpec<T> {
    spec: T,
}

/// Files the directory holds, sorted so errors and object order are stable.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let rd = std::fs::read_dir(dir).map_err(|source| LoadError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                // Editors' and ConfigMap volumes' hidden files are not config.
                && !p.file_name().and_then(|n| n.to_str()).unwrap_or(".").starts_with('.')
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The whole directory as one config generation.
pub fn load_dir(dir: &Path, root_namespace: &str) -> Result<WaypointConfig, LoadError> {
    let mut docs = Vec::new();
    for path in yaml_files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        docs.push((path, text));
    }
    let refs: Vec<(&Path, &str)> = docs
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    parse_documents(&refs, root_namespace)
}

/// Splits YAML text into documents with the 1-based line each starts on.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = 1;
    let mut cur = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            out.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    out.push((start, cur));
    out.retain(|(_, d)| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    out
}

fn typed<T: DeserializeOwned>(doc: &str) -> Result<T, (usize, String)> {
    serde_yaml::from_str::<WithSpec<T>>(doc)
        .map(|w| w.spec)
        .map_err(|e| {
            (
                e.location().map_or(0, |l| l.line().saturating_sub(1)),
                e.to_string(),
            )
        })
}

/// Parses documents given as (origin, text); the unit tests feed text directly.
pub fn parse_documents(
    files: &[(&Path, &str)],
    root_namespace: &str,
) -> Result<WaypointConfig, LoadError> {
    let mut entries = Vec::new();
    let mut overlays = Vec::new();
    let mut cfg = WaypointConfig::default();
    for (path, text) in files {
        for (line, doc) in split_documents(text) {
            let err = |offset: usize, msg: String| LoadError::Object {
                path: path.to_path_buf(),
                line: line + offset,
                msg,
            };
            let head: Head = serde_yaml::from_str(&doc).map_err(|e| {
                err(
                    e.location().map_or(0, |l| l.line().saturating_sub(1)),
                    e.to_string(),
                )
            })?;
            if head.kind.is_empty() {
                return Err(err(0, "object without kind".into()));
            }
            let ns = head
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let named = |msg: String| {
                err(
                    0,
                    format!("{} {ns}/{}: {msg}", head.kind, head.metadata.name),
                )
            };
            let group = head.api_version.split('/').next().unwrap_or("");
            let typed_err = |(o, m): (usize, String)| err(o, m);
            match (group, head.kind.as_str()) {
                ("gateway.networking.k8s.io", "HTTPRoute") => {
                    let spec: HttpRouteSpec = typed(&doc).map_err(typed_err)?;
                    entries.extend(convert::http_route(&head.metadata, &spec, &ns).map_err(named)?);
                }
                ("gateway.networking.k8s.io", "GRPCRoute") => {
                    let spec: GrpcRouteSpec = typed(&doc).map_err(typed_err)?;
                    entries.extend(convert::grpc_route(&head.metadata, &spec, &ns).map_err(named)?);
                }
                ("networking.istio.io", "VirtualService") => {
                    let spec: VirtualServiceSpec = typed(&doc).map_err(typed_err)?;
                    overlays.extend(
                        convert_istio::virtual_service(&head.metadata, &spec, &ns)
                            .map_err(named)?,
                    );
                }
                ("networking.istio.io", "DestinationRule") => {
                    let spec: DestinationRuleSpec = typed(&doc).map_err(typed_err)?;
                    if let Some((svc, p)) =
                        convert_istio::destination_rule(&spec, &ns).map_err(named)?
                    {
                        cfg.lb.insert(svc, p);
                    }
                }
                ("security.istio.io", "AuthorizationPolicy") => {
                    let spec: AuthzSpec = typed(&doc).map_err(typed_err)?;
                    if let Some(p) = convert_istio::authorization_policy(
                        &head.metadata,
                        &spec,
                        &ns,
                        root_namespace,
                    )
                    .map_err(named)?
                    {
                        cfg.policies.push(p);
                    }
                }
                ("v1", "Service") => {
                    let spec: ServiceSpec = typed(&doc).map_err(typed_err)?;
                    let svc = ServiceRef::new(&ns, &head.metadata.name);
                    for p in &spec.ports {
                        if let Some(proto) = app_protocol(p) {
                            cfg.protocols.insert((svc.clone(), p.port), proto);
                        }
                    }
                }
                // Gateways, namespaces and the like are read by the control plane, not here.
                _ => {
                    tracing::debug!(kind = %head.kind, path = %path.display(), line, "object kind not used by the waypoint");
                    continue;
                }
            }
            cfg.objects
                .push(format!("{} {ns}/{}", head.kind, head.metadata.name));
        }
    }
    cfg.routes = RouteTable::new(entries, overlays);
    Ok(cfg)
}
