//! The waypoint between real ztunnels (as tests/waypoint.rs sets it up): an HTTPRoute
//! RequestMirror sends the mirror service a copy of each request while the client gets the
//! routed backend's answer, and a VirtualService fault delay holds matching requests for its
//! fixed delay and no others.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use meshtunnel_e2e::waypoint::{HboneClient, HttpBackend, Waypoint};
use meshtunnel_e2e::{ExtraService, Mesh, MeshOptions, PodSpec};

fn echo_vip() -> SocketAddr {
    SocketAddr::from(([10, 96, 0, 10], 80))
}

/// b1 backs echo and echo-v1, a1 backs echo-v2 (the mirror); the waypoint runs in a2, the
/// client sends from b2.
fn start() -> (Mesh, Waypoint, HboneClient, [HttpBackend; 2]) {
    let svc = |name, last, endpoints| ExtraService {
        name,
        vip: Ipv4Addr::new(10, 96, 0, last),
        port: 80,
        target_port: 8080,
        endpoints,
    };
    let mesh = Mesh::start(MeshOptions {
        pods: vec![
            PodSpec::meshed("a1"),
            PodSpec::plain("a2"),
            PodSpec::meshed("b1"),
            PodSpec::plain("b2"),
        ],
        extra_services: vec![
            svc("echo-v1", 11, vec!["b1"]),
            svc("echo-v2", 12, vec!["a1"]),
        ],
        ..MeshOptions::default()
    })
    .unwrap();
    let any = SocketAddr::from(([0, 0, 0, 0], 8080));
    let backends = [
        HttpBackend::start(mesh.pod_ns("b1"), any, "b1").unwrap(),
        HttpBackend::start(mesh.pod_ns("a1"), any, "a1").unwrap(),
    ];
    let wp = Waypoint::start(&mesh, "a2").unwrap();
    let client = HboneClient::new(&mesh, "b2", "a2").unwrap();
    (mesh, wp, client, backends)
}

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mirrored}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-v2, port: 80}}
    backendRefs: [{name: echo-v1, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: demo}
spec:
  hosts: [echo.demo.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 500ms, percentage: {value: 100}}}
"#;

const OBJECTS: &[&str] = &["HTTPRoute demo/echo", "VirtualService demo/slow"];

#[test]
fn request_mirror_sends_a_copy() {
    let (mesh, wp, client, [v1, v2]) = start();
    wp.apply(&mesh, ROUTES, OBJECTS).unwrap();
    let send = |path: &str, headers: &[(&str, &str)]| {
        mesh.rt
            .block_on(client.request(echo_vip(), "POST", path, headers))
            .unwrap_or_else(|e| panic!("{path}: {e:#}\n--- waypoint ---\n{}", wp.logs()))
    };
    for i in 0..5 {
        let id = format!("copy-{i}");
        let r = send(&format!("/mirrored/{i}?q={i}"), &[("x-copy", &id)]);
        // The client's answer is the routed backend's, never the mirror's.
        assert_eq!((r.status, r.pod()), (200, Some("b1")), "{r:?}");
    }
    // An unmirrored path reaches echo-v1 only.
    let r = send("/plain", &[("x-copy", "plain")]);
    assert_eq!((r.status, r.pod()), (200, Some("b1")), "{r:?}");

    // The mirror (echo-v2 on a1) got a copy of each mirrored request: method, path, query and
    // headers. Its answers are not waited for, so give the copies a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let copies = loop {
        let copies: Vec<String> = v2
            .requests()
            .into_iter()
            .filter(|r| r.contains("header x-copy=copy-"))
            .collect();
        if copies.len() >= 5 || Instant::now() > deadline {
            break copies;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        copies.len(),
        5,
        "mirror saw {copies:#?}\n--- waypoint ---\n{}",
        wp.logs()
    );
    for i in 0..5 {
        assert!(
            copies.iter().any(|c| c.contains("method=POST")
                && c.contains(&format!("target=/mirrored/{i}?q={i}\n"))
                && c.contains(&format!("header x-copy=copy-{i}\n"))),
            "no copy of request {i} in {copies:#?}"
        );
    }
    assert!(
        !v2.requests().iter().any(|r| r.contains("x-copy=plain")),
        "an unmirrored request reached the mirror"
    );
    // The routed backend got every request exactly once.
    let originals = v1
        .requests()
        .iter()
        .filter(|r| r.contains("header x-copy="))
        .count();
    assert_eq!(originals, 6);
}

#[test]
fn fault_delay_holds_matching_requests() {
    let (mesh, wp, client, _backends) = start();
    wp.apply(&mesh, ROUTES, OBJECTS).unwrap();
    let timed = |path: &str| {
        let t = Instant::now();
        let r = mesh
            .rt
            .block_on(client.request(echo_vip(), "GET", path, &[]))
            .unwrap_or_else(|e| panic!("{path}: {e:#}\n--- waypoint ---\n{}", wp.logs()));
        assert_eq!((r.status, r.pod()), (200, Some("b1")), "{r:?}");
        t.elapsed()
    };
    let mut slow: Vec<Duration> = (0..5).map(|_| timed("/slow/x")).collect();
    let mut fast: Vec<Duration> = (0..5).map(|_| timed("/quick")).collect();
    slow.sort();
    fast.sort();
    eprintln!("fault delay: delayed {slow:?}, others {fast:?}");
    // Every delayed request waited its 500 ms; the others did not wait for it.
    assert!(slow[0] >= Duration::from_millis(500), "{slow:?}");
    assert!(fast[2] < Duration::from_millis(500), "{fast:?}");
    // The waypoint's access log flags the injected delay (Envoy's DI) on those requests only.
    let logs = wp.logs();
    let di = logs
        .lines()
        .filter(|l| l.contains("path=/slow/x") && l.contains("DI"))
        .count();
    assert_eq!(di, 5, "access log:\n{logs}");
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("path=/quick") && l.contains("DI")),
        "access log:\n{logs}"
    );
}
