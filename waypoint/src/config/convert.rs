//! Turning the parsed objects into the routing and policy model, refusing what cannot be
//! honoured (a bad regex, ReplacePrefixMatch without a PathPrefix match, a redirect code the
//! spec does not allow) instead of silently routing differently. Istio's own kinds and the
//! Service port protocol are in `convert_istio`.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use regex::Regex;

use super::objects::*;
use crate::route::{
    Backend, Entry, Filter, HeaderModifier, PathMatch, PathModifier, Redirect, RequestMatch, Retry,
    RouteId, Rule, ServiceRef, Timeouts, ValueMatch,
};

pub type Result<T> = std::result::Result<T, String>;

pub(super) fn anchored(re: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("bad regular expression {re:?}: {e}"))
}

pub(super) fn duration(s: &str) -> Result<Duration> {
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn value_match(kind: Option<&str>, value: &str) -> Result<ValueMatch> {
    match kind.unwrap_or("Exact") {
        "Exact" => Ok(ValueMatch::Exact(value.to_owned())),
        "RegularExpression" => Ok(ValueMatch::Regex(anchored(value)?)),
        other => Err(format!("unsupported match type {other:?}")),
    }
}

/// Parent services of a route: kind Service (core group), the route's namespace by default.
/// Parents of other kinds (a Gateway) are not this waypoint's business and are skipped.
fn parents(refs: &[ParentRef], ns: &str) -> Vec<(ServiceRef, Option<u16>)> {
    refs.iter()
        .filter(|p| {
            p.kind.as_deref() == Some("Service") && p.group.as_deref().unwrap_or("").is_empty()
        })
        .map(|p| {
            (
                ServiceRef::new(p.namespace.as_deref().unwrap_or(ns), &p.name),
                p.port,
            )
        })
        .collect()
}

fn http_match(m: &HttpRouteMatch) -> Result<RequestMatch> {
    let path = match &m.path {
        None => PathMatch::Prefix(String::new()),
        Some(p) => {
            let value = p.value.as_deref().unwrap_or("/");
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(value.to_owned()),
                "PathPrefix" => {
                    if !value.starts_with('/') {
                        return Err(format!("path prefix {value:?} must start with /"));
                    }
                    PathMatch::Prefix(value.trim_end_matches('/').to_owned())
                }
                "RegularExpression" => PathMatch::Regex(anchored(value)?),
                other => return Err(format!("unsupported path match type {other:?}")),
            }
        }
    };
    let headers = m
        .headers
        .iter()
        .map(|h| {
            Ok((
                h.name.to_ascii_lowercase(),
                value_match(h.kind.as_deref(), &h.value)?,
            ))
        })
        .collect::<Result<_>>()?;
    let query = m
        .query_params
        .iter()
        .map(|q| Ok((q.name.clone(), value_match(q.kind.as_deref(), &q.value)?)))
        .collect::<Result<_>>()?;
    let method = match &m.method {
        Some(s) => Some(Method::from_bytes(s.as_bytes()).map_err(|_| format!("bad method {s:?}"))?),
        None => None,
    };
    Ok(RequestMatch {
        path,
        headers,
        query,
        method,
    })
}

fn header_modifier(m: &HeaderModifierSpec) -> Result<HeaderModifier> {
    let check = |n: &str| {
        http::HeaderName::from_bytes(n.as_bytes())
            .map(|h| h.as_str().to_owned())
            .map_err(|_| format!("bad header name {n:?}"))
    };
    let pairs = |v: &[NameValue]| -> Result<Vec<(String, String)>> {
        v.iter()
            .map(|nv| {
                http::HeaderValue::from_str(&nv.value)
                    .map_err(|_| format!("bad header value for {}", nv.name))?;
                Ok((check(&nv.name)?, nv.value.clone()))
            })
            .collect()
    };
    Ok(HeaderModifier {
        set: pairs(&m.set)?,
        add: pairs(&m.add)?,
        remove: m.remove.iter().map(|n| check(n)).collect::<Result<_>>()?,
    })
}

fn path_modifier(p: &PathModifierSpec) -> Result<PathModifier> {
    match p.kind.as_str() {
        "ReplaceFullPath" => Ok(PathModifier::ReplaceFullPath(
            p.replace_full_path
                .clone()
                .ok_or("ReplaceFullPath without replaceFullPath")?,
        )),
        "ReplacePrefixMatch" => Ok(PathModifier::ReplacePrefixMatch(
            p.replace_prefix_match
                .clone()
                .ok_or("ReplacePrefixMatch without replacePrefixMatch")?,
        )),
        other => Err(format!("unsupported path modifier {other:?}")),
    }
}

