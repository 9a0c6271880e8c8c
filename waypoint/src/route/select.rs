//! Choosing the rule for a request: the Gateway API precedence across every rule attached to
//! the destination service, computed once when the table is built so a request walks an
//! ordered list and stops at the first match.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};

use super::model::{Fault, PathMatch, RequestMatch, Retry, Rule, ServiceRef};

/// The parts of a request that matches look at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// One match of one rule, attached to a service (and maybe only one of its ports).
#[derive(Clone, Debug)]
pub struct Entry {
    pub port: Option<u16>,
    pub matcher: RequestMatch,
    pub rule: Arc<Rule>,
    /// Position of the match within its rule (rule order breaks the last ties).
    pub match_index: usize,
}

/// VirtualService settings for requests to a service: the first entry whose matches hold
/// (or that has none) applies.
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    pub source: String,
    pub matches: Vec<RequestMatch>,
    pub fault: Option<Fault>,
    pub retry: Option<Retry>,
    pub timeout: Option<std::time::Duration>,
    pub per_try_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    by_service: HashMap<ServiceRef, Vec<Entry>>,
    overlays: HashMap<ServiceRef, Vec<Overlay>>,
}

/// The outcome of [`RouteTable::select`].
#[derive(Debug)]
pub enum Selected<'a> {
    /// No route is attached to this service port: the waypoint sends to the service itself.
    Unrouted,
    Matched(&'a Entry),
    /// Routes are attached but none matches: 404.
    NoMatch,
}

impl RouteTable {
    pub fn new(entries: Vec<(ServiceRef, Entry)>, overlays: Vec<(ServiceRef, Overlay)>) -> Self {
        let mut by_service: HashMap<ServiceRef, Vec<Entry>> = HashMap::new();
        for (svc, e) in entries {
            by_service.entry(svc).or_default().push(e);
        }
        for list in by_service.values_mut() {
            list.sort_by(precedence);
        }
        let mut by_svc_overlays: HashMap<ServiceRef, Vec<Overlay>> = HashMap::new();
        for (svc, o) in overlays {
            by_svc_overlays.entry(svc).or_default().push(o);
        }
        RouteTable {
            by_service,
            overlays: by_svc_overlays,
        }
    }

    /// The rule for a request to `svc:port` from a client in `client_ns`. Routes in the
    /// service's own namespace (producer routes) apply to every client; a route in another
    /// namespace (a consumer route, GEP-1294) applies only to clients in that namespace, and
    /// for them it replaces the producer routes of that service port.
    pub fn select(
        &self,
        svc: &ServiceRef,
        port: u16,
        client_ns: &str,
        req: &RequestView<'_>,
    ) -> Selected<'_> {
        let Some(list) = self.by_service.get(svc) else {
            return Selected::Unrouted;
        };
        let on_port = |e: &&Entry| e.port.is_none_or(|p| p == port);
        let consumer = |e: &Entry| e.rule.route.namespace != svc.namespace;
        let own_consumer = list
            .iter()
            .filter(on_port)
            .any(|e| consumer(e) && e.rule.route.namespace == client_ns);
        let mut attached = false;
        for e in list.iter().filter(on_port).filter(|e| {
            if own_consumer {
                e.rule.route.namespace == client_ns
            } else {
                !consumer(e)
            }
        }) {
            attached = true;
            if matches(&e.matcher, req) {
                return Selected::Matched(e);
            }
        }
        if attached {
            Selected::NoMatch
        } else {
            Selected::Unrouted
        }
    }

    /// The VirtualService settings that apply to this request, if any.
    pub fn overlay(&self, svc: &ServiceRef, req: &RequestView<'_>) -> Option<&Overlay> {
        self.overlays
            .get(svc)?
            .iter()
            .find(|o| o.matches.is_empty() || o.matches.iter().any(|m| matches(m, req)))
    }

    pub fn services(&self) -> impl Iterator<Item = (&ServiceRef, &[Entry])> {
        self.by_service.iter().map(|(k, v)| (k, v.as_slice()))
    }

    pub fn overlays(&self) -> impl Iterator<Item = (&ServiceRef, &[Overlay])> {
        self.overlays.iter().map(|(k, v)| (k, v.as_slice()))
    }
}

/// Gateway API order: Exact path, then the longest PathPrefix, then a method match, then
/// more header matches, then more query matches; then the oldest route, then
/// "{namespace}/{name}" alphabetically, then rule and match order. RegularExpression precedence
/// is left to implementations: here it ranks below every prefix.
fn precedence(a: &Entry, b: &Entry) -> Ordering {
    fn path_rank(p: &PathMatch) -> (u8, usize) {
        match p {
            PathMatch::Exact(s) => (0, usize::MAX - s.len()),
            // "/" is stored as "" and counts one character, like the spec's "/".
            PathMatch::Prefix(s) => (1, usize::MAX - s.len().max(1)),
            PathMatch::Regex(_) => (2, 0),
        }
    }
    let (ma, mb) = (&a.matcher, &b.matcher);
    path_rank(&ma.path)
        .cmp(&path_rank(&mb.path))
        .then_with(|| mb.method.is_some().cmp(&ma.method.is_some()))
        .then_with(|| mb.headers.len().cmp(&ma.headers.len()))
        .then_with(|| mb.query.len().cmp(&ma.query.len()))
        .then_with(|| created_order(&a.rule.route.created, &b.rule.route.created))
        .then_with(|| {
            (&a.rule.route.namespace, &a.rule.route.name)
                .cmp(&(&b.rule.route.namespace, &b.rule.route.name))
        })
        .then_with(|| a.rule.index.cmp(&b.rule.index))
        .then_with(|| a.match_index.cmp(&b.match_index))
}

/// RFC 3339 timestamps in UTC ("2024-01-02T03:04:05Z") sort as strings; a route without one
/// is treated as the newest.
fn created_order(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

pub fn matches(m: &RequestMatch, req: &RequestView<'_>) -> bool {
    path_matches(&m.path, req.path)
        && m.method.as_ref().is_none_or(|x| x == req.method)
        && m.headers.iter().all(|(name, want)| {
            // Repeated headers are compared as one comma-joined value (RFC 9110 5.3).
            let mut values = req.headers.get_all(name.as_str()).iter().peekable();
            if values.peek().is_none() {
                return false;
            }
            let joined: Vec<&str> = values.filter_map(|v| v.to_str().ok()).collect();
            want.matches(&joined.join(","))
        })
        && m.query.iter().all(|(name, want)| {
            // The first occurrence of a repeated parameter is the one matched.
            query_param(req.query, name).is_some_and(|v| want.matches(v))
        })
}

pub fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            path.starts_with(p.as_str())
                && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
        // Regexes are compiled anchored (`^(?:...)$`): the whole path must match.
        PathMatch::Regex(r) => r.is_match(path),
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}
