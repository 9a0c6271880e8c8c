use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use regex::Regex;

use super::filters::*;
use super::*;

fn rule(ns: &str, name: &str, created: &str, index: usize) -> Arc<Rule> {
    let svc = ServiceRef::new("demo", "echo");
    Arc::new(Rule {
        route: RouteId {
            kind: "HTTPRoute",
            namespace: ns.into(),
            name: name.into(),
            created: created.into(),
        },
        index,
        ..Rule::default_for(&svc)
    })
}

fn entry(m: RequestMatch, r: &Arc<Rule>) -> (ServiceRef, Entry) {
    (
        ServiceRef::new("demo", "echo"),
        Entry {
            port: None,
            matcher: m,
            rule: r.clone(),
            match_index: 0,
        },
    )
}

fn prefix(p: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Prefix(p.trim_end_matches('/').into()),
        ..Default::default()
    }
}

fn exact(p: &str) -> RequestMatch {
    RequestMatch {
        path: PathMatch::Exact(p.into()),
        ..Default::default()
    }
}

fn pick(
    table: &RouteTable,
    method: Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<String> {
    let view = RequestView {
        method: &method,
        path,
        query,
        headers,
    };
    match table.select(&ServiceRef::new("demo", "echo"), 80, "demo", &view) {
        Selected::Matched(e) => Some(format!("{}#{}", e.rule.route.name, e.rule.index)),
        Selected::NoMatch => None,
        Selected::Unrouted => Some("unrouted".into()),
    }
}

#[test]
fn gateway_api_precedence() {
    // Each line: a rule that is less specific than the one before it, declared in reverse
    // order so that list order alone would pick the wrong one.
    let r_any = rule("demo", "a-any", "", 0);
    let r_prefix = rule("demo", "b-prefix", "", 0);
    let r_longer = rule("demo", "c-longer", "", 0);
    let r_exact = rule("demo", "d-exact", "", 0);
    let r_method = rule("demo", "e-method", "", 0);
    let r_header = rule("demo", "f-header", "", 0);
    let r_two_headers = rule("demo", "g-two-headers", "", 0);
    let r_query = rule("demo", "h-query", "", 0);
    let hdr = |n: &str, v: &str| (n.to_owned(), ValueMatch::Exact(v.to_owned()));
    let table = RouteTable::new(
        vec![
            entry(prefix("/"), &r_any),
            entry(prefix("/api"), &r_prefix),
            entry(prefix("/api/v2"), &r_longer),
            entry(exact("/api/v2/x"), &r_exact),
            entry(
                RequestMatch {
                    method: Some(Method::POST),
                    ..prefix("/api")
                },
                &r_method,
            ),
            entry(
                RequestMatch {
                    headers: vec![hdr("x-a", "1")],
                    ..prefix("/api")
                },
                &r_header,
            ),
            entry(
                RequestMatch {
                    headers: vec![hdr("x-a", "1"), hdr("x-b", "2")],
                    ..prefix("/api")
                },
                &r_two_headers,
            ),
            entry(
                RequestMatch {
                    query: vec![("q".into(), ValueMatch::Exact("1".into()))],
                    ..prefix("/api")
                },
                &r_query,
            ),
        ],
        vec![],
    );
    let mut h = HeaderMap::new();
    let none = HeaderMap::new();
    h.insert("x-a", HeaderValue::from_static("1"));
    h.insert("x-b", HeaderValue::from_static("2"));
    let cases: Vec<(Method, &str, Option<&str>, &HeaderMap, &str)> = vec![
        (Method::GET, "/other", None, &none, "a-any#0"),
        (Method::GET, "/api", None, &none, "b-prefix#0"),
        (Method::GET, "/apiary", None, &none, "a-any#0"),
        (Method::GET, "/api/v2", None, &none, "c-longer#0"),
        (Method::GET, "/api/v2/", None, &none, "c-longer#0"),
        (Method::GET, "/api/v2/x", None, &h, "d-exact#0"),
        // Longer prefix beats a method match on a shorter prefix.
        (Method::POST, "/api/v2/y", None, &none, "c-longer#0"),
        // Method beats headers and query on the same prefix.
        (Method::POST, "/api/z", Some("q=1"), &h, "e-method#0"),
        // More headers beat fewer; headers beat query.
        (Method::GET, "/api/z", Some("q=1"), &h, "g-two-headers#0"),
        (Method::GET, "/api/z", Some("q=1"), &none, "h-query#0"),
        (Method::GET, "/api/z", Some("q=2"), &none, "b-prefix#0"),
    ];
    for (m, path, q, headers, want) in cases {
        assert_eq!(
            pick(&table, m.clone(), path, q, headers).as_deref(),
            Some(want),
            "{m} {path} {q:?}"
        );
    }
}

#[test]
fn ties_go_to_the_oldest_route_then_by_name_then_rule_order() {
    let newer = rule("demo", "a", "2024-02-01T00:00:00Z", 0);
    let older = rule("demo", "z", "2024-01-01T00:00:00Z", 0);
    let t = RouteTable::new(
        vec![entry(prefix("/x"), &newer), entry(prefix("/x"), &older)],
        vec![],
    );
    assert_eq!(
        pick(&t, Method::GET, "/x", None, &HeaderMap::new()).unwrap(),
        "z#0"
    );

    let b = rule("demo", "b", "", 0);
    let a = rule("demo", "a", "", 0);
    let t = RouteTable::new(
        vec![entry(prefix("/x"), &b), entry(prefix("/x"), &a)],
        vec![],
    );
    assert_eq!(
        pick(&t, Method::GET, "/x", None, &HeaderMap::new()).unwrap(),
        "a#0"
    );

    let r1 = rule("demo", "a", "", 1);
    let r0 = rule("demo", "a", "", 0);
    let t = RouteTable::new(
        vec![entry(prefix("/x"), &r1), entry(prefix("/x"), &r0)],
        vec![],
    );
    assert_eq!(
        pick(&t, Method::GET, "/x", None, &HeaderMap::new()).unwrap(),
        "a#0"
    );
}

#[test]
fn no_route_attached_vs_no_match() {
    let r = rule("demo", "r", "", 0);
    let mut e = entry(exact("/only"), &r);
    e.1.port = Some(8080);
    let t = RouteTable::new(vec![e], vec![]);
    let h = HeaderMap::new();
    // Port 80 has nothing attached: the service itself is the route.
    assert_eq!(pick(&t, Method::GET, "/x", None, &h).unwrap(), "unrouted");
    let view = RequestView {
        method: &Method::GET,
        path: "/x",
        query: None,
        headers: &h,
    };
    assert!(matches!(
        t.select(&ServiceRef::new("demo", "echo"), 8080, "demo", &view),
        Selected::NoMatch
    ));
    let other = ServiceRef::new("demo", "other");
    assert!(matches!(
        t.select(&other, 8080, "demo", &view),
        Selected::Unrouted
    ));
}

#[test]
fn path_matching() {
    let re = Regex::new("^(?:/v[0-9]+/.*)$").unwrap();
    let cases: &[(PathMatch, &str, bool)] = &[
        (PathMatch::Prefix("".into()), "/", true),
        (PathMatch::Prefix("".into()), "/anything", true),
        (PathMatch::Prefix("/foo".into()), "/foo", true),
        (PathMatch::Prefix("/foo".into()), "/foo/", true),
        (PathMatch::Prefix("/foo".into()), "/foo/bar", true),
        (PathMatch::Prefix("/foo".into()), "/foobar", false),
        (PathMatch::Prefix("/foo".into()), "/fo", false),
        (PathMatch::Exact("/foo".into()), "/foo", true),
        (PathMatch::Exact("/foo".into()), "/foo/", false),
        (PathMatch::Regex(re.clone()), "/v1/x", true),
        (PathMatch::Regex(re), "/x/v1/x", false),
    ];
    for (m, p, want) in cases {
        assert_eq!(select::path_matches(m, p), *want, "{m:?} {p}");
    }
}

#[test]
fn header_and_query_matches() {
    let m = RequestMatch {
        headers: vec![(
            "x-v".into(),
            ValueMatch::Regex(Regex::new("^(?:v[12])$").unwrap()),
        )],
        query: vec![("debug".into(), ValueMatch::Exact("yes".into()))],
        ..Default::default()
    };
    let mut h = HeaderMap::new();
    h.insert("x-v", HeaderValue::from_static("v2"));
    let view = |q| RequestView {
        method: &Method::GET,
        path: "/",
        query: q,
        headers: &h,
    };
    assert!(select::matches(&m, &view(Some("a=1&debug=yes"))));
    assert!(
        !select::matches(&m, &view(Some("debug=no&debug=yes"))),
        "first occurrence counts"
    );
    assert!(!select::matches(&m, &view(None)));
    let empty = HeaderMap::new();
    let v = RequestView {
        method: &Method::GET,
        path: "/",
        query: Some("debug=yes"),
        headers: &empty,
    };
    assert!(!select::matches(&m, &v), "missing header");
}

#[test]
fn rewrites() {
    let p = PathMatch::Prefix("/api".into());
    let cases = [
        (
            "/api/users",
            PathModifier::ReplacePrefixMatch("/v2".into()),
            "/v2/users",
        ),
        (
            "/api",
            PathModifier::ReplacePrefixMatch("/v2".into()),
            "/v2",
        ),
        (
            "/api/users",
            PathModifier::ReplacePrefixMatch("/".into()),
            "/users",
        ),
        ("/api", PathModifier::ReplacePrefixMatch("/".into()), "/"),
        (
            "/api/users",
            PathModifier::ReplacePrefixMatch("/v2/".into()),
            "/v2/users",
        ),
        (
            "/api/users",
            PathModifier::ReplaceFullPath("/full".into()),
            "/full",
        ),
    ];
    for (path, m, want) in cases {
        assert_eq!(rewrite_path(path, &p, &m), want, "{path} {m:?}");
    }
}

#[test]
fn redirect_locations() {
    let p = PathMatch::Prefix("/old".into());
    let base = Redirect {
        scheme: None,
        hostname: None,
        port: None,
        path: None,
        status: 302,
    };
    let cases = [
        (base.clone(), "echo:8080", "http://echo:8080/old/x?a=1"),
        (
            Redirect {
                hostname: Some("new".into()),
                ..base.clone()
            },
            "echo:8080",
            "http://new:8080/old/x?a=1",
        ),
        (
            Redirect {
                scheme: Some("https".into()),
                ..base.clone()
            },
            "echo:8080",
            "https://echo/old/x?a=1",
        ),
        (
            Redirect {
                port: Some(80),
                ..base.clone()
            },
            "echo:8080",
            "http://echo/old/x?a=1",
        ),
        (
            Redirect {
                port: Some(8443),
                scheme: Some("https".into()),
                ..base.clone()
            },
            "echo",
            "https://echo:8443/old/x?a=1",
        ),
        (
            Redirect {
                path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
                ..base.clone()
            },
            "echo",
            "http://echo/new/x?a=1",
        ),
        (
            Redirect {
                path: Some(PathModifier::ReplaceFullPath("/".into())),
                ..base.clone()
            },
            "[fd00::1]:81",
            "http://[fd00::1]:81/?a=1",
        ),
    ];
    for (r, host, want) in cases {
        assert_eq!(
            redirect_location(&r, "http", host, "/old/x", Some("a=1"), &p),
            want,
            "{r:?}"
        );
    }
    assert_eq!(redirect_status(301).as_u16(), 301);
    assert_eq!(redirect_status(399).as_u16(), 302);
}

#[test]
fn header_modifiers() {
    let mut h = HeaderMap::new();
    h.insert("keep", HeaderValue::from_static("1"));
    h.insert("replace", HeaderValue::from_static("old"));
    h.insert("drop", HeaderValue::from_static("x"));
    modify_headers(
        &mut h,
        &HeaderModifier {
            set: vec![("replace".into(), "new".into())],
            add: vec![("keep".into(), "2".into())],
            remove: vec!["drop".into()],
        },
    );
    assert_eq!(h.get_all("keep").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(h["replace"], "new");
    assert!(h.get("drop").is_none());
}

#[test]
fn weighted_pick_is_proportional_and_zero_weights_pick_nothing() {
    let b = |name: &str, weight| Backend {
        service: ServiceRef::new("demo", name),
        port: None,
        weight,
        filters: vec![],
    };
    let backends = [b("v1", 90), b("v2", 10), b("v3", 0)];
    let mut counts = [0usize; 3];
    for roll in 0..100u64 {
        let got = pick_backend(&backends, roll).unwrap();
        counts[["v1", "v2", "v3"]
            .iter()
            .position(|n| *n == got.service.name)
            .unwrap()] += 1;
    }
    assert_eq!(counts, [90, 10, 0]);
    assert!(pick_backend(&[b("a", 0), b("b", 0)], 7).is_none());
    assert!(pick_backend(&[], 7).is_none());
}

#[test]
fn consumer_routes_apply_only_to_their_namespace() {
    // A producer route in the service's namespace and a consumer route in "shop".
    let producer = rule("demo", "producer", "", 0);
    let consumer = rule("shop", "consumer", "", 0);
    let t = RouteTable::new(
        vec![
            entry(prefix("/"), &producer),
            entry(exact("/only-consumer"), &consumer),
        ],
        vec![],
    );
    let h = HeaderMap::new();
    let name = |client_ns: &str, path: &str| {
        let view = RequestView {
            method: &Method::GET,
            path,
            query: None,
            headers: &h,
        };
        match t.select(&ServiceRef::new("demo", "echo"), 80, client_ns, &view) {
            Selected::Matched(e) => e.rule.route.name.clone(),
            Selected::NoMatch => "404".into(),
            Selected::Unrouted => "unrouted".into(),
        }
    };
    let cases = [
        // Clients of the producer's namespace and of a third one see the producer route.
        ("demo", "/only-consumer", "producer"),
        ("other", "/x", "producer"),
        // A client of "shop" sees only its consumer route: the producer route is replaced.
        ("shop", "/only-consumer", "consumer"),
        ("shop", "/x", "404"),
    ];
    for (ns, path, want) in cases {
        assert_eq!(name(ns, path), want, "client in {ns} asking {path}");
    }
}
