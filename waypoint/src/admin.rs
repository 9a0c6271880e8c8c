//! Local endpoints: readiness on :15021, metrics on :15020, and the admin API on
//! 127.0.0.1:15000 (`/config_dump`: routes, policies, endpoints, certificate).

use std::sync::Arc;

use http::{Method, StatusCode};
use meshtunnel::identity::CertSlot;
use meshtunnel::local_http as lh;
use meshtunnel::state::State;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::ConfigCell;
use crate::telemetry::Telemetry;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve_stats(l: TcpListener, t: Arc<Telemetry>, stop: CancellationToken) {
    let h: lh::Handler = Arc::new(move |req| match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats/prometheus" | "/metrics") => {
            lh::respond(StatusCode::OK, OPENMETRICS, t.encode())
        }
        _ => lh::text(StatusCode::NOT_FOUND, "not found; try /stats/prometheus\n"),
    });
    lh::serve(l, h, stop).await
}

pub async fn serve_readiness(l: TcpListener, stop: CancellationToken) {
    // Ready once listening: config and certificate were loaded before the listeners opened.
    let h: lh::Handler = Arc::new(|req| match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz/ready") => lh::text(StatusCode::OK, "ready\n"),
        _ => lh::text(StatusCode::NOT_FOUND, "not found\n"),
    });
    lh::serve(l, h, stop).await
}

const INDEX: &str = "waypoint admin\n\
  GET /config_dump      routes, virtual services, policies, endpoints, certificate (JSON)\n\
  GET /debug/explain?dst=IP:PORT&path=/p[&method=GET][&principal=td/ns/x/sa/y][&src=IP][&header=name:value]\n";

/// Reads `/debug/explain` parameters.
fn explain_query(
    req: &http::Request<hyper::body::Incoming>,
) -> Result<crate::explain::Query, String> {
    let dst = lh::query_param(req, "dst")
        .ok_or("dst=IP:PORT is required")?
        .parse()
        .map_err(|_| "dst must be IP:PORT")?;
    let method = lh::query_param(req, "method").unwrap_or_else(|| "GET".into());
    let headers = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "header")
        .filter_map(|(_, h)| {
            h.split_once(':')
                .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        })
        .collect();
    Ok(crate::explain::Query {
        dst,
        method: http::Method::from_bytes(method.as_bytes()).map_err(|_| "bad method")?,
        path: lh::query_param(req, "path").unwrap_or_else(|| "/".into()),
        headers,
        principal: lh::query_param(req, "principal"),
        source_ip: lh::query_param(req, "src")
            .map(|s| s.parse().map_err(|_| "src must be an IP"))
            .transpose()?
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
    })
}

pub struct Admin {
    pub mesh: Arc<State>,
    pub config: Arc<ConfigCell>,
    pub cert: Arc<CertSlot>,
}

pub async fn serve_admin(l: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let h: lh::Handler = Arc::new(move |req| match (req.method(), req.uri().path()) {
        (&Method::GET, "/config_dump") => lh::json(StatusCode::OK, &config_dump(&admin)),
        (&Method::GET, "/debug/explain") => match explain_query(req) {
            Ok(q) => lh::json(
                StatusCode::OK,
                &crate::explain::explain(&admin.mesh.current(), &admin.config.current(), &q),
            ),
            Err(e) => lh::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        (&Method::GET, "/") => lh::text(StatusCode::OK, INDEX),
        _ => lh::text(StatusCode::NOT_FOUND, "not found; try /config_dump\n"),
    });
    lh::serve(l, h, stop).await
}

fn config_dump(a: &Admin) -> serde_json::Value {
    let cfg = a.config.current();
    let snap = a.mesh.current();
    let mut routes: Vec<serde_json::Value> = cfg
        .routes
        .services()
        .map(|(svc, entries)| {
            json!({
                "service": svc.to_string(),
                "matches": entries.iter().map(|e| json!({
                    "route": e.rule.route.to_string(),
                    "rule": e.rule.index,
                    "port": e.port,
                    "match": format!("{:?}", e.matcher),
                    "backends": e.rule.backends.iter().map(|b| json!({
                        "service": b.service.to_string(), "port": b.port, "weight": b.weight,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    routes.sort_by_key(|v| v["service"].as_str().unwrap_or("").to_owned());
    let overlays: Vec<serde_json::Value> = cfg
        .routes
        .overlays()
        .map(|(svc, os)| json!({"service": svc.to_string(), "virtualServices": os.iter().map(|o| o.source.clone()).collect::<Vec<_>>()}))
        .collect();
    let endpoints: Vec<serde_json::Value> = snap
        .services()
        .map(|s| {
            json!({
                "service": format!("{}/{}", s.namespace, s.name),
                "endpoints": snap.endpoints(s).iter().map(|w| json!({
                    "workload": w.name, "ips": w.workload_ips, "protocol": format!("{:?}", w.protocol),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let info = a.cert.info();
    json!({
        "objects": cfg.objects,
        "routes": routes,
        "virtualServices": overlays,
        "policies": cfg.policies.iter().map(|p| json!({
            "name": p.key(), "action": format!("{:?}", p.action), "rules": p.rules.len(),
        })).collect::<Vec<_>>(),
        "endpoints": endpoints,
        "certificate": {
            "identity": info.identity.to_string(),
            "notBefore": humantime::format_rfc3339(info.not_before).to_string(),
            "notAfter": humantime::format_rfc3339(info.not_after).to_string(),
        },
    })
}
