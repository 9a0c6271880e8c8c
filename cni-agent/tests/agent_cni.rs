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
    zt.clear();
    // The sandbox is going away: its netns (still there for a moment, with the pod's IP) is
    // not re-enrolled by the watch, although the pod object is still labelled.
    node.label_pod("mesh", "app", Some("ambient"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        zt.got_add(&meshed.uid).is_none(),
        "released pod enrolled again\n{}",
        node.log()
    );
    node.stop_agent();
}

#[test]
fn add_for_a_pod_the_watch_has_not_seen_yet() {
    let mut node = Node::new("iptables");
    // The uid mismatch below waits this long for the cache before asking the API.
    node.extra_env = vec![("MESHTUNNEL_CNI_POD_WAIT_MS", "1000".into())];
    node.create_namespace("mesh", true);
    let zt = FakeZtunnel::start(&node.zds_path());
    node.start_agent();
    node.wait_watching();
    // As the kubelet sees it: the pod was just created, Pending, no IP yet; the runtime builds
    // the sandbox and calls CNI ADD at once.
    let pod = node.pending_pod("mesh", "fresh");
    let reply = replied(add(&node, &pod, pod.netns.path().to_str().unwrap()));
    assert_eq!(reply.error, None, "{}", node.log());
    assert!(reply.mesh && pod.captured());
    match zt.got_add(&pod.uid) {
        Some(node::ZEvent::Add { sa, inode, .. }) => {
            assert_eq!(inode, pod.inode());
            assert_eq!(sa, "default", "no serviceAccountName means \"default\"");
        }
        other => panic!("{other:?}"),
    }
    // A runtime asking for a uid the API does not have fails the ADD.
    let stranger = TestPod {
        uid: "00000000-0000-0000-0000-000000000000".into(),
        namespace: node.ns("mesh"),
        name: "fresh".into(),
        ..TestPod::create(&format!("{}-stranger", node.prefix), node.next_ip())
    };
    let reply = replied(add(
        &node,
        &stranger,
        stranger.netns.path().to_str().unwrap(),
    ));
    assert!(reply.error.is_some_and(|e| e.contains("uid")));
    assert!(!stranger.captured());
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
fn netns_vanishing_after_ztunnel_acked_fails_the_add_and_removes_the_pod() {
    let mut node = Node::new("iptables");
    node.create_namespace("mesh", true);
    let zt = FakeZtunnel::start(&node.zds_path());
    node.start_agent();
    node.wait_watching();
    // No IP in the API, so only the ADD can capture it.
    let pod = node.pending_pod("mesh", "brief");
    zt.delete_netns_on_add(&pod.uid, pod.netns.name());
    let reply = replied(add(&node, &pod, pod.netns.path().to_str().unwrap()));
    let err = reply.error.expect("ADD must fail when the netns vanished");
    assert!(err.contains("replaced or removed"), "{err}");
    assert!(
        zt.got_del(&pod.uid),
        "ztunnel kept a proxy for an uncaptured pod"
    );
    // Still serving.
    let ok = node.running_pod("mesh", "ok", json!({}), json!({}));
    let reply = replied(add(&node, &ok, ok.netns.path().to_str().unwrap()));
    assert_eq!(reply.error, None, "{}", node.log());
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

/// The installed `meshtunnel-cni` binary, called the way a runtime calls a chained plugin.
fn run_plugin(node: &Node, command: &str, pod: &TestPod, prev: &str) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let stdin = format!(
        r#"{{"cniVersion":"0.4.0","name":"ptp-net","type":"meshtunnel-cni","agent_socket":{:?},"prevResult":{prev}}}"#,
        node.plugin_socket().to_str().unwrap()
    );
    let mut child = Command::new(node.root().join("bin/meshtunnel-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("c-{}", pod.name))
        .env("CNI_NETNS", pod.netns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", node.root().join("bin"))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
                pod.namespace, pod.name, pod.uid
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_real_plugin_binary_captures_on_add_and_releases_on_del() {
    let mut node = Node::new("nftables");
    node.create_namespace("mesh", true);
    let zt = FakeZtunnel::start(&node.zds_path());
    node.start_agent();
    wait_for("the plugin installed by the agent", || {
        node.root().join("bin/meshtunnel-cni").exists()
    });
    node.wait_watching();
    let pod = node.pending_pod("mesh", "plug");
    let prev = format!(
        r#"{{"cniVersion":"0.4.0","ips":[{{"version":"4","address":"{}/28"}}]}}"#,
        pod.ip
    );
    let (ok, out) = run_plugin(&node, "ADD", &pod, &prev);
    assert!(ok, "plugin ADD failed: {out}\n{}", node.log());
    assert!(pod.captured(), "ADD succeeded before capture");
    assert!(zt.got_add(&pod.uid).is_some());

    let (ok, out) = run_plugin(&node, "DEL", &pod, &prev);
    assert!(ok, "plugin DEL failed: {out}");
    wait_for("ztunnel Del", || zt.got_del(&pod.uid));

    // Without ztunnel the plugin fails the ADD: the pod must not start uncaptured.
    drop(zt);
    let other = node.pending_pod("mesh", "plug2");
    wait_for("the agent to see ztunnel go", || {
        node.log().contains("ztunnel disconnected")
    });
    let (ok, out) = run_plugin(&node, "ADD", &other, &prev);
    assert!(!ok, "ADD succeeded without ztunnel: {out}");
    assert!(!other.captured());
    node.stop_agent();
}
