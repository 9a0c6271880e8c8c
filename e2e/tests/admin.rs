//! Admin API and `ztunnel debug` against real ztunnels: loopback only, config dump, runtime
//! log level, /quitquitquit, the debug tables.

use std::net::SocketAddr;
use std::time::Duration;

use meshtunnel_e2e::apps::{connect_from, echo_exact, EchoServer};
use meshtunnel_e2e::mesh::ADMIN_PORT;
use meshtunnel_e2e::{Mesh, MeshOptions};
use serde_json::Value;
use test_support::NodeId;

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn json(mesh: &Mesh, node: NodeId, path: &str) -> Value {
    let (code, body) = mesh.admin(node, "GET", path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn admin_api_answers_on_loopback_only_with_a_config_dump() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let dump = json(&mesh, NodeId::A, "/config_dump");

    let names: Vec<&str> = dump["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a1", "a2", "b1", "b2"], "{dump:#}");
    assert_eq!(dump["services"][0]["name"], "echo");
    assert!(dump["policies"].as_array().unwrap().is_empty());
    let pods: Vec<&str> = dump["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(pods, ["a1", "a2"], "{dump:#}");
    assert_eq!(dump["pods"][0]["uid"], mesh.uid("a1"));
    // Found by name, namespace, service account and node, though the uids differ.
    assert_eq!(dump["pods"][0]["workloadUid"], mesh.workload_uid("a1"));
    assert_eq!(dump["pods"][0]["inConfig"], true);
    assert!(dump["pods"][0]["netnsInode"].as_u64().unwrap() > 0);
    let certs = dump["certificates"].as_array().unwrap();
    let ids: Vec<&str> = certs
        .iter()
        .map(|c| c["identity"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "spiffe://cluster.local/ns/demo/sa/sa-a1",
            "spiffe://cluster.local/ns/demo/sa/sa-a2"
        ]
    );
    // 24 h certificates: expiry a day out (give or take the test's own runtime).
    let left = certs[0]["expiresInSeconds"].as_u64().unwrap();
    assert!((23 * 3600..=24 * 3600).contains(&left), "{left}");
    assert!(certs[0]["notAfter"].as_str().unwrap().ends_with('Z'));

    // The node's own address, from the node itself and from the other node: nothing there.
    let node_addr = SocketAddr::from((mesh.topo.node_ip(NodeId::A), ADMIN_PORT));
    for from in [NodeId::A, NodeId::B] {
        let r = mesh.http(from, node_addr, "GET", "/config_dump");
        let err = r.expect_err("admin API reachable on the node address");
        assert!(format!("{err:#}").contains("refused"), "{err:#}");
    }
    // Unknown paths and wrong methods are refused with the right status.
    assert_eq!(mesh.admin(NodeId::A, "GET", "/nope").unwrap().0, 404);
    assert_eq!(
        mesh.admin(NodeId::A, "GET", "/quitquitquit").unwrap().0,
        405
    );
}

#[test]
fn logging_level_changes_at_runtime() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let _echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    assert_eq!(json(&mesh, NodeId::A, "/logging")["level"], "info");
    let once = |msg: &[u8]| {
        let c = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080)).unwrap();
        echo_exact(c, msg).unwrap();
    };
    once(b"at info");
    // "connection opened" is the debug-level access line.
    assert!(!mesh.logs(NodeId::A).contains("connection opened"));

    let (code, body) = mesh
        .admin(NodeId::A, "POST", "/logging?level=info,access=debug")
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        json(&mesh, NodeId::A, "/logging")["level"],
        "info,access=debug"
    );
    once(b"at debug");
    assert!(mesh.logs(NodeId::A).contains("connection opened"));

    // A bad filter is refused and the old one stays.
    let (code, body) = mesh
        .admin(NodeId::A, "POST", "/logging?level=info,%3D%3D%3D")
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert_eq!(mesh.admin(NodeId::A, "POST", "/logging").unwrap().0, 400);
    assert_eq!(
        json(&mesh, NodeId::A, "/logging")["level"],
        "info,access=debug"
    );
    // Percent-encoded module filters work.
    let (code, _) = mesh
        .admin(NodeId::A, "PUT", "/logging?level=warn%2Cmeshtunnel%3Dtrace")
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        json(&mesh, NodeId::A, "/logging")["level"],
        "warn,meshtunnel=trace"
    );
}

#[test]
fn quitquitquit_drains_and_exits() {
    let mut mesh = Mesh::start(MeshOptions::default()).unwrap();
    let (code, body) = mesh.admin(NodeId::A, "POST", "/quitquitquit").unwrap();
    assert_eq!(code, 200, "{body}");
    let status = mesh
        .wait_ztunnel_exit(NodeId::A, Duration::from_secs(20))
        .unwrap();
    assert!(status.success(), "ztunnel exited with {status}");
    let log = mesh.logs(NodeId::A);
    assert!(log.contains("/quitquitquit: draining"), "{log}");
    assert!(log.contains("ztunnel stopped"), "{log}");
    // The other node is untouched.
    assert_eq!(mesh.readiness(NodeId::B).unwrap().0, 200);
}

fn debug(mesh: &Mesh, node: NodeId, args: &[&str]) -> std::process::Output {
    mesh.ztunnel_command(node)
        .unwrap()
        .arg("debug")
        .args(args)
        .output()
        .unwrap()
}

