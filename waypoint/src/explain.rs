//! "Which route and which policy decide this request?": the request pipeline's decisions
//! (destination, L7 policy, route, VirtualService settings, backends) for a described request,
//! without sending it. Pure, so the admin API and the tests share it.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use meshtunnel::state::ConfigSnapshot;
use serde_json::{json, Value};

use crate::authz::{self, RequestAttrs};
use crate::config::WaypointConfig;
use crate::route::{RequestView, Selected};
use crate::shared::Destination;

pub struct Query {
    pub dst: SocketAddr,
    pub method: Method,
    /// Path with query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Source principal without `spiffe://`.
    pub principal: Option<String>,
    pub source_ip: IpAddr,
}

pub fn explain(snap: &ConfigSnapshot, cfg: &WaypointConfig, q: &Query) -> Value {
    let Some(dest) = Destination::resolve(snap, q.dst) else {
        return json!({"destination": null, "result": "503 no healthy upstream: destination unknown"});
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &q.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let (path, query) = match q.path.split_once('?') {
        Some((p, qs)) => (p, Some(qs)),
        None => (q.path.as_str(), None),
    };
    let ns = q.principal.as_deref().and_then(|p| p.split('/').nth(2));
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let decision = authz::evaluate(
        &cfg.policies,
        dest.service(),
        &RequestAttrs {
            principal: q.principal.as_deref(),
            source_namespace: ns,
            source_ip: q.source_ip,
            host: &host,
            port: q.dst.port(),
            method: &q.method,
            path,
            headers: &headers,
        },
    );
    let view = RequestView {
        method: &q.method,
        path,
        query,
        headers: &headers,
    };
    let (destination, route) = match &dest {
        Destination::Service { svc, port } => (
            json!({"service": svc.to_string(), "port": port}),
            match cfg.routes.select(svc, *port, ns.unwrap_or(""), &view) {
                Selected::Unrouted => json!({"route": "none attached: the service itself"}),
                Selected::NoMatch => json!({"route": "routes attached, none matches: 404"}),
                Selected::Matched(e) => json!({
                    "route": e.rule.route.to_string(),
                    "rule": e.rule.index,
                    "match": e.match_index,
                    "backends": e.rule.backends.iter().map(|b| json!({
                        "service": b.service.to_string(), "port": b.port, "weight": b.weight,
                    })).collect::<Vec<_>>(),
                    "timeouts": format!("{:?}", e.rule.timeouts),
                    "retry": format!("{:?}", e.rule.retry),
                }),
            },
        ),
        Destination::Workload(w) => (
            json!({"workload": w.to_string()}),
            json!({"route": "workload-addressed: straight to the pod"}),
        ),
    };
    let overlay = dest
        .service()
        .and_then(|s| cfg.routes.overlay(s, &view))
        .map(|o| json!({"source": o.source, "fault": format!("{:?}", o.fault), "retry": format!("{:?}", o.retry), "timeout": format!("{:?}", o.timeout)}));
    json!({
        "destination": destination,
        "policy": {"allowed": decision.allowed, "reason": decision.reason, "audited": decision.audited},
        "route": route,
        "virtualService": overlay,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MESH: &str = "workloads:\n- uid: b1\n  name: b1\n  namespace: demo\n  serviceAccount: b1\n  workloadIps: [10.0.0.5]\n  protocol: HBONE\n  services:\n    demo/echo.demo.svc.cluster.local:\n      80: 8080\nservices:\n- name: echo\n  namespace: demo\n  hostname: echo.demo.svc.cluster.local\n  vips: [/10.96.0.10]\n  ports:\n    80: 8080\n";

    const ROUTES: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  parentRefs: [{kind: Service, name: echo}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-v, value: \"2\"}]}]\n    backendRefs: [{name: echo}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: demo}\nspec:\n  targetRefs: [{kind: Service, name: echo}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin*]}}]}]\n";

    fn q(dst: &str, path: &str, headers: &[(&str, &str)]) -> Query {
        Query {
            dst: dst.parse().unwrap(),
            method: Method::GET,
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            principal: Some("cluster.local/ns/demo/sa/web".into()),
            source_ip: "10.0.0.9".parse().unwrap(),
        }
    }

    #[test]
    fn names_the_deciding_route_and_policy() {
        let snap = meshtunnel::config::parse(MESH, Path::new("mesh.yaml")).unwrap();
        let cfg = crate::config::parse_documents(&[(Path::new("r.yaml"), ROUTES)], "istio-system")
            .unwrap();
        let v = explain(
            &snap,
            &cfg,
            &q("10.96.0.10:80", "/api/x?a=1", &[("x-v", "2")]),
        );
        assert_eq!(v["policy"]["allowed"], true, "{v}");
        assert_eq!(v["route"]["route"], "HTTPRoute demo/r", "{v}");
        let v = explain(&snap, &cfg, &q("10.96.0.10:80", "/api/x", &[]));
        assert_eq!(
            v["route"]["route"], "routes attached, none matches: 404",
            "{v}"
        );
        let v = explain(&snap, &cfg, &q("10.96.0.10:80", "/admin/x", &[]));
        assert_eq!(v["policy"]["allowed"], false, "{v}");
        assert!(
            v["policy"]["reason"]
                .as_str()
                .unwrap()
                .contains("demo/deny-admin"),
            "{v}"
        );
        let v = explain(&snap, &cfg, &q("10.0.0.5:8080", "/", &[]));
        assert_eq!(
            v["route"]["route"], "workload-addressed: straight to the pod",
            "{v}"
        );
        let v = explain(&snap, &cfg, &q("10.9.9.9:80", "/", &[]));
        assert!(v["destination"].is_null(), "{v}");
    }
}
