//! Sending a routed request to a backend: per attempt a weighted backend choice, an endpoint
//! (round robin, skipping endpoints that fail to connect), an upstream stream and an HTTP
//! exchange on it; retries on the configured codes, connect failures and resets, within
//! the per-attempt and whole-request timeouts.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshtunnel::state::Workload;
use rand::Rng;

use crate::body::{self, Body};
use crate::client_pool::{ReturnOnEnd, Sender};
use crate::reply::LocalReply;
use crate::route::filters::{modify_headers, pick_backend};
use crate::route::{Filter, Retry, Rule, ServiceRef};
use crate::shared::{Downstream, Shared};
use crate::telemetry::RequestRecord;
use crate::upstream::{self, Endpoint, Io, PickError};

/// Retries and timeouts for one request (the route's, overridden by a VirtualService).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub retry: Option<Retry>,
    /// The retry is the default one: only connect failures and resets are retried.
    pub failures_only: bool,
    pub request_timeout: Option<Duration>,
    pub attempt_timeout: Option<Duration>,
}

/// Istio's default retry policy (istiod sets it on every route without one): two retries on
/// connect failure (a refused CONNECT included), Envoy's 25 ms base backoff.
pub fn default_retry() -> Retry {
    Retry {
        attempts: 2,
        codes: Vec::new(),
        backoff: Duration::from_millis(25),
    }
}

impl Plan {
    pub fn from_rule(rule: &Rule) -> Plan {
        Plan {
            retry: rule.retry.clone(),
            failures_only: false,
            request_timeout: rule.timeouts.request,
            attempt_timeout: rule.timeouts.backend_request,
        }
    }
}

/// The request head as it leaves the waypoint (filters applied), reused by every attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// The client spoke HTTP/2 (gRPC included): so does the upstream request.
    pub h2: bool,
    pub host: String,
}

pub enum ReqBody {
    /// Streamed once: no retry after the first attempt has taken it.
    Stream(Option<Incoming>),
    Buffered(Bytes),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Stream(s) => s.take().map(body::boxed),
            ReqBody::Buffered(b) => Some(body::full(b.clone())),
        }
    }

    pub fn known_len(&self) -> u64 {
        match self {
            ReqBody::Stream(Some(b)) => hyper::body::Body::size_hint(b).exact().unwrap_or(0),
            ReqBody::Stream(None) => 0,
            ReqBody::Buffered(b) => b.len() as u64,
        }
    }
}

/// Reads a request body into memory, refusing one over `limit`.
pub async fn buffer(b: Incoming, limit: usize) -> Result<Bytes, LocalReply> {
    match Limited::new(b, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(LocalReply::BodyTooLarge)
        }
        Err(_) => Err(LocalReply::BadRequest),
    }
}

/// Where attempts go.
pub enum Target {
    /// The backends of a matched rule (empty = the destination service itself), service port.
    Backends(Arc<Rule>, u16),
    /// A workload-addressed request: that pod, that port.
    Workload(Arc<Workload>, SocketAddr),
}

#[derive(Debug)]
enum AttemptError {
    Local(LocalReply),
}

pub async fn run(
    shared: &Arc<Shared>,
    down: &Arc<Downstream>,
    plan: &Plan,
    target: &Target,
    attempt: Attempt,
    mut req_body: ReqBody,
    record: &mut RequestRecord,
) -> Result<Response<Body>, LocalReply> {
    let tries = 1 + plan.retry.as_ref().map_or(0, |r| r.attempts);
    let work = async {
        let mut last = LocalReply::NoHealthyUpstream;
        for i in 0..tries {
            if i > 0 {
                record.retries += 1;
                if let Some(r) = &plan.retry {
                    tokio::time::sleep(r.backoff).await;
                }
            }
            let Some(b) = req_body.take() else {
                // A streamed body cannot be sent twice.
                return Err(last);
            };
            let once = attempt_once(shared, down, target, &attempt, b, record);
            let outcome = match plan.attempt_timeout {
                Some(t) => tokio::time::timeout(t, once)
                    .await
                    .unwrap_or(Err(AttemptError::Local(LocalReply::UpstreamTimeout))),
                None => once.await,
            };
            let last_try = i + 1 == tries;
            match outcome {
                Ok(resp) => {
                    let retry_code = plan
                        .retry
                        .as_ref()
                        .is_some_and(|r| r.codes.contains(&resp.status().as_u16()));
                    if retry_code && !last_try {
                        last = LocalReply::UpstreamReset;
                        continue;
                    }
                    return Ok(resp);
                }
                Err(AttemptError::Local(reply)) => {
                    last = reply;
                    // Not resets after the request went out: it may have been processed.
                    let failure = matches!(reply, LocalReply::ConnectFailure);
                    if last_try
                        || matches!(reply, LocalReply::AllWeightsZero | LocalReply::BadRequest)
                        || (plan.failures_only && !failure)
                    {
                        return Err(reply);
                    }
                }
            }
        }
        Err(last)
    };
    match plan.request_timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or(Err(LocalReply::UpstreamTimeout)),
        None => work.await,
    }
}

