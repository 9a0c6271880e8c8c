//! HBONE: HTTP/2 CONNECT inside mutual TLS, the tunnel between ztunnels (and waypoints).
//! The request checks are pure functions; the server and pool own the HTTP/2 connections.

mod keepalive;
mod pool;
mod request;
mod server;
mod settings;
mod stream;
mod transport;

pub use pool::{Dialer, Pool, PoolKey, StreamGuard, Tunnel};
pub use request::{check_connect, forwarded_for, parse_forwarded_for, LocalTargets, Rejection};
pub use server::{reject, serve_connection, serve_draining, WIND_DOWN_GRACE};
pub use settings::H2Settings;
pub use stream::{copy_bidirectional, copy_bidirectional_metered, Transferred};
pub use transport::{tls_accept, tls_connect, ClientTls, ServerTls, Transport};

/// Port of the HBONE listener in every meshed pod.
pub const HBONE_PORT: u16 = 15008;
