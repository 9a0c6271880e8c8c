//! The conformance mesh: the upstream mesh manifests' pods and services on the two-node mesh,
//! the waypoint, mesh clients of both namespaces, and the run of one test's cases.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use meshtunnel::identity::Identity;

use super::case::{check, Body, Case, From, MeshTest, Protocol, Weights};
use super::manifests::{read_docs, vip, Doc, MeshManifests};
use crate::mesh::{node_name, Mesh, MeshOptions, PodSpec, NAMESPACE, TRUST_DOMAIN};
use crate::waypoint::{GrpcBackend, HboneClient, HttpBackend, Reply, Waypoint};

pub const MESH_NS: &str = "gateway-conformance-mesh";
pub const CONSUMER_NS: &str = "gateway-conformance-mesh-consumer";

/// Upstream echo's HTTP and gRPC ports (`--port=8080`, `--grpc=7070`).
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 7070;
/// The method upstream's echo client calls on a `grpc://` URL.
const GRPC_PATH: &str = "/proto.EchoTestService/Echo";

/// How a test's route objects come into force.
pub trait RouteSource {
    /// Makes `docs` the route objects in force (replacing the previous test's) and returns
    /// once the waypoint routes by them.
    fn apply(&self, docs: &[Doc]) -> Result<()>;
}

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
    /// Deployment (namespace, name) -> topology pod that runs it.
    pods: BTreeMap<(String, String), &'static str>,
    producer: Arc<HboneClient>,
    consumer: Arc<HboneClient>,
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
        let (producer, consumer) = (client(MESH_NS)?, client(CONSUMER_NS)?);
        Ok(Harness {
            suite,
            manifests,
            pods,
            producer,
            consumer,
            _backends: (http, grpc),
            waypoint,
            mesh,
        })
    }

    /// The route documents of `t`'s manifests, read from the suite.
    pub fn docs(&self, t: &MeshTest) -> Result<Vec<Doc>> {
        let mut out = Vec::new();
        for m in t.manifests {
            out.extend(read_docs(&self.suite.join(m))?);
        }
        Ok(out)
    }

    /// Where a client of `from` sends for `host` (see [`Case::host`]).
    pub fn resolve(&self, from: From, host: &str) -> Result<SocketAddr> {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, p.parse().context("port")?),
            None => (host, 80),
        };
        if let Some(deploy) = name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            let pod = self
                .pods
                .get(&(MESH_NS.to_owned(), deploy.to_owned()))
                .with_context(|| format!("no pod for {deploy}"))?;
            return Ok(SocketAddr::new(self.mesh.pod_ip(pod).into(), port));
        }
        let mut labels = name.split('.');
        let svc = labels.next().unwrap_or("");
        let ns = labels.next().unwrap_or(match from {
            From::Producer => MESH_NS,
            From::Consumer => CONSUMER_NS,
        });
        let i = self
            .manifests
            .services
            .iter()
            .position(|s| s.name == svc && s.namespace == ns)
            .with_context(|| format!("no Service {ns}/{svc} for host {host}"))?;
        Ok(SocketAddr::new(IpAddr::V4(vip(i)), port))
    }

    fn client(&self, from: From) -> &Arc<HboneClient> {
        match from {
            From::Producer => &self.producer,
            From::Consumer => &self.consumer,
        }
    }

    /// The Host a client sends for `host`: a pod placeholder becomes the pod's IP.
    fn host_header(&self, host: &str) -> Result<String> {
        if host.starts_with('{') {
            return Ok(self.resolve(From::Producer, host)?.to_string());
        }
        Ok(host.to_owned())
    }

    pub fn send(&self, c: &Case) -> Result<Reply> {
        let dst = self.resolve(c.from, c.host)?;
        let host = self.host_header(c.host)?;
        self.mesh.rt.block_on(
            self.client(c.from)
                .request_to_host(dst, c.method, c.path, &host, c.headers),
        )
    }

    /// Applies `t`'s manifests through `src` and runs its cases; returns one line per case
    /// that failed (empty: the test passed).
    pub fn run(&self, src: &dyn RouteSource, t: &MeshTest) -> Result<Vec<String>> {
        src.apply(&self.docs(t)?)?;
        match t.body {
            Body::Cases(cases) => Ok(cases
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let r = self.send(c).and_then(|reply| {
                        check(c, &reply).with_context(|| format!("reply {reply:?}"))
                    });
                    r.err()
                        .map(|e| format!("{} case {i} {:?}: {e:#}", t.name, c.name))
                })
                .collect()),
            Body::Weights(w) => Ok(self
                .weights(t, &w)
                .err()
                .into_iter()
                .map(|e| format!("{}: {e:#}", t.name))
                .collect()),
        }
    }

    /// Upstream's weighted-distribution check: 500 requests, 10 at a time, every backend's
    /// share within 5 % of its weight, up to 10 tries.
    fn weights(&self, t: &MeshTest, w: &Weights) -> Result<()> {
        let dst = self.resolve(From::Producer, w.host)?;
        let mut last = String::new();
        for _ in 0..10 {
            let pods = self.batch(dst, w, 500, 10)?;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for p in &pods {
                let backend = w
                    .shares
                    .iter()
                    .find(|(b, _)| p.starts_with(b))
                    .map_or(p.as_str(), |(b, _)| b);
                *counts.entry(backend.to_owned()).or_default() += 1;
            }
            let off: Vec<String> = w
                .shares
                .iter()
                .filter_map(|(b, want)| {
                    let got = counts.get(*b).copied().unwrap_or(0) as f64 / pods.len() as f64;
                    ((got - want).abs() > 0.05).then(|| format!("{b} {got:.3} (want {want})"))
                })
                .chain(
                    counts
                        .keys()
                        .filter(|k| !w.shares.iter().any(|(b, _)| b == k))
                        .map(|k| format!("unexpected backend {k}")),
                )
                .collect();
            if off.is_empty() {
                eprintln!("{}: {counts:?}", t.name);
                return Ok(());
            }
            last = format!("{counts:?}: {}", off.join(", "));
        }
        bail!("distribution off after 10 tries: {last}")
    }

    /// `n` requests, `conc` at a time; the answering pod of each (an error fails the batch).
    fn batch(&self, dst: SocketAddr, w: &Weights, n: usize, conc: usize) -> Result<Vec<String>> {
        let client = self.producer.clone();
        let (host, proto) = (w.host.to_owned(), w.protocol);
        self.mesh.rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            let mut out = Vec::with_capacity(n);
            let mut sent = 0;
            while out.len() < n {
                while sent < n && set.len() < conc {
                    let (c, host) = (client.clone(), host.clone());
                    set.spawn(async move {
                        match proto {
                            Protocol::Http => c.request_to_host(dst, "GET", "/", &host, &[]).await,
                            Protocol::Grpc => c.grpc(dst, GRPC_PATH).await,
                        }
                    });
                    sent += 1;
                }
                let Some(r) = set.join_next().await else {
                    break;
                };
                let reply = r??;
                if reply.status != 200 {
                    bail!("status {} in a weighted batch: {reply:?}", reply.status);
                }
                out.push(reply.pod().context("no pod in the reply")?.to_owned());
            }
            Ok(out)
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
