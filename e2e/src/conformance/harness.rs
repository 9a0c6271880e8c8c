//! The conformance mesh in file mode: the upstream mesh manifests' pods and services on the
//! two-node mesh, the waypoint, and mesh clients of both namespaces sending to it over HBONE.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use meshtunnel::identity::Identity;

use super::case::{MeshTest, Protocol};
use super::manifests::{vip, Doc, MeshManifests};
use super::run::{
    Clients, Request, RouteSource, Runner, Sent, Targets, CONSUMER_NS, GRPC_PORT, HTTP_PORT,
    MESH_NS,
};
use crate::mesh::{node_name, Mesh, MeshOptions, PodSpec, NAMESPACE, TRUST_DOMAIN};
use crate::waypoint::{GrpcBackend, HboneClient, HttpBackend, Waypoint};

/// Routes as a directory of YAML files the waypoint watches (file mode). The mesh's Services
/// go along so the waypoint knows each port's `appProtocol`.
pub struct FileDir<'a> {
    pub harness: &'a Harness,
}

impl RouteSource for FileDir<'_> {
    fn apply(&self, docs: &[Doc]) -> Result<()> {
        let h = self.harness;
        let services: Vec<Doc> = h.manifests.services.iter().map(|s| s.doc.clone()).collect();
        let write = |docs: &[Doc]| -> Result<()> {
            let all: Vec<&Doc> = services.iter().chain(docs).collect();
            let yaml: Vec<&str> = all.iter().map(|d| d.text.as_str()).collect();
            let ids: Vec<String> = all
                .iter()
                .filter(|d| read_by_waypoint(&d.kind))
                .map(|d| d.id())
                .collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            h.waypoint.apply(&h.mesh, &yaml.join("---\n"), &ids)
        };
        // Through an empty set first: two tests may name their routes alike, and the
        // waypoint's object list must show the new set, not the previous one.
        write(&[])?;
        write(docs)
    }
}

fn read_by_waypoint(kind: &str) -> bool {
    matches!(
        kind,
        "HTTPRoute" | "GRPCRoute" | "VirtualService" | "AuthorizationPolicy" | "Service"
    )
}

pub struct Harness {
    pub suite: PathBuf,
    pub manifests: MeshManifests,
    targets: Targets,
    clients: Arc<HboneClients>,
    _backends: (Vec<HttpBackend>, Vec<GrpcBackend>),
    pub waypoint: Waypoint,
    pub mesh: Mesh,
}

impl Harness {
    /// echo-v1 and echo-v2 of the mesh namespace run in a1 and b1 (meshed, behind their
    /// ztunnels), the waypoint in a2; the clients send from b2 with the certificate of the
    /// echo-v1 pod of their namespace (service account `default`, as upstream's Deployments).
    pub fn start(suite: PathBuf) -> Result<Harness> {
        let manifests = MeshManifests::read(&suite)?;
        let mut pods = BTreeMap::new();
        for (ns, name, pod) in [
            (MESH_NS, "echo-v1", "a1"),
            (MESH_NS, "echo-v2", "b1"),
            (CONSUMER_NS, "echo-v1", "b2"),
        ] {
            manifests.deployment(ns, name)?;
            pods.insert((ns.to_owned(), name.to_owned()), pod);
        }
        let mesh = Mesh::start(MeshOptions {
            pods: vec![
                PodSpec::meshed("a1"),
                PodSpec::plain("a2"),
                PodSpec::meshed("b1"),
                PodSpec::plain("b2"),
            ],
            ..MeshOptions::default()
        })?;
        write_config(&mesh, &manifests, &pods)?;
        let mut http = Vec::new();
        let mut grpc = Vec::new();
        for ((ns, name), pod) in pods.iter().filter(|((ns, _), _)| ns == MESH_NS) {
            let label = format!("{name}-{pod}");
            let netns = mesh.pod_ns(pod);
            let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
            http.push(HttpBackend::start_as(netns, any(HTTP_PORT), &label, ns)?);
            grpc.push(GrpcBackend::start_as(netns, any(GRPC_PORT), &label, ns)?);
        }
        let waypoint = Waypoint::start(&mesh, "a2")?;
        let wp_addr = SocketAddr::new(mesh.pod_ip("a2").into(), 15008);
        let client = |ns: &str| {
            HboneClient::with_identity(
                &mesh,
                "b2",
                wp_addr,
                Waypoint::identity(),
                Identity::new(TRUST_DOMAIN, ns, "default"),
            )
            .map(Arc::new)
        };
        let clients = Arc::new(HboneClients {
            producer: client(MESH_NS)?,
            consumer: client(CONSUMER_NS)?,
        });
        let targets = Targets {
            services: manifests
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| ((s.namespace.clone(), s.name.clone()), IpAddr::V4(vip(i))))
                .collect(),
            pods: pods
                .iter()
                .filter(|((ns, _), _)| ns == MESH_NS)
                .map(|((_, name), pod)| (name.clone(), IpAddr::V4(mesh.pod_ip(pod))))
                .collect(),
        };
        Ok(Harness {
            suite,
            manifests,
            targets,
            clients,
            _backends: (http, grpc),
            waypoint,
            mesh,
        })
    }

    pub fn runner(&self) -> Runner<'_> {
        Runner {
            rt: &self.mesh.rt,
            suite: &self.suite,
            targets: &self.targets,
            clients: self.clients.clone(),
        }
    }

    /// Applies `t`'s manifests through `src` and runs its cases; returns one line per case
    /// that failed (empty: the test passed).
    pub fn run(&self, src: &dyn RouteSource, t: &MeshTest) -> Result<Vec<String>> {
        self.runner().run(src, t)
    }
}

