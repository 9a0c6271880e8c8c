//! Our client against a hand-driven hostile agent: every bad request is nacked or drops the
//! connection, ztunnel keeps serving, and nothing leaks.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use meshtunnel::zds::proto::{self, workload_request::Payload};
use meshtunnel::zds::raw::{SeqPacket, SeqPacketListener};
use meshtunnel::zds::{WorkloadInfo, ZdsServer};
use prost::Message;

use crate::support::*;

/// Plays the agent by hand.
pub(crate) struct RawAgent {
    conn: SeqPacket,
}

impl RawAgent {
    pub(crate) async fn accept(listener: &SeqPacketListener) -> Self {
        let conn = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("ztunnel did not connect")
            .expect("accept");
        let hello = tokio::time::timeout(STEP, conn.recv())
            .await
            .expect("no hello")
            .expect("recv hello");
        assert_eq!(hello.data, [0x08, 0x01], "ZdsHello{{version: V1}}");
        assert!(hello.fds.is_empty());
        Self { conn }
    }

    /// Sends raw bytes and returns the Ack's error (empty = ok), or None if ztunnel hung up.
    pub(crate) async fn send_raw(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Option<String> {
        self.conn.send(data, fds).await.ok()?;
        let reply = tokio::time::timeout(STEP, self.conn.recv())
            .await
            .expect("no reply")
            .ok()?;
        if reply.data.is_empty() {
            return None;
        }
        let resp = proto::WorkloadResponse::decode(reply.data.as_slice()).expect("decode ack");
        match resp.payload {
            Some(proto::workload_response::Payload::Ack(ack)) => Some(ack.error),
            None => panic!("response without ack"),
        }
    }

    pub(crate) async fn send(&self, p: Payload, fds: &[BorrowedFd<'_>]) -> Option<String> {
        let data = proto::WorkloadRequest { payload: Some(p) }.encode_to_vec();
        self.send_raw(&data, fds).await
    }
}

pub(crate) fn add(uid: &str) -> Payload {
    Payload::Add(proto::AddWorkload {
        uid: uid.into(),
        workload_info: Some(info(uid).into_proto()),
    })
}
pub(crate) fn keep(uid: &str) -> Payload {
    Payload::Keep(proto::KeepWorkload { uid: uid.into() })
}
pub(crate) fn del(uid: &str) -> Payload {
    Payload::Del(proto::DelWorkload { uid: uid.into() })
}
pub(crate) fn snapshot_sent() -> Payload {
    Payload::SnapshotSent(proto::SnapshotSent {})
}

pub(crate) trait IntoProto {
    fn into_proto(self) -> proto::WorkloadInfo;
}
impl IntoProto for WorkloadInfo {
    fn into_proto(self) -> proto::WorkloadInfo {
        proto::WorkloadInfo {
            name: self.name,
            namespace: self.namespace,
            service_account: self.service_account,
        }
    }
}

#[track_caller]
pub(crate) fn assert_nack(reply: Option<String>, needle: &str) {
    let msg = reply.expect("ztunnel hung up instead of nacking");
    assert!(msg.contains(needle), "nack {msg:?} lacks {needle:?}");
}

/// Every kind of bad request: each is nacked or drops the connection, and ztunnel keeps serving.
pub(crate) async fn hostile_session(dir: &TestDir) {
    let listener = SeqPacketListener::bind(&dir.sock()).expect("bind");
    let mut zt = Ztunnel::start(&dir.sock());
    let agent = RawAgent::accept(&listener).await;

    let ns = netns();
    let ns2 = netns();
    let file = not_netns();
    // Snapshot: Keep needs no fd and no handler call; rejected Adds are not present.
    assert_eq!(agent.send(keep("kept"), &[]).await.as_deref(), Some(""));
    assert_nack(
        agent.send(add("nofd"), &[]).await,
        "exactly one netns fd, got 0",
    );
    assert_nack(
        agent.send(add("twofds"), &[ns.as_fd(), ns2.as_fd()]).await,
        "exactly one netns fd, got 2",
    );
    assert_nack(
        agent.send(keep("k2"), &[ns.as_fd()]).await,
        "not AddWorkload",
    );
    assert_eq!(agent.send(snapshot_sent(), &[]).await.as_deref(), Some(""));
    assert_eq!(zt.next().await, Ev::Snapshot(set(&["kept"])));

    assert_nack(
        agent.send(add("file"), &[file.as_fd()]).await,
        "not a network namespace",
    );
    assert_nack(
        agent.send(keep("late"), &[]).await,
        "KeepWorkload after SnapshotSent",
    );
    assert_nack(agent.send(snapshot_sent(), &[]).await, "SnapshotSent twice");
    assert_nack(agent.send(del("x"), &[ns.as_fd()]).await, "not AddWorkload");
    assert_nack(agent.send(add(""), &[ns.as_fd()]).await, "empty uid");
    assert_nack(agent.send(del(""), &[]).await, "empty uid");
    // Field 4 is no request type: decodes to an empty payload.
    assert_nack(agent.send_raw(&[0x22, 0x00], &[]).await, "no known payload");
    // After all that, a valid Add still works on the same connection.
    assert_eq!(
        agent.send(add("good"), &[ns.as_fd()]).await.as_deref(),
        Some("")
    );
    assert_eq!(zt.next().await, Ev::Add("good".into(), info("good")));

    // Undecodable bytes (with an fd riding along) are fatal: ztunnel hangs up and reconnects.
    assert_eq!(agent.send_raw(&[0xff; 7], &[ns.as_fd()]).await, None);
    assert_eq!(zt.next().await, Ev::Disconnected);
    let agent = RawAgent::accept(&listener).await;
    assert_eq!(
        agent.send(add("good"), &[ns.as_fd()]).await.as_deref(),
        Some("")
    );
    assert_eq!(zt.next().await, Ev::Add("good".into(), info("good")));
    assert_eq!(agent.send(snapshot_sent(), &[]).await.as_deref(), Some(""));
    assert_eq!(zt.next().await, Ev::Snapshot(set(&["good"])));

    // An oversized datagram is fatal too.
    assert_eq!(agent.send_raw(&[0x0a; 5000], &[]).await, None);
    assert_eq!(zt.next().await, Ev::Disconnected);
    let agent = RawAgent::accept(&listener).await;
    assert_eq!(agent.send(snapshot_sent(), &[]).await.as_deref(), Some(""));
    assert_eq!(zt.next().await, Ev::Snapshot(set(&[])));
    assert!(
        zt.handler.uids().is_empty(),
        "snapshot without 'good' drops it"
    );
    assert_eq!(
        agent.send(add("later"), &[ns.as_fd()]).await.as_deref(),
        Some("")
    );
    assert_eq!(zt.next().await, Ev::Add("later".into(), info("later")));
    assert_eq!(agent.send(del("later"), &[]).await.as_deref(), Some(""));
    assert_eq!(zt.next().await, Ev::Del("later".into()));

    zt.shutdown().await;
}

#[test]
pub(crate) fn hostile_agent_gets_nacks_or_a_reconnect() {
    run_shared(async {
        let dir = TestDir::new();
        hostile_session(&dir).await;
    });
}

#[test]
pub(crate) fn no_fd_leaks() {
    run_exclusive(async {
        let before = open_fds();
        {
            let dir = TestDir::new();
            hostile_session(&dir).await;
        }
        {
            let dir = TestDir::new();
            let server = ZdsServer::bind(dir.sock()).expect("bind");
            let _ = server.add("pod-a", info("pod-a"), netns()).await;
            let mut zt = Ztunnel::start(&dir.sock());
            assert_eq!(zt.next().await, Ev::Add("pod-a".into(), info("pod-a")));
            assert_eq!(zt.next().await, Ev::Snapshot(set(&["pod-a"])));
            server
                .add("pod-bad", info("pod-bad"), not_netns())
                .await
                .expect_err("nack");
            server.del("pod-a").await.expect("del");
            server.del("pod-bad").await.expect("del");
            zt.shutdown().await;
            drop(server);
        }
        // Server connection tasks end asynchronously after the drop.
        let mut after = open_fds();
        for _ in 0..50 {
            if after <= before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = open_fds();
        }
        assert_eq!(after, before, "fds leaked");
    });
}
