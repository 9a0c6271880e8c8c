//! The waypoint between real ztunnels: an HBONE client (a pod's certificate, authority = the
//! service VIP, as a source ztunnel sends) reaches meshed backend pods through the waypoint
//! binary; the backends sit behind their real ztunnels' 15008. Checks traffic splitting,
//! retries, timeouts, fault injection, L7 deny and the waypoint's own replies.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel_e2e::waypoint::{GrpcBackend, HboneClient, HttpBackend, Reply, Waypoint};
use meshtunnel_e2e::{ExtraService, Mesh, MeshOptions, PodSpec};

const ECHO: ([u8; 4], u16) = ([10, 96, 0, 10], 80);
const GRPC_PORT: u16 = 9090;

fn echo_vip() -> SocketAddr {
    SocketAddr::from(ECHO)
}

type Backends = ([HttpBackend; 2], [GrpcBackend; 2]);

/// a1 and b1 are meshed backends (echo-v2 and echo-v1), the waypoint runs in a2, the client
/// sends from b2 (both plain pods: no capture, so the test talks HBONE itself).
fn start() -> (Mesh, Waypoint, HboneClient, Backends) {
    let svc_port = |name, last, port, endpoints| ExtraService {
        name,
        vip: Ipv4Addr::new(10, 96, 0, last),
        port,
        target_port: port,
        endpoints,
    };
    let svc = |name, last, endpoints| ExtraService {
        target_port: 8080,
        ..svc_port(name, last, 80, endpoints)
    };
    let opts = MeshOptions {
        pods: vec![
            PodSpec::meshed("a1"),
            PodSpec::plain("a2"),
            PodSpec::meshed("b1"),
            PodSpec::plain("b2"),
        ],
        extra_services: vec![
            svc("echo-v1", 11, vec!["b1"]),
            svc("echo-v2", 12, vec!["a1"]),
            svc("echo-empty", 13, vec![]),
            svc_port("grpc", 20, GRPC_PORT, vec!["b1"]),
            svc_port("grpc-v1", 21, GRPC_PORT, vec!["b1"]),
            svc_port("grpc-v2", 22, GRPC_PORT, vec!["a1"]),
        ],
        ..MeshOptions::default()
    };
    let mesh = Mesh::start(opts).unwrap();
    let any = SocketAddr::from(([0, 0, 0, 0], 8080));
    let grpc = SocketAddr::from(([0, 0, 0, 0], GRPC_PORT));
    let backends = (
        [
            HttpBackend::start(mesh.pod_ns("b1"), any, "b1").unwrap(),
            HttpBackend::start(mesh.pod_ns("a1"), any, "a1").unwrap(),
        ],
        [
            GrpcBackend::start(mesh.pod_ns("b1"), grpc, "b1").unwrap(),
            GrpcBackend::start(mesh.pod_ns("a1"), grpc, "a1").unwrap(),
        ],
    );
    let wp = Waypoint::start(&mesh, "a2").unwrap();
    let client = HboneClient::new(&mesh, "b2", "a2").unwrap();
    (mesh, wp, client, backends)
}

fn get(mesh: &Mesh, wp: &Waypoint, c: &HboneClient, path: &str) -> Reply {
    mesh.rt
        .block_on(c.request(echo_vip(), "GET", path, &[]))
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}\n--- waypoint ---\n{}", wp.logs()))
}

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /split}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {add: [{name: x-route, value: split}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-waypoint, value: yes}]}
    backendRefs:
    - {name: echo-v1, port: 80, weight: 90}
    - {name: echo-v2, port: 80, weight: 10}
  - matches: [{path: {type: PathPrefix, value: /flaky}}]
    backendRefs: [{name: echo-v1, port: 80}]
    retry: {attempts: 10, codes: [503], backoff: 1ms}
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    backendRefs: [{name: echo-v1, port: 80}]
    timeouts: {request: 200ms}
  - matches: [{path: {type: PathPrefix, value: /admin}}, {path: {type: PathPrefix, value: /public}}, {path: {type: PathPrefix, value: /fault}}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /empty}}]
    backendRefs: [{name: echo-empty, port: 80}]
  - matches: [{path: {type: Exact, value: /zero}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 0}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new.example, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}
    backendRefs: [{name: echo-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc}]
  rules:
  - matches: [{method: {service: pkg.Greeter, method: Hello}}]
    backendRefs: [{name: grpc-v2, port: 9090}]
  - matches: [{method: {service: pkg.Greeter}}, {headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: grpc-v1, port: 9090}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-faults, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /fault}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

