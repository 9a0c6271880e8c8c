//! The shipped manifests against the shipped binaries: a DaemonSet that sets a variable no binary
//! reads, or two components that disagree on a socket path, fails here rather than on a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use meshtunnel_e2e::mesh::find_binary;
use serde::Deserialize;
use serde_yaml::Value;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn load(file: &str) -> Vec<Value> {
    let path = manifests_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

/// The single container of a DaemonSet's pod template.
fn container(ds: &Value) -> &Value {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container per DaemonSet");
    &containers[0]
}

fn env(c: &Value) -> BTreeMap<String, Option<String>> {
    c["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().expect("env name").to_owned(),
                e["value"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The environment variables a binary's `--help` documents (clap prints `[env: NAME=...]`).
fn documented_env(binary: &str, args: &[&str]) -> BTreeSet<String> {
    let bin = find_binary(binary, false).expect("build the binaries first: cargo build --bins");
    let out = Command::new(&bin)
        .args(args)
        .arg("--help")
        .output()
        .expect("running --help");
    assert!(out.status.success(), "{binary} {args:?} --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().expect("env name").to_owned())
        .collect()
}

/// The command a DaemonSet runs: binary name and arguments.
fn command(c: &Value) -> (String, Vec<String>) {
    let cmd: Vec<String> = c["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .map(|v| v.as_str().expect("string").to_owned())
        .collect();
    let bin = Path::new(&cmd[0])
        .file_name()
        .expect("binary name")
        .to_string_lossy()
        .into_owned();
    (bin, cmd[1..].to_vec())
}

fn check_env_is_read(ds: &Value) -> BTreeMap<String, Option<String>> {
    let c = container(ds);
    let (bin, args) = command(c);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let known = documented_env(&bin, &args);
    let set = env(c);
    for name in set.keys() {
        assert!(
            known.contains(name),
            "{}: {name} is set but `{bin} {} --help` reads no such variable (it reads {known:?})",
            ds["metadata"]["name"].as_str().unwrap_or("?"),
            args.join(" ")
        );
    }
    set
}

#[test]
fn daemonsets_set_only_variables_the_binaries_read() {
    let ztunnel = load("ztunnel.yaml");
    let agent = load("cni-agent.yaml");
    let zt_env = check_env_is_read(kind(&ztunnel, "DaemonSet")[0]);
    let agent_env = check_env_is_read(kind(&agent, "DaemonSet")[0]);

    // The agent listens for ZDS where ztunnel connects.
    assert_eq!(
        zt_env["INPOD_UDS"], agent_env["ZTUNNEL_UDS_ADDRESS"],
        "ztunnel's INPOD_UDS and the agent's ZTUNNEL_UDS_ADDRESS must be the same socket"
    );
    assert!(zt_env.contains_key("NODE_NAME") && agent_env.contains_key("NODE_NAME"));
}

/// Both DaemonSets mount the ZDS socket's directory from the same host path.
#[test]
fn zds_socket_directory_is_shared_through_the_host() {
    let host_path_of = |file: &str, var: &str| -> String {
        let docs = load(file);
        let ds = kind(&docs, "DaemonSet")[0];
        let c = container(ds);
        let socket = env(c)[var].clone().expect("literal value");
        let dir = Path::new(&socket).parent().expect("socket dir").to_owned();
        let mount = c["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .find(|m| Path::new(m["mountPath"].as_str().unwrap_or_default()) == dir)
            .unwrap_or_else(|| panic!("{file}: nothing mounted at {}", dir.display()));
        let volume = ds["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: the ZDS socket dir is not a hostPath"))
            .to_owned()
    };
    assert_eq!(
        host_path_of("ztunnel.yaml", "INPOD_UDS"),
        host_path_of("cni-agent.yaml", "ZTUNNEL_UDS_ADDRESS")
    );
}

#[test]
fn readiness_probe_hits_the_port_ztunnel_serves() {
    let docs = load("ztunnel.yaml");
    let c = container(kind(&docs, "DaemonSet")[0]);
    let probe_port = c["readinessProbe"]["httpGet"]["port"]
        .as_u64()
        .expect("probe port");
    let bin = find_binary("ztunnel", false).expect("ztunnel binary");
    let help = Command::new(bin).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains(&format!(":{probe_port}]")),
        "ztunnel's default readiness address is not on port {probe_port}:\n{help}"
    );
}

/// The ztunnel DaemonSet rolls as the zero-loss upgrade needs (the e2e `upgrade` test plays it):
/// the new pod first (maxSurge), the old one kept until then (maxUnavailable 0), and a grace
/// period that lets the old one drain until CONNECTION_TERMINATION_DEADLINE and then close what
/// is left cleanly before the kubelet's SIGKILL.
#[test]
fn ztunnel_rolls_surge_first_and_drains_within_its_grace_period() {
    let docs = load("ztunnel.yaml");
    let ds = kind(&docs, "DaemonSet")[0];
    let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(
        ds["spec"]["updateStrategy"]["type"].as_str(),
        Some("RollingUpdate")
    );
    assert_eq!(rolling["maxSurge"].as_u64(), Some(1), "{rolling:?}");
    assert_eq!(rolling["maxUnavailable"].as_u64(), Some(0), "{rolling:?}");
    let grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let deadline = env(container(ds))
        .get("CONNECTION_TERMINATION_DEADLINE")
        .cloned()
        .flatten()
        .expect("CONNECTION_TERMINATION_DEADLINE set");
    let deadline = humantime::parse_duration(&deadline).expect("a duration");
    // The deadline, then up to ~1.3 s to close the rest with FIN, then exit.
    assert!(
        std::time::Duration::from_secs(grace) >= deadline + std::time::Duration::from_secs(5),
        "grace {grace}s leaves too little room after the {deadline:?} drain"
    );
}

/// Every object in manifests/ is accepted by a real apiserver (server-side validation and
/// defaulting, which a YAML read cannot do), and the agent's service account, with a token of
/// its own, may do exactly what the agent does: watch pods and namespaces, patch pods; and no
/// more than that (no pod deletion, no secrets).
#[test]
fn manifests_apply_to_a_real_apiserver_and_grant_the_agent_what_it_uses() {
    let cp =
        controlplane::ControlPlane::start(controlplane::Options::default()).expect("control plane");
    // In manifests/README.md's order.
    let path = |f: &str| manifests_dir().join(f).to_str().unwrap().to_owned();
    let mut applied = cp
        .kubectl_run(&["apply", "--server-side", "-f", &path("namespace.yaml")])
        .expect("the namespace applies");
    applied += &cp
        .kubectl_run(&[
            "apply",
            "--server-side",
            "-f",
            &path("cni-agent.yaml"),
            "-f",
            &path("ztunnel.yaml"),
        ])
        .expect("the agent and ztunnel manifests apply");
    for docs in [
        load("namespace.yaml"),
        load("ztunnel.yaml"),
        load("cni-agent.yaml"),
    ] {
        for doc in docs {
            let name = doc["metadata"]["name"].as_str().unwrap();
            assert!(
                applied.contains(&format!("/{name} serverside-applied")),
                "{name} not applied:\n{applied}"
            );
        }
    }

    let docs = load("cni-agent.yaml");
    let sa = kind(&docs, "ServiceAccount")[0];
    let (ns, name) = (
        sa["metadata"]["namespace"].as_str().unwrap(),
        sa["metadata"]["name"].as_str().unwrap(),
    );
    assert_eq!(
        kind(&docs, "DaemonSet")[0]["spec"]["template"]["spec"]["serviceAccountName"].as_str(),
        Some(name)
    );
    let token = cp
        .api()
        .token(ns, name, &[], None, std::time::Duration::from_secs(600))
        .expect("token");
    let kubeconfig = cp.dir().join("agent.kubeconfig");
    cp.write_token_kubeconfig(&kubeconfig, &token).unwrap();
    let can_i = |verb: &str, resource: &str| -> bool {
        let out = Command::new(cp.kubectl_path())
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["auth", "can-i", verb, resource, "--all-namespaces"])
            .output()
            .expect("kubectl auth can-i");
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, resource) in [
        ("watch", "pods"),
        ("list", "pods"),
        ("get", "pods"),
        ("patch", "pods"),
        ("watch", "namespaces"),
        ("list", "namespaces"),
    ] {
        assert!(
            can_i(verb, resource),
            "the agent's account may not {verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("delete", "pods"),
        ("get", "secrets"),
        ("patch", "namespaces"),
    ] {
        assert!(
            !can_i(verb, resource),
            "the agent's account may {verb} {resource}: more than it needs"
        );
    }
}
