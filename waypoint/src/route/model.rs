//! The routing model the data path reads: what the Kubernetes objects (HTTPRoute, GRPCRoute,
//! VirtualService) say, already validated and resolved, so nothing is parsed per request.

use std::time::Duration;

use http::Method;
use regex::Regex;

/// A Kubernetes Service by namespace and name (how routes, backends and policies name one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which object a rule came from: precedence ties are broken by age, then by this name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteId {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// RFC 3339 creation timestamp as written in the object (sorts by age); empty when unset.
    pub created: String,
}

impl std::fmt::Display for RouteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise prefix, stored without a trailing slash ("/" is stored as "").
    Prefix(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    pub fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(x) => x == v,
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// One HTTPRouteMatch: every part present must hold.
#[derive(Clone, Debug)]
pub struct RequestMatch {
    pub path: PathMatch,
    /// Header names are lower-case.
    pub headers: Vec<(String, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<Method>,
}

impl Default for RequestMatch {
    fn default() -> Self {
        RequestMatch {
            path: PathMatch::Prefix(String::new()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    Rewrite {
        hostname: Option<String>,
        path: Option<PathModifier>,
    },
    Mirror {
        service: ServiceRef,
        port: Option<u16>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub service: ServiceRef,
    /// The service port to send to; `None` = the port the request came in on.
    pub port: Option<u16>,
    pub weight: u32,
    pub filters: Vec<Filter>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, retries included, until the response headers.
    pub request: Option<Duration>,
    /// One attempt at a backend.
    pub backend_request: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first try (Gateway API `attempts`).
    pub attempts: u32,
    /// Response codes that are retried; connect failures and resets always are.
    pub codes: Vec<u16>,
    pub backoff: Duration,
}

/// Istio VirtualService fault injection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    /// (delay, percent of requests).
    pub delay: Option<(Duration, f64)>,
    /// (status code, percent of requests).
    pub abort: Option<(u16, f64)>,
}

/// What happens to a request once a rule matched it.
#[derive(Clone, Debug)]
pub struct Rule {
    pub route: RouteId,
    /// Position of the rule in its route (for `explain` and logs).
    pub index: usize,
    pub filters: Vec<Filter>,
    /// Empty means "the destination service itself" (the default route); weights may all be 0.
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
}

impl Rule {
    /// The route a waypoint uses for a service no route is attached to: straight to it.
    pub fn default_for(service: &ServiceRef) -> Rule {
        Rule {
            route: RouteId {
                kind: "default",
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                created: String::new(),
            },
            index: 0,
            filters: Vec::new(),
            backends: vec![Backend {
                service: service.clone(),
                port: None,
                weight: 1,
                filters: Vec::new(),
            }],
            timeouts: Timeouts::default(),
            retry: None,
        }
    }
}
