//! The conformance mesh on the real control plane: the upstream mesh manifests' Namespaces
//! and Services applied with kubectl to the real apiserver (namespaces then labelled ambient,
//! the mesh namespace bound to the waypoint with `istio.io/use-waypoint`), their Deployments
//! as pods made by the cluster fixture (netns, IP, ztunnel capture, pushed by istiod), our
//! waypoint in cluster mode as Gateway `waypoint`'s pod, and each test's routes applied with
//! kubectl ([`KubectlApply`]). The clients are the echo-v1 pods themselves, as upstream's
//! mesh client runs in them: requests go client pod → its ztunnel → waypoint → the backend's
//! ztunnel → backend.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use controlplane::Resource;
use meshtunnel::state::Protocol as Wire;
use serde_json::Value;
use test_support::NodeId;

use super::case::{From, MeshTest, Protocol};
use super::manifests::{read_docs, Doc, MeshManifests};
use super::run::{
    Clients, Request, RouteSource, Runner, Sent, Targets, CONSUMER_NS, GRPC_PORT, HTTP_PORT,
    MESH_NS,
};
use crate::cluster::{
    wait_until, workload_uid, Cluster, ClusterOptions, ClusterWaypoint, Pod, PodSpec,
};
use crate::waypoint::{GrpcBackend, HttpBackend, PodClient};

/// The waypoint's Gateway, in the mesh namespace.
pub const GATEWAY: &str = "waypoint";
/// The controllerName of the waypoint's route status entries.
const CONTROLLER: &str = "meshtunnel.io/waypoint";
/// Bounds of the waits for istiod, the API and the waypoint.
const SETUP_TIMEOUT: Duration = Duration::from_secs(90);
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// (namespace, Deployment, node) of the pods made for the manifests' Deployments.
const PLACEMENT: [(&str, &str, NodeId); 3] = [
    (MESH_NS, "echo-v1", NodeId::A),
    (MESH_NS, "echo-v2", NodeId::B),
    (CONSUMER_NS, "echo-v1", NodeId::B),
];

pub struct ClusterHarness {
    pub suite: PathBuf,
    pub manifests: MeshManifests,
    targets: Targets,
    clients: Arc<PodClients>,
    rt: tokio::runtime::Runtime,
    // Dropped in this order: the backends, the waypoint, the pods, then the cluster.
    _backends: (Vec<HttpBackend>, Vec<GrpcBackend>),
    pub waypoint: ClusterWaypoint,
    _pods: Vec<Arc<Pod>>,
    pub cluster: Cluster,
}

