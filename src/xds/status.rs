//! What the config dump, `ztunnel debug` and the metrics say about the xDS source: connection
//! state, and per type the last push (time, version, nonce), how many resources are held, and
//! the ACK/NACK counts with the last NACK's reason.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use super::protocol::Kind;

#[derive(Debug, Default)]
pub struct XdsStatus {
    inner: Mutex<Snapshot>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub address: String,
    pub connected: bool,
    /// Streams opened since start.
    pub connections: u64,
    pub last_connected: Option<String>,
    pub last_error: Option<String>,
    /// First push of every type handled (readiness).
    pub synced: bool,
    pub types: BTreeMap<&'static str, TypeStatus>,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    pub last_push: Option<String>,
    pub system_version: String,
    pub nonce: String,
    pub resources: usize,
    pub acks: u64,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One handled push, as the status records it.
pub struct Push<'a> {
    pub kind: Kind,
    pub system_version: &'a str,
    pub nonce: &'a str,
    pub held: usize,
    pub nack: Option<&'a str>,
}

impl XdsStatus {
    pub fn new(address: &str) -> Self {
        XdsStatus {
            inner: Mutex::new(Snapshot {
                address: address.to_owned(),
                ..Default::default()
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Snapshot) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| s.clone())
    }

    pub fn synced(&self) -> bool {
        self.with(|s| s.synced)
    }

    pub fn connected(&self, now: SystemTime) {
        self.with(|s| {
            s.connected = true;
            s.connections += 1;
            s.last_connected = Some(rfc3339(now));
        })
    }

    pub fn disconnected(&self, error: String) {
        self.with(|s| {
            s.connected = false;
            s.last_error = Some(error);
        })
    }

    pub fn pushed(&self, p: Push<'_>, synced: bool, now: SystemTime) {
        self.with(|s| {
            s.synced |= synced;
            let t = s.types.entry(p.kind.name()).or_default();
            t.last_push = Some(rfc3339(now));
            t.system_version = p.system_version.to_owned();
            t.nonce = p.nonce.to_owned();
            t.resources = p.held;
            match p.nack {
                None => t.acks += 1,
                Some(why) => {
                    t.nacks += 1;
                    t.last_nack = Some(why.to_owned());
                }
            }
        })
    }
}
