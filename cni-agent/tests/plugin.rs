//! The built `meshtunnel-cni` binary, driven the way a container runtime drives it.

mod common;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cni_agent::protocol::Request;
use common::Agent;
use serde_json::{json, Value};

const PLUGIN: &str = env!("CARGO_BIN_EXE_meshtunnel-cni");

struct Run {
    code: i32,
    stdout: String,
    took: Duration,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    fn assert_cni_error(&self, code: u64) -> Value {
        assert_ne!(self.code, 0, "expected failure, stdout {:?}", self.stdout);
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["cniVersion"].is_string(), "{v}");
        v
    }
}

fn run(command: &str, pod: Option<(&str, &str)>, stdin: &[u8]) -> Run {
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "0123abcd")
        .env("CNI_NETNS", "/var/run/netns/test-pod")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni");
    if let Some((ns, name)) = pod {
        cmd.env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};\
                 K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=uid-{name}"
            ),
        );
    }
    run_cmd(cmd, stdin)
}

fn run_cmd(mut cmd: Command, stdin: &[u8]) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A plugin may answer (e.g. VERSION) and exit without reading stdin: EPIPE here is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap().trim().to_string(),
        took: start.elapsed(),
    }
}

fn prev_result(version: &str) -> Value {
    let mut ip = json!({"interface": 2, "address": "10.199.7.5/24", "gateway": "10.199.7.1"});
    if version != "1.0.0" {
        ip = json!({"version": "4", "interface": 2, "address": "10.199.7.5/24", "gateway": "10.199.7.1"});
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "mtbr0", "mac": "2a:00:00:00:00:01"},
            {"name": "veth0", "mac": "2a:00:00:00:00:02"},
            {"name": "eth0", "mac": "2a:00:00:00:00:03", "sandbox": "/var/run/netns/test-pod"}
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.199.7.1"}],
        "dns": {}
    })
}

fn conf(version: &str, socket: &Path, extra: Value) -> Vec<u8> {
    let mut c = json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "meshtunnel-cni",
        "agent_socket": socket,
        "agent_timeout_ms": 3000,
        "log_level": "debug",
        "exclude_namespaces": ["kube-system"],
        "prevResult": prev_result(version),
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::to_vec(&c).unwrap()
}

fn nowhere() -> std::path::PathBuf {
    Path::new("/nonexistent/meshtunnel-test/agent.sock").to_owned()
}