impl ClusterHarness {
    pub fn start(suite: PathBuf) -> Result<ClusterHarness> {
        let manifests = MeshManifests::read(&suite)?;
        let cluster = Cluster::start(ClusterOptions::default())?;
        let upstream = read_docs(&suite.join("mesh/manifests.yaml"))?;
        let of_kind =
            |k: &str| -> Vec<Doc> { upstream.iter().filter(|d| d.kind == k).cloned().collect() };
        kubectl_apply(&cluster, "mesh-namespaces", &of_kind("Namespace"))?;
        let ambient = "istio.io/dataplane-mode=ambient".to_owned();
        let bound = format!("istio.io/use-waypoint={GATEWAY}");
        for (ns, labels) in [
            (MESH_NS, vec![&ambient, &bound]),
            (CONSUMER_NS, vec![&ambient]),
        ] {
            let mut args = vec!["label", "namespace", ns, "--overwrite"];
            args.extend(labels.iter().map(|l| l.as_str()));
            cluster.kubectl.ok(&args)?;
        }
        kubectl_apply(&cluster, "mesh-services", &of_kind("Service"))?;

        let mut pods = Vec::new();
        for (ns, name, node) in PLACEMENT {
            let d = manifests.deployment(ns, name)?;
            let mut spec = PodSpec::new(&format!("{name}-0"), node).namespace(ns);
            spec.labels = d.labels.clone();
            // Upstream's Deployments name no service account.
            spec.service_account = "default".into();
            pods.push(
                cluster
                    .create_pod(&spec)
                    .with_context(|| format!("creating {ns}/{}", spec.name))?,
            );
        }
        let mut http = Vec::new();
        let mut grpc = Vec::new();
        for p in pods.iter().filter(|p| p.namespace == MESH_NS) {
            let netns = cluster.netns_of(p);
            let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
            http.push(HttpBackend::start_as(
                netns,
                any(HTTP_PORT),
                &p.name,
                &p.namespace,
            )?);
            grpc.push(GrpcBackend::start_as(
                netns,
                any(GRPC_PORT),
                &p.name,
                &p.namespace,
            )?);
        }
        let refs: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
        cluster.wait_config(&refs, Wire::Hbone, SETUP_TIMEOUT)?;
        let waypoint = cluster.deploy_waypoint(MESH_NS, GATEWAY, NodeId::B, "info")?;

        let mut targets = Targets::default();
        for s in &manifests.services {
            let obj = cluster
                .api()
                .try_get(Resource::Service, Some(&s.namespace), &s.name)?
                .with_context(|| format!("no Service {}/{}", s.namespace, s.name))?;
            let ip: IpAddr = obj["spec"]["clusterIP"]
                .as_str()
                .context("Service without clusterIP")?
                .parse()?;
            targets
                .services
                .insert((s.namespace.clone(), s.name.clone()), ip);
        }
        for p in pods.iter().filter(|p| p.namespace == MESH_NS) {
            let deployment = p.name.trim_end_matches("-0").to_owned();
            targets.pods.insert(deployment, IpAddr::V4(p.ip));
        }
        let client_of = |ns: &str| -> Result<PodClient> {
            let p = pods
                .iter()
                .find(|p| p.namespace == ns && p.name == "echo-v1-0")
                .context("no echo-v1 pod")?;
            PodClient::new(cluster.netns_of(p))
        };
        let clients = Arc::new(PodClients {
            producer: client_of(MESH_NS)?,
            consumer: client_of(CONSUMER_NS)?,
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let h = ClusterHarness {
            suite,
            manifests,
            targets,
            clients,
            rt,
            _backends: (http, grpc),
            waypoint,
            _pods: pods,
            cluster,
        };
        h.wait_bound()?;
        Ok(h)
    }

    pub fn runner(&self) -> Runner<'_> {
        Runner {
            rt: &self.rt,
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

    /// The waypoint's log and the fixture's (ztunnels, agents).
    pub fn diagnostics(&self) -> String {
        format!(
            "--- waypoint ---\n{}\n{}",
            self.waypoint.logs(),
            self.cluster.diagnostics()
        )
    }

    /// Waits until istiod has bound every Service of the mesh namespace to the waypoint in
    /// both ztunnels' config, both ztunnels know the waypoint's pod (where to send), and the
    /// waypoint knows the Services (its config_dump lists them).
    fn wait_bound(&self) -> Result<()> {
        let mesh_services: Vec<&str> = self
            .manifests
            .services
            .iter()
            .filter(|s| s.namespace == MESH_NS)
            .map(|s| s.name.as_str())
            .collect();
        let waypoint_uid = workload_uid(&self.waypoint.pod.namespace, &self.waypoint.pod.name);
        wait_until(
            SETUP_TIMEOUT,
            "mesh Services bound to the waypoint, and its pod, in every ztunnel",
            || {
                self.cluster.nodes.iter().all(|n| {
                    self.cluster.config_dump(n.id).is_ok_and(|d| {
                        let has_waypoint = d["workloads"]
                            .as_array()
                            .is_some_and(|ws| ws.iter().any(|w| w["uid"] == waypoint_uid.as_str()));
                        has_waypoint
                            && mesh_services.iter().all(|name| {
                                d["services"].as_array().is_some_and(|ss| {
                                    ss.iter().any(|s| {
                                        s["name"] == *name
                                            && s["namespace"] == MESH_NS
                                            && !s["waypoint"].is_null()
                                    })
                                })
                            })
                    })
                })
            },
        )?;
        let ids: Vec<String> = self
            .manifests
            .services
            .iter()
            .map(|s| format!("Service {}/{}", s.namespace, s.name))
            .collect();
        wait_until(
            SETUP_TIMEOUT,
            "mesh Services in the waypoint's config",
            || {
                self.objects()
                    .is_ok_and(|o| ids.iter().all(|id| o.contains(id)))
            },
        )?;
        Ok(())
    }

    /// The objects in force in the waypoint ("Kind ns/name"), from its config_dump.
    fn objects(&self) -> Result<Vec<String>> {
        let (code, body) = self.waypoint.admin(&self.cluster, "/config_dump")?;
        if code != 200 {
            bail!("config_dump answered {code}");
        }
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str().map(str::to_owned))
            .collect())
    }
}

fn kubectl_apply(cluster: &Cluster, name: &str, docs: &[Doc]) -> Result<()> {
    let file = cluster.dir.path().join(format!("conformance-{name}.yaml"));
    let text: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    std::fs::write(&file, text.join("---\n"))?;
    cluster
        .kubectl
        .ok(&["apply", "-f", &file.to_string_lossy()])?;
    Ok(())
}

/// The echo-v1 pods of both namespaces as mesh clients.
struct PodClients {
    producer: PodClient,
    consumer: PodClient,
}

impl Clients for PodClients {
    fn send(&self, req: Request) -> Sent {
        let c = match req.from {
            From::Producer => self.producer.clone(),
            From::Consumer => self.consumer.clone(),
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

/// The route kinds of the mesh tests: (kind, plural for kubectl and the API).
const ROUTE_KINDS: [(&str, &str); 2] = [("HTTPRoute", "httproutes"), ("GRPCRoute", "grpcroutes")];

/// Routes applied with kubectl to the real apiserver, read by the waypoint from its API watch.
/// The previous test's routes are deleted first (and gone from the waypoint's config); a
/// test's routes are in force once the waypoint's config_dump lists them and each carries the
/// waypoint's status for its generation on every parentRef (see [`in_force`]).
pub struct KubectlApply<'a> {
    pub harness: &'a ClusterHarness,
}

impl RouteSource for KubectlApply<'_> {
    fn apply(&self, docs: &[Doc]) -> Result<()> {
        let h = self.harness;
        if let Some(d) = docs
            .iter()
            .find(|d| !ROUTE_KINDS.iter().any(|(k, _)| *k == d.kind))
        {
            bail!(
                "{}: only routes are expected in a mesh test's manifests",
                d.id()
            );
        }
        let kinds = ROUTE_KINDS
            .iter()
            .map(|(_, p)| format!("{p}.gateway.networking.k8s.io"))
            .collect::<Vec<_>>()
            .join(",");
        for ns in [MESH_NS, CONSUMER_NS] {
            h.cluster.kubectl.ok(&[
                "delete",
                &kinds,
                "--all",
                "-n",
                ns,
                "--wait",
                "--timeout=30s",
            ])?;
        }
        let is_route = |id: &str| ROUTE_KINDS.iter().any(|(k, _)| id.starts_with(k));
        wait_until(
            APPLY_TIMEOUT,
            "previous routes gone from the waypoint",
            || h.objects().is_ok_and(|o| !o.iter().any(|id| is_route(id))),
        )?;
        if docs.is_empty() {
            return Ok(());
        }
        kubectl_apply(&h.cluster, "routes", docs)?;
        let ids: Vec<String> = docs.iter().map(Doc::id).collect();
        let mut last = String::new();
        wait_until(APPLY_TIMEOUT, "routes in force in the waypoint", || {
            let objects = h.objects().unwrap_or_default();
            let missing: Vec<&String> = ids.iter().filter(|id| !objects.contains(id)).collect();
            if !missing.is_empty() {
                last = format!("not in the waypoint's config_dump: {missing:?}");
                return false;
            }
            match docs
                .iter()
                .try_for_each(|d| in_force(&h.cluster, &h.targets, d))
            {
                Ok(()) => true,
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            }
        })
        .with_context(|| last.clone())?;
        Ok(())
    }
}

/// Whether route `d`, as the API has it now, carries the waypoint's status for its
/// generation on as many parents as it has parentRefs (the waypoint serves them all):
/// Accepted=True, and ResolvedRefs True exactly when every backend Service is one of
/// `targets`' (upstream's MeshGRPCRouteWeight names a missing echo-v3). A refusal, or a
/// ResolvedRefs that says otherwise, is an error with the waypoint's message.
fn in_force(cluster: &Cluster, targets: &Targets, d: &Doc) -> Result<()> {
    let plural = ROUTE_KINDS
        .iter()
        .find(|(k, _)| *k == d.kind)
        .map(|(_, p)| *p)
        .context("not a route")?;
    let res = Resource::Other("gateway.networking.k8s.io", "v1", plural, true);
    let obj = cluster
        .api()
        .try_get(res, Some(&d.namespace), &d.name)?
        .with_context(|| format!("{} not in the API", d.id()))?;
    let resolvable = backends(&obj)
        .iter()
        .all(|k| targets.services.contains_key(k));
    let generation = &obj["metadata"]["generation"];
    let refs = obj["spec"]["parentRefs"].as_array().map_or(0, Vec::len);
    let mut ok = 0;
    for p in obj["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] == CONTROLLER)
    {
        let condition = |t: &str| {
            p["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == t && &c["observedGeneration"] == generation)
        };
        let (Some(accepted), Some(resolved)) = (condition("Accepted"), condition("ResolvedRefs"))
        else {
            continue;
        };
        if accepted["status"] != "True" {
            bail!(
                "{} refused by the waypoint: {}",
                d.id(),
                accepted["message"]
            );
        }
        let want = if resolvable { "True" } else { "False" };
        if resolved["status"] != want {
            bail!(
                "{}: ResolvedRefs {} (want {want}): {}",
                d.id(),
                resolved["status"],
                resolved["message"]
            );
        }
        ok += 1;
    }
    if refs == 0 || ok < refs {
        bail!(
            "{}: status from the waypoint on {ok} of {refs} parents (generation {generation})",
            d.id()
        );
    }
    Ok(())
}

/// (namespace, name) of every Service a route's rules send to.
fn backends(route: &Value) -> Vec<(String, String)> {
    let ns = route["metadata"]["namespace"].as_str().unwrap_or("default");
    route["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["backendRefs"].as_array().into_iter().flatten())
        .filter(|b| b["kind"].as_str().unwrap_or("Service") == "Service")
        .filter_map(|b| {
            let name = b["name"].as_str()?;
            Some((
                b["namespace"].as_str().unwrap_or(ns).to_owned(),
                name.to_owned(),
            ))
        })
        .collect()
}
