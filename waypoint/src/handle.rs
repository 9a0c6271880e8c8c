//! One request through the waypoint: policy, route, faults, filters, then the forward with
//! its retries and timeouts, and the reply's filters, metrics and access-log line.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderMap, Request, Response, Version};
use hyper::body::Incoming;
use rand::Rng;

use crate::authz::{self, RequestAttrs};
use crate::body::{self, Body, Counted};
use crate::forward::{self, Attempt, Plan, ReqBody};
use crate::reply::LocalReply;
use crate::route::filters::{self, modify_headers};
use crate::route::{Filter, PathMatch, RequestView, Rule, Selected};
use crate::shared::{Destination, Downstream, Shared};
use crate::telemetry::RequestRecord;

pub async fn handle(
    shared: Arc<Shared>,
    down: Arc<Downstream>,
    req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let mut record = RequestRecord::new(&shared, &down, &req);
    let resp = route_and_forward(&shared, &down, req, &mut record).await;
    finish(shared, record, resp, start)
}

/// Wraps the reply body so bytes are counted and the request is recorded when it ends.
fn finish(
    shared: Arc<Shared>,
    mut record: RequestRecord,
    resp: Response<Body>,
    start: Instant,
) -> Response<Body> {
    record.status = resp.status().as_u16();
    if record.grpc_status.is_none() {
        record.grpc_status = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let telemetry = shared.telemetry.clone();
    let done: Box<dyn FnOnce() + Send> = Box::new(move || {
        record.response_bytes = c.load(std::sync::atomic::Ordering::Relaxed);
        record.duration = start.elapsed();
        telemetry.record(&record);
    });
    let (parts, b) = resp.into_parts();
    Response::from_parts(parts, body::boxed(Counted::new(b, count, Some(done))))
}

async fn route_and_forward(
    shared: &Arc<Shared>,
    down: &Arc<Downstream>,
    req: Request<Incoming>,
    record: &mut RequestRecord,
) -> Response<Body> {
    let snap = shared.mesh.current();
    let cfg = shared.config.current();
    let Some(dest) = Destination::resolve(&snap, down.dst) else {
        return record.local(LocalReply::NoHealthyUpstream);
    };
    record.set_destination(&snap, &dest);

    let host = request_host(&req);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);

    // L7 authorization comes first: a denied request never reaches routing or a backend.
    let principal = down.principal();
    let decision = authz::evaluate(
        &cfg.policies,
        dest.service(),
        &RequestAttrs {
            principal: Some(principal),
            source_namespace: Some(&down.peer.namespace),
            source_ip: down.client.ip(),
            host: &host,
            port: down.dst.port(),
            method: req.method(),
            path: &path,
            headers: req.headers(),
        },
    );
    for p in &decision.audited {
        tracing::info!(target: "audit", policy = %p, %path, "AUDIT policy matched");
    }
    if !decision.allowed {
        tracing::debug!(reason = %decision.reason, %path, "request denied");
        return record.local(LocalReply::Denied);
    }

    let view = RequestView {
        method: req.method(),
        path: &path,
        query: query.as_deref(),
        headers: req.headers(),
    };
    let (rule, matched_path, port) = match &dest {
        Destination::Service { svc, port } => {
            match cfg.routes.select(svc, *port, &down.peer.namespace, &view) {
                Selected::Unrouted => (
                    Arc::new(Rule::default_for(svc)),
                    PathMatch::Prefix(String::new()),
                    *port,
                ),
                Selected::Matched(e) => (e.rule.clone(), e.matcher.path.clone(), *port),
                Selected::NoMatch => return record.local(LocalReply::NoRoute),
            }
        }
        Destination::Workload(_) => (
            Arc::new(Rule {
                backends: Vec::new(),
                ..Rule::default_for(&crate::route::ServiceRef::new("", ""))
            }),
            PathMatch::Prefix(String::new()),
            down.dst.port(),
        ),
    };
    // Formatted only if the access log is written.
    record.rule = Some(rule.clone());

    // VirtualService settings for the destination service (faults, retries, timeout).
    let overlay = dest.service().and_then(|s| cfg.routes.overlay(s, &view));
    let mut plan = Plan::from_rule(&rule);
    if let Some(o) = overlay {
        if let Some(f) = &o.fault {
            // Rolled before any await: the thread-local generator must not live across one.
            let (delay_roll, abort_roll): (f64, f64) = {
                let mut rng = rand::rng();
                (rng.random_range(0.0..100.0), rng.random_range(0.0..100.0))
            };
            if let Some((delay, pct)) = f.delay {
                if delay_roll < pct {
                    record.add_flag("DI");
                    tokio::time::sleep(delay).await;
                }
            }
            if let Some((code, pct)) = f.abort {
                if abort_roll < pct {
                    return record.local(LocalReply::FaultAbort(code));
                }
            }
        }
        if o.retry.is_some() {
            plan.retry = o.retry.clone();
        }
        if o.timeout.is_some() {
            plan.request_timeout = o.timeout;
        }
        if o.per_try_timeout.is_some() {
            plan.attempt_timeout = o.per_try_timeout;
        }
    }

    let (mut parts, incoming) = req.into_parts();
    let mut response_mods = Vec::new();
    let mut mirrors = Vec::new();
    for f in &rule.filters {
        match f {
            Filter::Redirect(r) => {
                let scheme = parts.uri.scheme_str().unwrap_or("http").to_owned();
                let loc = filters::redirect_location(
                    r,
                    &scheme,
                    &host,
                    &path,
                    query.as_deref(),
                    &matched_path,
                );
                let mut resp = LocalReply::NoRoute.response();
                *resp.status_mut() = filters::redirect_status(r.status);
                *resp.body_mut() = body::empty();
                if let Some((k, v)) = filters::location_header(&loc) {
                    resp.headers_mut().insert(k, v);
                }
                resp.headers_mut().remove(header::CONTENT_TYPE);
                return resp;
            }
            Filter::RequestHeaders(m) => modify_headers(&mut parts.headers, m),
            Filter::ResponseHeaders(m) => response_mods.push(m.clone()),
            Filter::Rewrite { hostname, path: pm } => {
                if let Some(pm) = pm {
                    let new_path = filters::rewrite_path(&path, &matched_path, pm);
                    set_path(&mut parts.uri, &new_path, query.as_deref());
                }
                if let Some(h) = hostname {
                    filters::rewrite_host(&mut parts.uri, &mut parts.headers, h);
                }
            }
            Filter::Mirror { service, port } => mirrors.push((service.clone(), *port)),
        }
    }

    let needs_buffer = plan.retry.as_ref().is_some_and(|r| r.attempts > 0) || !mirrors.is_empty();
    if plan.retry.is_none() {
        // Istio's default: a request no route or VirtualService sets retries for is retried
        // twice on connect failures (when its body can be sent again: an empty one; a
        // streamed body is never buffered for this).
        plan.retry = Some(forward::default_retry());
        plan.failures_only = true;
    }
    let req_body = if !needs_buffer && hyper::body::Body::is_end_stream(&incoming) {
        ReqBody::Buffered(bytes::Bytes::new())
    } else if needs_buffer {
        match forward::buffer(incoming, shared.limits.retry_buffer).await {
            Ok(b) => ReqBody::Buffered(b),
            Err(reply) => return record.local(reply),
        }
    } else {
        ReqBody::Stream(Some(incoming))
    };
    record.request_bytes = req_body.known_len();
    strip_hop_by_hop(&mut parts.headers);
    let h2 = parts.version == Version::HTTP_2;
    let attempt = Attempt {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        h2,
        host: host.clone(),
    };
    for (svc, mport) in mirrors {
        forward::mirror(
            shared.clone(),
            down.clone(),
            &attempt,
            &req_body,
            svc,
            mport.unwrap_or(port),
        );
    }

    let target = match &dest {
        Destination::Workload(w) => forward::Target::Workload(w.clone(), down.dst),
        Destination::Service { .. } => {
            if !rule.backends.is_empty() && filters::total_weight(&rule.backends) == 0 {
                return record.local(LocalReply::AllWeightsZero);
            }
            forward::Target::Backends(rule.clone(), port)
        }
    };
    let result = forward::run(shared, down, &plan, &target, attempt, req_body, record).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(reply) => return record.local(reply),
    };
    strip_hop_by_hop(resp.headers_mut());
    for m in &response_mods {
        modify_headers(resp.headers_mut(), m);
    }
    resp
}

fn request_host(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

fn set_path(uri: &mut http::Uri, path: &str, query: Option<&str>) {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = pq.parse().ok();
    *uri = http::Uri::from_parts(parts).unwrap_or_default();
}

/// Headers that describe one hop's connection and must not be forwarded (RFC 9110 7.6.1).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|s| !s.is_empty())
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        h.remove(n);
    }
    // `te: trailers` is the one TE value HTTP/2 (and gRPC) needs end to end.
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}
