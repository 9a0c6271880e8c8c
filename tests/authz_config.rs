//! Policy files through the config watcher: a bad policy is refused with an error naming it,
//! and the policies in force stay in force (and keep deciding) until a good file arrives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::authz::{evaluate, ConnInfo, Verdict};
use meshtunnel::config;
use meshtunnel::state::{ConfigSnapshot, State};

const GOOD: &str = "workloads:
- {uid: dst, name: dst, namespace: demo, workloadIps: [10.0.0.2], services: {}}
policies:
- name: no-db
  namespace: demo
  scope: Namespace
  action: Deny
  rules: [[[{sourceIps: [10.0.1.0/24]}]]]
";

fn from_db() -> ConnInfo {
    ConnInfo {
        src_ip: "10.0.1.7".parse().unwrap(),
        src_identity: None,
        dst_ip: "10.0.0.2".parse().unwrap(),
        dst_port: 8080,
    }
}

fn verdict(state: &State) -> Verdict {
    let s = state.current();
    evaluate(&s, s.workload_by_uid("dst").unwrap(), &from_db()).verdict
}

/// Bad variants of GOOD and a piece of the error each must give.
fn broken() -> Vec<(String, &'static str)> {
    vec![
        (
            GOOD.replace("10.0.1.0/24", "10.0.1.0/33"),
            "invalid CIDR \"10.0.1.0/33\"",
        ),
        (GOOD.replace("10.0.1.0/24", "10.0.1/24"), "invalid CIDR"),
        (
            GOOD.replace("action: Deny", "action: Audit"),
            "unknown variant `Audit`",
        ),
        (
            GOOD.replace("scope: Namespace", "scope: Mesh"),
            "unknown variant `Mesh`",
        ),
        (
            GOOD.replace("{sourceIps: [10.0.1.0/24]}", "{principals: [!Regex x]}"),
            "unknown variant `Regex`",
        ),
        (
            GOOD.replace("{sourceIps:", "{sourceIPs:"),
            "unknown field `sourceIPs`",
        ),
        (
            GOOD.replace("  rules:", "  dryRun: maybe\n  rules:"),
            "dryRun",
        ),
    ]
}

#[test]
fn bad_policies_are_refused_with_the_place_named() {
    for (text, want) in broken() {
        let e = config::parse(&text, Path::new("/etc/zt.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/zt.yaml:"), "{e}");
        assert!(e.contains(want), "expected {want:?} in: {e}");
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_bad_policy_file_leaves_the_policies_in_force() {
    let dir = TempDir(
        std::env::temp_dir().join(format!("meshtunnel-authz-config-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("zt.yaml");
    replace_file(&path, GOOD);
    let state = Arc::new(State::new(ConfigSnapshot::empty()));
    let watcher = config::spawn_watcher(
        path.clone(),
        Arc::new(config::ConfigSources::new(state.clone(), false)),
        Duration::from_millis(20),
        config::Defaults::default(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.current().policies().count() != 1 {
        assert!(Instant::now() < deadline, "good file never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(verdict(&state), Verdict::Deny);
    let generation = state.generation();

    for (text, _) in broken() {
        replace_file(&path, &text);
        // Ten poll intervals: ample time for the watcher to read (and refuse) the file.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(state.generation(), generation, "applied: {text}");
        assert_eq!(verdict(&state), Verdict::Deny, "policy lost after: {text}");
    }

    // A good file without the policy is applied, and the connection is allowed again.
    replace_file(&path, &GOOD[..GOOD.find("policies:").unwrap()]);
    while state.generation() == generation {
        assert!(Instant::now() < deadline, "fixed file never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(verdict(&state), Verdict::Allow);
    watcher.abort();
}
