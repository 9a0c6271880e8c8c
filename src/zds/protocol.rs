//! The ztunnel side of ZDS as a state machine without I/O: the client feeds it each received
//! datagram (and how many fds came with it) and gets back what to tell the handler, or why the
//! request is rejected. Keeping sockets out makes every rule testable with plain byte slices.

use std::collections::HashSet;

use prost::Message;

use super::proto::{self, workload_request::Payload};

pub use crate::state::WorkloadInfo;

impl From<proto::WorkloadInfo> for WorkloadInfo {
    fn from(p: proto::WorkloadInfo) -> Self {
        Self {
            name: p.name,
            namespace: p.namespace,
            service_account: p.service_account,
        }
    }
}

impl From<WorkloadInfo> for proto::WorkloadInfo {
    fn from(w: WorkloadInfo) -> Self {
        Self {
            name: w.name,
            namespace: w.namespace,
            service_account: w.service_account,
        }
    }
}

/// A valid request, to be handed to the workload handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Proxy this pod; the single fd that came with the datagram is its netns.
    Add {
        uid: String,
        info: WorkloadInfo,
    },
    Del {
        uid: String,
    },
    /// Snapshot only: the pod is still there. Needs no handler call, only an Ack.
    Keep {
        uid: String,
    },
    /// The snapshot is over: every uid added or kept during it.
    SnapshotSent {
        present: HashSet<String>,
    },
}

/// Why a request was rejected, and what that does to the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A well-formed request we refuse: answer `Ack{error}` and keep serving. The agent sees the
    /// reason and the connection stays in lockstep (one request, one reply).
    #[error("rejected request: {0}")]
    Nack(String),
    /// The peer does not speak ZDS: drop the connection and reconnect.
    #[error("protocol violation: {0}")]
    Fatal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Snapshot,
    Running,
}

/// One connection's protocol state. Start a new one on every (re)connect: each connection begins
/// with a fresh snapshot.
#[derive(Debug)]
pub struct Protocol {
    phase: Phase,
    present: HashSet<String>,
}

impl Default for Protocol {
    fn default() -> Self {
        Self::new()
    }
}

impl Protocol {
    pub fn new() -> Self {
        Self {
            phase: Phase::Snapshot,
            present: HashSet::new(),
        }
    }