#[test]
fn version() {
    let r = run("VERSION", None, br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(r.code, 0);
    assert_eq!(
        r.stdout,
        r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
    );
}

#[test]
fn malformed_input_is_a_cni_error() {
    let pod = Some(("demo", "web"));
    run("ADD", pod, b"\x00\xffgarbage").assert_cni_error(6);
    run("ADD", pod, b"").assert_cni_error(6);
    let full = conf("1.0.0", &nowhere(), json!({}));
    run("ADD", pod, &full[..full.len() / 2]).assert_cni_error(6);
    run("ADD", pod, b"[]").assert_cni_error(7);
    let no_prev = json!({"cniVersion": "0.4.0", "name": "n", "type": "meshtunnel-cni"});
    let v = run("ADD", pod, no_prev.to_string().as_bytes()).assert_cni_error(7);
    assert_eq!(v["cniVersion"], "0.4.0");
    let v = run("ADD", pod, &conf("0.2.0", &nowhere(), json!({}))).assert_cni_error(1);
    assert_eq!(v["cniVersion"], "0.2.0");
    run("ADD", pod, &conf("1.1.0", &nowhere(), json!({}))).assert_cni_error(1);
    run(
        "ADD",
        pod,
        &conf("1.0.0", &nowhere(), json!({"agent_timeout_ms": "slow"})),
    )
    .assert_cni_error(7);
    run("GC", pod, &conf("1.0.0", &nowhere(), json!({}))).assert_cni_error(4);
}

#[test]
fn missing_environment_is_a_cni_error() {
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear().env("CNI_COMMAND", "ADD");
    let v = run_cmd(cmd, &conf("0.3.1", &nowhere(), json!({}))).assert_cni_error(4);
    assert_eq!(v["cniVersion"], "0.3.1");
    let mut cmd = Command::new(PLUGIN);
    cmd.env_clear();
    run_cmd(cmd, b"{}").assert_cni_error(4);
}

#[test]
fn add_meshed_pod_returns_prev_result() {
    let agent = Agent::start();
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let r = run(
            "ADD",
            Some(("demo", "web")),
            &conf(v, &agent.socket, json!({})),
        );
        assert_eq!(r.code, 0, "{v}: {}", r.stdout);
        assert_eq!(r.json(), prev_result(v), "{v}");
    }
    let seen = agent.seen();
    assert_eq!(seen.len(), 4);
    let Request::Add(req) = &seen[0] else {
        panic!("{seen:?}")
    };
    assert_eq!(req.pod.namespace, "demo");
    assert_eq!(req.pod.name, "web");
    assert_eq!(req.pod.uid, "uid-web");
    assert_eq!(req.netns, "/var/run/netns/test-pod");
    assert_eq!(req.container_id, "0123abcd");
    assert_eq!(req.infra_container_id.as_deref(), Some("0123abcd"));
    assert_eq!(
        req.ips,
        vec!["10.199.7.5".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn add_converts_a_mismatched_prev_result() {
    let agent = Agent::start();
    let stdin = conf(
        "0.4.0",
        &agent.socket,
        json!({"prevResult": prev_result("1.0.0")}),
    );
    let r = run("ADD", Some(("demo", "web")), &stdin);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.json(), prev_result("0.4.0"));
}

#[test]
fn add_not_meshed_succeeds() {
    let agent = Agent::start();
    let r = run(
        "ADD",
        Some(("demo", "not-mesh")),
        &conf("1.0.0", &agent.socket, json!({})),
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.json(), prev_result("1.0.0"));
}

#[test]
fn add_enrolment_failure_fails_closed() {
    let agent = Agent::start();
    let r = run(
        "ADD",
        Some(("demo", "mesh-fail")),
        &conf("1.0.0", &agent.socket, json!({})),
    );
    let v = r.assert_cni_error(100);
    assert!(
        v["details"].as_str().unwrap().contains("netns vanished"),
        "{v}"
    );
}

#[test]
fn add_with_agent_unreachable_fails_closed() {
    let r = run(
        "ADD",
        Some(("demo", "web")),
        &conf("1.0.0", &nowhere(), json!({})),
    );
    r.assert_cni_error(11);
    // A socket file nobody listens on (agent died) is the same.
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap());
    run(
        "ADD",
        Some(("demo", "web")),
        &conf("1.0.0", &dead, json!({})),
    )
    .assert_cni_error(11);
}

#[test]
fn add_with_slow_agent_is_bounded() {
    let agent = Agent::start();
    let stdin = conf("1.0.0", &agent.socket, json!({"agent_timeout_ms": 300}));
    let r = run("ADD", Some(("demo", "slow")), &stdin);
    r.assert_cni_error(11);
    assert!(r.took < Duration::from_secs(3), "took {:?}", r.took);
}

#[test]
fn add_with_garbling_agent_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("liar.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let liar = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = cni_agent::protocol::read_frame::<Request>(&mut s);
        s.write_all(&5u32.to_be_bytes()).unwrap();
        s.write_all(b"nope!").unwrap();
    });
    let r = run(
        "ADD",
        Some(("demo", "web")),
        &conf("1.0.0", &sock, json!({})),
    );
    liar.join().unwrap();
    r.assert_cni_error(101);
}

#[test]
fn add_skips_agent_for_excluded_namespaces_and_non_pods() {
    let r = run(
        "ADD",
        Some(("kube-system", "coredns")),
        &conf("0.3.1", &nowhere(), json!({})),
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.json(), prev_result("0.3.1"));
    let r = run("ADD", None, &conf("0.3.1", &nowhere(), json!({})));
    assert_eq!(r.code, 0, "{}", r.stdout);
}

#[test]
fn del_never_blocks_pod_deletion() {
    let r = run(
        "DEL",
        Some(("demo", "web")),
        &conf("1.0.0", &nowhere(), json!({})),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, ""));
    assert!(r.took < Duration::from_secs(1), "took {:?}", r.took);
    let r = run("DEL", Some(("demo", "web")), b"garbage");
    assert_eq!((r.code, r.stdout.as_str()), (0, ""));

    // A hung agent delays DEL by at most the short DEL bound.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hung.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    let r = run(
        "DEL",
        Some(("demo", "web")),
        &conf("1.0.0", &sock, json!({})),
    );
    assert_eq!(r.code, 0);
    assert!(r.took < Duration::from_secs(4), "took {:?}", r.took);
}

#[test]
fn del_notifies_a_live_agent() {
    let agent = Agent::start();
    let r = run(
        "DEL",
        Some(("demo", "web")),
        &conf("0.4.0", &agent.socket, json!({})),
    );
    assert_eq!(r.code, 0);
    let seen = agent.seen();
    let [Request::Del(req)] = seen.as_slice() else {
        panic!("{seen:?}")
    };
    assert_eq!(req.pod.name, "web");
    assert_eq!(req.netns.as_deref(), Some("/var/run/netns/test-pod"));
}

#[test]
fn check_succeeds_fast() {
    let r = run(
        "CHECK",
        Some(("demo", "web")),
        &conf("1.0.0", &nowhere(), json!({})),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, ""));
    run(
        "CHECK",
        Some(("demo", "web")),
        &conf("0.3.1", &nowhere(), json!({})),
    )
    .assert_cni_error(1);
}
