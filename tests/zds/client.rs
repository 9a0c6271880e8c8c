//! Our ZDS client (ztunnel's side) against our server (the agent's side).

use meshtunnel::zds::{ZdsError, ZdsServer};

use crate::support::*;

#[test]
fn snapshot_add_del_and_resnapshot_on_reconnect() {
    run_shared(async {
        let dir = TestDir::new();
        let server = ZdsServer::bind(dir.sock()).expect("bind");
        // Pods known before any ztunnel connects are recorded and wait for the snapshot.
        for uid in ["pod-a", "pod-b"] {
            let err = server
                .add(uid, info(uid), netns())
                .await
                .expect_err("nobody");
            assert!(matches!(err, ZdsError::NotConnected), "{err}");
        }

        let mut zt = Ztunnel::start(&dir.sock());
        assert_eq!(zt.next().await, Ev::Add("pod-a".into(), info("pod-a")));
        assert_eq!(zt.next().await, Ev::Add("pod-b".into(), info("pod-b")));
        assert_eq!(zt.next().await, Ev::Snapshot(set(&["pod-a", "pod-b"])));
        assert_eq!(server.connection_count(), 1);

        // A pod with its own netns: ztunnel must receive that very namespace.
        let pod_ns = fresh_netns();
        let pod_ino = inode(&pod_ns);
        assert_ne!(pod_ino, inode(&netns()), "unshare gave the host netns");
        server
            .add("pod-c", info("pod-c"), pod_ns)
            .await
            .expect("add c");
        assert_eq!(zt.next().await, Ev::Add("pod-c".into(), info("pod-c")));
        let got = zt.handler.pods.lock().expect("lock")["pod-c"]
            .try_clone()
            .expect("dup");
        assert_eq!(inode(&got), pod_ino);
        drop(got);
        server.del("pod-a").await.expect("del a");
        assert_eq!(zt.next().await, Ev::Del("pod-a".into()));
        assert_eq!(zt.handler.uids(), set(&["pod-b", "pod-c"]));

        // The handler's nack comes back as the server's error.
        let err = server
            .add("pod-bad", info("pod-bad"), not_netns())
            .await
            .expect_err("nack");
        assert!(
            matches!(&err, ZdsError::Nack(m) if m.contains("not a network namespace")),
            "{err}"
        );
        server.del("pod-bad").await.expect("del bad");
        assert_eq!(zt.next().await, Ev::Del("pod-bad".into()));

        // The agent restarts knowing only pod-b: ztunnel reconnects and drops pod-c.
        drop(server);
        assert_eq!(zt.next().await, Ev::Disconnected);
        let server = ZdsServer::bind(dir.sock()).expect("rebind");
        let _ = server.add("pod-b", info("pod-b"), netns()).await;
        // pod-b arrives in the snapshot or, if ztunnel won the race to connect, as a live Add
        // after an empty snapshot; either way pod-c must be gone and pod-b kept.
        let (mut added, mut snapshot) = (false, None);
        while !added || snapshot.is_none() {
            match zt.next().await {
                Ev::Add(uid, _) if uid == "pod-b" => added = true,
                Ev::Snapshot(present) => snapshot = Some(present),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(!snapshot.unwrap_or_default().contains("pod-c"));
        assert_eq!(zt.handler.uids(), set(&["pod-b"]));
        zt.shutdown().await;
    });
}
