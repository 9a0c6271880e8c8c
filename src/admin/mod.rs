//! The admin API on loopback (`127.0.0.1:15000`): `/config_dump`, `/logging`,
//! `/quitquitquit`. Only reachable from the node itself, since it can change the log level
//! and stop ztunnel.

mod dump;
mod explain;

use crate::local_http as http;
use std::sync::Arc;

use ::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::identity::CertManager;
use crate::inpod::WorkloadManager;
use crate::logging::LogHandle;
use crate::state::State;

pub struct Admin {
    pub state: Arc<State>,
    /// Where the config comes from (conflicts between the file and istiod).
    pub sources: Arc<crate::config::ConfigSources>,
    /// The local config file, when it is a source.
    pub local_file: Option<std::path::PathBuf>,
    /// The xDS connection, when istiod is a source.
    pub xds: Option<Arc<crate::xds::status::XdsStatus>>,
    pub manager: Arc<WorkloadManager>,
    pub certs: Arc<CertManager>,
    pub log: LogHandle,
    /// Cancelled by `/quitquitquit`: the daemon drains as on SIGTERM.
    pub shutdown: CancellationToken,
}

const INDEX: &str = "ztunnel admin\n\
  GET  /config_dump              workloads, services, policies, certificates, pod proxies (JSON)\n\
  GET  /logging                  the log filter in force\n\
  POST /logging?level=FILTER     change it (e.g. debug, info,access=debug, meshtunnel=trace)\n\
  POST /quitquitquit             drain and exit, as on SIGTERM\n\
  GET  /debug/explain?src_ip=IP&dst=IP:PORT[&src_identity=SPIFFE-ID|&plaintext=true]\n\
                                 would a connection be allowed, and which policy decides (JSON)\n";

impl Admin {
    fn handle(&self, req: &Request<Incoming>) -> Response<http::Body> {
        let m = req.method();
        match req.uri().path() {
            "/" if m == Method::GET => http::text(StatusCode::OK, INDEX),
            "/config_dump" if m == Method::GET => {
                http::json(StatusCode::OK, &dump::config_dump(self))
            }
            "/logging" if m == Method::GET => {
                http::json(StatusCode::OK, &json!({ "level": self.log.current() }))
            }
            "/logging" if m == Method::POST || m == Method::PUT => {
                let Some(level) = http::query_param(req, "level") else {
                    return http::text(StatusCode::BAD_REQUEST, "missing ?level=FILTER\n");
                };
                match self.log.set(&level) {
                    Ok(()) => {
                        tracing::info!(%level, "log level changed via admin API");
                        http::json(StatusCode::OK, &json!({ "level": level }))
                    }
                    Err(e) => http::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            "/debug/explain" if m == Method::GET => {
                let query = explain::Query {
                    src_ip: http::query_param(req, "src_ip"),
                    src_identity: http::query_param(req, "src_identity"),
                    plaintext: http::query_param(req, "plaintext").is_some_and(|v| v == "true"),
                    dst: http::query_param(req, "dst"),
                };
                match explain::explain(&self.state.current(), &query) {
                    Ok(v) => http::json(StatusCode::OK, &v),
                    Err(e) => http::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            "/quitquitquit" if m == Method::POST => {
                tracing::info!("/quitquitquit: draining");
                self.shutdown.cancel();
                http::text(StatusCode::OK, "draining\n")
            }
            "/" | "/config_dump" | "/logging" | "/quitquitquit" | "/debug/explain" => {
                http::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => http::text(StatusCode::NOT_FOUND, format!("not found\n\n{INDEX}")),
        }
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let handler: http::Handler = Arc::new(move |req| admin.handle(req));
    http::serve(listener, handler, stop).await
}
