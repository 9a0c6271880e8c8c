//! The conformance suite's mesh manifests (`mesh/manifests.yaml`: namespaces, echo
//! Deployments, Services) read as data: Deployments become pods of the two-node mesh, Services
//! become services of the local config (VIPs given here), and each test's route manifests are
//! YAML documents handed to the route source as they are.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_yaml::Value;

/// One YAML document of a manifest, with what identifies it.
#[derive(Clone, Debug)]
pub struct Doc {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub text: String,
}

impl Doc {
    /// How the waypoint's config_dump names the object: "Kind ns/name".
    pub fn id(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Every document of `path`, in order.
pub fn read_docs(path: &Path) -> Result<Vec<Doc>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(de).with_context(|| format!("parsing {}", path.display()))?;
        if v.is_null() {
            continue;
        }
        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
        out.push(Doc {
            kind: s(&v["kind"]),
            namespace: match s(&v["metadata"]["namespace"]) {
                n if n.is_empty() => "default".into(),
                n => n,
            },
            name: s(&v["metadata"]["name"]),
            text: serde_yaml::to_string(&v)?,
        });
    }
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    pub doc: Doc,
}

#[derive(Clone, Debug)]
pub struct Deployment {
    pub namespace: String,
    pub name: String,
    /// The pod template's labels.
    pub labels: BTreeMap<String, String>,
}

/// The mesh manifests: who runs and which services select them.
#[derive(Clone, Debug)]
pub struct MeshManifests {
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

impl MeshManifests {
    pub fn read(suite: &Path) -> Result<MeshManifests> {
        let path = suite.join("mesh/manifests.yaml");
        let mut services = Vec::new();
        let mut deployments = Vec::new();
        for doc in read_docs(&path)? {
            let v: Value = serde_yaml::from_str(&doc.text)?;
            match doc.kind.as_str() {
                "Service" => {
                    let mut ports = Vec::new();
                    for p in v["spec"]["ports"].as_sequence().into_iter().flatten() {
                        let port = p["port"].as_u64().context("service port")? as u16;
                        // A named targetPort would need the container's ports; the mesh
                        // manifests use numbers or none (= the port).
                        let target = match &p["targetPort"] {
                            Value::Null => port,
                            Value::Number(n) => n.as_u64().context("targetPort")? as u16,
                            other => bail!("{}: targetPort {other:?} not supported", doc.id()),
                        };
                        ports.push(ServicePort {
                            name: p["name"].as_str().unwrap_or("").to_owned(),
                            port,
                            target_port: target,
                        });
                    }
                    services.push(Service {
                        namespace: doc.namespace.clone(),
                        name: doc.name.clone(),
                        selector: labels(&v["spec"]["selector"]),
                        ports,
                        doc,
                    });
                }
                "Deployment" => deployments.push(Deployment {
                    namespace: doc.namespace.clone(),
                    name: doc.name.clone(),
                    labels: labels(&v["spec"]["template"]["metadata"]["labels"]),
                }),
                _ => {}
            }
        }
        if services.is_empty() || deployments.is_empty() {
            bail!("{}: no Services or Deployments", path.display());
        }
        Ok(MeshManifests {
            services,
            deployments,
        })
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Result<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.namespace == namespace && d.name == name)
            .with_context(|| format!("no Deployment {namespace}/{name} in the mesh manifests"))
    }

    /// The Deployments a Service selects (same namespace, every selector label matches).
    pub fn selected<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a Deployment> {
        self.deployments.iter().filter(move |d| {
            d.namespace == svc.namespace
                && !svc.selector.is_empty()
                && svc.selector.iter().all(|(k, v)| d.labels.get(k) == Some(v))
        })
    }
}

/// A service's VIP in the test mesh: 10.96.1.<n>, by its position in the manifests.
pub fn vip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 1, 10 + index as u8)
}
