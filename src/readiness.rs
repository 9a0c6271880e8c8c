//! `:15021/healthz/ready`: 200 once the CNI agent's first snapshot is in with no pod pending,
//! 500 with the reason otherwise, so a DaemonSet rollout waits for a ztunnel that really
//! serves its pods.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

pub async fn serve(listener: TcpListener, check: ReadyCheck, stop: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "readiness accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let check = check.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let check = check.clone();
                async move { Ok::<_, Infallible>(respond(&req, &check)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn respond(req: &Request<Incoming>, check: &ReadyCheck) -> Response<Full<Bytes>> {
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
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// Binds the readiness port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
