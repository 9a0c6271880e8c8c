use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};

use super::*;

fn svc() -> ServiceRef {
    ServiceRef::new("demo", "echo")
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Policy {
    Policy {
        namespace: "demo".into(),
        name: name.into(),
        action,
        targets: vec![Target::Service(svc())],
        rules,
    }
}

fn pats(v: &[&str]) -> Field<Pattern> {
    Field {
        any_of: v.iter().map(|s| Pattern::parse(s)).collect(),
        none_of: vec![],
    }
}

fn not_pats(v: &[&str]) -> Field<Pattern> {
    Field {
        any_of: vec![],
        none_of: v.iter().map(|s| Pattern::parse(s)).collect(),
    }
}

struct Req {
    principal: Option<&'static str>,
    ip: IpAddr,
    method: Method,
    path: &'static str,
    headers: HeaderMap,
}

fn req(path: &'static str) -> Req {
    Req {
        principal: Some("cluster.local/ns/demo/sa/client"),
        ip: "10.0.0.9".parse().unwrap(),
        method: Method::GET,
        path,
        headers: HeaderMap::new(),
    }
}

fn decide(ps: &[Policy], r: &Req) -> bool {
    let ns = r.principal.map(|p| p.split('/').nth(2).unwrap());
    evaluate(
        ps,
        Some(&svc()),
        &RequestAttrs {
            principal: r.principal,
            source_namespace: ns,
            source_ip: r.ip,
            host: "echo.demo.svc.cluster.local",
            port: 80,
            method: &r.method,
            path: r.path,
            headers: &r.headers,
        },
    )
    .allowed
}

#[test]
fn patterns() {
    let cases = [
        ("*", "anything", true),
        ("/admin*", "/admin/x", true),
        ("/admin*", "/adm", false),
        ("*.css", "/a/b.css", true),
        ("*.css", "/a/b.js", false),
        ("/exact", "/exact", true),
        ("/exact", "/exact/", false),
    ];
    for (p, v, want) in cases {
        assert_eq!(Pattern::parse(p).matches(v), want, "{p} {v}");
    }
}

#[test]
fn deny_on_a_path_while_others_pass() {
    let deny = policy(
        "deny-admin",
        Action::Deny,
        vec![Rule {
            to: vec![Operation {
                paths: pats(&["/admin*"]),
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    assert!(!decide(std::slice::from_ref(&deny), &req("/admin/users")));
    assert!(decide(std::slice::from_ref(&deny), &req("/public")));
}

#[test]
fn evaluation_order() {
    let allow_client = policy(
        "allow-client",
        Action::Allow,
        vec![Rule {
            from: vec![Source {
                principals: pats(&["cluster.local/ns/demo/sa/client"]),
                ..Default::default()
            }],
            ..Default::default()
        }],
    );
    let deny_all = policy("deny-all", Action::Deny, vec![Rule::default()]);
    let allow_nothing = policy("allow-nothing", Action::Allow, vec![]);
    let audit = policy("audit", Action::Audit, vec![Rule::default()]);

    // No policy: allowed. AUDIT alone changes nothing.
    assert!(decide(&[], &req("/")));
    assert!(decide(std::slice::from_ref(&audit), &req("/")));
    // DENY wins over a matching ALLOW.
    assert!(!decide(&[allow_client.clone(), deny_all], &req("/")));
    // Some ALLOW must match once one applies.
    assert!(decide(std::slice::from_ref(&allow_client), &req("/")));
    let mut other = req("/");
    other.principal = Some("cluster.local/ns/other/sa/x");
    assert!(!decide(std::slice::from_ref(&allow_client), &other));
    // An ALLOW with no rules matches nothing: deny all.
    assert!(!decide(&[allow_nothing], &req("/")));
    // A policy on another service does not apply.
    let mut elsewhere = policy("elsewhere", Action::Deny, vec![Rule::default()]);
    elsewhere.targets = vec![Target::Service(ServiceRef::new("demo", "other"))];
    assert!(decide(&[elsewhere.clone()], &req("/")));
    elsewhere.targets = vec![Target::Waypoint];
    assert!(!decide(&[elsewhere], &req("/")));
}

#[test]
fn from_to_when_fields() {
    let mut r = req("/x");
    r.headers
        .insert("x-user", HeaderValue::from_static("alice"));
    r.method = Method::POST;
    let rule = |from: Vec<Source>, to: Vec<Operation>, when: Vec<Condition>| {
        vec![policy("p", Action::Deny, vec![Rule { from, to, when }])]
    };
    let cidr = |s: &str| -> Cidr { s.parse().unwrap() };
    let cases: Vec<(&str, Vec<Policy>, bool)> = vec![
        (
            "namespace",
            rule(
                vec![Source {
                    namespaces: pats(&["demo"]),
                    ..Default::default()
                }],
                vec![],
                vec![],
            ),
            true,
        ),
        (
            "notNamespaces",
            rule(
                vec![Source {
                    namespaces: not_pats(&["demo"]),
                    ..Default::default()
                }],
                vec![],
                vec![],
            ),
            false,
        ),
        (
            "ipBlocks",
            rule(
                vec![Source {
                    ip_blocks: Field {
                        any_of: vec![cidr("10.0.0.0/24")],
                        none_of: vec![],
                    },
                    ..Default::default()
                }],
                vec![],
                vec![],
            ),
            true,
        ),
        (
            "notIpBlocks",
            rule(
                vec![Source {
                    ip_blocks: Field {
                        any_of: vec![],
                        none_of: vec![cidr("10.0.0.9/32")],
                    },
                    ..Default::default()
                }],
                vec![],
                vec![],
            ),
            false,
        ),
        (
            "methods",
            rule(
                vec![],
                vec![Operation {
                    methods: pats(&["GET"]),
                    ..Default::default()
                }],
                vec![],
            ),
            false,
        ),
        (
            "notMethods",
            rule(
                vec![],
                vec![Operation {
                    methods: not_pats(&["GET"]),
                    ..Default::default()
                }],
                vec![],
            ),
            true,
        ),
        (
            "ports",
            rule(
                vec![],
                vec![Operation {
                    ports: Field {
                        any_of: vec![80],
                        none_of: vec![],
                    },
                    ..Default::default()
                }],
                vec![],
            ),
            true,
        ),
        (
            "hosts suffix",
            rule(
                vec![],
                vec![Operation {
                    hosts: pats(&["*.svc.cluster.local"]),
                    ..Default::default()
                }],
                vec![],
            ),
            true,
        ),
        (
            "paths and methods AND",
            rule(
                vec![],
                vec![Operation {
                    paths: pats(&["/x"]),
                    methods: pats(&["GET"]),
                    ..Default::default()
                }],
                vec![],
            ),
            false,
        ),
        (
            "header when",
            rule(
                vec![],
                vec![],
                vec![Condition {
                    key: ConditionKey::RequestHeader("x-user".into()),
                    values: pats(&["ali*"]),
                }],
            ),
            true,
        ),
        (
            "header when absent",
            rule(
                vec![],
                vec![],
                vec![Condition {
                    key: ConditionKey::RequestHeader("x-none".into()),
                    values: pats(&["*"]),
                }],
            ),
            false,
        ),
        (
            "source.ip when",
            rule(
                vec![],
                vec![],
                vec![Condition {
                    key: ConditionKey::SourceIp,
                    values: pats(&["10.0.0.9"]),
                }],
            ),
            true,
        ),
        (
            "principal when notValues",
            rule(
                vec![],
                vec![],
                vec![Condition {
                    key: ConditionKey::SourcePrincipal,
                    values: not_pats(&["*/sa/client"]),
                }],
            ),
            false,
        ),
    ];
    for (name, ps, denied) in cases {
        assert_eq!(!decide(&ps, &r), denied, "{name}");
    }
    // Without a peer identity, a principals field cannot hold.
    let mut anon = req("/x");
    anon.principal = None;
    let ps = rule(
        vec![Source {
            principals: pats(&["*"]),
            ..Default::default()
        }],
        vec![],
        vec![],
    );
    assert!(decide(&ps, &anon));
}
