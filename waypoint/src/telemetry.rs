//! Istio's HTTP metrics as a waypoint reports them (`reporter="waypoint"`) and the per-request
//! access-log line. Labels are Istio's standard set so dashboards written for Istio work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Version};
use hyper::body::Incoming;
use meshtunnel::state::{ConfigSnapshot, Workload};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reply::LocalReply;
use crate::route::{Rule, ServiceRef};
use crate::shared::{Destination, Downstream, Shared};

const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

type HistFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

pub struct Telemetry {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistFamily,
    request_bytes: HistFamily,
    response_bytes: HistFamily,
}

fn duration_hist() -> Histogram {
    // Envoy's default buckets: 0.5 ms .. 3600 s.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn bytes_hist() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 10.0, 9))
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistFamily = Family::new_with_constructor(duration_hist);
        let request_bytes: HistFamily = Family::new_with_constructor(bytes_hist);
        let response_bytes: HistFamily = Family::new_with_constructor(bytes_hist);
        {
            let istio = registry.sub_registry_with_prefix("istio");
            istio.register(
                "requests",
                "Requests handled by the waypoint",
                requests.clone(),
            );
            istio.register(
                "request_duration_milliseconds",
                "Request duration, from the request's arrival to the end of the response",
                duration.clone(),
            );
            istio.register("request_bytes", "Request body sizes", request_bytes.clone());
            istio.register(
                "response_bytes",
                "Response body sizes",
                response_bytes.clone(),
            );
        }
        Telemetry {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
        }
    }
}

impl Telemetry {
    /// Where other parts (cluster mode's control-plane side) register their families, before
    /// the first scrape.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn record(&self, r: &RequestRecord) {
        let labels = r.labels();
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(r.duration.as_secs_f64() * 1000.0);
        self.request_bytes
            .get_or_create(&labels)
            .observe(r.request_bytes as f64);
        self.response_bytes
            .get_or_create(&labels)
            .observe(r.response_bytes as f64);
        tracing::event!(
            target: "access",
            tracing::Level::INFO,
            src.addr = %r.client,
            src.identity = %r.source_principal,
            dst.addr = %r.dst,
            dst.service = %r.destination_service,
            dst.workload = %r.destination_workload.as_deref().unwrap_or("-"),
            method = %r.method,
            path = %r.path,
            protocol = r.protocol,
            status = r.status,
            route = %RuleName(r.rule.as_deref()),
            flags = %r.flags(),
            retries = r.retries,
            request_bytes = r.request_bytes,
            response_bytes = r.response_bytes,
            duration_ms = r.duration.as_millis() as u64,
            "request"
        );
    }
}

/// The access log's `route` field: "<route> rule <index>", or "-".
struct RuleName<'a>(Option<&'a Rule>);

impl std::fmt::Display for RuleName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{} rule {}", r.route, r.index),
            None => f.write_str("-"),
        }
    }
}

/// What one request did, filled in as it goes through the pipeline.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub client: SocketAddr,
    pub dst: SocketAddr,
    pub source_principal: Arc<str>,
    // Shared with the config snapshot: a request record must not copy whole workloads.
    source: Option<Arc<Workload>>,
    pub destination_service: String,
    destination_service_ref: Option<ServiceRef>,
    pub destination_workload: Option<String>,
    destination: Option<Arc<Workload>>,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub grpc_status: Option<String>,
    /// The rule that routed the request, if one did.
    pub rule: Option<Arc<Rule>>,
    flags: Vec<&'static str>,
    pub retries: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration: Duration,
}

impl RequestRecord {
    pub fn new(shared: &Shared, down: &Downstream, req: &Request<Incoming>) -> Self {
        let snap = shared.mesh.current();
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        RequestRecord {
            client: down.client,
            dst: down.dst,
            source_principal: down.peer_uri.clone(),
            source: snap.workload_by_ip(down.client.ip()).cloned(),
            destination_service: UNKNOWN.into(),
            destination_service_ref: None,
            destination_workload: None,
            destination: None,
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            protocol: if grpc {
                "grpc"
            } else if req.version() == Version::HTTP_2 {
                "http2"
            } else {
                "http"
            },
            status: 0,
            grpc_status: None,
            rule: None,
            flags: Vec::new(),
            retries: 0,
            request_bytes: 0,
            response_bytes: 0,
            duration: Duration::ZERO,
        }
    }

