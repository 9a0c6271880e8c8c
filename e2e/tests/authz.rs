//! L4 authorization through two real ztunnels: policies in the watched config file decide
//! HBONE (15008, the client's mTLS identity) and plaintext (15006, no identity) connections to
//! b1, and a policy added at runtime closes open connections it now forbids.
//!
//! a1, a2 (node A) and b1 (node B) are meshed; b2 (node B) is not, so it reaches b1 in plain
//! TCP through b1's 15006. Policies are Namespace-scoped in `demo`, so they apply to b1.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meshtunnel_e2e::apps::{connect_from, EchoServer};
use meshtunnel_e2e::mesh::{NAMESPACE, TRUST_DOMAIN};
use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::NodeId;

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// The SPIFFE id of a pod's service account, without `spiffe://`, as policies write it.
fn principal(pod: &str) -> String {
    format!("{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/sa-{pod}")
}

/// One Namespace-scoped policy in `demo`, as a config-file list item.
fn policy(name: &str, action: &str, dry_run: bool, rules: &str) -> String {
    format!(
        "- {{name: {name}, namespace: {NAMESPACE}, scope: Namespace, action: {action}, dryRun: {dry_run}, rules: {rules}}}\n"
    )
}

fn principal_rule(pod: &str) -> String {
    format!("[[[{{principals: [!Exact {}]}}]]]", principal(pod))
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Echoed,
    Closed,
}

/// Connects from `from` to b1:8080, sends a line and reads: the echo back, or the connection
/// closed by ztunnel. Neither within 15 s is a failure.
fn attempt(mesh: &Mesh, from: &str) -> Outcome {
    let mut c = connect_from(mesh.pod_ns(from), mesh.addr("b1", 8080))
        .unwrap_or_else(|e| panic!("{from}: {e:#}"));
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    exchange(&mut c, from)
}

fn exchange(c: &mut TcpStream, who: &str) -> Outcome {
    let msg = b"authz-ping\n";
    if c.write_all(msg).is_err() {
        return Outcome::Closed;
    }
    let mut back = [0u8; 11];
    match c.read(&mut back) {
        Ok(0) => Outcome::Closed,
        Ok(n) => {
            c.read_exact(&mut back[n..]).expect("rest of the echo");
            assert_eq!(&back, msg, "{who}: echo differs");
            Outcome::Echoed
        }
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
            Outcome::Closed
        }
        Err(e) => panic!("{who}: neither echoed nor closed: {e}"),
    }
}