const OBJECTS: &[&str] = &[
    "HTTPRoute demo/echo",
    "GRPCRoute demo/grpc",
    "VirtualService demo/echo-faults",
    "AuthorizationPolicy demo/deny-admin",
];

/// Sends `n` GETs of `path`, `conc` at a time; returns every reply.
fn many(
    mesh: &Mesh,
    c: &Arc<HboneClient>,
    path: &'static str,
    n: usize,
    conc: usize,
) -> Vec<anyhow::Result<Reply>> {
    mesh.rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        let mut set = tokio::task::JoinSet::new();
        let mut sent = 0;
        while out.len() < n {
            while sent < n && set.len() < conc {
                let c = c.clone();
                set.spawn(async move { c.request(echo_vip(), "GET", path, &[]).await });
                sent += 1;
            }
            if let Some(r) = set.join_next().await {
                out.push(r.expect("request task"));
            }
        }
        out
    })
}

#[test]
fn split_deny_fault_and_local_replies() {
    let (mesh, wp, client, _backends) = start();
    // The backends are only reachable through their ztunnels' 15008: prove the path went there.
    // Before any route: the waypoint sends to the service itself (b1 backs `echo`).
    let r = get(&mesh, &wp, &client, "/anything");
    assert_eq!((r.status, r.pod()), (200, Some("b1")), "{r:?}");

    wp.apply(&mesh, ROUTES, OBJECTS).unwrap();
    let client = Arc::new(client);

    // 90/10 over 2,000 requests, weights chosen per request.
    let replies = many(&mesh, &client, "/split", 2000, 16);
    let mut v1 = 0;
    for r in &replies {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{e:#}\n--- waypoint ---\n{}", wp.logs()));
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains("header x-route=split"),
            "request header filter: {r:?}"
        );
        assert_eq!(
            r.headers.get("x-waypoint").map(String::as_str),
            Some("yes"),
            "{r:?}"
        );
        match r.pod() {
            Some("b1") => v1 += 1,
            Some("a1") => {}
            other => panic!("answered by {other:?}"),
        }
    }
    let share = v1 as f64 / 2000.0;
    eprintln!("split: echo-v1 answered {v1}/2000 ({:.1}%)", share * 100.0);
    assert!(
        (0.87..=0.93).contains(&share),
        "echo-v1 got {:.1}% (want 90 ± 3)",
        share * 100.0
    );

    // L7 deny on one path; another path of the same backend passes.
    let r = get(&mesh, &wp, &client, "/admin/users");
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "RBAC: access denied"),
        "{r:?}"
    );
    let r = get(&mesh, &wp, &client, "/public");
    assert_eq!((r.status, r.pod()), (200, Some("a1")), "{r:?}");

    // `waypoint debug explain` names the policy that decided.
    let bin = meshtunnel_e2e::mesh::find_binary("waypoint", false).unwrap();
    let out =
        meshtunnel_e2e::mesh::run_cmd(mesh.pod_ns("a2").command(bin.to_str().unwrap()).args([
            "debug",
            "explain",
            "--dst",
            "10.96.0.10:80",
            "--path",
            "/admin/users",
        ]))
        .unwrap();
    assert!(out.contains("DENY policy demo/deny-admin"), "{out}");

    // Fault abort at 100 %.
    for _ in 0..20 {
        let r = get(&mesh, &wp, &client, "/fault/x");
        assert_eq!(
            (r.status, r.body.as_str()),
            (418, "fault filter abort"),
            "{r:?}"
        );
    }

    // The waypoint's own answers.
    let r = get(&mesh, &wp, &client, "/nothing-matches");
    assert_eq!(r.status, 404, "{r:?}");
    let r = get(&mesh, &wp, &client, "/empty");
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "no healthy upstream"),
        "{r:?}"
    );
    let r = get(&mesh, &wp, &client, "/zero");
    assert_eq!(r.status, 500, "{r:?}");
    let r = get(&mesh, &wp, &client, "/old/page?q=1");
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("http://new.example/new/page?q=1"),
        "{r:?}"
    );
    let r = get(&mesh, &wp, &client, "/rewrite/x?y=1");
    assert!(r.body.contains("target=/rewritten/x?y=1"), "{r:?}");

    // Keep-alive requests of one client reuse the waypoint's upstream connection.
    let two = b"GET /public HTTP/1.1\r\nHost: echo\r\n\r\nGET /public HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n";
    let (raw, _) = mesh
        .rt
        .block_on(client.raw(echo_vip(), two, Duration::from_secs(5)))
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let seqs: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("req=")?.parse().ok())
        .collect();
    assert!(
        seqs.len() == 2 && seqs[1] == seqs[0] + 1,
        "second request not on the same upstream connection: {seqs:?}\n{text}"
    );

    // Bytes that are not HTTP are passed through to an endpoint of the service as TCP.
    let (raw, _) = mesh
        .rt
        .block_on(client.raw(
            echo_vip(),
            b"\x00\x01opaque\r\n\r\n",
            Duration::from_secs(1),
        ))
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.contains("pod=b1") && text.contains("opaque"),
        "TCP passthrough: {text:?}"
    );

    // Both backends were reached through their node's ztunnel (HBONE to pod:15008), with the
    // waypoint's identity as the peer (counted when the connection opens; pooled upstream
    // connections may still be open, so not their close log lines).
    for node in [test_support::NodeId::A, test_support::NodeId::B] {
        let m = mesh.metrics(node).unwrap();
        assert!(
            m.lines()
                .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains(
                        "source_principal=\"spiffe://cluster.local/ns/demo/sa/waypoint\""
                    )),
            "ztunnel {node:?} counted no connection from the waypoint identity\n{m}"
        );
    }

    // Telemetry: the requests are counted with the waypoint reporter.
    let stats = meshtunnel_e2e::mesh::http_in(
        mesh.pod_ns("a2"),
        SocketAddr::from(([127, 0, 0, 1], 15020)),
        "GET",
        "/stats/prometheus",
    )
    .unwrap()
    .1;
    let line = stats
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"403\""))
        .unwrap_or_else(|| panic!("no 403 series in\n{stats}"));
    assert!(line.contains("reporter=\"waypoint\""), "{line}");
    assert!(
        line.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/sa-b2\""),
        "{line}"
    );
    assert!(
        stats.contains("istio_request_duration_milliseconds_bucket{"),
        "no duration histogram"
    );
}

