use std::path::Path;
use std::time::Duration;

use super::*;

fn config(policies: &str) -> ConfigSnapshot {
    let yaml = format!(
        "workloads:\n- {{uid: Kubernetes//Pod/demo/dst, name: dst, namespace: demo, serviceAccount: dst, node: node-a, workloadIps: [10.0.0.2], services: {{}}}}\npolicies:\n{policies}"
    );
    crate::config::parse(&yaml, Path::new("t.yaml")).unwrap()
}

/// The ZDS uid: a pod UID, unlike the workload's uid in the config.
const UID: &str = "6f1c9a52-pod-uid";

fn dst() -> LocalPod {
    pod("dst")
}

fn pod(name: &str) -> LocalPod {
    LocalPod::new(
        "node-a",
        crate::state::WorkloadInfo {
            name: name.into(),
            namespace: "demo".into(),
            service_account: "dst".into(),
        },
    )
}

fn deny_port(port: u16) -> String {
    format!("- {{name: d, namespace: demo, scope: Namespace, action: Deny, rules: [[[{{destinationPorts: [{port}]}}]]]}}\n")
}

fn conn(port: u16) -> ConnInfo {
    ConnInfo {
        src_ip: "10.0.0.1".parse().unwrap(),
        src_identity: Some("spiffe://cluster.local/ns/demo/sa/web".parse().unwrap()),
        dst_ip: "10.0.0.2".parse().unwrap(),
        dst_port: port,
    }
}

#[test]
fn admit_lists_allowed_and_refuses_denied() {
    let state = State::new(config(&deny_port(81)));
    let live = LiveConns::new();
    let a = live.admit(&state, UID, &dst(), conn(80), "test").unwrap();
    assert_eq!(live.len(), 1);
    let d = match live.admit(&state, UID, &dst(), conn(81), "test") {
        Err(d) => d,
        Ok(_) => panic!("port 81 admitted"),
    };
    assert_eq!(d.decided_by, Some(("demo/d".into(), 0)));
    assert_eq!(live.len(), 1, "a denied connection must not stay listed");
    drop(a);
    assert!(live.is_empty());
    // A pod the config does not know has no policy to enforce.
    let _b = live
        .admit(&state, UID, &pod("unknown"), conn(81), "test")
        .unwrap();
}

#[tokio::test]
async fn recheck_revokes_only_what_the_new_policy_denies() {
    let state = Arc::new(State::new(config("")));
    let live = LiveConns::new();
    let to_80 = live.admit(&state, UID, &dst(), conn(80), "test").unwrap();
    let to_81 = live.admit(&state, UID, &dst(), conn(81), "test").unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(recheck_on_change(
        state.clone(),
        UID.into(),
        dst(),
        live.clone(),
        stop.clone(),
    ));

    // A connection still running when the policy arrives: its work is dropped.
    let work_81 = to_81.run(std::future::pending::<()>());
    let work_80 = to_80.run(tokio::time::sleep(Duration::from_millis(300)));
    state.replace(config(&deny_port(81)));
    let (r81, r80) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(work_81, work_80)
    })
    .await
    .expect("the denied connection was not revoked");
    assert_eq!(r81, None, "port 81 must be revoked");
    assert_eq!(r80, Some(()), "port 80 must run to its end");

    // Removing the pod from the config leaves its connections alone.
    assert_eq!(live.recheck(&ConfigSnapshot::empty(), UID, &dst()), 0);
    stop.cancel();
    task.await.unwrap();
    drop((to_80, to_81));
    assert!(live.is_empty());
}

#[tokio::test]
async fn recheck_task_ends_with_its_pod() {
    let state = Arc::new(State::new(config("")));
    let stop = CancellationToken::new();
    let task = tokio::spawn(recheck_on_change(
        state,
        UID.into(),
        dst(),
        LiveConns::new(),
        stop.clone(),
    ));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("re-check task outlived its pod")
        .unwrap();
}

#[test]
fn recheck_revokes_every_connection_sharing_a_denied_conn_info() {
    let state = State::new(config(""));
    let live = LiveConns::new();
    let same: Vec<Admitted> = (0..3)
        .map(|_| live.admit(&state, UID, &dst(), conn(81), "test").unwrap())
        .collect();
    let other = live.admit(&state, UID, &dst(), conn(80), "test").unwrap();
    assert_eq!(live.recheck(&config(&deny_port(81)), UID, &dst()), 3);
    assert!(same.iter().all(|a| a.revoke.is_cancelled()));
    assert!(!other.revoke.is_cancelled());
    // Already revoked connections are not counted again.
    assert_eq!(live.recheck(&config(&deny_port(81)), UID, &dst()), 0);
}
