//! A conformance case as the upstream Go tests state it (`http.ExpectedResponse`): the request
//! a mesh client sends, what the backend must have received, and what the client must get
//! back; and the check of a reply against it. Stricter than upstream's mesh client where that
//! costs nothing: the rewritten path, the namespace and a redirect's whole `Location` are
//! compared too.

use anyhow::{bail, Result};

use crate::waypoint::Reply;

/// The mesh client's pod: upstream's `echo-v1` of the producer namespace
/// (`gateway-conformance-mesh`) or of the consumer namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    Producer,
    Consumer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

/// A redirect's expected target; unset parts default to the request's (scheme http).
#[derive(Clone, Copy, Debug, Default)]
pub struct Redirect {
    pub scheme: Option<&'static str>,
    pub host: Option<&'static str>,
    pub port: Option<u16>,
    pub path: Option<&'static str>,
}

#[derive(Clone, Copy, Debug)]
pub struct Expect {
    pub status: u16,
    /// Prefix of the answering pod's name (upstream: its Deployment's name).
    pub backend: Option<&'static str>,
    pub namespace: Option<&'static str>,
    /// The path (without query) the backend received.
    pub path: Option<&'static str>,
    pub request_headers: &'static [(&'static str, &'static str)],
    pub absent_request_headers: &'static [&'static str],
    pub response_headers: &'static [(&'static str, &'static str)],
    pub absent_response_headers: &'static [&'static str],
    pub redirect: Option<Redirect>,
}

/// Upstream's defaults: 200 from any backend.
pub const OK: Expect = Expect {
    status: 200,
    backend: None,
    namespace: None,
    path: None,
    request_headers: &[],
    absent_request_headers: &[],
    response_headers: &[],
    absent_response_headers: &[],
    redirect: None,
};

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    pub from: From,
    /// What the client addresses: `service[.namespace][:port]` (port 80 by default), or
    /// `{deployment}:port` for that Deployment's pod IP. It is also the Host header unless
    /// `headers` set one.
    pub host: &'static str,
    pub method: &'static str,
    /// Path and query.
    pub path: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    pub expect: Expect,
}

/// Upstream's request defaults: GET / to `echo` from the producer namespace.
pub const GET: Case = Case {
    name: "",
    from: From::Producer,
    host: "echo",
    method: "GET",
    path: "/",
    headers: &[],
    expect: OK,
};

/// A traffic-split test: `total` requests, each backend's share within `tolerance` of its
/// weight (upstream: 500 requests, 5 %, up to 10 tries).
#[derive(Clone, Copy, Debug)]
pub struct Weights {
    pub host: &'static str,
    pub protocol: Protocol,
    pub shares: &'static [(&'static str, f64)],
}

#[derive(Clone, Copy, Debug)]
pub enum Body {
    Cases(&'static [Case]),
    Weights(Weights),
}

/// One upstream test (`suite.ConformanceTest`).
#[derive(Clone, Copy, Debug)]
pub struct MeshTest {
    pub name: &'static str,
    /// Upstream's feature names; `core` when only Mesh / HTTPRoute / GRPCRoute.
    pub features: &'static [&'static str],
    /// Paths under the suite's root, as the Go test lists them.
    pub manifests: &'static [&'static str],
    pub body: Body,
}

impl MeshTest {
    pub fn core(&self) -> bool {
        self.features
            .iter()
            .all(|f| matches!(*f, "Mesh" | "HTTPRoute" | "GRPCRoute"))
    }

    pub fn profile(&self) -> &'static str {
        if self.features.contains(&"GRPCRoute") {
            "MESH-GRPC"
        } else {
            "MESH-HTTP"
        }
    }

    /// The test's line of a run's report: name, profile, core or extended, PASS or FAIL.
    pub fn report_line(&self, pass: bool) -> String {
        format!(
            "{:<45} {:<9} {:<8} {}",
            self.name,
            self.profile(),
            if self.core() { "core" } else { "extended" },
            if pass { "PASS" } else { "FAIL" }
        )
    }
}

/// Compares `reply` with `case`'s expectations; the error lists every difference.
pub fn check(case: &Case, reply: &Reply) -> Result<()> {
    let e = &case.expect;
    let mut bad = Vec::new();
    if reply.status != e.status {
        bad.push(format!("status {} (want {})", reply.status, e.status));
    }
    if let Some(b) = e.backend {
        match reply.pod() {
            Some(p) if p.starts_with(b) => {}
            other => bad.push(format!("answered by {other:?} (want {b}*)")),
        }
    }
    if let Some(ns) = e.namespace {
        if reply.field("namespace") != Some(ns) {
            bad.push(format!(
                "namespace {:?} (want {ns})",
                reply.field("namespace")
            ));
        }
    }
    if let Some(p) = e.path {
        let got = reply
            .field("target")
            .map(|t| t.split('?').next().unwrap_or(t));
        if got != Some(p) {
            bad.push(format!("backend saw path {got:?} (want {p})"));
        }
    }
    for (k, v) in e.request_headers {
        let got = reply.request_header(k).join(",");
        if got != *v {
            bad.push(format!("request header {k}: {got:?} (want {v:?})"));
        }
    }
    for k in e.absent_request_headers {
        if !reply.request_header(k).is_empty() {
            bad.push(format!("request header {k} present"));
        }
    }
    for (k, v) in e.response_headers {
        let got = reply.headers.get(&k.to_ascii_lowercase());
        if got.map(String::as_str) != Some(*v) {
            bad.push(format!("response header {k}: {got:?} (want {v:?})"));
        }
    }
    for k in e.absent_response_headers {
        if let Some(v) = reply.headers.get(&k.to_ascii_lowercase()) {
            bad.push(format!("response header {k}: {v:?} (want none)"));
        }
    }
    if let Some(r) = &e.redirect {
        let want = location(case, r);
        let got = reply.headers.get("location");
        if got != Some(&want) {
            bad.push(format!("location {got:?} (want {want:?})"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        bail!("{}", bad.join("; "))
    }
}

/// The whole `Location` a redirect must carry: the request's scheme (http), host, port and
/// path where the expectation leaves them, the port left out when it is the scheme's default.
fn location(case: &Case, r: &Redirect) -> String {
    let (req_host, req_port) = match case.host.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (case.host, None),
    };
    let scheme = r.scheme.unwrap_or("http");
    let host = r.host.unwrap_or(req_host);
    let port = match (r.port, r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => req_port,
    }
    .filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let path = r.path.unwrap_or(case.path);
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}
