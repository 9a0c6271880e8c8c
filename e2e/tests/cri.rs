//! A real containerd CRI plugin running the node's CNI conflist for pod sandboxes, driven over
//! the CRI socket with kubelet-style requests.

mod containerd;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use containerd::{CriNode, PodRef, REQUIRED_TOOLS};
use meshtunnel_e2e::mesh::run_cmd;

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A fresh node, or `None` (with a message) when containerd is not installed outside CI. In CI
/// (`CI` set) a missing runtime is a failure: scripts/setup-system.sh installs it there.
fn node_or_skip(test: &str) -> Option<CriNode> {
    let missing: Vec<&str> = REQUIRED_TOOLS
        .into_iter()
        .filter(|t| !Path::new(t).exists())
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "{test}: needs {missing:?} (apt-get install containerd runc busybox-static, or run \
             scripts/setup-system.sh)"
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED {msg}");
        return None;
    }
    Some(CriNode::new().expect("node set-up"))
}

fn pod(namespace: &str, name: &str, uid: &str) -> PodRef {
    PodRef {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    }
}

/// `ip -4 -o addr` inside a sandbox's netns, entered through the file the CRI made.
fn addrs_in(netns: &Path) -> String {
    run_cmd(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["ip", "-4", "-o", "addr", "show"]),
    )
    .unwrap_or_else(|e| panic!("reading addresses in {}: {e:#}", netns.display()))
}

#[test]
fn sandbox_gets_an_address_from_the_bridge_chain_and_leaves_nothing_behind() {
    let Some(mut node) = node_or_skip("cri bridge chain") else {
        return;
    };
    let t0 = Instant::now();
    node.start_containerd(START_TIMEOUT).unwrap();
    let started = t0.elapsed();

    let t1 = Instant::now();
    let id = node
        .run_pod_sandbox(&pod(
            "plain",
            "web-0",
            "0f6c1d9e-1111-4a2b-9c3d-000000000001",
        ))
        .unwrap_or_else(|e| panic!("{e:#}\n--- containerd log ---\n{}", node.containerd_log()));
    let sandbox_time = t1.elapsed();
    eprintln!("containerd + CRI ready and pause image imported in {started:?}; RunPodSandbox took {sandbox_time:?}");

    let info = node.sandbox_status(&id).unwrap();
    assert!(info.ready, "sandbox not ready: {info:?}");
    assert!(
        info.ip.starts_with("10.88.0."),
        "sandbox address {:?} is not from the bridge's host-local range",
        info.ip
    );
    let netns = info
        .netns
        .clone()
        .expect("sandbox netns path in the status");
    assert!(
        netns.starts_with(node.root()),
        "netns {} not under the node's state dir",
        netns.display()
    );
    let addrs = addrs_in(&netns);
    assert!(
        addrs.contains(&format!("eth0    inet {}/24", info.ip)),
        "eth0 in the sandbox lacks {}:\n{addrs}",
        info.ip
    );
    let lease = node
        .root()
        .join("ipam")
        .join(format!("{}-net", node.prefix()))
        .join(&info.ip);
    let owner = std::fs::read_to_string(&lease).expect("host-local lease file");
    assert!(
        owner.contains(&id),
        "lease for {} is held by {owner:?}",
        info.ip
    );

    node.stop_and_remove(&id).unwrap();
    assert_eq!(node.list_sandboxes().unwrap(), Vec::<String>::new());
    assert!(
        !lease.exists(),
        "CNI DEL did not release the address {}",
        info.ip
    );
    assert!(
        !netns.exists(),
        "sandbox netns {} left behind",
        netns.display()
    );
    assert_eq!(node.mounts(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn dropping_a_node_with_a_running_sandbox_leaves_nothing_behind() {
    let Some(mut node) = node_or_skip("cri drop cleanup") else {
        return;
    };
    node.start_containerd(START_TIMEOUT).unwrap();
    let id = node
        .run_pod_sandbox(&pod(
            "plain",
            "left-0",
            "0f6c1d9e-2222-4a2b-9c3d-000000000002",
        ))
        .unwrap_or_else(|e| panic!("{e:#}\n--- containerd log ---\n{}", node.containerd_log()));
    let info = node.sandbox_status(&id).unwrap();
    let netns = info.netns.expect("sandbox netns path");
    assert!(!node.mounts().is_empty(), "a running sandbox has mounts");
    let root = node.root().to_owned();
    let node_netns = node.netns().path();
    let cgroup_marker = format!("/{}-kubepods/", node.prefix());

    drop(node);

    assert!(!root.exists(), "temp root {} left behind", root.display());
    assert!(
        !netns.exists(),
        "sandbox netns {} left behind",
        netns.display()
    );
    assert!(
        !node_netns.exists(),
        "node netns {} left behind",
        node_netns.display()
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_str = root.display().to_string();
    assert!(
        !mountinfo.contains(&root_str),
        "mounts under {root_str} left behind:\n{mountinfo}"
    );
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = hierarchy.path().join(cgroup_marker.trim_matches('/'));
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
}
