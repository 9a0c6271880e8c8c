//! The agent and ztunnel restart independently: nothing captured is disturbed, ztunnel is
//! resynchronised by snapshot, and what changed meanwhile is caught up.

mod node;

use node::{wait_for, FakeZtunnel, Node, TestPod, ZEvent, AMBIENT};
use serde_json::json;

/// Rule handles change whenever nftables objects are re-created, so equal listings with
/// handles mean the rules were not touched (not merely re-applied identically).
fn nft_handles(p: &TestPod) -> String {
    p.netns.exec("nft", &["-a", "list", "ruleset"]).unwrap()
}

fn captured_and_enabled(node: &Node, p: &TestPod) -> bool {
    p.captured() && node.annotation(&p.namespace, &p.name).as_deref() == Some("enabled")
}

#[test]
fn agent_restart_keeps_pods_captured_and_catches_up() {
    let mut node = Node::new("nftables");
    node.create_namespace("app", true);
    node.create_namespace("later", false);
    node.create_namespace("leaving", true);
    let a = node.running_pod("app", "a", json!({}), json!({}));
    let b = node.running_pod("app", "b", json!({}), json!({}));
    let c = node.running_pod("later", "c", json!({}), json!({}));
    let d = node.running_pod("leaving", "d", json!({}), json!({}));
    let d_before = d.rules();
    let zt = FakeZtunnel::start(&node.zds_path());
    node.start_agent();
    for p in [&a, &b, &d] {
        wait_for(&format!("{} captured", p.name), || {
            captured_and_enabled(&node, p)
        });
    }
    let handles = (nft_handles(&a), nft_handles(&b));

    node.stop_agent();
    zt.clear();
    // While the agent is away: one namespace is labelled, another one unlabelled.
    node.label_namespace("later", Some(AMBIENT));
    node.label_namespace("leaving", None);
    node.start_agent();

    wait_for("ztunnel's snapshot from the new agent", || {
        !zt.snapshots().is_empty()
    });
    let first = &zt.snapshots()[0];
    for p in [&a, &b] {
        assert!(
            first.contains(&p.uid),
            "snapshot {first:?} lacks running pod {}",
            p.name
        );
    }
    assert!(
        !first.contains(&d.uid),
        "snapshot {first:?} names a pod no longer for the mesh"
    );
    wait_for("the pod labelled during the outage captured", || {
        captured_and_enabled(&node, &c)
    });
    wait_for("the pod unlabelled during the outage released", || {
        d.rules() == d_before && node.annotation("leaving", "d").is_none()
    });
    assert_eq!(
        (nft_handles(&a), nft_handles(&b)),
        handles,
        "running pods' rules were touched by the restart"
    );
    assert!(captured_and_enabled(&node, &a) && captured_and_enabled(&node, &b));
    for p in [&a, &b] {
        assert!(!zt.got_del(&p.uid), "{} removed from ztunnel", p.name);
    }
    node.stop_agent();
}

#[test]
fn ztunnel_restart_gets_the_snapshot_again() {
    let mut node = Node::new("iptables");
    node.create_namespace("app", true);
    let a = node.running_pod("app", "a", json!({}), json!({}));
    let b = node.running_pod("app", "b", json!({}), json!({}));
    let zt = FakeZtunnel::start(&node.zds_path());
    node.start_agent();
    for p in [&a, &b] {
        wait_for(&format!("{} captured", p.name), || {
            captured_and_enabled(&node, p)
        });
    }
    let rules = (a.rules(), b.rules());
    drop(zt);

    // A new ztunnel process connects: it gets every pod, with its netns, in the snapshot.
    let zt = FakeZtunnel::start(&node.zds_path());
    wait_for("the new ztunnel's snapshot", || !zt.snapshots().is_empty());
    let mut want = vec![a.uid.clone(), b.uid.clone()];
    want.sort();
    assert_eq!(zt.snapshots()[0], want);
    for p in [&a, &b] {
        match zt.got_add(&p.uid) {
            Some(ZEvent::Add { inode, .. }) => assert_eq!(inode, p.inode()),
            other => panic!("no Add for {} in the snapshot: {other:?}", p.name),
        }
    }
    // Same again with a reconnect on the same process.
    zt.clear();
    zt.reconnect();
    wait_for("the snapshot after a reconnect", || {
        !zt.snapshots().is_empty()
    });
    assert_eq!(zt.snapshots()[0], want);
    assert_eq!((a.rules(), b.rules()), rules, "rules changed");
    node.stop_agent();
}

