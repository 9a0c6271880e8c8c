//! Istio's objects (VirtualService, AuthorizationPolicy) and core/v1 Service ports turned
//! into the waypoint's model, with the same refusal rules as the Gateway API kinds.

use std::time::Duration;

use http::Method;

use super::convert::{anchored, duration, Result};
use super::objects::*;
use crate::authz;
use crate::balance::LbPolicy;
use crate::route::{Fault, Overlay, PathMatch, RequestMatch, Retry, ServiceRef, ValueMatch};

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

/// An Istio StringMatch: `exact`, `prefix` (a plain string prefix, not element-wise) or
/// `regex`; `what` names it in the error.
fn vs_string(s: &VsString, what: &str) -> Result<ValueMatch> {
    match (&s.exact, &s.prefix, &s.regex) {
        (Some(e), None, None) => Ok(ValueMatch::Exact(e.clone())),
        (None, Some(p), None) => Ok(ValueMatch::Regex(anchored(&format!(
            "{}.*",
            regex::escape(p)
        ))?)),
        (None, None, Some(r)) => Ok(ValueMatch::Regex(anchored(r)?)),
        _ => Err(format!("{what} needs exactly one of exact, prefix, regex")),
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
                Some(u) => match vs_string(u, "uri").map_err(ctx)? {
                    ValueMatch::Exact(e) => PathMatch::Exact(e),
                    ValueMatch::Regex(r) => PathMatch::Regex(r),
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
                .map(|(k, v)| Ok((k.to_ascii_lowercase(), vs_string(v, "string match")?)))
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

/// A DestinationRule's balancing policy for the service its `host` names; `None` when it sets
/// no `loadBalancer.simple` (the default then applies).
pub fn destination_rule(
    spec: &DestinationRuleSpec,
    ns: &str,
) -> Result<Option<(ServiceRef, LbPolicy)>> {
    let svc = host_to_service(&spec.host, ns)
        .ok_or_else(|| format!("host {:?} does not name a service", spec.host))?;
    let simple = spec
        .traffic_policy
        .as_ref()
        .and_then(|t| t.load_balancer.as_ref())
        .and_then(|l| l.simple.as_deref());
    simple
        .map(|s| LbPolicy::from_simple(s).map(|p| (svc, p)))
        .transpose()
}
