//! Our server (the agent's side) against a hand-driven ztunnel.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshtunnel::zds::proto::{self, workload_request::Payload};
use meshtunnel::zds::raw::SeqPacket;
use meshtunnel::zds::{ZdsError, ZdsServer};
use prost::Message;

use crate::hostile::{add, del, snapshot_sent};
use crate::support::*;

/// Plays ztunnel by hand against our server.
async fn raw_ztunnel(path: &Path, version: i32) -> SeqPacket {
    let conn = SeqPacket::connect(path).expect("connect");
    let hello = proto::ZdsHello { version }.encode_to_vec();
    conn.send(&hello, &[]).await.expect("send hello");
    conn
}

async fn recv_request(conn: &SeqPacket) -> (Payload, usize) {
    let d = tokio::time::timeout(STEP, conn.recv())
        .await
        .expect("no request")
        .expect("recv");
    let req = proto::WorkloadRequest::decode(d.data.as_slice()).expect("decode request");
    (req.payload.expect("payload"), d.fds.len())
}

async fn ack(conn: &SeqPacket, error: &str) {
    let resp = proto::WorkloadResponse {
        payload: Some(proto::workload_response::Payload::Ack(proto::Ack {
            error: error.into(),
        })),
    };
    conn.send(&resp.encode_to_vec(), &[]).await.expect("ack");
}

