//! The local config file end to end: the checked-in example, error reporting, and reloads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::config::{self, ConfigError};
use meshtunnel::state::{
    Action, ConfigSnapshot, Protocol, ResolveError, Scope, State, StringMatch, Upstream,
};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/local-config.yaml")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A directory of its own per test, removed on drop (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("meshtunnel-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces the file the way editors and ConfigMap updates do: write aside, then rename.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn example_file_loads_and_resolves() {
    let snap = config::load(&example()).unwrap();
    assert_eq!(snap.workloads().count(), 4);
    assert_eq!(snap.services().count(), 2);
    assert_eq!(snap.policies().count(), 1);

    let client = snap.workload_by_ip("10.244.1.2".parse().unwrap()).unwrap();
    assert_eq!(client.name, "client-a");
    assert_eq!(client.node, "node-a");
    assert_eq!(client.protocol, Protocol::Hbone);
    assert_eq!(
        client.identity().to_string(),
        "spiffe://cluster.local/ns/demo/sa/client-a"
    );
    let legacy = snap
        .workload_by_uid("Kubernetes//Pod/demo/legacy-b")
        .unwrap();
    assert_eq!(legacy.protocol, Protocol::Tcp);

    // VIP → the service's only endpoint, port mapped 80 → 8080.
    match snap.resolve(sa("10.96.0.10:80"), &mut |_| 0).unwrap() {
        Upstream::Workload {
            workload,
            addr,
            service,
        } => {
            assert_eq!(workload.name, "server-b");
            assert_eq!(addr, sa("10.244.2.2:8080"));
            assert_eq!(service.unwrap().hostname, "echo.demo.svc.cluster.local");
        }
        other => panic!("{other:?}"),
    }
    // Direct to a pod IP keeps the port.
    match snap.resolve(sa("10.244.1.3:9000"), &mut |_| 0).unwrap() {
        Upstream::Workload {
            workload,
            addr,
            service,
        } => {
            assert_eq!(workload.name, "server-a");
            assert_eq!(addr, sa("10.244.1.3:9000"));
            assert!(service.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        snap.resolve(sa("93.184.216.34:443"), &mut |_| 0).unwrap(),
        Upstream::Passthrough(sa("93.184.216.34:443"))
    );
    assert_eq!(
        snap.resolve(sa("10.96.0.11:5432"), &mut |_| 0).unwrap_err(),
        ResolveError::NoEndpoints {
            service: "demo/db.demo.svc.cluster.local".into(),
            port: 5432
        }
    );
    assert!(matches!(
        snap.resolve(sa("10.96.0.10:81"), &mut |_| 0),
        Err(ResolveError::PortNotInService { port: 81, .. })
    ));

    let policy = snap.policies().next().unwrap();
    assert_eq!(policy.key(), "demo/allow-client-a");
    assert_eq!(policy.scope, Scope::WorkloadSelector);
    assert_eq!(policy.action, Action::Allow);
    let rule = &policy.rules[0];
    assert_eq!(
        rule[0][0].principals,
        vec![StringMatch::Exact(
            "cluster.local/ns/demo/sa/client-a".into()
        )]
    );
    assert_eq!(rule[1][0].destination_ports, vec![8080]);
    assert!(rule[1][0].source_ips[0].contains("10.244.1.2".parse().unwrap()));
}

#[test]
fn malformed_yaml_names_file_and_line() {
    let path = Path::new("/etc/zt.yaml");
    let e = config::parse("workloads:\n- name: a\n   namespace: demo\n", path).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Parse {
                location: Some((3, _)),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("/etc/zt.yaml:3:"), "{e}");
}

#[test]
fn unknown_field_names_field_and_line() {
    let text = std::fs::read_to_string(example()).unwrap().replacen(
        "  workloadIps: [10.244.1.3]",
        "  workloadIpz: [10.244.1.3]",
        1,
    );
    let e = config::parse(&text, Path::new("/etc/zt.yaml"))
        .unwrap_err()
        .to_string();
    let line = text
        .lines()
        .position(|l| l.contains("workloadIpz"))
        .unwrap()
        + 1;
    assert!(
        e.starts_with(&format!(
            "/etc/zt.yaml:{line}:3: workloads[1]: unknown field `workloadIpz`"
        )),
        "{e}"
    );
}

#[test]
fn bad_cidr_is_refused() {
    let text = std::fs::read_to_string(example())
        .unwrap()
        .replace("10.244.0.0/16", "10.244.0.0/40");
    let e = config::parse(&text, Path::new("/etc/zt.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid CIDR \"10.244.0.0/40\""), "{e}");
    assert!(e.contains("policies[0]"), "{e}");
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let e = config::load(Path::new("/nonexistent/zt.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/zt.yaml: cannot read"),
        "{e}"
    );
}

async fn wait_for(state: &State, what: &str, cond: impl Fn(&ConfigSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !cond(&state.current()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const ONE: &str =
    "workloads:\n- {name: a, namespace: demo, workloadIps: [10.0.0.1], services: {}}\n";
const TWO: &str =
    "workloads:\n- {name: a, namespace: demo, workloadIps: [10.0.0.1], services: {}}\n\
                   - {name: b, namespace: demo, workloadIps: [10.0.0.2], services: {}}\n";

#[tokio::test]
async fn watcher_applies_changes_and_keeps_config_on_errors() {
    let dir = TempDir::new("watch");
    let path = dir.0.join("zt.yaml");
    std::fs::write(&path, ONE).unwrap();
    let state = Arc::new(State::new(ConfigSnapshot::empty()));
    let handle = config::spawn_watcher(
        path.clone(),
        Arc::new(config::ConfigSources::new(state.clone(), false)),
        Duration::from_millis(50),
        config::Defaults::default(),
    );

    wait_for(&state, "initial load", |s| s.workloads().count() == 1).await;

    replace_file(&path, TWO);
    wait_for(&state, "added workload", |s| {
        s.workload_by_ip("10.0.0.2".parse().unwrap()).is_some()
    })
    .await;
    let generation = state.generation();

    // Broken YAML, then a broken schema, then no file at all: the last good config stays.
    for broken in ["workloads: [\n", "workloads:\n- {name: c}\n"] {
        replace_file(&path, broken);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(state.current().workloads().count(), 2, "after {broken:?}");
    }
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(state.current().workloads().count(), 2);
    assert_eq!(state.generation(), generation);
    assert!(!handle.is_finished(), "watcher must survive bad files");

    // Fixed: applied again.
    replace_file(&path, ONE);
    wait_for(&state, "fixed file", |s| s.workloads().count() == 1).await;
    assert!(state.generation() > generation);
    handle.abort();
}

#[tokio::test]
async fn watcher_waits_for_a_file_that_does_not_exist_yet() {
    let dir = TempDir::new("late");
    let path = dir.0.join("zt.yaml");
    let state = Arc::new(State::new(ConfigSnapshot::empty()));
    let mut generations = state.subscribe();
    let handle = config::spawn_watcher(
        path.clone(),
        Arc::new(config::ConfigSources::new(state.clone(), false)),
        Duration::from_millis(50),
        config::Defaults::default(),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(state.generation(), 0);
    replace_file(&path, TWO);
    tokio::time::timeout(Duration::from_secs(1), generations.changed())
        .await
        .expect("config applied within 1s")
        .unwrap();
    assert_eq!(state.current().workloads().count(), 2);
    handle.abort();
}

/// A workload without `trustDomain` is in the mesh's trust domain (TRUST_DOMAIN), not in a
/// hard-wired cluster.local; one that names its own keeps it.
#[test]
fn workloads_default_to_the_mesh_trust_domain() {
    let text = "workloads:\n\
                - {name: a, namespace: demo, serviceAccount: sa-a, workloadIps: [10.0.0.1], services: {}}\n\
                - {name: b, namespace: demo, serviceAccount: sa-b, workloadIps: [10.0.0.2], trustDomain: other.example, services: {}}\n";
    let defaults = config::Defaults {
        trust_domain: "corp.example".into(),
    };
    let snap = config::parse_with(text, Path::new("t.yaml"), &defaults).unwrap();
    let id = |ip: &str| {
        snap.workload_by_ip(ip.parse().unwrap())
            .unwrap()
            .identity()
            .to_string()
    };
    assert_eq!(id("10.0.0.1"), "spiffe://corp.example/ns/demo/sa/sa-a");
    assert_eq!(id("10.0.0.2"), "spiffe://other.example/ns/demo/sa/sa-b");
    let plain = config::parse(text, Path::new("t.yaml")).unwrap();
    assert_eq!(
        plain
            .workload_by_ip("10.0.0.1".parse().unwrap())
            .unwrap()
            .identity()
            .to_string(),
        "spiffe://cluster.local/ns/demo/sa/sa-a"
    );
}