fn backend_ref(b: &BackendRef, ns: &str) -> Result<(ServiceRef, Option<u16>)> {
    let kind = b.kind.as_deref().unwrap_or("Service");
    if kind != "Service" || !b.group.as_deref().unwrap_or("").is_empty() {
        return Err(format!(
            "backendRef {}: kind {kind} is not supported",
            b.name
        ));
    }
    Ok((
        ServiceRef::new(b.namespace.as_deref().unwrap_or(ns), &b.name),
        b.port,
    ))
}

fn filter(f: &HttpFilter, ns: &str) -> Result<Filter> {
    let missing = |field: &str| format!("filter {} without {field}", f.kind);
    Ok(match f.kind.as_str() {
        "RequestHeaderModifier" => Filter::RequestHeaders(header_modifier(
            f.request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("requestHeaderModifier"))?,
        )?),
        "ResponseHeaderModifier" => Filter::ResponseHeaders(header_modifier(
            f.response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("responseHeaderModifier"))?,
        )?),
        "RequestRedirect" => {
            let r = f
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            let status = r.status_code.unwrap_or(302);
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                return Err(format!(
                    "redirect statusCode {status} is not 301/302/303/307/308"
                ));
            }
            if let Some(s) = &r.scheme {
                if s != "http" && s != "https" {
                    return Err(format!("redirect scheme {s:?} is not http or https"));
                }
            }
            Filter::Redirect(Redirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                port: r.port,
                path: r.path.as_ref().map(path_modifier).transpose()?,
                status,
            })
        }
        "URLRewrite" => {
            let r = f
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            Filter::Rewrite {
                hostname: r.hostname.clone(),
                path: r.path.as_ref().map(path_modifier).transpose()?,
            }
        }
        "RequestMirror" => {
            let m = f
                .request_mirror
                .as_ref()
                .ok_or_else(|| missing("requestMirror"))?;
            let (service, port) = backend_ref(&m.backend_ref, ns)?;
            Filter::Mirror { service, port }
        }
        other => return Err(format!("unsupported filter type {other:?}")),
    })
}

fn filters(list: &[HttpFilter], ns: &str) -> Result<Vec<Filter>> {
    list.iter().map(|f| filter(f, ns)).collect()
}

fn backends(list: &[BackendRef], ns: &str) -> Result<Vec<Backend>> {
    list.iter()
        .map(|b| {
            let (service, port) = backend_ref(b, ns)?;
            let filters = filters(&b.filters, ns)?;
            // Per-backend filters act on the request as it leaves for that backend: header
            // modifiers are applied there; anything else would be silently dropped, so refuse.
            if let Some(f) = filters
                .iter()
                .find(|f| !matches!(f, Filter::RequestHeaders(_) | Filter::ResponseHeaders(_)))
            {
                return Err(format!(
                    "backendRef {}: filter {} is not supported per backend (header modifiers are)",
                    b.name,
                    filter_kind(f)
                ));
            }
            Ok(Backend {
                service,
                port,
                weight: b.weight.unwrap_or(1),
                filters,
            })
        })
        .collect()
}

fn filter_kind(f: &Filter) -> &'static str {
    match f {
        Filter::RequestHeaders(_) => "RequestHeaderModifier",
        Filter::ResponseHeaders(_) => "ResponseHeaderModifier",
        Filter::Redirect(_) => "RequestRedirect",
        Filter::Rewrite { .. } => "URLRewrite",
        Filter::Mirror { .. } => "RequestMirror",
    }
}

/// ReplacePrefixMatch only makes sense when every match of the rule is a PathPrefix.
fn check_prefix_rewrites(fs: &[Filter], ms: &[RequestMatch]) -> Result<()> {
    let uses = fs.iter().any(|f| {
        matches!(
            f,
            Filter::Rewrite {
                path: Some(PathModifier::ReplacePrefixMatch(_)),
                ..
            } | Filter::Redirect(Redirect {
                path: Some(PathModifier::ReplacePrefixMatch(_)),
                ..
            })
        )
    });
    if uses && ms.iter().any(|m| !matches!(m.path, PathMatch::Prefix(_))) {
        return Err("ReplacePrefixMatch needs PathPrefix matches only".into());
    }
    Ok(())
}

fn route_id(kind: &'static str, meta: &Metadata, ns: &str) -> RouteId {
    RouteId {
        kind,
        namespace: ns.to_owned(),
        name: meta.name.clone(),
        created: meta.creation_timestamp.clone().unwrap_or_default(),
    }
}

/// One entry per parent (service, port) and match of `rule`.
fn push_entries(
    out: &mut Vec<(ServiceRef, Entry)>,
    parents: &[(ServiceRef, Option<u16>)],
    matches: &[RequestMatch],
    rule: &Arc<Rule>,
) {
    for (svc, port) in parents {
        for (mi, m) in matches.iter().enumerate() {
            out.push((
                svc.clone(),
                Entry {
                    port: *port,
                    matcher: m.clone(),
                    rule: rule.clone(),
                    match_index: mi,
                },
            ));
        }
    }
}