    pub fn set_destination(&mut self, snap: &ConfigSnapshot, dest: &Destination) {
        match dest {
            Destination::Service { svc, .. } => {
                self.set_backend(svc);
                if let Some(s) = crate::upstream::find_service(snap, svc) {
                    self.destination_service = s.hostname.clone();
                }
            }
            Destination::Workload(w) => self.set_endpoint(w),
        }
    }

    pub fn set_backend(&mut self, svc: &ServiceRef) {
        self.destination_service_ref = Some(svc.clone());
    }

    pub fn set_endpoint(&mut self, w: &Arc<Workload>) {
        self.destination_workload = Some(w.name.clone());
        self.destination = Some(w.clone());
    }

    pub fn add_flag(&mut self, f: &'static str) {
        if !self.flags.contains(&f) {
            self.flags.push(f);
        }
    }

    /// Records a local reply and returns it.
    pub fn local(&mut self, reply: LocalReply) -> http::Response<crate::body::Body> {
        self.add_flag(reply.flag());
        reply.response()
    }

    pub fn flags(&self) -> String {
        if self.flags.is_empty() {
            "-".into()
        } else {
            self.flags.join(",")
        }
    }

    fn labels(&self) -> RequestLabels {
        let wl = |w: &Option<Arc<Workload>>, f: fn(&Workload) -> String| {
            w.as_deref()
                .map(f)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| UNKNOWN.into())
        };
        fn name(w: &Workload) -> String {
            if w.workload_name.is_empty() {
                w.name.clone()
            } else {
                w.workload_name.clone()
            }
        }
        fn canonical(w: &Workload) -> String {
            if w.canonical_name.is_empty() {
                name(w)
            } else {
                w.canonical_name.clone()
            }
        }
        fn revision(w: &Workload) -> String {
            if w.canonical_revision.is_empty() {
                "latest".into()
            } else {
                w.canonical_revision.clone()
            }
        }
        RequestLabels {
            reporter: "waypoint".into(),
            source_workload: wl(&self.source, name),
            source_workload_namespace: wl(&self.source, |w| w.namespace.clone()),
            source_principal: self.source_principal.to_string(),
            source_app: wl(&self.source, canonical),
            source_version: wl(&self.source, revision),
            source_canonical_service: wl(&self.source, canonical),
            source_canonical_revision: wl(&self.source, revision),
            source_cluster: wl(&self.source, |w| w.cluster_id.clone()),
            destination_workload: wl(&self.destination, name),
            destination_workload_namespace: wl(&self.destination, |w| w.namespace.clone()),
            destination_principal: self
                .destination
                .as_ref()
                .map_or_else(|| UNKNOWN.into(), |w| w.identity().to_string()),
            destination_app: wl(&self.destination, canonical),
            destination_version: wl(&self.destination, revision),
            destination_service: self.destination_service.clone(),
            destination_service_name: self
                .destination_service_ref
                .as_ref()
                .map_or_else(|| UNKNOWN.into(), |s| s.name.clone()),
            destination_service_namespace: self
                .destination_service_ref
                .as_ref()
                .map_or_else(|| UNKNOWN.into(), |s| s.namespace.clone()),
            destination_canonical_service: wl(&self.destination, canonical),
            destination_canonical_revision: wl(&self.destination, revision),
            destination_cluster: wl(&self.destination, |w| w.cluster_id.clone()),
            request_protocol: self.protocol.into(),
            response_code: self.status.to_string(),
            grpc_response_status: self.grpc_status.clone().unwrap_or_default(),
            response_flags: self.flags(),
            connection_security_policy: "mutual_tls".into(),
        }
    }
}
