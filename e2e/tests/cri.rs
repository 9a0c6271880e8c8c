//! A real containerd CRI plugin running the node's CNI conflist for pod sandboxes, driven over
//! the CRI socket with kubelet-style requests.

mod containerd;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd::mesh::{NodeMesh, AGENT_TIMEOUT_MS};
use containerd::probe::{
    addrs_in, carried_by_ztunnel, eventually, exchange, has_capture_rules, listening_ports,
};
use containerd::{containerd_installed, CriNode, PodRef};
use meshtunnel_e2e::mesh::{find_binary, run_cmd};
use serde_json::json;

const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A fresh node, or `None` (with a message) when containerd is not installed outside CI. In CI
/// (`CI` set) a missing runtime is a failure: scripts/setup-system.sh installs it there.
fn node_or_skip(test: &str) -> Option<CriNode> {
    if !containerd_installed() {
        let msg = format!(
            "{test}: containerd is not installed (apt-get install containerd runc \
             busybox-static, or run scripts/setup-system.sh)"
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
        info.ip
            .starts_with(node.pod_subnet().trim_end_matches("0/24")),
        "sandbox address {:?} is not from the bridge's host-local range",
        info.ip
    );
    let netns = info
        .netns
        .clone()
        .expect("sandbox netns path in the status");
    assert_eq!(
        netns.parent(),
        Some(node.sandbox_netns_dir().as_path()),
        "netns {} not in the CRI's netns dir",
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

/// What a node with one running sandbox has made, to check after it is dropped.
struct Footprint {
    root: PathBuf,
    node_netns: PathBuf,
    sandbox_netns: PathBuf,
    pause_pid: u32,
    shim_sockets: Vec<PathBuf>,
    cgroup: String,
}

fn node_with_a_running_sandbox(test: &str) -> Option<(CriNode, Footprint)> {
    let mut node = node_or_skip(test)?;
    node.start_containerd(START_TIMEOUT).unwrap();
    let id = node
        .run_pod_sandbox(&pod(
            "plain",
            "left-0",
            "0f6c1d9e-2222-4a2b-9c3d-000000000002",
        ))
        .unwrap_or_else(|e| panic!("{e:#}\n--- containerd log ---\n{}", node.containerd_log()));
    let info = node.sandbox_status(&id).unwrap();
    assert!(!node.mounts().is_empty(), "a running sandbox has mounts");
    let footprint = Footprint {
        root: node.root().to_owned(),
        node_netns: node.netns().path(),
        sandbox_netns: info.netns.expect("sandbox netns path"),
        pause_pid: info.pid.expect("sandbox pid"),
        shim_sockets: node.shim_sockets(),
        cgroup: format!("{}-kubepods", node.prefix()),
    };
    assert!(!footprint.shim_sockets.is_empty(), "no shim socket found");
    assert!(Path::new(&format!("/proc/{}", footprint.pause_pid)).exists());
    Some((node, footprint))
}

fn assert_nothing_left(f: &Footprint) {
    for path in [&f.root, &f.node_netns, &f.sandbox_netns]
        .into_iter()
        .chain(&f.shim_sockets)
    {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = f.root.display().to_string();
    assert!(
        !mountinfo.contains(&root),
        "mounts under {root} left behind:\n{mountinfo}"
    );
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let dir = hierarchy.path().join(&f.cgroup);
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    // Killed processes are reaped by init a moment later.
    let pause = PathBuf::from(format!("/proc/{}", f.pause_pid));
    assert!(
        eventually(Duration::from_secs(10), || !pause.exists()),
        "the sandbox's pause process {} is still alive",
        f.pause_pid
    );
}

#[test]
fn dropping_a_node_with_a_running_sandbox_leaves_nothing_behind() {
    let Some((node, footprint)) = node_with_a_running_sandbox("cri drop cleanup") else {
        return;
    };
    drop(node);
    assert_nothing_left(&footprint);
}

#[test]
fn dropping_a_node_whose_containerd_crashed_leaves_nothing_behind() {
    let Some((mut node, footprint)) = node_with_a_running_sandbox("cri crash cleanup") else {
        return;
    };
    // Nothing can be stopped through the CRI now: Drop must find shims, sandbox processes,
    // mounts and cgroups itself.
    node.kill_containerd();
    drop(node);
    assert_nothing_left(&footprint);
}

/// `cni-agent install` alone: the plugin is chained but no agent answers on its socket, as on
/// a node whose agent crashed or has not started yet.
fn chain_without_agent(node: &CriNode) {
    let bin = find_binary("cni-agent", false).unwrap();
    run_cmd(
        Command::new(bin)
            .arg("install")
            .arg("--cni-bin-dir")
            .arg(node.cni_bin_dir())
            .arg("--cni-conf-dir")
            .arg(node.cni_conf_dir())
            .arg("--agent-socket")
            .arg(node.root().join("no-agent-here.sock"))
            .args(["--agent-timeout-ms", &AGENT_TIMEOUT_MS.to_string()]),
    )
    .unwrap();
    let conf = std::fs::read_to_string(node.primary_conflist_path()).unwrap();
    assert!(conf.contains("\"meshtunnel-cni\""), "not chained:\n{conf}");
}

#[test]
fn without_the_agent_a_pod_does_not_start_and_leaves_nothing_behind() {
    let Some(mut node) = node_or_skip("cri fail closed") else {
        return;
    };
    chain_without_agent(&node);
    node.start_containerd(START_TIMEOUT).unwrap();

    let t = Instant::now();
    let err = node
        .run_pod_sandbox(&pod(
            "demo",
            "web-0",
            "0f6c1d9e-3333-4a2b-9c3d-000000000003",
        ))
        .expect_err("a pod started while the agent that must capture it was down");
    let msg = format!("{err:#}");
    eprintln!("refused as it should be: {msg}");
    assert!(
        msg.contains("meshtunnel") || msg.contains("agent"),
        "the CRI's error does not say the mesh refused the pod: {msg}"
    );
    // Refused because the agent is unreachable, not because the plugin waited it out.
    assert!(
        t.elapsed() < Duration::from_millis(AGENT_TIMEOUT_MS),
        "RunPodSandbox took {:?}",
        t.elapsed()
    );
    for id in node.list_sandboxes().unwrap() {
        let info = node.sandbox_status(&id).unwrap();
        assert!(
            !info.ready,
            "a sandbox is ready after a failed ADD: {info:?}"
        );
    }
    let leftover: Vec<_> = std::fs::read_dir(node.sandbox_netns_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftover.is_empty(),
        "sandbox netns left after the failed ADD: {leftover:?}"
    );
    let leases = node
        .root()
        .join("ipam")
        .join(format!("{}-net", node.prefix()));
    let held: Vec<String> = std::fs::read_dir(&leases)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        held.is_empty(),
        "addresses still leased after the failed ADD: {held:?}"
    );

    // Excluded namespaces never wait for the agent: the cluster's own pods still start.
    let id = node
        .run_pod_sandbox(&pod(
            "kube-system",
            "dns-0",
            "0f6c1d9e-4444-4a2b-9c3d-000000000004",
        ))
        .unwrap_or_else(|e| panic!("{e:#}\n--- containerd log ---\n{}", node.containerd_log()));
    assert!(node.sandbox_status(&id).unwrap().ready);
    node.stop_and_remove(&id).unwrap();
}

/// Panics with everything the node's processes logged.
fn fail(mesh: &NodeMesh, node: &CriNode, e: anyhow::Error) -> ! {
    panic!(
        "{e:#}\n{}\n--- containerd log ---\n{}",
        mesh.logs(),
        node.containerd_log()
    )
}

const ZTUNNEL_POD_PORTS: [u16; 3] = [15001, 15006, 15008];

#[test]
fn ambient_pod_comes_up_meshed_through_the_cri_and_is_released_on_delete() {
    let Some(mut node) = node_or_skip("cri meshed pod") else {
        return;
    };
    let mut mesh = NodeMesh::new(&node).unwrap();
    mesh.namespace("demo", json!({"istio.io/dataplane-mode": "ambient"}))
        .unwrap();
    mesh.namespace("plain", json!({})).unwrap();
    let web_uid = mesh.pod("demo", "web-0", "sa-web").unwrap();
    let other_uid = mesh.pod("plain", "other-0", "sa-other").unwrap();
    mesh.write_ztunnel_config(&[("demo", "web-0", "sa-web")])
        .unwrap();
    mesh.start_agent(&node, START_TIMEOUT).unwrap();
    mesh.start_ztunnel(&node, START_TIMEOUT).unwrap();
    node.start_containerd(START_TIMEOUT).unwrap();

    // The labelled pod: when RunPodSandbox returns, it is already captured.
    let t = Instant::now();
    let web = node
        .run_pod_sandbox(&pod("demo", "web-0", &web_uid))
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    eprintln!("RunPodSandbox of the meshed pod took {:?}", t.elapsed());
    let web_info = node.sandbox_status(&web).unwrap();
    assert!(web_info.ready, "{web_info:?}");
    mesh.pod_running("demo", "web-0", &web_info.ip).unwrap();
    let web_netns = web_info.netns.clone().expect("sandbox netns");
    assert!(
        has_capture_rules(&web_netns),
        "no capture rules in the meshed pod's netns when its sandbox came up\n{}",
        mesh.logs()
    );
    let ports = listening_ports(&web_netns);
    for p in ZTUNNEL_POD_PORTS {
        assert!(
            ports.contains(&p),
            "ztunnel does not listen on {p} in the pod (ports {ports:?})\n{}",
            mesh.logs()
        );
    }
    assert!(
        mesh.ztunnel_log().contains(&web_uid),
        "ztunnel never heard of pod {web_uid}\n{}",
        mesh.logs()
    );
    assert_eq!(
        mesh.redirection("demo", "web-0").as_deref(),
        Some("enabled"),
        "annotation after the meshed pod's sandbox came up\n{}",
        mesh.logs()
    );

    // A pod in an unlabelled namespace goes through the same chain and stays out.
    let other = node
        .run_pod_sandbox(&pod("plain", "other-0", &other_uid))
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    let other_info = node.sandbox_status(&other).unwrap();
    assert!(other_info.ready, "{other_info:?}");
    mesh.pod_running("plain", "other-0", &other_info.ip)
        .unwrap();
    let other_netns = other_info.netns.clone().expect("sandbox netns");
    assert!(
        !has_capture_rules(&other_netns),
        "capture rules in an unmeshed pod"
    );
    let ports = listening_ports(&other_netns);
    assert!(
        ZTUNNEL_POD_PORTS.iter().all(|p| !ports.contains(p)),
        "ztunnel listens in an unmeshed pod: {ports:?}"
    );
    assert_eq!(mesh.redirection("plain", "other-0"), None);
    assert!(!mesh.ztunnel_log().contains(&other_uid));

    // Traffic: what the meshed pod sends, and what it is sent, passes through ztunnel.
    let via = exchange(&web_netns, &other_netns, &other_info.ip);
    assert!(
        carried_by_ztunnel(&via, 15001),
        "the meshed pod's outbound connection did not go through ztunnel:\n{via}"
    );
    let via = exchange(&other_netns, &web_netns, &web_info.ip);
    assert!(
        carried_by_ztunnel(&via, 15006),
        "the inbound connection to the meshed pod did not go through ztunnel:\n{via}"
    );

    // The CRI hands the sandbox's uid down the chain (K8S_POD_UID): a sandbox for another
    // incarnation of web-0 than the API's is refused, and the running one stays captured.
    let stale = "0f6c1d9e-5555-4a2b-9c3d-000000000005";
    let err = node
        .run_pod_sandbox(&pod("demo", "web-0", stale))
        .expect_err("a sandbox with a uid the API does not know started");
    assert!(format!("{err:#}").contains(stale), "{err:#}");
    assert!(has_capture_rules(&web_netns));
    assert_eq!(
        mesh.redirection("demo", "web-0").as_deref(),
        Some("enabled")
    );

    // Deleting the sandbox (CNI DEL) releases the pod: ztunnel closes its proxies.
    node.stop_and_remove(&web)
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    assert!(
        eventually(Duration::from_secs(30), || mesh
            .ztunnel_log()
            .lines()
            .any(|l| l.contains("pod proxies removed") && l.contains(&web_uid))),
        "ztunnel kept pod {web_uid} after its sandbox was removed\n{}",
        mesh.logs()
    );
    assert!(!web_netns.exists());

    // The agent dies; the plugin stays chained, so a labelled pod now fails to start.
    mesh.kill_agent();
    let web1_uid = mesh.pod("demo", "web-1", "sa-web").unwrap();
    let err = node
        .run_pod_sandbox(&pod("demo", "web-1", &web1_uid))
        .expect_err("a labelled pod started uncaptured while the agent was down");
    assert!(format!("{err:#}").contains("meshtunnel"), "{err:#}");

    // DEL never waits for an agent that is gone: pod deletion goes on.
    let t = Instant::now();
    node.stop_and_remove(&other)
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    assert!(
        t.elapsed() < Duration::from_millis(AGENT_TIMEOUT_MS),
        "deleting a pod waited {:?} for a dead agent",
        t.elapsed()
    );
    assert_eq!(node.mounts(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_running_pod_follows_its_namespace_label_across_an_agent_restart() {
    let Some(mut node) = node_or_skip("cri label later") else {
        return;
    };
    let mut mesh = NodeMesh::new(&node).unwrap();
    mesh.namespace("late", json!({})).unwrap();
    let uid = mesh.pod("late", "app-0", "sa-app").unwrap();
    mesh.start_agent(&node, START_TIMEOUT).unwrap();
    mesh.start_ztunnel(&node, START_TIMEOUT).unwrap();
    node.start_containerd(START_TIMEOUT).unwrap();

    let id = node
        .run_pod_sandbox(&pod("late", "app-0", &uid))
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    let info = node.sandbox_status(&id).unwrap();
    mesh.pod_running("late", "app-0", &info.ip).unwrap();
    let netns = info.netns.clone().expect("sandbox netns");
    assert!(!has_capture_rules(&netns));

    // A new agent has not seen this pod's CNI ADD: it must find the netns the CRI made by the
    // pod's IP.
    mesh.kill_agent();
    mesh.start_agent(&node, START_TIMEOUT).unwrap();

    mesh.label_namespace("late", json!({"istio.io/dataplane-mode": "ambient"}))
        .unwrap();
    let captured = eventually(Duration::from_secs(60), || {
        has_capture_rules(&netns)
            && mesh.redirection("late", "app-0").as_deref() == Some("enabled")
            && ZTUNNEL_POD_PORTS
                .iter()
                .all(|p| listening_ports(&netns).contains(p))
    });
    assert!(
        captured,
        "labelling the namespace did not capture the running pod\n{}",
        mesh.logs()
    );
    // The captured pod's outbound traffic now goes through ztunnel.
    mesh.namespace("plain", json!({})).unwrap();
    let peer_uid = mesh.pod("plain", "peer-0", "sa-peer").unwrap();
    let peer = node
        .run_pod_sandbox(&pod("plain", "peer-0", &peer_uid))
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    let peer_info = node.sandbox_status(&peer).unwrap();
    let via = exchange(&netns, peer_info.netns.as_ref().unwrap(), &peer_info.ip);
    assert!(
        carried_by_ztunnel(&via, 15001),
        "not through ztunnel:\n{via}"
    );

    mesh.label_namespace("late", json!({"istio.io/dataplane-mode": null}))
        .unwrap();
    let released = eventually(Duration::from_secs(60), || {
        !has_capture_rules(&netns)
            && mesh.redirection("late", "app-0").is_none()
            && !listening_ports(&netns).contains(&15008)
    });
    assert!(
        released,
        "removing the label did not release the pod\n{}",
        mesh.logs()
    );

    node.stop_and_remove(&id)
        .unwrap_or_else(|e| fail(&mesh, &node, e));
}

#[test]
fn an_agent_started_after_the_runtime_captures_old_pods_and_chains_into_the_live_cri() {
    let Some(mut node) = node_or_skip("cri agent after runtime") else {
        return;
    };
    let mut mesh = NodeMesh::new(&node).unwrap();
    mesh.namespace("demo", json!({"istio.io/dataplane-mode": "ambient"}))
        .unwrap();
    let old_uid = mesh.pod("demo", "old-0", "sa-old").unwrap();
    let new_uid = mesh.pod("demo", "new-0", "sa-new").unwrap();

    // The runtime is up before meshtunnel is installed: a labelled pod starts uncaptured.
    node.start_containerd(START_TIMEOUT).unwrap();
    assert!(!node.loaded_cni_config().unwrap().contains("meshtunnel-cni"));
    let old = node
        .run_pod_sandbox(&pod("demo", "old-0", &old_uid))
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    let old_info = node.sandbox_status(&old).unwrap();
    mesh.pod_running("demo", "old-0", &old_info.ip).unwrap();
    let old_netns = old_info.netns.clone().expect("sandbox netns");
    assert!(!has_capture_rules(&old_netns));

    mesh.start_agent(&node, START_TIMEOUT).unwrap();
    mesh.start_ztunnel(&node, START_TIMEOUT).unwrap();

    // The running pod is captured without a restart, its netns found by its IP.
    let captured = eventually(Duration::from_secs(60), || {
        has_capture_rules(&old_netns)
            && mesh.redirection("demo", "old-0").as_deref() == Some("enabled")
            && listening_ports(&old_netns).contains(&15008)
    });
    assert!(
        captured,
        "the pod started before the agent was not captured\n{}",
        mesh.logs()
    );

    // The CRI notices the rewritten conflist by itself; from then on new pods are captured
    // before RunPodSandbox returns.
    assert!(
        eventually(Duration::from_secs(60), || node
            .loaded_cni_config()
            .is_ok_and(|c| c.contains("meshtunnel-cni"))),
        "the CRI never loaded the chained conflist:\n{}",
        node.loaded_cni_config().unwrap_or_default()
    );
    let new = node
        .run_pod_sandbox(&pod("demo", "new-0", &new_uid))
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    let new_netns = node
        .sandbox_status(&new)
        .unwrap()
        .netns
        .expect("sandbox netns");
    assert!(has_capture_rules(&new_netns), "{}", mesh.logs());
    assert_eq!(
        mesh.redirection("demo", "new-0").as_deref(),
        Some("enabled")
    );

    node.stop_and_remove(&new)
        .unwrap_or_else(|e| fail(&mesh, &node, e));
    node.stop_and_remove(&old)
        .unwrap_or_else(|e| fail(&mesh, &node, e));
}