pub fn http_route(
    meta: &Metadata,
    spec: &HttpRouteSpec,
    ns: &str,
) -> Result<Vec<(ServiceRef, Entry)>> {
    let id = route_id("HTTPRoute", meta, ns);
    let parents = parents(&spec.parent_refs, ns);
    let mut out = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let ctx = |e: String| format!("rules[{i}]: {e}");
        let mut ms: Vec<RequestMatch> = r
            .matches
            .iter()
            .map(http_match)
            .collect::<Result<_>>()
            .map_err(ctx)?;
        if ms.is_empty() {
            ms.push(RequestMatch::default());
        }
        let fs = filters(&r.filters, ns).map_err(ctx)?;
        check_prefix_rewrites(&fs, &ms).map_err(ctx)?;
        let timeouts = match &r.timeouts {
            Some(t) => Timeouts {
                request: t
                    .request
                    .as_deref()
                    .map(duration)
                    .transpose()
                    .map_err(ctx)?,
                backend_request: t
                    .backend_request
                    .as_deref()
                    .map(duration)
                    .transpose()
                    .map_err(ctx)?,
            },
            None => Timeouts::default(),
        };
        let retry = match &r.retry {
            Some(rt) => Some(Retry {
                attempts: rt.attempts.unwrap_or(1),
                codes: rt.codes.clone(),
                backoff: rt
                    .backoff
                    .as_deref()
                    .map(duration)
                    .transpose()
                    .map_err(ctx)?
                    .unwrap_or_default(),
            }),
            None => None,
        };
        let has_redirect = fs.iter().any(|f| matches!(f, Filter::Redirect(_)));
        let bs = backends(&r.backend_refs, ns).map_err(ctx)?;
        if bs.is_empty() && !has_redirect {
            return Err(ctx("no backendRefs and no RequestRedirect".into()));
        }
        let rule = Arc::new(Rule {
            route: id.clone(),
            index: i,
            filters: fs,
            backends: bs,
            timeouts,
            retry,
        });
        push_entries(&mut out, &parents, &ms, &rule);
    }
    Ok(out)
}

/// GRPCRoute becomes HTTP matches on `/<service>/<method>` (gRPC's request path).
pub fn grpc_route(
    meta: &Metadata,
    spec: &GrpcRouteSpec,
    ns: &str,
) -> Result<Vec<(ServiceRef, Entry)>> {
    let id = route_id("GRPCRoute", meta, ns);
    let parents = parents(&spec.parent_refs, ns);
    let mut out = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let ctx = |e: String| format!("rules[{i}]: {e}");
        let mut ms = Vec::new();
        for m in &r.matches {
            let path = match &m.method {
                None => PathMatch::Prefix(String::new()),
                Some(gm) => grpc_path(gm).map_err(ctx)?,
            };
            let headers = m
                .headers
                .iter()
                .map(|h| {
                    Ok((
                        h.name.to_ascii_lowercase(),
                        value_match(h.kind.as_deref(), &h.value)?,
                    ))
                })
                .collect::<Result<_>>()
                .map_err(ctx)?;
            ms.push(RequestMatch {
                path,
                headers,
                query: vec![],
                method: None,
            });
        }
        if ms.is_empty() {
            ms.push(RequestMatch::default());
        }
        let fs = filters(&r.filters, ns).map_err(ctx)?;
        let rule = Arc::new(Rule {
            route: id.clone(),
            index: i,
            filters: fs,
            backends: backends(&r.backend_refs, ns).map_err(ctx)?,
            timeouts: Timeouts::default(),
            retry: None,
        });
        push_entries(&mut out, &parents, &ms, &rule);
    }
    Ok(out)
}

fn grpc_path(m: &GrpcMethodMatch) -> Result<PathMatch> {
    let (svc, method) = (m.service.as_deref(), m.method.as_deref());
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Ok(match (svc, method) {
            (Some(s), Some(me)) => PathMatch::Exact(format!("/{s}/{me}")),
            (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
            (None, Some(me)) => {
                PathMatch::Regex(anchored(&format!("/[^/]+/{}", regex::escape(me)))?)
            }
            (None, None) => return Err("method match without service or method".into()),
        }),
        "RegularExpression" => {
            let s = svc.unwrap_or("[^/]+");
            let me = method.unwrap_or("[^/]+");
            Ok(PathMatch::Regex(anchored(&format!("/{s}/{me}"))?))
        }
        other => Err(format!("unsupported method match type {other:?}")),
    }
}