/// Clients standing for the echo-v1 pods of both namespaces, sending into the waypoint.
struct HboneClients {
    producer: Arc<HboneClient>,
    consumer: Arc<HboneClient>,
}

impl Clients for HboneClients {
    fn send(&self, req: Request) -> Sent {
        let c = match req.from {
            super::case::From::Producer => self.producer.clone(),
            super::case::From::Consumer => self.consumer.clone(),
        };
        Box::pin(async move {
            match req.protocol {
                Protocol::Http => {
                    c.request_to_host(req.dst, req.method, req.path, &req.host, req.headers)
                        .await
                }
                Protocol::Grpc => c.grpc(req.dst, req.path).await,
            }
        })
    }
}

/// The local config (ztunnel's schema, read by both ztunnels and the waypoint): the four
/// topology pods as workloads (named as the fixture enrolled them), and the mesh manifests'
/// Services with VIPs, each backed by the pods of the Deployments it selects.
fn write_config(
    mesh: &Mesh,
    manifests: &MeshManifests,
    pods: &BTreeMap<(String, String), &'static str>,
) -> Result<()> {
    let mut y = String::from("workloads:\n");
    for spec in &mesh.opts.pods {
        let p = spec.name;
        let mut svcs = String::new();
        for s in &manifests.services {
            let selects_p = manifests
                .selected(s)
                .any(|d| pods.get(&(d.namespace.clone(), d.name.clone())) == Some(&p));
            if selects_p {
                svcs += &format!(
                    "    \"{ns}/{n}.{ns}.svc.cluster.local\":\n",
                    ns = s.namespace,
                    n = s.name
                );
                for sp in &s.ports {
                    svcs += &format!("      {}: {}\n", sp.port, sp.target_port);
                }
            }
        }
        y += &format!(
            "- uid: {uid}\n  name: {p}\n  namespace: {NAMESPACE}\n  serviceAccount: {sa}\n  trustDomain: {TRUST_DOMAIN}\n  workloadIps: [\"{ip}\"]\n  protocol: {proto}\n  node: {node}\n  network: \"\"\n  services:{empty}\n{svcs}",
            uid = mesh.workload_uid(p),
            sa = spec.service_account,
            ip = mesh.pod_ip(p),
            proto = spec.protocol,
            node = node_name(mesh.node_of(p)),
            empty = if svcs.is_empty() { " {}" } else { "" },
        );
    }
    y += "services:\n";
    for (i, s) in manifests.services.iter().enumerate() {
        y += &format!(
            "- name: {n}\n  namespace: {ns}\n  hostname: {n}.{ns}.svc.cluster.local\n  vips: [\"/{vip}\"]\n  ports:\n",
            n = s.name,
            ns = s.namespace,
            vip = vip(i)
        );
        for sp in &s.ports {
            y += &format!("    {}: {}\n", sp.port, sp.target_port);
        }
        y += "  subjectAltNames: []\n";
    }
    let tmp = mesh.dir.path().join("config.yaml.tmp");
    std::fs::write(&tmp, y)?;
    std::fs::rename(&tmp, mesh.config_path())?;
    Ok(())
}