fn debug_ok(mesh: &Mesh, node: NodeId, args: &[&str]) -> String {
    let out = debug(mesh, node, args);
    assert!(
        out.status.success(),
        "ztunnel debug {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn debug_cli_prints_tables_and_json() {
    let mesh = Mesh::start(MeshOptions::default()).unwrap();
    let out = debug_ok(&mesh, NodeId::A, &["workloads"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "IP",
            "NODE",
            "PROTOCOL",
            "IDENTITY",
            "PROXIED"
        ]
    );
    let row = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r[1] == name)
            .unwrap_or_else(|| panic!("{name} missing:\n{out}"))
    };
    let a1 = row("a1");
    assert_eq!(a1[2], mesh.pod_ip("a1").to_string());
    assert_eq!(
        a1[3..],
        [
            "node-a",
            "HBONE",
            "spiffe://cluster.local/ns/demo/sa/sa-a1",
            "yes"
        ]
    );
    assert_eq!(row("b1")[6], "no", "b1 is node B's");
    assert_eq!(row("b2")[4], "TCP");

    let svc = debug_ok(&mesh, NodeId::A, &["services"]);
    assert!(svc.lines().nth(1).unwrap().contains("/10.96.0.10"), "{svc}");
    assert!(svc.lines().nth(1).unwrap().contains("80->8080"), "{svc}");

    let certs: Value =
        serde_json::from_str(&debug_ok(&mesh, NodeId::B, &["certs", "--json"])).unwrap();
    assert_eq!(
        certs[0]["identity"],
        "spiffe://cluster.local/ns/demo/sa/sa-b1"
    );
    let table = debug_ok(&mesh, NodeId::B, &["certs"]);
    assert!(
        table.contains("sa-b1") && table.contains("EXPIRES-IN"),
        "{table}"
    );

    assert_eq!(debug_ok(&mesh, NodeId::A, &["policies"]).lines().count(), 1);

    // No ztunnel behind the address: a clear error and a failure exit.
    let out = debug(&mesh, NodeId::A, &["workloads", "--admin", "127.0.0.1:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

/// b1 refuses a1 by policy; a2 is allowed by default (no ALLOW policy).
fn deny_a1() -> MeshOptions {
    MeshOptions {
        policies:
            "- {name: deny-a1, namespace: demo, scope: Namespace, action: Deny, dryRun: false, \
                   rules: [[[{principals: [!Exact cluster.local/ns/demo/sa/sa-a1]}]]]}\n"
                .into(),
        ..MeshOptions::default()
    }
}

#[test]
fn debug_explain_names_the_deciding_policy_and_agrees_with_enforcement() {
    let mesh = Mesh::start(deny_a1()).unwrap();
    let _echo = EchoServer::start(mesh.pod_ns("b1"), any(8080)).unwrap();
    let b1 = mesh.addr("b1", 8080).to_string();
    let src = |pod: &str| mesh.pod_ip(pod).to_string();

    let out = debug_ok(
        &mesh,
        NodeId::B,
        &["explain", "--src-ip", &src("a1"), "--dst", &b1],
    );
    assert!(
        out.contains(&format!(
            "demo/b1 {b1}: DENIED by policy demo/deny-a1 rule 0"
        )),
        "{out}"
    );
    assert!(
        out.contains("spiffe://cluster.local/ns/demo/sa/sa-a1"),
        "{out}"
    );
    let out = debug_ok(
        &mesh,
        NodeId::B,
        &["explain", "--src-ip", &src("a2"), "--dst", &b1],
    );
    assert!(
        out.contains(&format!("demo/b1 {b1}: ALLOWED by default")),
        "{out}"
    );
    // Without its certificate (plaintext) the principal cannot match: allowed.
    let out = debug_ok(
        &mesh,
        NodeId::B,
        &[
            "explain",
            "--src-ip",
            &src("a1"),
            "--plaintext",
            "--dst",
            &b1,
        ],
    );
    assert!(out.contains("ALLOWED"), "{out}");
    // Through the VIP, the endpoint b1 with the mapped port.
    let v: Value = serde_json::from_str(&debug_ok(
        &mesh,
        NodeId::A,
        &[
            "explain",
            "--json",
            "--src-ip",
            &src("a1"),
            "--dst",
            "10.96.0.10:80",
        ],
    ))
    .unwrap();
    assert_eq!(v["results"][0]["dst"], b1);
    assert_eq!(v["results"][0]["decision"]["verdict"], "deny");
    // A question it cannot answer: an error naming the problem, exit status 1.
    let out = debug(
        &mesh,
        NodeId::B,
        &["explain", "--src-ip", &src("a1"), "--dst", "192.0.2.1:80"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a workload"));

    // What explain said is what happens, and the refusal is counted on both reporters.
    let refused = connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080))
        .and_then(|c| echo_exact(c, b"denied?"));
    assert!(refused.is_err(), "a1 got through");
    let allowed = connect_from(mesh.pod_ns("a2"), mesh.addr("b1", 8080)).unwrap();
    echo_exact(allowed, b"allowed").unwrap();
    let deny = "response_flags=\"DENY\"";
    let a1 = "source_principal=\"spiffe://cluster.local/ns/demo/sa/sa-a1\"";
    for (node, r) in [
        (NodeId::A, "reporter=\"source\""),
        (NodeId::B, "reporter=\"destination\""),
    ] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = mesh.metrics(node).unwrap();
            let failed = text.lines().any(|l| {
                l.starts_with("istio_tcp_connections_failed_total{")
                    && [r, deny, a1].iter().all(|w| l.contains(w))
                    && l.ends_with(" 1")
            });
            if failed {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no DENY failure on {r}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