    /// Whether the snapshot has been received on this connection.
    pub fn synced(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Interprets one datagram that arrived with `fds` file descriptors.
    pub fn on_datagram(&mut self, data: &[u8], fds: usize) -> Result<Event, ProtocolError> {
        // Undecodable bytes are fatal rather than nacked: SEQPACKET keeps message boundaries, so
        // garbage cannot be a framing slip; it means the peer is not a ZDS agent (or a corrupted
        // one). Continuing would keep proxies in line with a peer we cannot understand, while a
        // reconnect forces a fresh snapshot that resynchronizes everything.
        let req = proto::WorkloadRequest::decode(data)
            .map_err(|e| ProtocolError::Fatal(format!("undecodable WorkloadRequest: {e}")))?;
        let nack = |msg: String| Err(ProtocolError::Nack(msg));
        let Some(payload) = req.payload else {
            // Decodes but names no request we know: a newer agent's message type, so refuse it
            // without tearing down a working connection.
            return nack("WorkloadRequest with no known payload".into());
        };
        let is_add = matches!(payload, Payload::Add(_));
        if !is_add && fds != 0 {
            return nack(format!(
                "{fds} fd(s) sent with a request that is not AddWorkload"
            ));
        }
        match payload {
            Payload::Add(add) => {
                if fds != 1 {
                    return nack(format!("AddWorkload needs exactly one netns fd, got {fds}"));
                }
                let uid = non_empty(add.uid, "AddWorkload")?;
                // The info is how the pod finds its workload in the config (the uid is a pod
                // UID the config does not use); upstream refuses an Add without it too.
                let Some(info) = add.workload_info else {
                    return nack(format!("AddWorkload {uid} without workload_info"));
                };
                // Present even if the handler then fails the Add: the agent says the pod exists,
                // and dropping a proxy that may still be serving it would be worse than keeping it.
                if self.phase == Phase::Snapshot {
                    self.present.insert(uid.clone());
                }
                Ok(Event::Add {
                    uid,
                    info: info.into(),
                })
            }
            Payload::Keep(keep) => {
                if self.phase == Phase::Running {
                    return nack("KeepWorkload after SnapshotSent".into());
                }
                let uid = non_empty(keep.uid, "KeepWorkload")?;
                self.present.insert(uid.clone());
                Ok(Event::Keep { uid })
            }
            Payload::Del(del) => {
                let uid = non_empty(del.uid, "DelWorkload")?;
                // A pod deleted mid-snapshot must not count as present when the snapshot ends.
                self.present.remove(&uid);
                Ok(Event::Del { uid })
            }
            Payload::SnapshotSent(_) => {
                if self.phase == Phase::Running {
                    return nack("SnapshotSent twice on one connection".into());
                }
                self.phase = Phase::Running;
                Ok(Event::SnapshotSent {
                    present: std::mem::take(&mut self.present),
                })
            }
        }
    }
}

fn non_empty(uid: String, what: &str) -> Result<String, ProtocolError> {
    if uid.is_empty() {
        Err(ProtocolError::Nack(format!("{what} with an empty uid")))
    } else {
        Ok(uid)
    }
}

/// The first datagram ztunnel sends on a connection.
pub fn encode_hello() -> Vec<u8> {
    proto::ZdsHello {
        version: proto::ZdsVersion::V1 as i32,
    }
    .encode_to_vec()
}

/// The reply to one request: `Ok` acks, `Err(reason)` nacks.
pub fn encode_ack(result: Result<(), &str>) -> Vec<u8> {
    proto::WorkloadResponse {
        payload: Some(proto::workload_response::Payload::Ack(proto::Ack {
            error: result.err().unwrap_or_default().to_owned(),
        })),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::WorkloadRequest;

    fn req(p: Payload) -> Vec<u8> {
        WorkloadRequest { payload: Some(p) }.encode_to_vec()
    }
    fn add(uid: &str) -> Vec<u8> {
        req(Payload::Add(proto::AddWorkload {
            uid: uid.into(),
            workload_info: Some(proto::WorkloadInfo {
                name: "n".into(),
                namespace: "ns".into(),
                service_account: "sa".into(),
            }),
        }))
    }
    fn keep(uid: &str) -> Vec<u8> {
        req(Payload::Keep(proto::KeepWorkload { uid: uid.into() }))
    }
    fn del(uid: &str) -> Vec<u8> {
        req(Payload::Del(proto::DelWorkload { uid: uid.into() }))
    }
    fn snap() -> Vec<u8> {
        req(Payload::SnapshotSent(proto::SnapshotSent {}))
    }
    fn is_nack(r: Result<Event, ProtocolError>, needle: &str) {
        match r {
            Err(ProtocolError::Nack(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected nack containing {needle:?}, got {other:?}"),
        }
    }
    fn synced() -> Protocol {
        let mut p = Protocol::new();
        p.on_datagram(&snap(), 0).expect("snapshot");
        p
    }

    #[test]
    fn hello_bytes_are_exact() {
        assert_eq!(encode_hello(), [0x08, 0x01]);
    }

    #[test]
    fn ack_encoding() {
        // WorkloadResponse{ack(1): Ack{}} is field 1, length 0.
        assert_eq!(encode_ack(Ok(())), [0x0a, 0x00]);
        // Ack{error(1) = "no"} nested in field 1.
        assert_eq!(encode_ack(Err("no")), [0x0a, 0x04, 0x0a, 0x02, b'n', b'o']);
    }

    #[test]
    fn del_uid_is_field_two() {
        // WorkloadRequest field 2 (del), len 3, DelWorkload field 2 (0x12), len 1, "u".
        assert_eq!(del("u"), [0x12, 0x03, 0x12, 0x01, b'u']);
    }

    #[test]
    fn snapshot_collects_added_and_kept_uids() {
        let mut p = Protocol::new();
        assert!(!p.synced());
        let ev = p.on_datagram(&add("a"), 1).expect("add");
        assert_eq!(
            ev,
            Event::Add {
                uid: "a".into(),
                info: WorkloadInfo {
                    name: "n".into(),
                    namespace: "ns".into(),
                    service_account: "sa".into()
                }
            }
        );
        assert_eq!(
            p.on_datagram(&keep("b"), 0).expect("keep"),
            Event::Keep { uid: "b".into() }
        );
        p.on_datagram(&keep("c"), 0).expect("keep");
        p.on_datagram(&del("c"), 0).expect("del");
        let Event::SnapshotSent { present } = p.on_datagram(&snap(), 0).expect("snap") else {
            panic!("not a snapshot event");
        };
        assert_eq!(present, HashSet::from(["a".to_string(), "b".to_string()]));
        assert!(p.synced());
        // After the snapshot, Add and Del flow freely.
        assert!(matches!(p.on_datagram(&add("d"), 1), Ok(Event::Add { .. })));
        assert_eq!(
            p.on_datagram(&del("d"), 0).expect("del"),
            Event::Del { uid: "d".into() }
        );
    }

    #[test]
    fn add_without_info_is_refused() {
        let mut p = Protocol::new();
        let data = req(Payload::Add(proto::AddWorkload {
            uid: "x".into(),
            workload_info: None,
        }));
        is_nack(
            p.on_datagram(&data, 1),
            "AddWorkload x without workload_info",
        );
        let Event::SnapshotSent { present } = p.on_datagram(&snap(), 0).expect("snap") else {
            panic!("not a snapshot event");
        };
        assert!(
            present.is_empty(),
            "a refused add must not count as present"
        );
    }

    #[test]
    fn garbage_is_fatal() {
        let mut p = Protocol::new();
        for bad in [&[0xff_u8, 0xff, 0xff][..], &[0x0a, 0x05, 0x01], &[0x08]] {
            match p.on_datagram(bad, 0) {
                Err(ProtocolError::Fatal(m)) => assert!(m.contains("undecodable"), "{m}"),
                other => panic!("expected fatal for {bad:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_payload_is_nacked() {
        let mut p = Protocol::new();
        is_nack(p.on_datagram(&[], 0), "no known payload");
        // Field 4 is not a request type; prost skips it, leaving no payload.
        is_nack(p.on_datagram(&[0x22, 0x00], 0), "no known payload");
    }

    #[test]
    fn add_fd_count_must_be_one() {
        let mut p = Protocol::new();
        is_nack(p.on_datagram(&add("a"), 0), "exactly one netns fd, got 0");
        is_nack(p.on_datagram(&add("a"), 2), "exactly one netns fd, got 2");
        let Event::SnapshotSent { present } = p.on_datagram(&snap(), 0).expect("snap") else {
            panic!("not a snapshot event");
        };
        assert!(
            present.is_empty(),
            "rejected adds must not count as present"
        );
    }

    #[test]
    fn fds_on_other_requests_are_nacked() {
        let mut p = Protocol::new();
        is_nack(p.on_datagram(&keep("a"), 1), "not AddWorkload");
        is_nack(p.on_datagram(&del("a"), 1), "not AddWorkload");
        is_nack(p.on_datagram(&snap(), 2), "not AddWorkload");
        assert!(!p.synced());
    }

    #[test]
    fn keep_after_snapshot_is_nacked() {
        is_nack(synced().on_datagram(&keep("a"), 0), "after SnapshotSent");
    }

    #[test]
    fn second_snapshot_is_nacked() {
        is_nack(synced().on_datagram(&snap(), 0), "SnapshotSent twice");
    }

    #[test]
    fn empty_uids_are_nacked() {
        let mut p = Protocol::new();
        is_nack(p.on_datagram(&add(""), 1), "AddWorkload with an empty uid");
        is_nack(
            p.on_datagram(&keep(""), 0),
            "KeepWorkload with an empty uid",
        );
        is_nack(p.on_datagram(&del(""), 0), "DelWorkload with an empty uid");
    }
}
