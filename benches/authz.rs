//! Cost of one L4 authorization decision with 10,000 policies of 10 rules each, and of a
//! policy re-check over 10,000 live connections. Plain `Instant` timing (no harness):
//! `cargo bench -p meshtunnel --bench authz`.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::authz::{evaluate, ConnInfo, LiveConns, Verdict};
use meshtunnel::state::{
    Action, ConfigSnapshot, LocalPod, Match, Policy, Scope, State, StringMatch, Workload,
    WorkloadInfo,
};

const POLICIES: usize = 10_000;
const RULES: usize = 10;

/// Rules shaped like istiod's output for `from: principals` + `to: ports`: two clauses each.
/// None of them matches the benchmark's connection unless `hit` names the rule.
fn rules(seed: usize, hit: Option<usize>) -> Vec<Vec<Vec<Match>>> {
    (0..RULES)
        .map(|r| {
            let principal = if hit == Some(r) {
                "cluster.local/ns/demo/sa/web".to_owned()
            } else {
                format!("cluster.local/ns/ns{seed}/sa/sa{r}")
            };
            vec![
                vec![Match {
                    principals: vec![StringMatch::Exact(principal)],
                    ..Default::default()
                }],
                vec![Match {
                    destination_ports: vec![8080, 9000 + r as u16],
                    ..Default::default()
                }],
            ]
        })
        .collect()
}

fn policy(i: usize, namespace: String, action: Action, hit: Option<usize>) -> Policy {
    Policy {
        name: format!("p{i}"),
        namespace,
        scope: Scope::Namespace,
        action,
        rules: rules(i, hit),
        dry_run: false,
    }
}

fn workload() -> Workload {
    Workload {
        uid: "dst".into(),
        name: "dst".into(),
        namespace: "demo".into(),
        node: "node-a".into(),
        trust_domain: "cluster.local".into(),
        workload_ips: vec!["10.0.0.2".parse().unwrap()],
        ..Default::default()
    }
}

/// The pod as ZDS hands it over: finds `workload()` by name, namespace, account and node.
fn pod() -> LocalPod {
    LocalPod::new(
        "node-a",
        WorkloadInfo {
            name: "dst".into(),
            namespace: "demo".into(),
            service_account: String::new(),
        },
    )
}

fn conn() -> ConnInfo {
    ConnInfo {
        src_ip: "10.0.0.1".parse::<IpAddr>().unwrap(),
        src_identity: Some("spiffe://cluster.local/ns/demo/sa/web".parse().unwrap()),
        dst_ip: "10.0.0.2".parse().unwrap(),
        dst_port: 8080,
    }
}

fn snapshot(policies: Vec<Policy>) -> ConfigSnapshot {
    ConfigSnapshot::new(vec![workload()], vec![], policies).unwrap()
}

/// Runs `f` for about `budget` and returns ns per call.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn decision(name: &str, s: &ConfigSnapshot, want: Verdict) {
    let w = s.workload_by_uid("dst").unwrap();
    let c = conn();
    assert_eq!(evaluate(s, w, &c).verdict, want, "{name}");
    let ns = time(Duration::from_millis(700), || {
        black_box(evaluate(black_box(s), w, black_box(&c)));
    });
    println!("{name:<72} {:>12.0} ns/decision", ns);
}

fn main() {
    println!("{POLICIES} policies x {RULES} rules (2 clauses each)");

    // Worst case: every policy applies to the destination and none matches, so every rule of
    // every policy is looked at before the default deny.
    let all_here = snapshot(
        (0..POLICIES)
            .map(|i| policy(i, "demo".into(), Action::Allow, None))
            .collect(),
    );
    decision(
        "all 10,000 ALLOW apply to dst, none matches (every rule evaluated)",
        &all_here,
        Verdict::Deny,
    );
    let mut ps: Vec<Policy> = (0..POLICIES)
        .map(|i| policy(i, "demo".into(), Action::Allow, None))
        .collect();
    ps[POLICIES - 1] = policy(POLICIES - 1, "demo".into(), Action::Allow, Some(RULES - 1));
    decision(
        "all 10,000 apply, the last rule of the last ALLOW matches",
        &snapshot(ps),
        Verdict::Allow,
    );

    // Typical: policies spread over 1,000 namespaces (10 each); 10 apply to dst.
    let spread = |hit: bool| {
        snapshot(
            (0..POLICIES)
                .map(|i| {
                    let ns = if i % 1000 == 0 {
                        "demo".to_owned()
                    } else {
                        format!("ns{}", i % 1000)
                    };
                    let h = (hit && i == 9000).then_some(RULES - 1);
                    policy(i, ns, Action::Allow, h)
                })
                .collect(),
        )
    };
    decision(
        "10,000 over 1,000 namespaces, 10 ALLOW apply, none matches",
        &spread(false),
        Verdict::Deny,
    );
    decision(
        "10,000 over 1,000 namespaces, 10 ALLOW apply, the last one matches",
        &spread(true),
        Verdict::Allow,
    );
    decision("no policy at all", &snapshot(vec![]), Verdict::Allow);

    // Re-check after a reload: 10,000 live connections, typical policy set.
    let state = State::new(spread(true));
    let me = pod();
    assert!(
        me.find(&state.current()).is_some(),
        "the pod must find its workload"
    );
    let live = LiveConns::new();
    let admitted: Vec<_> = (0..10_000u32)
        .map(|i| {
            let mut c = conn();
            c.src_ip = IpAddr::from((0x0a01_0000u32 + i).to_be_bytes());
            live.admit(&state, "dst", &me, c, "bench").ok().unwrap()
        })
        .collect();
    let s = state.current();
    let ns = time(Duration::from_millis(700), || {
        black_box(live.recheck(black_box(&s), "dst", &me));
    });
    println!(
        "{:<72} {:>12.2} ms/re-check",
        "re-check of 10,000 live connections (typical set, all stay allowed)",
        ns / 1e6
    );

    // The same, but the connections come from 10 client pods: one decision per client.
    let few = LiveConns::new();
    let from_few: Vec<_> = (0..10_000u32)
        .map(|i| {
            let mut c = conn();
            c.src_ip = IpAddr::from((0x0a01_0000u32 + i % 10).to_be_bytes());
            few.admit(&state, "dst", &me, c, "bench").ok().unwrap()
        })
        .collect();
    let ns = time(Duration::from_millis(700), || {
        black_box(few.recheck(black_box(&s), "dst", &me));
    });
    println!(
        "{:<72} {:>12.2} ms/re-check",
        "re-check of 10,000 live connections from 10 clients",
        ns / 1e6
    );
    drop(from_few);

    // Admission = list + decide + unlist, the per-connection overhead on the inbound path.
    let state = Arc::new(State::new(spread(true)));
    let ns = time(Duration::from_millis(700), || {
        black_box(live.admit(&state, "dst", &me, conn(), "bench").ok());
    });
    println!(
        "{:<72} {:>12.0} ns/connection",
        "admit + drop with 10,000 others live (typical set)", ns
    );
    drop(admitted);
}