/// A ztunnel's log without terminal colour codes.
fn log(mesh: &Mesh, node: NodeId) -> String {
    let raw = mesh.logs(node);
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw.as_str();
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = match rest.find('m') {
            Some(m) => &rest[m + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

/// Waits up to 10 s for `node`'s log to hold more than `before` lines with `needle` (log
/// lines may land just after the client saw the effect).
fn wait_log(mesh: &Mesh, node: NodeId, needle: &str, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&log(mesh, node), needle) <= before {
        assert!(
            Instant::now() < deadline,
            "no new {needle:?} in the log of ztunnel {node:?}\n{}",
            logs(mesh)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Writes `policies` into the config file and waits until ztunnel B has applied it.
fn apply(mesh: &Mesh, policies: &str) -> Instant {
    let before = count(&log(mesh, NodeId::B), "applied local config");
    let written = Instant::now();
    mesh.write_config_with(&mesh.opts.pods, policies).unwrap();
    let deadline = written + Duration::from_secs(15);
    while count(&log(mesh, NodeId::B), "applied local config") == before {
        assert!(
            Instant::now() < deadline,
            "ztunnel B did not apply the new config:\n{}",
            log(mesh, NodeId::B)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    written
}

fn from_ip(echo: &EchoServer, ip: IpAddr) -> usize {
    echo.peers().iter().filter(|p| p.ip() == ip).count()
}

fn logs(mesh: &Mesh) -> String {
    format!(
        "--- ztunnel A ---\n{}\n--- ztunnel B ---\n{}",
        log(mesh, NodeId::A),
        log(mesh, NodeId::B)
    )
}

#[test]
fn deny_beats_allow_no_allow_allows_unmatched_allow_denies() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let a1 = IpAddr::V4(mesh.pod_ip("a1"));

    // No policy at all: everyone gets through.
    for from in ["a1", "a2", "b2"] {
        assert_eq!(
            attempt(&mesh, from),
            Outcome::Echoed,
            "{from}\n{}",
            logs(&mesh)
        );
    }

    // a1 is both allowed and denied: DENY wins; a2 is only allowed.
    let both = policy(
        "allow-a",
        "Allow",
        false,
        &format!(
            "[[[{{principals: [!Exact {}, !Exact {}]}}]]]",
            principal("a1"),
            principal("a2")
        ),
    ) + &policy("deny-a1", "Deny", false, &principal_rule("a1"));
    apply(&mesh, &both);
    let reached = from_ip(&echo, a1);
    let before_401 = count(&log(&mesh, NodeId::A), "answered 401 Unauthorized");
    assert_eq!(attempt(&mesh, "a1"), Outcome::Closed, "{}", logs(&mesh));
    wait_log(&mesh, NodeId::A, "answered 401 Unauthorized", before_401);
    assert_eq!(attempt(&mesh, "a2"), Outcome::Echoed, "{}", logs(&mesh));
    // b2 is plaintext: no identity, so the ALLOW cannot match.
    assert_eq!(attempt(&mesh, "b2"), Outcome::Closed, "{}", logs(&mesh));
    assert_eq!(
        from_ip(&echo, a1),
        reached,
        "a denied connection reached the app"
    );
    let lb = log(&mesh, NodeId::B);
    assert!(
        lb.contains("connection denied by authorization policy")
            && lb.contains("demo/deny-a1 rule 0"),
        "denial not logged with its policy:\n{lb}"
    );

    // An ALLOW that does not match a1 denies it, on HBONE and plaintext alike; an ALLOW on
    // the source address lets plaintext b2 in.
    let b2_net = format!("{}/32", mesh.pod_ip("b2"));
    let allow_a2 = policy("allow-a2", "Allow", false, &principal_rule("a2"))
        + &policy(
            "allow-b2",
            "Allow",
            false,
            &format!("[[[{{sourceIps: [{b2_net}]}}]]]"),
        );
    apply(&mesh, &allow_a2);
    let before_401 = count(&log(&mesh, NodeId::A), "answered 401 Unauthorized");
    assert_eq!(attempt(&mesh, "a1"), Outcome::Closed, "{}", logs(&mesh));
    wait_log(&mesh, NodeId::A, "answered 401 Unauthorized", before_401);
    assert_eq!(attempt(&mesh, "a2"), Outcome::Echoed, "{}", logs(&mesh));
    assert_eq!(attempt(&mesh, "b2"), Outcome::Echoed, "{}", logs(&mesh));
    assert_eq!(
        from_ip(&echo, a1),
        reached,
        "a denied connection reached the app"
    );

    // Without the source-address ALLOW, plaintext b2 is closed at 15006.
    apply(
        &mesh,
        &policy("allow-a2", "Allow", false, &principal_rule("a2")),
    );
    assert_eq!(attempt(&mesh, "b2"), Outcome::Closed, "{}", logs(&mesh));
    let lb = log(&mesh, NodeId::B);
    assert!(
        lb.contains("listener=\"plaintext\""),
        "plaintext denial not logged:\n{lb}"
    );
    assert!(lb.contains("no ALLOW policy matched"), "{lb}");
}

#[test]
fn dry_run_policies_only_log() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    // Enforced, these would deny a1 (by identity) and b2 (by address).
    let b2_net = format!("{}/32", mesh.pod_ip("b2"));
    apply(
        &mesh,
        &(policy("dry-deny-a1", "Deny", true, &principal_rule("a1"))
            + &policy(
                "dry-deny-b2",
                "Deny",
                true,
                &format!("[[[{{sourceIps: [{b2_net}]}}]]]"),
            )),
    );
    let _echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();

    for from in ["a1", "a2", "b2"] {
        assert_eq!(
            attempt(&mesh, from),
            Outcome::Echoed,
            "{from}\n{}",
            logs(&mesh)
        );
    }
    let lb = log(&mesh, NodeId::B);
    assert_eq!(
        count(&lb, "dry-run authorization policy would deny"),
        2,
        "expected one dry-run line each for a1 and b2:\n{lb}"
    );
    assert!(
        lb.contains("demo/dry-deny-a1") && lb.contains("demo/dry-deny-b2"),
        "{lb}"
    );
    assert!(!lb.contains("connection denied"), "{lb}");
}

/// Seconds since midnight of the first RFC 3339 timestamp on a log line.
fn timestamp(line: &str) -> Option<f64> {
    let t = line.find('T')?;
    let rest = &line[t + 1..];
    let end = rest.find('Z')?;
    let mut parts = rest[..end].split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn last_line_time(log: &str, needle: &str) -> Option<f64> {
    log.lines()
        .rfind(|l| l.contains(needle))
        .and_then(timestamp)
}

#[test]
fn policy_added_at_runtime_closes_open_connections_it_forbids() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let _echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let open = |from: &str| {
        let mut c = connect_from(mesh.pod_ns(from), mesh.addr("b1", 8080)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(exchange(&mut c, from), Outcome::Echoed, "{}", logs(&mesh));
        c
    };
    let doomed = [("a1", open("a1")), ("b2", open("b2"))];
    let mut kept = open("a2");

    // Each doomed connection blocks in read until ztunnel closes it.
    let waiters: Vec<_> = doomed
        .into_iter()
        .map(|(who, mut c)| {
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                let r = c.read(&mut b);
                (who, r.map_err(|e| e.kind()), Instant::now())
            })
        })
        .collect();

    // Everything except a2 is denied from now on (plaintext has no identity, so `not`
    // holds for it).
    let deny = policy(
        "deny-all-but-a2",
        "Deny",
        false,
        &format!("[[[{{notPrincipals: [!Exact {}]}}]]]", principal("a2")),
    );
    let written = apply(&mesh, &deny);
    let mut worst = Duration::ZERO;
    for w in waiters {
        let (who, r, at) = w.join().unwrap();
        assert!(
            matches!(r, Ok(0) | Err(ErrorKind::ConnectionReset)),
            "{who}: expected the connection to be closed, got {r:?}\n{}",
            logs(&mesh)
        );
        let took = at.duration_since(written);
        println!("{who}: closed {took:?} after the config file was written");
        worst = worst.max(took);
    }
    // The file is polled every second; the re-check itself must follow the reload at once.
    // Generous bound for a loaded machine; the measured numbers are printed above.
    assert!(worst < Duration::from_secs(10), "closing took {worst:?}");
    let lb = log(&mesh, NodeId::B);
    assert_eq!(
        count(&lb, "open connection closed: no longer allowed"),
        2,
        "{lb}"
    );
    if let (Some(applied), Some(closed)) = (
        last_line_time(&lb, "applied local config"),
        last_line_time(&lb, "open connection closed: no longer allowed"),
    ) {
        println!(
            "ztunnel B: last revocation logged {:.1} ms after the config was applied",
            (closed - applied) * 1000.0
        );
    }

    // a2's connection is untouched, and new a1 connections are refused.
    assert_eq!(
        exchange(&mut kept, "a2"),
        Outcome::Echoed,
        "{}",
        logs(&mesh)
    );
    assert_eq!(attempt(&mesh, "a1"), Outcome::Closed);
}
