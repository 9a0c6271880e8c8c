//! Turning the parsed objects into the routing and policy model, refusing what cannot be
//! honoured (a bad regex, ReplacePrefixMatch without a PathPrefix match, a redirect code the
//! spec does not allow) instead of silently routing differently.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use regex::Regex;

use super::objects::*;
use crate::authz;
use crate::route::{
    Backend, Entry, Fault, Filter, HeaderModifier, Overlay, PathMatch, PathModifier, Redirect,
    RequestMatch, Retry, RouteId, Rule, ServiceRef, Timeouts, ValueMatch,
};

pub type Result<T> = std::result::Result<T, String>;

fn anchored(re: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("bad regular expression {re:?}: {e}"))
}

fn duration(s: &str) -> Result<Duration> {
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

pub fn http_route(
    meta: &Metadata,
    spec: &HttpRouteSpec,
    ns: &str,
) -> Result<Vec<(ServiceRef, Entry)>> {
    let id = RouteId {
        kind: "HTTPRoute",
        namespace: ns.to_owned(),
        name: meta.name.clone(),
        created: meta.creation_timestamp.clone().unwrap_or_default(),
    };
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
        for (svc, port) in &parents {
            for (mi, m) in ms.iter().enumerate() {
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
    Ok(out)
}

/// GRPCRoute becomes HTTP matches on `/<service>/<method>` (gRPC's request path).
pub fn grpc_route(
    meta: &Metadata,
    spec: &GrpcRouteSpec,
    ns: &str,
) -> Result<Vec<(ServiceRef, Entry)>> {
    let id = RouteId {
        kind: "GRPCRoute",
        namespace: ns.to_owned(),
        name: meta.name.clone(),
        created: meta.creation_timestamp.clone().unwrap_or_default(),
    };
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
        for (svc, port) in &parents {
            for (mi, m) in ms.iter().enumerate() {
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

/// "name", "name.ns", "name.ns.svc", "name.ns.svc.<domain>" → the Service it names.
pub fn host_to_service(host: &str, ns: &str) -> Option<ServiceRef> {
    let mut parts = host.split('.');
    let name = parts.next().filter(|n| !n.is_empty() && *n != "*")?;
    let svc_ns = parts.next().unwrap_or(ns);
    Some(ServiceRef::new(svc_ns, name))
}

fn percent(p: &Option<Percent>) -> Result<f64> {
    let v = p.as_ref().map_or(100.0, |p| p.value);
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("percentage {v} outside 0..100"));
    }
    Ok(v)
}

fn vs_string(s: &VsString) -> Result<ValueMatch> {
    match (&s.exact, &s.prefix, &s.regex) {
        (Some(e), None, None) => Ok(ValueMatch::Exact(e.clone())),
        (None, Some(p), None) => Ok(ValueMatch::Regex(anchored(&format!(
            "{}.*",
            regex::escape(p)
        ))?)),
        (None, None, Some(r)) => Ok(ValueMatch::Regex(anchored(r)?)),
        _ => Err("string match needs exactly one of exact, prefix, regex".into()),
    }
}

pub fn virtual_service(
    meta: &Metadata,
    spec: &VirtualServiceSpec,
    ns: &str,
) -> Result<Vec<(ServiceRef, Overlay)>> {
    let mut out = Vec::new();
    let source = format!("VirtualService {ns}/{}", meta.name);
    for (i, h) in spec.http.iter().enumerate() {
        let ctx = |e: String| format!("http[{i}]: {e}");
        let mut matches = Vec::new();
        for m in &h.matches {
            let path = match &m.uri {
                None => PathMatch::Prefix(String::new()),
                Some(u) => match (&u.exact, &u.prefix, &u.regex) {
                    (Some(e), None, None) => PathMatch::Exact(e.clone()),
                    // Istio's uri prefix is a plain string prefix, not element-wise.
                    (None, Some(p), None) => {
                        PathMatch::Regex(anchored(&format!("{}.*", regex::escape(p))).map_err(ctx)?)
                    }
                    (None, None, Some(r)) => PathMatch::Regex(anchored(r).map_err(ctx)?),
                    _ => return Err(ctx("uri needs exactly one of exact, prefix, regex".into())),
                },
            };
            let method = match &m.method {
                Some(VsString { exact: Some(e), .. }) => Some(
                    Method::from_bytes(e.as_bytes())
                        .map_err(|_| ctx(format!("bad method {e:?}")))?,
                ),
                Some(_) => return Err(ctx("method supports exact only".into())),
                None => None,
            };
            let headers = m
                .headers
                .iter()
                .map(|(k, v)| Ok((k.to_ascii_lowercase(), vs_string(v)?)))
                .collect::<Result<_>>()
                .map_err(ctx)?;
            matches.push(RequestMatch {
                path,
                headers,
                query: vec![],
                method,
            });
        }
        let fault = match &h.fault {
            Some(f) => Some(Fault {
                delay: match &f.delay {
                    Some(d) => Some((
                        duration(&d.fixed_delay).map_err(ctx)?,
                        percent(&d.percentage).map_err(ctx)?,
                    )),
                    None => None,
                },
                abort: match &f.abort {
                    Some(a) => {
                        if !(200..=599).contains(&a.http_status) {
                            return Err(ctx(format!(
                                "abort httpStatus {} is not 200..599",
                                a.http_status
                            )));
                        }
                        Some((a.http_status, percent(&a.percentage).map_err(ctx)?))
                    }
                    None => None,
                },
            }),
            None => None,
        };
        // Istio's retryOn ("5xx", "gateway-error", codes) becomes the codes retried; connect
        // failures and resets are always retried. Istio's default backoff is 25 ms.
        let retry = h.retries.as_ref().map(|r| Retry {
            attempts: r.attempts,
            codes: retry_on_codes(r.retry_on.as_deref()),
            backoff: Duration::from_millis(25),
        });
        let overlay = Overlay {
            source: source.clone(),
            matches,
            fault,
            retry,
            timeout: h
                .timeout
                .as_deref()
                .map(duration)
                .transpose()
                .map_err(ctx)?,
            per_try_timeout: h
                .retries
                .as_ref()
                .and_then(|r| r.per_try_timeout.as_deref())
                .map(duration)
                .transpose()
                .map_err(ctx)?,
        };
        for host in &spec.hosts {
            let svc = host_to_service(host, ns)
                .ok_or_else(|| format!("host {host:?} does not name a service"))?;
            out.push((svc, overlay.clone()));
        }
    }
    Ok(out)
}

fn retry_on_codes(retry_on: Option<&str>) -> Vec<u16> {
    let mut codes = Vec::new();
    for part in retry_on.unwrap_or("5xx").split(',').map(str::trim) {
        match part {
            "5xx" => codes.extend(500..=599),
            "gateway-error" => codes.extend([502, 503, 504]),
            p => {
                if let Ok(c) = p.parse::<u16>() {
                    codes.push(c)
                }
            }
        }
    }
    codes
}

fn patterns(v: &[String]) -> Vec<authz::Pattern> {
    v.iter().map(|s| authz::Pattern::parse(s)).collect()
}

fn pattern_field(any: &[String], none: &[String]) -> authz::Field<authz::Pattern> {
    authz::Field {
        any_of: patterns(any),
        none_of: patterns(none),
    }
}

pub fn authorization_policy(
    meta: &Metadata,
    spec: &AuthzSpec,
    ns: &str,
    root_ns: &str,
) -> Result<Option<authz::Policy>> {
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => authz::Action::Allow,
        "DENY" => authz::Action::Deny,
        "AUDIT" => authz::Action::Audit,
        other => {
            return Err(format!(
                "action {other:?} is not supported (ALLOW, DENY, AUDIT)"
            ))
        }
    };
    let mut targets = Vec::new();
    for t in spec.target_refs.iter().chain(spec.target_ref.as_ref()) {
        match t.kind.as_deref() {
            Some("Service") => targets.push(authz::Target::Service(ServiceRef::new(ns, &t.name))),
            Some("Gateway") => targets.push(authz::Target::Waypoint),
            Some("GatewayClass") if t.name == "istio-waypoint" && ns == root_ns => {
                targets.push(authz::Target::Waypoint)
            }
            _ => {}
        }
    }
    // Without targetRefs a policy selects workloads (ztunnel's business), not this waypoint.
    if targets.is_empty() {
        return Ok(None);
    }
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let ctx = |e: String| format!("rules[{i}]: {e}");
        let from = r
            .from
            .iter()
            .map(|f| {
                let s = &f.source;
                let cidrs = |v: &[String]| -> Result<Vec<meshtunnel::state::Cidr>> {
                    v.iter()
                        .map(|c| c.parse().map_err(|e| format!("ipBlocks {c:?}: {e}")))
                        .collect()
                };
                Ok(authz::Source {
                    principals: pattern_field(&s.principals, &s.not_principals),
                    namespaces: pattern_field(&s.namespaces, &s.not_namespaces),
                    ip_blocks: authz::Field {
                        any_of: cidrs(&s.ip_blocks)?,
                        none_of: cidrs(&s.not_ip_blocks)?,
                    },
                })
            })
            .collect::<Result<_>>()
            .map_err(ctx)?;
        let to =
            r.to.iter()
                .map(|t| {
                    let o = &t.operation;
                    let ports = |v: &[String]| -> Result<Vec<u16>> {
                        v.iter()
                            .map(|p| p.parse().map_err(|_| format!("port {p:?} is not a number")))
                            .collect()
                    };
                    Ok(authz::Operation {
                        hosts: pattern_field(&o.hosts, &o.not_hosts),
                        ports: authz::Field {
                            any_of: ports(&o.ports)?,
                            none_of: ports(&o.not_ports)?,
                        },
                        methods: pattern_field(&o.methods, &o.not_methods),
                        paths: pattern_field(&o.paths, &o.not_paths),
                    })
                })
                .collect::<Result<_>>()
                .map_err(ctx)?;
        let when = r
            .when
            .iter()
            .map(|w| {
                let key = if let Some(h) = w
                    .key
                    .strip_prefix("request.headers[")
                    .and_then(|k| k.strip_suffix(']'))
                {
                    authz::ConditionKey::RequestHeader(h.to_ascii_lowercase())
                } else {
                    match w.key.as_str() {
                        "source.principal" => authz::ConditionKey::SourcePrincipal,
                        "source.namespace" => authz::ConditionKey::SourceNamespace,
                        "source.ip" => authz::ConditionKey::SourceIp,
                        k => return Err(format!("when key {k:?} is not supported")),
                    }
                };
                Ok(authz::Condition {
                    key,
                    values: pattern_field(&w.values, &w.not_values),
                })
            })
            .collect::<Result<_>>()
            .map_err(ctx)?;
        rules.push(authz::Rule { from, to, when });
    }
    Ok(Some(authz::Policy {
        namespace: ns.to_owned(),
        name: meta.name.clone(),
        action,
        targets,
        rules,
    }))
}

/// How the waypoint speaks to a service port, from its appProtocol or name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProtocol {
    Http1,
    Http2,
    Tcp,
}

pub fn app_protocol(p: &ServicePort) -> Option<AppProtocol> {
    let from = |s: &str| -> Option<AppProtocol> {
        let s = s.to_ascii_lowercase();
        match s.split(['-', '_']).next().unwrap_or("") {
            "http" => Some(AppProtocol::Http1),
            "http2" | "grpc" | "grpc-web" | "h2c" => Some(AppProtocol::Http2),
            "tcp" | "tls" | "mongo" | "mysql" | "redis" | "https" => Some(AppProtocol::Tcp),
            _ if s == "kubernetes.io/h2c" => Some(AppProtocol::Http2),
            _ => None,
        }
    };
    p.app_protocol
        .as_deref()
        .and_then(from)
        .or_else(|| p.name.as_deref().and_then(from))
}
