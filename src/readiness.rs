//! `:15021/healthz/ready`: 200 once the CNI agent's first snapshot is in with no pod pending,
//! 500 with the reason otherwise, so a DaemonSet rollout waits for a ztunnel that really
//! serves its pods.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::local_http::{self, Body};

pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

pub async fn serve(listener: TcpListener, check: ReadyCheck, stop: CancellationToken) {
    let handler: local_http::Handler = Arc::new(move |req| respond(req, &check));
    local_http::serve(listener, handler, stop).await
}

fn respond(req: &Request<Incoming>, check: &ReadyCheck) -> Response<Body> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz/ready") => match check() {
            Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
            Err(why) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("not ready: {why}\n"),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    local_http::text(status, body)
}

/// Binds the readiness port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