async fn attempt_once(
    shared: &Arc<Shared>,
    down: &Arc<Downstream>,
    target: &Target,
    attempt: &Attempt,
    body: Body,
    record: &mut RequestRecord,
) -> Result<Response<Body>, AttemptError> {
    let snap = shared.mesh.current();
    let (eps, filters) = match target {
        Target::Workload(w, addr) => (
            vec![Endpoint {
                workload: w.clone(),
                addr: *addr,
            }],
            &[][..],
        ),
        Target::Backends(rule, port) => {
            let (svc, bport, filters) = if rule.backends.is_empty() {
                unreachable_default(rule, *port)
            } else {
                let roll = rand::rng().random::<u64>();
                let b = pick_backend(&rule.backends, roll)
                    .ok_or(AttemptError::Local(LocalReply::AllWeightsZero))?;
                (
                    b.service.clone(),
                    b.port.unwrap_or(*port),
                    b.filters.as_slice(),
                )
            };
            let eps = upstream::endpoints(&snap, &svc, bport).map_err(|e| {
                tracing::debug!(error = %e, "no endpoint");
                match e {
                    PickError::UnknownService(_) | PickError::NoEndpoints(..) => {
                        AttemptError::Local(LocalReply::NoHealthyUpstream)
                    }
                }
            })?;
            record.set_backend(&svc);
            let policy = shared.config.current().lb_policy(&svc);
            (shared.upstreams.order(&svc, bport, policy, eps), filters)
        }
    };
    let mut sender = None;
    for ep in &eps {
        let key = (ep.addr, attempt.h2);
        // A connection this client's earlier requests left open comes first.
        if let Some(mut s) = down.clients.take(&key) {
            if s.ready().await {
                record.set_endpoint(&ep.workload);
                sender = Some((key, s, ep));
                break;
            }
        }
        match shared.upstreams.open(ep, down.client).await {
            Ok(io) => match handshake(io, attempt.h2).await {
                Ok(s) => {
                    record.set_endpoint(&ep.workload);
                    sender = Some((key, s, ep));
                    break;
                }
                Err(e) => tracing::debug!(endpoint = %ep.addr, error = %e, "HTTP handshake failed"),
            },
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = %e, "endpoint failed to connect, trying the next")
            }
        }
    }
    let Some((key, mut sender, ep)) = sender else {
        return Err(AttemptError::Local(LocalReply::ConnectFailure));
    };
    // In flight from the send until the response body ends (or is dropped).
    let in_flight = shared.upstreams.start_request(ep);
    let mut headers = attempt.headers.clone();
    let mut response_mods = Vec::new();
    for f in filters {
        match f {
            Filter::RequestHeaders(m) => modify_headers(&mut headers, m),
            Filter::ResponseHeaders(m) => response_mods.push(m),
            _ => {}
        }
    }
    let req = build_request(attempt, headers, body);
    let resp = sender.send(req).await.map_err(|e| {
        tracing::debug!(error = %e, "upstream exchange failed");
        // A user (body) error is the client's request body failing, not the upstream.
        AttemptError::Local(if e.is_user() {
            LocalReply::BadRequest
        } else {
            LocalReply::UpstreamReset
        })
    })?;
    // HTTP/2 connections are shared from the pool already; an HTTP/1 one goes back once its
    // response has been read to the end.
    let back = match sender {
        Sender::H1(_) => Some((down.clients.clone(), key, sender)),
        Sender::H2(_) => {
            down.clients.put(key, sender);
            None
        }
    };
    let resp = resp.map(|b| ReturnOnEnd::new(b, back));
    let (mut parts, b) = resp.into_parts();
    for m in response_mods {
        modify_headers(&mut parts.headers, m);
    }
    let ended: Box<dyn FnOnce() + Send> = Box::new(move || drop(in_flight));
    let b = body::Counted::new(b, Arc::new(AtomicU64::new(0)), Some(ended));
    Ok(Response::from_parts(parts, body::boxed(b)))
}

/// A rule without backendRefs routes to the destination service itself (the default route).
fn unreachable_default(rule: &Rule, port: u16) -> (ServiceRef, u16, &'static [Filter]) {
    let svc = ServiceRef::new(&rule.route.namespace, &rule.route.name);
    (svc, port, &[])
}

fn build_request(a: &Attempt, mut headers: HeaderMap, body: Body) -> Request<Body> {
    let pq = a
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let authority = a
        .uri
        .authority()
        .map(|x| x.to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| a.host.clone());
    let (uri, version) = if a.h2 {
        headers.remove(header::HOST);
        (format!("http://{authority}{pq}"), Version::HTTP_2)
    } else {
        if !headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(&authority) {
                headers.insert(header::HOST, v);
            }
        }
        (pq, Version::HTTP_11)
    };
    let mut req = Request::new(body);
    *req.method_mut() = a.method.clone();
    *req.uri_mut() = uri.parse().unwrap_or_default();
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

/// Starts HTTP on a fresh upstream stream.
async fn handshake(io: Box<dyn Io>, h2: bool) -> Result<Sender, hyper::Error> {
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(sender))
    }
}

/// RequestMirror: a copy of the request to another service; its answer is read and dropped,
/// and nothing about it reaches the client.
pub fn mirror(
    shared: Arc<Shared>,
    down: Arc<Downstream>,
    attempt: &Attempt,
    body: &ReqBody,
    svc: ServiceRef,
    port: u16,
) {
    let ReqBody::Buffered(b) = body else { return };
    let (a, b) = (attempt.clone(), b.clone());
    tokio::spawn(async move {
        let snap = shared.mesh.current();
        let Ok(eps) = upstream::endpoints(&snap, &svc, port) else {
            tracing::debug!(service = %svc, "mirror target has no endpoint");
            return;
        };
        let policy = shared.config.current().lb_policy(&svc);
        let eps = shared.upstreams.order(&svc, port, policy, eps);
        let Ok(io) = shared.upstreams.open(&eps[0], down.client).await else {
            return;
        };
        let req = build_request(&a, a.headers.clone(), body::full(b));
        let work = async {
            if let Ok(mut s) = handshake(io, a.h2).await {
                if let Ok(resp) = s.send(req).await {
                    let _ = resp.into_body().collect().await;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
    });
}
