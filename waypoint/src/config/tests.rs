use std::path::Path;

use http::{HeaderMap, Method};

use super::load::parse_documents;
use super::{AppProtocol, WaypointConfig};
use crate::route::{Filter, RequestView, Selected, ServiceRef};

fn parse(text: &str) -> Result<WaypointConfig, String> {
    parse_documents(&[(Path::new("routes.yaml"), text)], "istio-system").map_err(|e| e.to_string())
}

const GOOD: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: split}]}
    backendRefs:
    - {name: echo-v1, port: 8080, weight: 90}
    - {name: echo-v2, port: 8080, weight: 10}
    timeouts: {request: 200ms}
    retry: {attempts: 3, codes: [503], backoff: 10ms}
  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {hostname: new, statusCode: 301}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faults, namespace: demo}
spec:
  hosts: [echo]
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
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: workload-selector-only, namespace: demo}
spec:
  selector: {matchLabels: {app: x}}
  action: DENY
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  ports:
  - {port: 80, name: http-web}
  - {port: 9000, appProtocol: grpc}
  - {port: 5432, name: tcp-db}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec: {gatewayClassName: istio-waypoint}
"#;

#[test]
fn loads_every_kind() {
    let cfg = parse(GOOD).unwrap();
    assert_eq!(cfg.objects.len(), 5, "{:?}", cfg.objects);
    // Only the targetRefs policy is the waypoint's.
    assert_eq!(cfg.policies.len(), 1);
    let echo = ServiceRef::new("demo", "echo");
    assert_eq!(
        cfg.protocols.get(&(echo.clone(), 80)),
        Some(&AppProtocol::Http1)
    );
    assert_eq!(
        cfg.protocols.get(&(echo.clone(), 9000)),
        Some(&AppProtocol::Http2)
    );
    assert_eq!(
        cfg.protocols.get(&(echo.clone(), 5432)),
        Some(&AppProtocol::Tcp)
    );

    let h = HeaderMap::new();
    let view = |path| RequestView {
        method: &Method::GET,
        path,
        query: None,
        headers: &h,
    };
    let Selected::Matched(e) = cfg.routes.select(&echo, 80, "demo", &view("/api/x")) else {
        panic!("no match")
    };
    assert_eq!(e.rule.backends.len(), 2);
    assert_eq!(e.rule.backends[0].weight, 90);
    assert_eq!(
        e.rule.timeouts.request,
        Some(std::time::Duration::from_millis(200))
    );
    assert_eq!(e.rule.retry.as_ref().unwrap().attempts, 3);
    assert!(matches!(e.rule.filters[0], Filter::RequestHeaders(_)));
    let Selected::Matched(e) = cfg.routes.select(&echo, 80, "demo", &view("/old")) else {
        panic!("no match")
    };
    assert!(matches!(e.rule.filters[0], Filter::Redirect(ref r) if r.status == 301));
    assert!(matches!(
        cfg.routes.select(&echo, 80, "demo", &view("/nothing")),
        Selected::NoMatch
    ));
    // The parentRef names port 80 only.
    assert!(matches!(
        cfg.routes.select(&echo, 81, "demo", &view("/api")),
        Selected::Unrouted
    ));
    let o = cfg.routes.overlay(&echo, &view("/faulty")).unwrap();
    assert_eq!(o.fault.as_ref().unwrap().abort, Some((418, 100.0)));
    assert!(cfg.routes.overlay(&echo, &view("/api")).is_none());
}

#[test]
fn bad_objects_are_refused_with_file_and_line() {
    let cases = [
        // (document, expected line, text in the message)
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"(\"}}]\n    backendRefs: [{name: a}]\n", 1, "bad regular expression"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]\n", 1, "statusCode 305"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n    backendRefs: [{name: a}]\n", 1, "ReplacePrefixMatch needs PathPrefix"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: a, weight: -1}]\n", 6, "weight"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - timeouts: {request: soon}\n    backendRefs: [{name: a}]\n", 1, "bad duration"),
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n  http:\n  - fault: {abort: {httpStatus: 700}}\n", 1, "httpStatus 700"),
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n  http:\n  - match: [{uri: {exact: /a, prefix: /b}}]\n", 1, "http[0]: uri needs exactly one of exact, prefix, regex"),
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n  http:\n  - match: [{uri: {regex: \"(\"}}]\n", 1, "http[0]: "),
        ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n  http:\n  - match: [{headers: {x-a: {}}}]\n", 1, "string match needs exactly one of exact, prefix, regex"),
        ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  targetRefs: [{kind: Service, name: a}]\n  action: CUSTOM\n", 1, "CUSTOM"),
        ("metadata: {name: x}\n", 1, "without kind"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: a, filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]}]\n", 1, "not supported per backend"),
        ("kind: [\n", 1, "invalid type"),
    ];
    for (doc, line, text) in cases {
        // One good document first, so the bad one's line is offset.
        let all = format!(
            "{}---\n{doc}",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n"
        );
        let err = parse(&all).expect_err(doc);
        let want = format!("routes.yaml:{}:", line + 5);
        assert!(err.starts_with(&want), "{err:?} should start with {want:?}");
        assert!(err.contains(text), "{err:?} should mention {text:?}");
    }
}

#[test]
fn destination_rule_chooses_the_balancing_policy() {
    use crate::balance::LbPolicy;
    let cfg = parse(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: rr, namespace: demo}
spec:
  host: echo
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: other-ns, namespace: demo}
spec:
  host: api.shop.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: no-lb, namespace: demo}
spec:
  host: quiet
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 10}}}
"#,
    )
    .unwrap();
    let policy = |ns, name| cfg.lb_policy(&ServiceRef::new(ns, name));
    assert_eq!(policy("demo", "echo"), LbPolicy::RoundRobin);
    assert_eq!(policy("shop", "api"), LbPolicy::Random);
    // No loadBalancer, or no DestinationRule at all: least-request, as istiod's default.
    assert_eq!(policy("demo", "quiet"), LbPolicy::LeastRequest);
    assert_eq!(policy("demo", "unknown"), LbPolicy::LeastRequest);
    assert!(cfg.objects.contains(&"DestinationRule demo/rr".to_owned()));

    let bad = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: pt, namespace: demo}\nspec:\n  host: echo\n  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n";
    let e = parse(bad).unwrap_err();
    assert!(
        e.contains("routes.yaml:1") && e.contains("PASSTHROUGH"),
        "{e}"
    );
}
