//! CNI ADD/DEL through the plugin socket, answered by the real agent: capture happens before the
//! ADD returns, and anything short of a full capture fails the ADD (the pod never starts
//! uncaptured).

mod node;

use std::time::Duration;

use cni_agent::cni::AgentOutcome;
use cni_agent::protocol::{EnrollRequest, PodRef, ReleaseRequest, Reply, Request};
use node::{wait_for, FakeZtunnel, Node, TestPod, AMBIENT, LABEL};
use serde_json::json;

fn add(node: &Node, pod: &TestPod, netns: &str) -> AgentOutcome {
    let req = Request::Add(EnrollRequest {
        pod: PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        },
        container_id: format!("c-{}", pod.name),
        infra_container_id: None,
        netns: netns.to_owned(),
        ifname: "eth0".into(),
        ips: vec![pod.ip.into()],
    });
    cni_agent::client::call(&node.plugin_socket(), &req, Duration::from_secs(30))
}

fn del(node: &Node, pod: &TestPod) -> AgentOutcome {
    let req = Request::Del(ReleaseRequest {
        pod: PodRef {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
        },
        container_id: format!("c-{}", pod.name),
        netns: None,
    });
    cni_agent::client::call(&node.plugin_socket(), &req, Duration::from_secs(5))
}

fn replied(o: AgentOutcome) -> Reply {
    match o {
        AgentOutcome::Replied(r) => r,
        other => panic!("no reply from the agent: {other:?}"),
    }
}

#[test]
fn add_captures_before_answering_and_unlabelled_is_not_meshed() {
    let mut node = Node::new("nftables");
    node.create_namespace("mesh", true);
    node.create_namespace("plain", false);
    let meshed = node.running_pod("mesh", "app", json!({}), json!({}));
    let plain = node.running_pod("plain", "app", json!({}), json!({}));
    let zt = FakeZtunnel::start(&node.zds_path());
    // The watch would capture the labelled pod by itself; delay that (no IP known to the
    // watch path is not enough, it finds the netns by IP) by starting the agent first and
    // sending the ADD at once: whichever path wins, the ADD may only answer after the capture.
    node.start_agent();
    let before_plain = plain.rules();

    let reply = replied(add(&node, &meshed, meshed.netns.path().to_str().unwrap()));
    assert_eq!(reply.error, None, "{}", node.log());
    assert!(reply.mesh);
    // Answered only after ztunnel acked and the rules were in.
    assert!(
        zt.got_add(&meshed.uid).is_some(),
        "Enrolled before ztunnel had the pod"
    );
    assert!(meshed.captured(), "Enrolled before the rules were in");
    wait_for("annotation enabled", || {
        node.annotation("mesh", "app").as_deref() == Some("enabled")
    });

    let reply = replied(add(&node, &plain, plain.netns.path().to_str().unwrap()));
    assert_eq!(
        reply,
        Reply {
            mesh: false,
            error: None
        }
    );
    assert!(zt.got_add(&plain.uid).is_none());
    assert_eq!(plain.rules(), before_plain);

    // DEL: ztunnel forgets the pod, quickly.
    let start = std::time::Instant::now();
    let reply = replied(del(&node, &meshed));
    assert_eq!(reply.error, None);
    assert!(start.elapsed() < Duration::from_secs(5));
    wait_for("ztunnel Del", || zt.got_del(&meshed.uid));
    node.stop_agent();
}

#[test]
fn add_fails_closed_without_ztunnel() {
    let mut node = Node::new("iptables");
    node.create_namespace("mesh", true);
    let pod = node.running_pod("mesh", "app", json!({}), json!({}));
    let before = pod.rules();
    node.start_agent();
    let reply = replied(add(&node, &pod, pod.netns.path().to_str().unwrap()));
    let err = reply.error.expect("ADD must fail without ztunnel");
    assert!(err.contains("ztunnel"), "{err}");
    assert_eq!(pod.rules(), before, "no rules without ztunnel");
    wait_for("annotation pending", || {
        node.annotation("mesh", "app").as_deref() == Some("pending")
    });

    // ztunnel arrives: the pod, still wanted, is captured by the retry loop.
    let zt = FakeZtunnel::start(&node.zds_path());
    wait_for("capture once ztunnel is there", || {
        pod.captured() && node.annotation("mesh", "app").as_deref() == Some("enabled")
    });
    assert!(zt.got_add(&pod.uid).is_some());
    node.stop_agent();
}

#[test]
fn add_for_a_vanished_netns_fails_cleanly_and_agent_keeps_serving() {
    let mut node = Node::new("nftables");
    node.create_namespace("mesh", true);
    let _zt = FakeZtunnel::start(&node.zds_path());
    let pod = node.running_pod("mesh", "gone", json!({}), json!({}));
    let other = node.running_pod("mesh", "ok", json!({}), json!({}));
    node.start_agent();
    let missing = format!("/var/run/netns/{}-never", node.prefix);
    let reply = replied(add(&node, &pod, &missing));
    let err = reply.error.expect("ADD into a missing netns must fail");
    assert!(err.contains("never"), "{err}");
    // Garbage on the socket, too, gets an error and changes nothing.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(node.plugin_socket()).unwrap();
        s.write_all(b"\x00\x00\x00\x05hello").unwrap();
    }
    let reply = replied(add(&node, &other, other.netns.path().to_str().unwrap()));
    assert_eq!(reply.error, None, "{}", node.log());
    assert!(other.captured());
    node.stop_agent();
}

#[test]
fn pod_opted_out_and_host_network_are_never_touched() {
    let mut node = Node::new("iptables");
    node.create_namespace("mesh", true);
    let zt = FakeZtunnel::start(&node.zds_path());
    let none = node.running_pod("mesh", "optout", json!({LABEL: "none"}), json!({}));
    let host = node.running_pod("mesh", "host", json!({}), json!({"hostNetwork": true}));
    let meshed = node.running_pod("mesh", "in", json!({}), json!({}));
    let before = (none.rules(), host.rules());
    node.start_agent();
    wait_for("the ambient pod captured", || meshed.captured());
    for p in [&none, &host] {
        let reply = replied(add(&node, p, p.netns.path().to_str().unwrap()));
        assert_eq!(
            reply,
            Reply {
                mesh: false,
                error: None
            },
            "{}",
            p.name
        );
    }
    // Opting a captured pod out releases it.
    node.label_pod("mesh", "in", Some("none"));
    wait_for("opted-out pod released", || {
        !meshed.captured() && zt.got_del(&meshed.uid)
    });
    assert_eq!((none.rules(), host.rules()), before);
    assert!(zt.got_add(&none.uid).is_none() && zt.got_add(&host.uid).is_none());
    assert_eq!(node.annotation("mesh", "optout"), None);
    assert_eq!(node.annotation("mesh", "host"), None);
    let _ = AMBIENT;
    node.stop_agent();
}
