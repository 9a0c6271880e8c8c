//! The run of one test's cases, the same in file mode and in a cluster: the test's route
//! objects come into force through a [`RouteSource`], each case's request goes out through
//! [`Clients`] to the address [`Targets`] resolves, and the reply is checked against the case.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::runtime::Runtime;

use super::case::{check, Body, Case, From, MeshTest, Protocol, Weights};
use super::manifests::{read_docs, Doc};
use crate::waypoint::Reply;

pub const MESH_NS: &str = "gateway-conformance-mesh";
pub const CONSUMER_NS: &str = "gateway-conformance-mesh-consumer";

/// Upstream echo's HTTP and gRPC ports (`--port=8080`, `--grpc=7070`).
pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 7070;
/// The method upstream's echo client calls on a `grpc://` URL.
const GRPC_PATH: &str = "/proto.EchoTestService/Echo";

/// How a test's route objects come into force.
pub trait RouteSource {
    /// Makes `docs` the route objects in force (replacing the previous test's) and returns
    /// once the waypoint routes by them.
    fn apply(&self, docs: &[Doc]) -> Result<()>;
}

/// One request of a mesh client.
#[derive(Clone, Debug)]
pub struct Request {
    pub from: From,
    pub protocol: Protocol,
    /// Where the client connects (the original destination).
    pub dst: SocketAddr,
    pub method: &'static str,
    /// Path and query (gRPC: the method's path).
    pub path: &'static str,
    /// The Host header, unless `headers` carry one.
    pub host: String,
    pub headers: &'static [(&'static str, &'static str)],
}

pub type Sent = Pin<Box<dyn Future<Output = Result<Reply>> + Send>>;

/// How a mesh client's requests reach the services.
pub trait Clients: Send + Sync {
    /// Sends `req`; the future is bounded in time by the implementation.
    fn send(&self, req: Request) -> Sent;
}

/// The addresses of the mesh manifests' Services and of the mesh namespace's echo pods.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    /// (namespace, name) -> the Service's VIP.
    pub services: BTreeMap<(String, String), IpAddr>,
    /// Deployment name in the mesh namespace -> its pod's IP.
    pub pods: BTreeMap<String, IpAddr>,
}

impl Targets {
    /// Where a client of `from` sends for `host` (see [`Case::host`]).
    pub fn resolve(&self, from: From, host: &str) -> Result<SocketAddr> {
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (n, p.parse().context("port")?),
            None => (host, 80),
        };
        if let Some(deploy) = name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
            let ip = self
                .pods
                .get(deploy)
                .with_context(|| format!("no pod for {deploy}"))?;
            return Ok(SocketAddr::new(*ip, port));
        }
        let mut labels = name.split('.');
        let svc = labels.next().unwrap_or("");
        let ns = labels.next().unwrap_or(match from {
            From::Producer => MESH_NS,
            From::Consumer => CONSUMER_NS,
        });
        let ip = self
            .services
            .get(&(ns.to_owned(), svc.to_owned()))
            .with_context(|| format!("no Service {ns}/{svc} for host {host}"))?;
        Ok(SocketAddr::new(*ip, port))
    }

    /// The Host a client sends for `host`: a pod placeholder becomes the pod's IP.
    fn host_header(&self, host: &str) -> Result<String> {
        if host.starts_with('{') {
            return Ok(self.resolve(From::Producer, host)?.to_string());
        }
        Ok(host.to_owned())
    }
}

/// What a run needs: where the suite is, the runtime the clients run on, the addresses and
/// the clients.
pub struct Runner<'a> {
    pub rt: &'a Runtime,
    pub suite: &'a Path,
    pub targets: &'a Targets,
    pub clients: Arc<dyn Clients>,
}

impl Runner<'_> {
    /// The route documents of `t`'s manifests, read from the suite.
    pub fn docs(&self, t: &MeshTest) -> Result<Vec<Doc>> {
        let mut out = Vec::new();
        for m in t.manifests {
            out.extend(read_docs(&self.suite.join(m))?);
        }
        Ok(out)
    }

    pub fn send(&self, c: &Case) -> Result<Reply> {
        let req = Request {
            from: c.from,
            protocol: Protocol::Http,
            dst: self.targets.resolve(c.from, c.host)?,
            method: c.method,
            path: c.path,
            host: self.targets.host_header(c.host)?,
            headers: c.headers,
        };
        self.rt.block_on(self.clients.send(req))
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
        let dst = self.targets.resolve(From::Producer, w.host)?;
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
        let req = Request {
            from: From::Producer,
            protocol: w.protocol,
            dst,
            method: match w.protocol {
                Protocol::Http => "GET",
                Protocol::Grpc => "POST",
            },
            path: match w.protocol {
                Protocol::Http => "/",
                Protocol::Grpc => GRPC_PATH,
            },
            host: w.host.to_owned(),
            headers: &[],
        };
        let clients = self.clients.clone();
        self.rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            let mut out = Vec::with_capacity(n);
            let mut sent = 0;
            while out.len() < n {
                while sent < n && set.len() < conc {
                    set.spawn(clients.send(req.clone()));
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
