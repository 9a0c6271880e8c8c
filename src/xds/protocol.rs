//! The client side of delta ADS for ztunnel's two resource types, without I/O: the client
//! feeds each `DeltaDiscoveryResponse` in and gets back the change to apply and the ACK or NACK
//! to send. The session outlives connections, so a reconnect can tell istiod what it still
//! holds (`initial_resource_versions`) and istiod only sends what changed.
//!
//! A malformed resource is refused on its own: the rest of its push is applied, the refused
//! one keeps its previous value (if any), and the reply is a NACK naming it. Refusing the whole
//! push would stop every unrelated update behind one bad object.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use prost::Message;

use super::convert::{self, ConvertError, Defaults};
use super::proto::{core::Node, discovery, rpc, security, workload as pw};
use crate::state::{Policy, Service, Workload};

pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";

/// The resource types ztunnel subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Address,
    Authorization,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Address, Kind::Authorization];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Address => ADDRESS_TYPE,
            Kind::Authorization => AUTHORIZATION_TYPE,
        }
    }

    fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// Short name for logs, metrics and the config dump.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Address => "Address",
            Kind::Authorization => "Authorization",
        }
    }
}

/// One accepted resource, in the workload model, already shared the way the store and
/// snapshots hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    Workload(Arc<Workload>),
    Service(Arc<Service>),
    Policy(Arc<Policy>),
}

/// What one response changes, keyed by xDS resource name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub upserts: Vec<(String, Resource)>,
    pub removals: Vec<String>,
}

/// The outcome of one response.
#[derive(Debug)]
pub struct Handled {
    pub kind: Option<Kind>,
    pub change: Change,
    /// Resources refused, with why; non-empty means `reply` is a NACK.
    pub rejected: Vec<(String, String)>,
    /// The ACK or NACK to send.
    pub reply: discovery::DeltaDiscoveryRequest,
    pub system_version: String,
    /// True when this response completed the first push of every type (ready from now on).
    pub became_synced: bool,
}

/// One client's delta-ADS state, kept across connections.
#[derive(Debug)]
pub struct Session {
    node: Node,
    defaults: Defaults,
    /// Resource name → version, per type: what we hold and echo on reconnect. A refused
    /// resource keeps the version of what we still hold (or none), so istiod sends it again.
    known: HashMap<Kind, BTreeMap<String, String>>,
    received: HashSet<Kind>,
}

impl Session {
    pub fn new(node: Node, defaults: Defaults) -> Self {
        Session {
            node,
            defaults,
            known: HashMap::new(),
            received: HashSet::new(),
        }
    }

    /// Whether the first push of every type has been handled (on any connection).
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.received.contains(k))
    }

    /// How many resources of `kind` are held.
    pub fn held(&self, kind: Kind) -> usize {
        self.known.get(&kind).map_or(0, BTreeMap::len)
    }

    /// The first message of each type on a new stream: a wildcard subscription, carrying the
    /// node and the versions still held from an earlier stream.
    pub fn initial_requests(&self) -> Vec<discovery::DeltaDiscoveryRequest> {
        Kind::ALL
            .into_iter()
            .map(|k| discovery::DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: k.type_url().to_owned(),
                initial_resource_versions: self
                    .known
                    .get(&k)
                    .map(|m| m.iter().map(|(n, v)| (n.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect()
    }

    pub fn on_response(&mut self, resp: discovery::DeltaDiscoveryResponse) -> Handled {
        let was_synced = self.synced();
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            let why = format!("type {:?} was not subscribed to", resp.type_url);
            return Handled {
                kind: None,
                change: Change::default(),
                reply: reply(resp.type_url, resp.nonce, Some(why.clone())),
                rejected: vec![(String::new(), why)],
                system_version: resp.system_version_info,
                became_synced: false,
            };
        };
        let known = self.known.entry(kind).or_default();
        let mut change = Change::default();
        let mut rejected = Vec::new();
        for name in resp.removed_resources {
            known.remove(&name);
            change.removals.push(name);
        }
        for r in resp.resources {
            match decode(kind, &resp.type_url, &r, &self.defaults) {
                Ok(res) => {
                    known.insert(r.name.clone(), r.version);
                    change.upserts.push((r.name, res));
                }
                Err(why) => rejected.push((r.name, why)),
            }
        }
        self.received.insert(kind);
        let error = (!rejected.is_empty()).then(|| {
            rejected
                .iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        Handled {
            kind: Some(kind),
            change,
            rejected,
            reply: reply(resp.type_url, resp.nonce, error),
            system_version: resp.system_version_info,
            became_synced: !was_synced && self.synced(),
        }
    }
}

fn reply(
    type_url: String,
    nonce: String,
    error: Option<String>,
) -> discovery::DeltaDiscoveryRequest {
    discovery::DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        error_detail: error.map(|message| rpc::Status {
            // google.rpc.Code INVALID_ARGUMENT, as envoy NACKs a config it cannot use.
            code: 3,
            message,
            details: vec![],
        }),
        ..Default::default()
    }
}

fn decode(
    kind: Kind,
    type_url: &str,
    r: &discovery::Resource,
    defaults: &Defaults,
) -> Result<Resource, String> {
    if r.name.is_empty() {
        return Err("resource has no name".into());
    }
    let Some(any) = &r.resource else {
        return Err("resource has no body".into());
    };
    if any.type_url != type_url {
        return Err(format!(
            "body is a {:?}, the response is of type {type_url:?}",
            any.type_url
        ));
    }
    let bad = |e: ConvertError| e.to_string();
    match kind {
        Kind::Address => {
            let a = pw::Address::decode(any.value.as_slice())
                .map_err(|e| format!("undecodable Address: {e}"))?;
            Ok(match convert::address(a, defaults).map_err(bad)? {
                convert::Address::Workload(w) => Resource::Workload(Arc::new(w)),
                convert::Address::Service(s) => Resource::Service(Arc::new(s)),
            })
        }
        Kind::Authorization => {
            let a = security::Authorization::decode(any.value.as_slice())
                .map_err(|e| format!("undecodable Authorization: {e}"))?;
            convert::policy(a)
                .map(|p| Resource::Policy(Arc::new(p)))
                .map_err(bad)
        }
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
