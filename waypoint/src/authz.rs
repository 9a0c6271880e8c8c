//! L7 authorization: Istio AuthorizationPolicy attached to services (or to the whole waypoint)
//! by `targetRefs`, evaluated per request in ztunnel's order: a matching DENY denies; with no
//! ALLOW policy the request is allowed; otherwise some ALLOW must match. AUDIT only logs.

use std::net::IpAddr;

use http::{HeaderMap, Method};
use meshtunnel::state::Cidr;

use crate::route::ServiceRef;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

/// What a policy is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Service(ServiceRef),
    /// The waypoint as a whole (targetRef kind Gateway or GatewayClass `istio-waypoint`).
    Waypoint,
}

/// An AuthorizationPolicy string: exact, `*` (any), `prefix*` or `*suffix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_owned())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_owned())
        } else {
            Pattern::Exact(s.to_owned())
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(x) => x == v,
            Pattern::Prefix(x) => v.starts_with(x.as_str()),
            Pattern::Suffix(x) => v.ends_with(x.as_str()),
        }
    }
}

/// A field with its positive and `not` values: holds when the positive list is empty or has
/// a match, and no `not` value matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field<T> {
    pub any_of: Vec<T>,
    pub none_of: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Field {
            any_of: Vec::new(),
            none_of: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    fn holds(&self, f: impl Fn(&T) -> bool) -> bool {
        (self.any_of.is_empty() || self.any_of.iter().any(&f)) && !self.none_of.iter().any(&f)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub principals: Field<Pattern>,
    pub namespaces: Field<Pattern>,
    pub ip_blocks: Field<Cidr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operation {
    pub hosts: Field<Pattern>,
    pub ports: Field<u16>,
    pub methods: Field<Pattern>,
    pub paths: Field<Pattern>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionKey {
    RequestHeader(String),
    SourcePrincipal,
    SourceNamespace,
    SourceIp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Field<Pattern>,
}

/// `from` entries OR, `to` entries OR, `when` conditions AND; empty lists hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub action: Action,
    pub targets: Vec<Target>,
    /// No rules: an ALLOW matches nothing (denies all), a DENY matches nothing.
    pub rules: Vec<Rule>,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn applies_to(&self, svc: Option<&ServiceRef>) -> bool {
        self.targets.iter().any(|t| match t {
            Target::Waypoint => true,
            Target::Service(s) => Some(s) == svc,
        })
    }
}

/// One request as policy sees it.
pub struct RequestAttrs<'a> {
    /// Principal without `spiffe://` (`td/ns/x/sa/y`); `None` without a verified peer.
    pub principal: Option<&'a str>,
    pub source_namespace: Option<&'a str>,
    pub source_ip: IpAddr,
    pub host: &'a str,
    pub port: u16,
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    /// AUDIT policies that matched (logged by the caller).
    pub audited: Vec<String>,
}

/// Decides one request to `svc` (`None` for a workload-addressed request).
pub fn evaluate(policies: &[Policy], svc: Option<&ServiceRef>, req: &RequestAttrs<'_>) -> Decision {
    let applicable = || policies.iter().filter(|p| p.applies_to(svc));
    let first_match = |p: &Policy| p.rules.iter().position(|r| rule_matches(r, req));
    let audited: Vec<String> = applicable()
        .filter(|p| p.action == Action::Audit && first_match(p).is_some())
        .map(Policy::key)
        .collect();
    for p in applicable().filter(|p| p.action == Action::Deny) {
        if let Some(i) = first_match(p) {
            return Decision {
                allowed: false,
                reason: format!("DENY policy {} matched (rule {i})", p.key()),
                audited,
            };
        }
    }
    let mut allows = 0;
    for p in applicable().filter(|p| p.action == Action::Allow) {
        allows += 1;
        if let Some(i) = first_match(p) {
            return Decision {
                allowed: true,
                reason: format!("ALLOW policy {} matched (rule {i})", p.key()),
                audited,
            };
        }
    }
    Decision {
        allowed: allows == 0,
        reason: if allows == 0 {
            "no ALLOW policy applies".to_owned()
        } else {
            format!("none of {allows} ALLOW policies matched")
        },
        audited,
    }
}

fn rule_matches(r: &Rule, req: &RequestAttrs<'_>) -> bool {
    (r.from.is_empty() || r.from.iter().any(|s| source_matches(s, req)))
        && (r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, req)))
        && r.when.iter().all(|c| condition_holds(c, req))
}

fn opt_holds(field: &Field<Pattern>, v: Option<&str>) -> bool {
    match v {
        Some(v) => field.holds(|p| p.matches(v)),
        // Without the attribute only an empty field holds.
        None => field.any_of.is_empty(),
    }
}

fn source_matches(s: &Source, req: &RequestAttrs<'_>) -> bool {
    opt_holds(&s.principals, req.principal)
        && opt_holds(&s.namespaces, req.source_namespace)
        && s.ip_blocks.holds(|c| c.contains(req.source_ip))
}

fn operation_matches(o: &Operation, req: &RequestAttrs<'_>) -> bool {
    o.hosts.holds(|p| p.matches(req.host))
        && o.ports.holds(|p| *p == req.port)
        && o.methods.holds(|p| p.matches(req.method.as_str()))
        && o.paths.holds(|p| p.matches(req.path))
}

fn condition_holds(c: &Condition, req: &RequestAttrs<'_>) -> bool {
    let ip;
    let value: Option<&str> = match &c.key {
        ConditionKey::RequestHeader(h) => req.headers.get(h.as_str()).and_then(|v| v.to_str().ok()),
        ConditionKey::SourcePrincipal => req.principal,
        ConditionKey::SourceNamespace => req.source_namespace,
        ConditionKey::SourceIp => {
            ip = req.source_ip.to_string();
            Some(ip.as_str())
        }
    };
    match value {
        Some(v) => c.values.holds(|p| p.matches(v)),
        None => false,
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
