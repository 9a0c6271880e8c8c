use std::path::Path;

use super::*;

/// web (meshed) and db (plain TCP client) call echo-0/echo-1 behind VIP 10.96.0.10:80 → 8080;
/// a DENY policy in demo refuses web on port 8080 of echo-1 only.
fn snapshot() -> ConfigSnapshot {
    let yaml = "workloads:
- {uid: web, name: web, namespace: demo, serviceAccount: web, workloadIps: [10.0.0.1], protocol: HBONE, services: {}}
- {uid: db, name: db, namespace: demo, serviceAccount: db, workloadIps: [10.0.0.5], protocol: TCP, services: {}}
- {uid: e0, name: echo-0, namespace: demo, serviceAccount: echo, workloadIps: [10.0.0.2], protocol: HBONE,
   services: {demo/echo.demo.svc.cluster.local: {80: 8080}}}
- {uid: e1, name: echo-1, namespace: demo, serviceAccount: echo, workloadIps: [10.0.0.3], protocol: HBONE,
   services: {demo/echo.demo.svc.cluster.local: {80: 8080}}}
services:
- {name: echo, namespace: demo, hostname: echo.demo.svc.cluster.local, vips: [/10.96.0.10], ports: {80: 8080}}
policies:
- {name: no-web, namespace: demo, scope: Namespace, action: Deny,
   rules: [[[{principals: [!Exact cluster.local/ns/demo/sa/web], destinationIps: [10.0.0.3]}]]]}
";
    crate::config::parse(yaml, Path::new("test.yaml")).unwrap()
}

fn q(src: &str, id: Option<&str>, plaintext: bool, dst: &str) -> Query {
    Query {
        src_ip: Some(src.into()),
        src_identity: id.map(str::to_owned),
        plaintext,
        dst: Some(dst.into()),
    }
}

fn verdicts(v: &Value) -> Vec<(String, String)> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["workload"].as_str().unwrap().to_owned(),
                r["decision"]["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_meshed_source_gets_its_identity_and_the_deciding_policy_is_named() {
    let v = explain(&snapshot(), &q("10.0.0.1", None, false, "10.0.0.3:8080")).unwrap();
    assert_eq!(
        v["src"]["identity"],
        "spiffe://cluster.local/ns/demo/sa/web"
    );
    assert_eq!(v["src"]["workload"], "demo/web");
    assert_eq!(verdicts(&v), [("demo/echo-1".into(), "deny".into())]);
    assert_eq!(
        v["results"][0]["decision"]["decided_by"],
        json!(["demo/no-web", 0])
    );
    // The same client to the other endpoint: no ALLOW policy, so the default allows.
    let v = explain(&snapshot(), &q("10.0.0.1", None, false, "10.0.0.2:8080")).unwrap();
    assert_eq!(verdicts(&v), [("demo/echo-0".into(), "allow".into())]);
    assert_eq!(v["results"][0]["decision"]["decided_by"], Value::Null);
}

#[test]
fn a_vip_is_explained_for_every_endpoint_with_the_mapped_port() {
    let v = explain(&snapshot(), &q("10.0.0.1", None, false, "10.96.0.10:80")).unwrap();
    assert_eq!(
        verdicts(&v),
        [
            ("demo/echo-0".into(), "allow".into()),
            ("demo/echo-1".into(), "deny".into())
        ]
    );
    assert_eq!(v["results"][1]["dst"], "10.0.0.3:8080");
}

#[test]
fn plaintext_and_unmeshed_sources_have_no_identity() {
    let s = snapshot();
    let v = explain(&s, &q("10.0.0.1", None, true, "10.0.0.3:8080")).unwrap();
    assert_eq!(v["src"]["identity"], Value::Null);
    assert_eq!(verdicts(&v)[0].1, "allow", "the DENY needs the principal");
    let v = explain(&s, &q("10.0.0.5", None, false, "10.0.0.3:8080")).unwrap();
    assert_eq!(v["src"]["identity"], Value::Null);
    let given = "spiffe://cluster.local/ns/demo/sa/web";
    let v = explain(&s, &q("192.0.2.9", Some(given), false, "10.0.0.3:8080")).unwrap();
    assert_eq!(verdicts(&v)[0].1, "deny");
    assert_eq!(v["src"]["identityFrom"], "given");
}

#[test]
fn bad_questions_get_clear_errors() {
    let s = snapshot();
    for (query, needle) in [
        (q("nope", None, false, "10.0.0.3:8080"), "src_ip"),
        (q("10.0.0.1", None, false, "10.0.0.3"), "ip:port"),
        (q("10.0.0.1", Some("web"), false, "10.0.0.3:8080"), "SPIFFE"),
        (
            q(
                "10.0.0.1",
                Some("spiffe://td/ns/a/sa/b"),
                true,
                "10.0.0.3:8080",
            ),
            "not both",
        ),
        (
            q("10.0.0.1", None, false, "192.0.2.1:80"),
            "neither a workload",
        ),
        (q("10.0.0.1", None, false, "10.96.0.10:81"), "not a port"),
        (Query::default(), "missing src_ip"),
    ] {
        let e = explain(&s, &query).unwrap_err();
        assert!(e.contains(needle), "{query:?}: {e}");
    }
}