#[test]
fn retries_and_timeouts() {
    let (mesh, wp, client, _backends) = start();
    wp.apply(&mesh, ROUTES, OBJECTS).unwrap();
    let client = Arc::new(client);

    // A backend failing half the time with 503, retried up to 10 times.
    let replies = many(&mesh, &client, "/flaky", 400, 8);
    let ok = replies
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.status == 200))
        .count();
    assert!(
        ok * 100 >= 99 * replies.len(),
        "only {ok}/{} succeeded\n--- waypoint ---\n{}",
        replies.len(),
        wp.logs()
    );

    // A 200 ms request timeout against a backend that takes 1 s: 504 after 200 ms ± 10 %.
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = get(&mesh, &wp, &client, "/delay/1000");
        took.push(t.elapsed());
        assert_eq!(
            (r.status, r.body.as_str()),
            (504, "upstream request timeout"),
            "{r:?}"
        );
    }
    took.sort();
    // The waypoint's own clock (its access log's duration_ms for these 504s) is what the
    // timeout governs; the client's adds the tunnel round trips and this machine's load.
    let fired: Vec<u64> = wp
        .logs()
        .lines()
        .filter(|l| l.contains("path=/delay/1000") && l.contains("status=504"))
        .filter_map(|l| {
            l.split("duration_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    eprintln!(
        "retry: {ok}/{} ok; timeout fired after {fired:?} ms (client saw {took:?})",
        replies.len()
    );
    assert_eq!(fired.len(), 5, "access log lines:\n{}", wp.logs());
    assert!(
        fired.iter().all(|ms| (200..=220).contains(ms)),
        "timeout fired after {fired:?} ms, want 200 ms + 10 %"
    );
    assert!(
        took[2] < Duration::from_millis(400),
        "client waited {took:?}"
    );
}

#[test]
fn hostile_http_is_refused_without_leaks() {
    let (mesh, wp, client, _backends) = start();
    wp.apply(&mesh, ROUTES, OBJECTS).unwrap();
    let status = |raw: &[u8]| -> String {
        String::from_utf8_lossy(raw)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let send = |bytes: &[u8], wait: u64| {
        mesh.rt
            .block_on(client.raw(echo_vip(), bytes, Duration::from_secs(wait)))
            .unwrap_or_else(|e| panic!("{e:#}\n--- waypoint ---\n{}", wp.logs()))
    };
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "CL+TE",
            b"POST /public HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "two Content-Lengths",
            b"POST /public HTTP/1.1\r\nHost: echo\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            "HTTP/1.1 400",
        ),
        (
            "bad chunk size",
            b"POST /public HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "smuggled second request",
            b"GET /public HTTP/1.1\r\nHost: echo\r\n\r\nPOST /admin HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200",
        ),
    ];
    for (name, bytes, want) in cases {
        let (raw, _) = send(bytes, 5);
        assert!(
            status(&raw).starts_with(want),
            "{name}: got {:?}\n--- waypoint ---\n{}",
            String::from_utf8_lossy(&raw),
            wp.logs()
        );
        if *name == "smuggled second request" {
            let text = String::from_utf8_lossy(&raw);
            assert!(
                text.contains("HTTP/1.1 400"),
                "{name}: the second request must be refused: {text}"
            );
            assert!(
                !text.contains("RBAC"),
                "{name}: the smuggled request reached routing: {text}"
            );
        }
    }

    // Oversized headers: 431.
    let big = format!(
        "GET /public HTTP/1.1\r\nHost: echo\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let (raw, _) = send(big.as_bytes(), 5);
    assert!(
        status(&raw).starts_with("HTTP/1.1 431"),
        "oversized: {:?}",
        status(&raw)
    );

    // A client that never finishes its headers is cut off after the 1 s header timeout.
    let (raw, took) = send(b"GET /public HTTP/1.1\r\nHost: ec", 10);
    assert!(
        !status(&raw).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "slow headers ended after {took:?}"
    );

    // Short connections: a fresh HBONE connection per request, then back to the baseline.
    let _ = get(&mesh, &wp, &client, "/public");
    drop(client);
    std::thread::sleep(Duration::from_millis(300));
    let before = wp.fds().unwrap();
    for _ in 0..300 {
        let c = HboneClient::new(&mesh, "b2", "a2").unwrap();
        let r = get(&mesh, &wp, &c, "/public");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = wp.fds().unwrap();
    while after > before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = wp.fds().unwrap();
    }
    eprintln!("waypoint fds: {before} before, {after} after 300 short connections");
    assert!(after <= before + 2, "fds grew from {before} to {after}");
    assert!(
        !wp.logs().contains("panicked"),
        "the waypoint panicked:\n{}",
        wp.logs()
    );
}

#[test]
fn grpc_route_picks_the_backend() {
    let (mesh, wp, client, _backends) = start();
    wp.apply(&mesh, ROUTES, OBJECTS).unwrap();
    let grpc = SocketAddr::from(([10, 96, 0, 20], GRPC_PORT));
    let call = |path: &str| {
        mesh.rt
            .block_on(client.grpc(grpc, path))
            .unwrap_or_else(|e| panic!("{path}: {e:#}\n--- waypoint ---\n{}", wp.logs()))
    };
    for (path, pod) in [("/pkg.Greeter/Hello", "a1"), ("/pkg.Greeter/Bye", "b1")] {
        for _ in 0..5 {
            let r = call(path);
            assert_eq!((r.status, r.pod()), (200, Some(pod)), "{path}: {r:?}");
            assert_eq!(
                r.headers.get("grpc-status").map(String::as_str),
                Some("0"),
                "{r:?}"
            );
            assert!(r.body.contains(&format!("path={path}")), "{r:?}");
        }
    }
    // Routes exist for this service but none matches: 404.
    let r = call("/pkg.Other/Call");
    assert_eq!(r.status, 404, "{r:?}");

    // A bad object is refused with file:line and the config in force stays.
    let bad = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad, namespace: demo}\nspec:\n  parentRefs: [{kind: Service, name: grpc}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n    backendRefs: [{name: grpc-v1}]\n";
    std::fs::write(wp.routes_dir.join("bad.yaml"), bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wp.logs().contains("bad.yaml:1: HTTPRoute demo/bad") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            wp.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = call("/pkg.Greeter/Hello");
    assert_eq!(
        (r.status, r.pod()),
        (200, Some("a1")),
        "previous config lost: {r:?}"
    );
}
