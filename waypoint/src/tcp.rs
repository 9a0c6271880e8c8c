//! Opaque TCP through the waypoint: no route or L7 policy applies; the stream goes to an
//! endpoint of the destination (a service's, by its balancing policy, or the addressed pod)
//! as is. A connection counts as one request in flight for least-request balancing.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::shared::{Destination, Downstream, Shared};
use crate::upstream::{self, Endpoint};

pub async fn passthrough<IO>(shared: Arc<Shared>, down: Arc<Downstream>, mut io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let snap = shared.mesh.current();
    let eps = match Destination::resolve(&snap, down.dst) {
        Some(Destination::Service { svc, port }) => match upstream::endpoints(&snap, &svc, port) {
            Ok(eps) => {
                let policy = shared.config.current().lb_policy(&svc);
                shared.upstreams.order(&svc, port, policy, eps)
            }
            Err(e) => {
                tracing::info!(dst = %down.dst, error = %e, "TCP through waypoint: no endpoint");
                return;
            }
        },
        Some(Destination::Workload(w)) => vec![Endpoint {
            workload: w,
            addr: down.dst,
        }],
        None => return,
    };
    drop(snap);
    for ep in &eps {
        match shared.upstreams.open(ep, down.client).await {
            Ok(mut up) => {
                let _in_flight = shared.upstreams.start_request(ep);
                let r = tokio::io::copy_bidirectional(&mut io, &mut up).await;
                tracing::event!(target: "access", tracing::Level::INFO, src.addr = %down.client, src.identity = %down.peer,
                    dst.addr = %down.dst, endpoint = %ep.addr, result = ?r.as_ref().map_err(|e| e.to_string()),
                    "tcp connection");
                return;
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = %e, "endpoint failed to connect")
            }
        }
    }
    tracing::info!(dst = %down.dst, "TCP through waypoint: every endpoint failed to connect");
}
