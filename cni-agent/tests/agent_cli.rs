//! The `cni-agent` binary's subcommands against temp dirs, configured through the environment
//! as a DaemonSet would.

mod node;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_cni-agent");
const PLUGIN: &str = env!("CARGO_BIN_EXE_meshtunnel-cni");

const PTP: &str = r#"{"cniVersion":"0.4.0","name":"ptp-net","plugins":[{"type":"ptp","ipam":{"type":"host-local","subnet":"10.77.0.0/16"}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

fn agent(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.args(args)
        .env("CNI_BIN_DIR", root.join("bin"))
        .env("CNI_CONF_DIR", root.join("net.d"))
        .env("MESHTUNNEL_CNI_PLUGIN_BINARY", PLUGIN)
        .env("MESHTUNNEL_CNI_AGENT_SOCKET", root.join("run/plugin.sock"))
        .env(
            "MESHTUNNEL_CNI_EXCLUDE_NAMESPACES",
            "kube-system,istio-system",
        );
    cmd
}

fn conflist(root: &Path) -> Value {
    serde_json::from_slice(&fs::read(root.join("net.d/10-ptp.conflist")).unwrap()).unwrap()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("net.d")).unwrap();
    fs::write(dir.path().join("net.d/10-ptp.conflist"), PTP).unwrap();
    dir
}

#[test]
fn install_then_uninstall() {
    let dir = setup();
    let root = dir.path();
    assert!(agent(root, &["install"]).status().unwrap().success());
    let doc = conflist(root);
    let ours = &doc["plugins"][2];
    assert_eq!(ours["type"], "meshtunnel-cni");
    assert_eq!(
        ours["agent_socket"],
        root.join("run/plugin.sock").to_str().unwrap()
    );
    assert_eq!(
        ours["exclude_namespaces"],
        serde_json::json!(["kube-system", "istio-system"])
    );
    assert_eq!(
        fs::read(root.join("bin/meshtunnel-cni")).unwrap(),
        fs::read(PLUGIN).unwrap()
    );

    assert!(agent(root, &["uninstall"]).status().unwrap().success());
    assert_eq!(conflist(root).to_string(), PTP);
    assert!(!root.join("bin/meshtunnel-cni").exists());
}

#[test]
fn install_without_a_primary_config_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(dir.path(), &["install"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no CNI config"));
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_needs_a_node_name() {
    let dir = setup();
    let out = agent(dir.path(), &["run"])
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--node-name"), "{err}");
}

#[test]
fn help_names_every_agent_setting_with_its_env() {
    let out = Command::new(AGENT)
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--node-name", "NODE_NAME"),
        ("--kubeconfig", "KUBECONFIG"),
        ("--ztunnel-uds", "ZTUNNEL_UDS_ADDRESS"),
        ("--redirect-backend", "MESHTUNNEL_REDIRECT_BACKEND"),
        ("--netns-dir", "MESHTUNNEL_NETNS_DIR"),
        ("--retry-min-ms", "MESHTUNNEL_RETRY_MIN_MS"),
        ("--retry-max-ms", "MESHTUNNEL_RETRY_MAX_MS"),
        ("--pod-wait-ms", "MESHTUNNEL_CNI_POD_WAIT_MS"),
        ("--agent-socket", "MESHTUNNEL_CNI_AGENT_SOCKET"),
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
        assert!(
            help.contains(&format!("[env: {env}")),
            "{env} missing from\n{help}"
        );
    }
}

#[test]
fn run_serves_plugins_and_stays_installed_when_stopped() {
    let dir = setup();
    let root = dir.path();
    let sock = root.join("run/plugin.sock");
    // The API the agent watches (the real apiserver, the agent with its own service
    // account's token): the pod exists, nothing is labelled for the mesh.
    let api_node = node::Node::new("nftables");
    api_node.create_namespace("demo", false);
    let ns = api_node.ns("demo");
    api_node
        .api()
        .create(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"nodeName": api_node.name, "containers": [{"name": "app", "image": "busybox"}]}}))
        .unwrap();
    let mut run = Running(
        agent(root, &["run", "--recheck-ms", "100"])
            .env("NODE_NAME", &api_node.name)
            .env("KUBECONFIG", api_node.kubeconfig_path())
            .env("ZTUNNEL_UDS_ADDRESS", root.join("zds.sock"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let chained = || {
        fs::read(root.join("net.d/10-ptp.conflist"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|d| d["plugins"][2]["type"] == "meshtunnel-cni")
    };
    wait_for("the agent to chain the plugin", || {
        chained() && sock.exists()
    });

    // Neither the pod nor its namespace is ambient: "not meshed", so ADD passes prevResult
    // through.
    let prev = r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.77.0.9/16"}]}"#;
    let stdin = format!(
        r#"{{"cniVersion":"0.4.0","name":"ptp-net","type":"meshtunnel-cni","agent_socket":{:?},"prevResult":{prev}}}"#,
        sock.to_str().unwrap()
    );
    let mut add = Command::new(root.join("bin/meshtunnel-cni"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/var/run/netns/x")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME=web"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut add.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    let out = add.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), prev);

    // Another CNI rewrites its config: the running agent chains us back in.
    fs::write(root.join("net.d/10-ptp.conflist"), PTP).unwrap();
    wait_for("the agent to re-chain the plugin", chained);

    // A restart or upgrade stops the agent with SIGTERM: the plugin must stay chained.
    let pid = run.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = run.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(chained(), "stopping the agent must not unchain the plugin");
    assert!(root.join("bin/meshtunnel-cni").exists());
    assert!(
        !sock.exists(),
        "socket removed so plugins fail fast while the agent is away"
    );
    assert!(!root.join("zds.sock").exists(), "ZDS socket removed");
}
