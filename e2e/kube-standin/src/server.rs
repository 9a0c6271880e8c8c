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
use crate::patch::PatchKind;
use crate::proto;
use crate::render::Render;
use crate::resource::Resource;
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

fn decode_component(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("1" | "true" | "True"))
}

/// A request path resolved to the resource it addresses.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Option<Target> {
    let segs: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(decode_component)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let target = |resource, namespace: Option<&str>, name: Option<&str>, status| {
        Some(Target {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            status,
        })
    };
    match segs.as_slice() {
        ["api", "v1", plural] => target(Resource::from_plural(plural)?, None, None, false),
        ["api", "v1", "namespaces", name] => target(Resource::Namespace, None, Some(name), false),
        ["api", "v1", "namespaces", name, "status"] => {
            target(Resource::Namespace, None, Some(name), true)
        }
        ["api", "v1", "namespaces", ns, "pods"] => target(Resource::Pod, Some(ns), None, false),
        ["api", "v1", "namespaces", ns, "pods", name] => {
            target(Resource::Pod, Some(ns), Some(name), false)
        }
        ["api", "v1", "namespaces", ns, "pods", name, "status"] => {
            target(Resource::Pod, Some(ns), Some(name), true)
        }
        _ => None,
    }
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
        let builder = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::TRANSFER_ENCODING, "chunked");
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

struct Page {
    items: Vec<Value>,
    continue_token: Option<String>,
    remaining: usize,
}

fn sort_key(obj: &Value) -> (String, String) {
    let field = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (field("namespace"), field("name"))
}

/// `limit`/`continue` paging. The token is the last key served ("namespace/name"), so later
/// pages reflect the store as it is then rather than a snapshot at the first page's
/// resourceVersion, as a real server's would; clients treat the token as opaque either way.
fn paginate(items: Vec<Value>, query: &HashMap<String, String>) -> Result<Page, ApiError> {
    let limit = match query.get("limit").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
    };
    let after = match query.get("continue").map(String::as_str) {
        None | Some("") => None,
        Some(token) => {
            let (ns, name) = token
                .split_once('/')
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            Some((ns.to_string(), name.to_string()))
        }
    };
    let mut items: Vec<Value> = match &after {
        Some(after) => items.into_iter().filter(|o| sort_key(o) > *after).collect(),
        None => items,
    };
    let mut page = Page {
        items: Vec::new(),
        continue_token: None,
        remaining: 0,
    };
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        page.remaining = items.len() - limit;
        items.truncate(limit);
        let (ns, name) = sort_key(items.last().expect("limit is positive"));
        page.continue_token = Some(format!("{ns}/{name}"));
    }
    page.items = items;
    Ok(page)
}

enum Reply {
    Json(u16, Value),
    Rendered(Value, &'static str),
    Watch(WatchSpec, WatchFrom),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "labelSelector=istio.io%2Fdataplane-mode%3Dambient&fieldSelector=spec.nodeName%3Dnode-a&watch=1",
        ));
        assert_eq!(q["labelSelector"], "istio.io/dataplane-mode=ambient");
        assert_eq!(q["fieldSelector"], "spec.nodeName=node-a");
        assert!(truthy(&q, "watch"));
        assert_eq!(decode_component("a%2"), "a%2");
        assert_eq!(decode_component("in+(a%2Cb)"), "in (a,b)");
    }

    #[test]
    fn pages() {
        let items: Vec<Value> = ["a", "b", "c"]
            .iter()
            .map(|n| json!({"metadata": {"namespace": "ns", "name": n}}))
            .collect();
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let p = paginate(items.clone(), &q(&[("limit", "2")])).unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.remaining, 1);
        let token = p.continue_token.unwrap();
        let p = paginate(items.clone(), &q(&[("limit", "2"), ("continue", &token)])).unwrap();
        assert_eq!(p.items, items[2..]);
        assert!(p.continue_token.is_none());
        assert_eq!(
            paginate(items.clone(), &q(&[("limit", "500")]))
                .unwrap()
                .items
                .len(),
            3
        );
        assert!(paginate(items, &q(&[("continue", "garbage")])).is_err());
    }

    #[test]
    fn routes() {
        let t = route("/api/v1/namespaces/demo/pods/web/status").unwrap();
        assert_eq!(
            (
                t.resource,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.status
            ),
            (Resource::Pod, Some("demo"), Some("web"), true)
        );
        let t = route("/api/v1/pods").unwrap();
        assert_eq!(
            (t.resource, t.namespace, t.name),
            (Resource::Pod, None, None)
        );
        let t = route("/api/v1/namespaces/").unwrap();
        assert_eq!((t.resource, t.name), (Resource::Namespace, None));
        assert!(route("/api/v1/services").is_none());
        assert!(route("/api/v1/namespaces/demo/services/x").is_none());
    }
}
