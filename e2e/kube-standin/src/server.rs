//! HTTP/1.1 serving and routing of the core/v1 REST paths onto the store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch as signal};

use crate::discovery;
use crate::openapi;
use crate::paging::paginate;
use crate::patch::PatchKind;
use crate::proto;
use crate::render::Render;
use crate::resource::Resource;
use crate::routes::{parse_query, route, truthy, Target};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{StatusMode, Store, WatchFrom};
use crate::watch::{self, WatchSpec};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Request bodies beyond this are refused; pods and namespaces are a few KiB.
const MAX_BODY: usize = 4 << 20;

pub(crate) struct Server {
    pub store: Arc<Store>,
    pub bookmark_interval: Duration,
    pub server_address: String,
    pub log_requests: bool,
}

/// Accepts connections until `shutdown` flips to true.
pub(crate) async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    mut shutdown: signal::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                // Transient accept errors (EMFILE, aborted handshakes) must not stop the server.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move {
                    let line = server.log_requests.then(|| request_line(&req));
                    let resp = server.handle(req).await;
                    if let Some(line) = line {
                        eprintln!("kube-standin: {line} -> {}", resp.status().as_u16());
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn request_line(req: &Request<Incoming>) -> String {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    format!(
        "{} {} accept={} content-type={}",
        req.method(),
        req.uri(),
        header(header::ACCEPT),
        header(header::CONTENT_TYPE)
    )
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn respond(code: u16, content_type: &str, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .body(full(serde_json::to_vec(body).expect("Value serializes")))
        .expect("static response parts are valid")
}

fn json_ok(code: u16, body: &Value) -> Response<Body> {
    respond(code, "application/json", body)
}

fn error(err: &ApiError) -> Response<Body> {
    json_ok(err.code, &err.to_status())
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
    )
}

fn unsupported_media_type(content_type: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format ({content_type:?}) - accepted \
             media types include: application/json, application/json-patch+json, \
             application/merge-patch+json, application/strategic-merge-patch+json"
        ),
    )
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let query = parse_query(parts.uri.query());
        let simple = |v: Value| Some(json_ok(200, &v));
        let discovery = match (parts.method.clone(), path.trim_end_matches('/')) {
            (Method::GET, "/version") => simple(discovery::version()),
            (Method::GET, "/api") => simple(discovery::api_versions(&self.server_address)),
            (Method::GET, "/apis") => simple(discovery::api_group_list()),
            (Method::GET, "/api/v1") => simple(discovery::core_v1_resources()),
            (Method::GET, "/openapi/v2") => Some(
                Response::builder()
                    .header(header::CONTENT_TYPE, openapi::V2_CONTENT_TYPE)
                    .body(full(openapi::v2_protobuf()))
                    .expect("static response"),
            ),
            (Method::GET, "/openapi/v3") => simple(openapi::root()),
            (Method::GET, "/openapi/v3/api/v1") => simple(openapi::core_v1()),
            (Method::GET, "/healthz" | "/readyz" | "/livez") => Some(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(full("ok"))
                    .expect("static response"),
            ),
            _ => None,
        };
        if let Some(resp) = discovery {
            return resp;
        }
        let Some(target) = route(&path) else {
            return error(&not_found_path());
        };
        let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return error(&ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    "request body unreadable or too large",
                ))
            }
        };
        match self.dispatch(&parts.method, &parts.headers, &query, target, &body) {
            Ok(Reply::Json(code, v)) => json_ok(code, &v),
            Ok(Reply::Rendered(v, content_type)) => respond(200, content_type, &v),
            Ok(Reply::Watch(spec, from)) => self.start_watch(spec, from),
            Err(e) => error(&e),
        }
    }

    fn dispatch(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
        t: Target,
        body: &Bytes,
    ) -> Result<Reply, ApiError> {
        let ns = t.namespace.as_deref();
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let render = Render::negotiate(accept, query.get("includeObject").map(String::as_str));
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let parse_body = || -> Result<Value, ApiError> {
            if content_type.starts_with(proto::CONTENT_TYPE) {
                return match t.resource {
                    Resource::Namespace => proto::decode_namespace(body)
                        .map_err(|e| ApiError::bad_request(format!("protobuf body: {e}"))),
                    Resource::Pod => Err(unsupported_media_type(content_type)),
                };
            }
            serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            })
        };
        let mode = if t.status {
            StatusMode::Only
        } else {
            StatusMode::Keep
        };
        let store = &self.store;
        let Some(name) = t.name.as_deref() else {
            return match *method {
                Method::GET => self.list_or_watch(&t, query, render),
                Method::POST if !t.status && (ns.is_some() || !t.resource.namespaced()) => {
                    let obj = store.create(t.resource, ns, parse_body()?, StatusMode::Keep)?;
                    Ok(Reply::Json(201, obj))
                }
                _ => Err(method_not_allowed(method)),
            };
        };
        match *method {
            Method::GET => {
                let obj = store
                    .get(t.resource, ns, name)
                    .ok_or_else(|| ApiError::not_found(t.resource, name))?;
                Ok(Reply::Rendered(
                    render.object(t.resource, &obj),
                    render.content_type(false),
                ))
            }
            Method::PUT => {
                let obj = store.update(t.resource, ns, name, parse_body()?, mode)?;
                Ok(Reply::Json(200, obj))
            }
            Method::PATCH => {
                let kind = PatchKind::from_content_type(content_type)
                    .ok_or_else(|| unsupported_media_type(content_type))?;
                let obj = store.patch(t.resource, ns, name, kind, &parse_body()?, mode)?;
                Ok(Reply::Json(200, obj))
            }
            Method::DELETE if !t.status => {
                let obj = store.delete(t.resource, ns, name)?;
                Ok(Reply::Json(200, obj))
            }
            _ => Err(method_not_allowed(method)),
        }
    }

    fn list_or_watch(
        &self,
        t: &Target,
        query: &HashMap<String, String>,
        render: Render,
    ) -> Result<Reply, ApiError> {
        let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(
            query.get("fieldSelector").map_or("", String::as_str),
            t.resource,
        )
        .map_err(ApiError::bad_request)?;
        if truthy(query, "watch") {
            let initial_events = truthy(query, "sendInitialEvents");
            let from = match query.get("resourceVersion").map(String::as_str) {
                _ if initial_events => WatchFrom::Now,
                None | Some("" | "0") => WatchFrom::Now,
                Some(rv) => WatchFrom::After(rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {rv:?}"))
                })?),
            };
            // 0 or absent: no deadline (the real server picks a long random one).
            let timeout =
                match query.get("timeoutSeconds") {
                    Some(s) => Some(s.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid timeoutSeconds {s:?}"))
                    })?)
                    .filter(|secs| *secs > 0)
                    .map(Duration::from_secs),
                    None => None,
                };
            let spec = WatchSpec {
                resource: t.resource,
                namespace: t.namespace.clone(),
                labels,
                fields,
                bookmarks: truthy(query, "allowWatchBookmarks"),
                bookmark_interval: self.bookmark_interval,
                timeout,
                initial_events_end: initial_events,
                render,
            };
            return Ok(Reply::Watch(spec, from));
        }
        let (items, rv) = self.store.list(t.resource, t.namespace.as_deref(), |o| {
            labels.matches(o) && fields.matches(o)
        });
        let page = paginate(items, query)?;
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(token) = &page.continue_token {
            metadata["continue"] = token.clone().into();
            metadata["remainingItemCount"] = page.remaining.into();
        }
        Ok(Reply::Rendered(
            render.list(t.resource, &page.items, metadata),
            render.content_type(true),
        ))
    }

    fn start_watch(&self, spec: WatchSpec, from: WatchFrom) -> Response<Body> {
        let content_type = spec.render.content_type(false);
        // hyper sends a body of unknown length chunked, which is what watch clients expect.
        let builder = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type);
        match self
            .store
            .watch(spec.resource, spec.namespace.as_deref(), from)
        {
            // The real server reports a too-old resourceVersion as an ERROR event on a 200
            // stream, which is what client-go and kube-runtime key their re-list on.
            Err(e) => builder
                .body(full(watch::error_event(&e)))
                .expect("static response"),
            Ok(start) => {
                let (tx, rx) = mpsc::channel::<Bytes>(64);
                tokio::spawn(watch::run(spec, start, tx));
                let chunks = stream::unfold(rx, |mut rx| async move {
                    let chunk = rx.recv().await?;
                    Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
                });
                builder
                    .body(StreamBody::new(chunks).boxed_unsync())
                    .expect("static response")
            }
        }
    }
}

enum Reply {
    Json(u16, Value),
    Rendered(Value, &'static str),
    Watch(WatchSpec, WatchFrom),
}
