//! `:15020/stats/prometheus`.

use std::sync::Arc;

use ::http::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::local_http as http;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let handler: http::Handler = Arc::new(move |req| match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats/prometheus" | "/metrics") => {
            http::respond(StatusCode::OK, OPENMETRICS, metrics.encode())
        }
        _ => http::text(StatusCode::NOT_FOUND, "not found; try /stats/prometheus\n"),
    });
    http::serve(listener, handler, stop).await
}
