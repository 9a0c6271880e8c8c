//! Istio's standard TCP label set and how it follows from what a proxy knows about one
//! connection. Names and values are Istio's, so dashboards written for Istio work unchanged;
//! whatever is not known is `unknown`.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::identity::Identity;
use crate::state::{Service, Workload};

/// Which side of the connection this ztunnel proxies.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The client's ztunnel (outbound, 15001).
    #[default]
    Source,
    /// The server's ztunnel (inbound, 15008 or 15006).
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }

    /// The access log's word for it.
    pub fn direction(self) -> &'static str {
        match self {
            Reporter::Source => "outbound",
            Reporter::Destination => "inbound",
        }
    }
}

/// Why a connection ended early, in Envoy's response-flag spelling as Istio reports it.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    #[default]
    None,
    /// Refused by an authorization policy.
    Deny,
    /// The upstream (app or peer ztunnel) could not be reached.
    Connect,
}

impl ResponseFlags {
    pub const ALL: [ResponseFlags; 3] = [
        ResponseFlags::None,
        ResponseFlags::Deny,
        ResponseFlags::Connect,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::Deny => "DENY",
            ResponseFlags::Connect => "CONNECT",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    #[default]
    Unknown,
    MutualTls,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::Unknown => "unknown",
            SecurityPolicy::MutualTls => "mutual_tls",
        }
    }
}

/// Only TCP for now; `http` arrives with waypoints.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub enum RequestProtocol {
    #[default]
    Tcp,
}

macro_rules! static_label_value {
    ($($t:ty => $f:expr),* $(,)?) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                let f: fn(&$t) -> &'static str = $f;
                w.write_str(f(self))
            }
        }
    )*};
}

static_label_value! {
    Reporter => |r| r.as_str(),
    ResponseFlags => |r| r.as_str(),
    SecurityPolicy => |s| s.as_str(),
    RequestProtocol => |_| "tcp",
}

/// A label value that reads `unknown` when empty.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Value(pub String);

impl Value {
    pub fn as_str(&self) -> &str {
        if self.0.is_empty() {
            "unknown"
        } else {
            &self.0
        }
    }

    fn is_unknown(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value(s.to_owned())
    }
}

impl EncodeLabelValue for Value {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        w.write_str(self.as_str())
    }
}

/// The label set of `istio_tcp_*`.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: Reporter,

    pub source_workload: Value,
    pub source_canonical_service: Value,
    pub source_canonical_revision: Value,
    pub source_workload_namespace: Value,
    pub source_principal: Value,
    pub source_app: Value,
    pub source_version: Value,
    pub source_cluster: Value,

    pub destination_service: Value,
    pub destination_service_namespace: Value,
    pub destination_service_name: Value,

    pub destination_workload: Value,
    pub destination_canonical_service: Value,
    pub destination_canonical_revision: Value,
    pub destination_workload_namespace: Value,
    pub destination_principal: Value,
    pub destination_app: Value,
    pub destination_version: Value,
    pub destination_cluster: Value,

    pub request_protocol: RequestProtocol,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// What a proxy knows about a connection when it opens.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionView<'a> {
    pub reporter: Reporter,
    /// The client workload, when its IP (or, outbound, its uid) is in the config.
    pub source: Option<&'a Workload>,
    /// The client's identity: the peer certificate's on inbound HBONE, the pod's own on
    /// outbound. None for plaintext inbound, where nothing proves who the client is.
    pub source_identity: Option<&'a Identity>,
    pub destination: Option<&'a Workload>,
    /// The destination's identity when the workload is not in the config (inbound: the pod
    /// whose certificate we presented).
    pub destination_identity: Option<&'a Identity>,
    /// The service when the client dialled a VIP.
    pub destination_service: Option<&'a Service>,
    pub mtls: bool,
}

/// The workload labels Istio derives: the workload name (the pod name when the control
/// plane gave none), canonical service (defaults to the workload), revision (`latest`).
struct Derived<'a> {
    workload: &'a str,
    canonical_service: &'a str,
    canonical_revision: &'a str,
}

fn derive(w: &Workload) -> Derived<'_> {
    let workload = first_set(&w.workload_name, &w.name);
    Derived {
        workload,
        canonical_service: first_set(&w.canonical_name, workload),
        canonical_revision: first_set(&w.canonical_revision, "latest"),
    }
}

fn first_set<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() {
        b
    } else {
        a
    }
}

fn principal(id: &Identity) -> Value {
    spiffe(&id.trust_domain, &id.namespace, &id.service_account)
}

/// The same text as `Identity`'s Display, without building an `Identity` first.
fn spiffe(td: &str, ns: &str, sa: &str) -> Value {
    let mut s = String::with_capacity(24 + td.len() + ns.len() + sa.len());
    let _ = write!(s, "spiffe://{td}/ns/{ns}/sa/{sa}");
    Value(s)
}

impl TrafficLabels {
    /// Whether the labels carry the identity of the other end (the client's for the destination
    /// reporter, the server's for the source reporter).
    pub(crate) fn names_peer_identity(&self) -> bool {
        match self.reporter {
            Reporter::Source => !self.destination_principal.is_unknown(),
            Reporter::Destination => !self.source_principal.is_unknown(),
        }
    }

    pub fn from_view(v: &ConnectionView<'_>) -> Self {
        let mut l = TrafficLabels {
            reporter: v.reporter,
            connection_security_policy: if v.mtls {
                SecurityPolicy::MutualTls
            } else {
                SecurityPolicy::Unknown
            },
            ..Default::default()
        };
        if let Some(w) = v.source {
            let d = derive(w);
            l.source_workload = d.workload.into();
            l.source_canonical_service = d.canonical_service.into();
            l.source_canonical_revision = d.canonical_revision.into();
            l.source_workload_namespace = w.namespace.as_str().into();
            l.source_app = d.canonical_service.into();
            l.source_version = d.canonical_revision.into();
            l.source_cluster = w.cluster_id.as_str().into();
        }
        if let Some(id) = v.source_identity {
            // The certificate is what proved who the client is: it wins over the IP lookup.
            l.source_principal = principal(id);
            if l.source_workload_namespace.is_unknown() {
                l.source_workload_namespace = id.namespace.as_str().into();
            }
        }
        if let Some(w) = v.destination {
            let d = derive(w);
            l.destination_workload = d.workload.into();
            l.destination_canonical_service = d.canonical_service.into();
            l.destination_canonical_revision = d.canonical_revision.into();
            l.destination_workload_namespace = w.namespace.as_str().into();
            l.destination_principal = spiffe(&w.trust_domain, &w.namespace, &w.service_account);
            l.destination_app = d.canonical_service.into();
            l.destination_version = d.canonical_revision.into();
            l.destination_cluster = w.cluster_id.as_str().into();
        } else if let Some(id) = v.destination_identity {
            l.destination_principal = principal(id);
            l.destination_workload_namespace = id.namespace.as_str().into();
        }
        if let Some(s) = v.destination_service {
            l.destination_service = s.hostname.as_str().into();
            l.destination_service_name = s.name.as_str().into();
            l.destination_service_namespace = s.namespace.as_str().into();
        }
        l
    }

    /// The same series with another response flag (closed/failed counters carry the reason).
    pub fn with_flags(&self, flags: ResponseFlags) -> Self {
        TrafficLabels {
            response_flags: flags,
            ..self.clone()
        }
    }
}

#[cfg(test)]
#[path = "labels_tests.rs"]
mod tests;