#[test]
fn server_sends_snapshot_and_reports_nacks() {
    run_shared(async {
        let dir = TestDir::new();
        let server = Arc::new(ZdsServer::bind(dir.sock()).expect("bind"));
        let _ = server.add("p1", info("p1"), netns()).await;

        let zt = raw_ztunnel(&dir.sock(), proto::ZdsVersion::V1 as i32).await;
        let (req, fds) = recv_request(&zt).await;
        assert_eq!(req, add("p1"));
        assert_eq!(fds, 1, "Add carries exactly one fd");
        ack(&zt, "").await;
        let (req, fds) = recv_request(&zt).await;
        assert_eq!((req, fds), (snapshot_sent(), 0));
        ack(&zt, "").await;

        let s = server.clone();
        let pending = tokio::spawn(async move { s.del("p1").await });
        let (req, fds) = recv_request(&zt).await;
        assert_eq!((req, fds), (del("p1"), 0));
        ack(&zt, "no such pod").await;
        let err = pending.await.expect("join").expect_err("nack");
        assert!(
            matches!(&err, ZdsError::Nack(m) if m == "no such pod"),
            "{err}"
        );

        // A second ztunnel becomes the target of Add; both get Del.
        let zt2 = raw_ztunnel(&dir.sock(), proto::ZdsVersion::V1 as i32).await;
        let (req, _) = recv_request(&zt2).await;
        assert_eq!(
            req,
            snapshot_sent(),
            "p1 was deleted, so the snapshot is empty"
        );
        ack(&zt2, "").await;
        let s = server.clone();
        let pending = tokio::spawn(async move { s.add("p2", info("p2"), netns()).await });
        let (req, fds) = recv_request(&zt2).await;
        assert_eq!((req, fds), (add("p2"), 1));
        ack(&zt2, "").await;
        pending.await.expect("join").expect("add acked");

        // A ztunnel that hangs up mid-request fails the request instead of hanging it.
        let s = server.clone();
        let pending = tokio::spawn(async move { s.del("p2").await });
        let _ = recv_request(&zt).await;
        ack(&zt, "").await;
        let _ = recv_request(&zt2).await;
        drop(zt2);
        let err = pending.await.expect("join").expect_err("lost");
        assert!(matches!(err, ZdsError::ConnectionLost(_)), "{err}");
        tokio::time::timeout(STEP, async {
            while server.connection_count() != 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("dead connection not dropped");
    });
}

#[test]
fn server_rejects_wrong_hello() {
    run_shared(async {
        let dir = TestDir::new();
        let server = ZdsServer::bind(dir.sock()).expect("bind");
        for version in [0, 2] {
            let zt = raw_ztunnel(&dir.sock(), version).await;
            let d = tokio::time::timeout(STEP, zt.recv())
                .await
                .expect("server kept a bad connection")
                .expect("recv");
            assert!(d.data.is_empty(), "expected hang-up, got {:?}", d.data);
        }
        let zt = SeqPacket::connect(&dir.sock()).expect("connect");
        zt.send(b"\xff\xff\xff", &[]).await.expect("send");
        let d = tokio::time::timeout(STEP, zt.recv())
            .await
            .expect("kept")
            .expect("recv");
        assert!(d.data.is_empty());
        assert_eq!(server.connection_count(), 0);
    });
}

#[test]
fn snapshot_waits_until_ready_and_synced_connections_count() {
    run_shared(async {
        let dir = TestDir::new();
        let server = ZdsServer::bind_not_ready(dir.sock()).expect("bind");
        let mut synced = server.synced_connections();
        let zt = raw_ztunnel(&dir.sock(), proto::ZdsVersion::V1 as i32).await;
        // Connected, but the agent is still resyncing: no snapshot, and adds are only recorded.
        let held = tokio::time::timeout(Duration::from_millis(300), zt.recv()).await;
        assert!(held.is_err(), "snapshot sent before mark_ready");
        let err = server
            .add("p1", info("p1"), netns())
            .await
            .expect_err("held");
        assert!(matches!(err, ZdsError::NotConnected), "{err}");
        assert_eq!(*synced.borrow_and_update(), 0);

        server.mark_ready();
        let (req, fds) = recv_request(&zt).await;
        assert_eq!((req, fds), (add("p1"), 1));
        ack(&zt, "").await;
        let (req, _) = recv_request(&zt).await;
        assert_eq!(req, snapshot_sent());
        ack(&zt, "").await;
        tokio::time::timeout(STEP, synced.changed())
            .await
            .expect("no sync notification")
            .expect("sender alive");
        assert_eq!(*synced.borrow(), 1);
    });
}

/// An add right as the agent becomes ready, while the held-back ztunnel has not registered
/// yet, waits for that ztunnel's snapshot and gets a real ack instead of NotConnected (a CNI
/// ADD racing a restarted agent's resync).
#[test]
fn an_add_racing_mark_ready_waits_for_the_held_back_ztunnel() {
    run_shared(async {
        let dir = TestDir::new();
        let server = ZdsServer::bind_not_ready(dir.sock()).expect("bind");
        let zt = raw_ztunnel(&dir.sock(), proto::ZdsVersion::V1 as i32).await;
        assert!(!server.wait_ready(Duration::from_millis(200)).await);
        // Let the connection task get as far as waiting for readiness.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let peer = async {
            // The snapshot (carrying p1 or not), SnapshotSent, then the add's own Add of p1:
            // ack everything until that last one.
            let mut seen = Vec::new();
            loop {
                let (req, _) = recv_request(&zt).await;
                ack(&zt, "").await;
                let done = req == add("p1") && seen.contains(&snapshot_sent());
                seen.push(req);
                if done {
                    return seen;
                }
            }
        };
        server.mark_ready();
        assert!(server.wait_ready(Duration::from_millis(10)).await);
        let (added, seen) = tokio::join!(server.add("p1", info("p1"), netns()), peer);
        added.expect("the add waited for the ztunnel and got its ack");
        assert_eq!(seen.last(), Some(&add("p1")), "{seen:?}");
    });
}

#[test]
fn dropping_a_server_leaves_a_newer_servers_socket() {
    run_shared(async {
        let dir = TestDir::new();
        let old = ZdsServer::bind(dir.sock()).expect("bind old");
        // An upgrade: the new agent binds the same path while the old one is still running.
        let new = ZdsServer::bind(dir.sock()).expect("bind new");
        drop(old);
        assert!(
            dir.sock().exists(),
            "old server removed the new server's socket"
        );
        drop(new);
        assert!(!dir.sock().exists());
    });
}