#[test]
fn nacked_pod_is_pending_until_ztunnel_takes_it() {
    let mut node = Node::new("nftables");
    node.create_namespace("app", true);
    let zt = FakeZtunnel::start(&node.zds_path());
    zt.nack_adds(Some("no certificate for this identity yet"));
    let a = node.running_pod("app", "a", json!({}), json!({}));
    let before = a.rules();
    node.start_agent();
    wait_for("annotation pending", || {
        node.annotation("app", "a").as_deref() == Some("pending")
    });
    // Retried while nacked, never captured meanwhile.
    wait_for("several attempts", || {
        zt.events()
            .iter()
            .filter(|e| matches!(e, ZEvent::Add { uid, .. } if *uid == a.uid))
            .count()
            >= 3
    });
    assert_eq!(
        a.rules(),
        before,
        "rules installed for a pod ztunnel refused"
    );
    assert!(node.log().contains("no certificate for this identity yet"));

    zt.nack_adds(None);
    wait_for("capture once ztunnel acks", || {
        captured_and_enabled(&node, &a)
    });
    node.stop_agent();
}

#[test]
fn finished_pod_is_released_without_touching_the_pod_that_reused_its_ip() {
    let mut node = Node::new("iptables");
    node.create_namespace("jobs", true);
    let zt = FakeZtunnel::start(&node.zds_path());
    // A new pod got the IP of a finished one (IPAM reuses addresses once a sandbox is gone).
    let new = node.running_pod("jobs", "new", json!({}), json!({}));
    let old = node
        .api()
        .create(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "old", "namespace": node.ns("jobs"),
                "annotations": {node::ANNOTATION: "enabled"}},
            "spec": {"nodeName": node.name, "containers": [{"name": "app", "image": "busybox"}]},
            "status": {"phase": "Succeeded", "podIP": new.ip.to_string()}}))
        .unwrap();
    let old_uid = old["metadata"]["uid"].as_str().unwrap().to_owned();
    node.start_agent();
    wait_for("the finished pod's annotation removed", || {
        node.annotation("jobs", "old").is_none()
    });
    wait_for("the new pod captured", || captured_and_enabled(&node, &new));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        captured_and_enabled(&node, &new),
        "releasing the finished pod removed the new pod's rules\n{}",
        node.log()
    );
    assert!(zt.got_add(&old_uid).is_none());
    node.stop_agent();
}

#[test]
fn pending_pods_go_to_ztunnel_as_soon_as_it_connects() {
    let mut node = Node::new("nftables");
    node.create_namespace("app", true);
    let a = node.running_pod("app", "a", json!({}), json!({}));
    // Backoff so long that only the connection notification can capture in time.
    node.extra_env = vec![
        ("MESHTUNNEL_RETRY_MIN_MS", "60000".into()),
        ("MESHTUNNEL_RETRY_MAX_MS", "60000".into()),
    ];
    node.start_agent();
    wait_for("annotation pending", || {
        node.annotation("app", "a").as_deref() == Some("pending")
    });
    let zt = FakeZtunnel::start(&node.zds_path());
    wait_for(
        "capture on ztunnel's arrival, not at the next retry",
        || captured_and_enabled(&node, &a),
    );
    assert!(zt.got_add(&a.uid).is_some());
    node.stop_agent();
}
