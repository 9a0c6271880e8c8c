use std::time::Duration;

/// HBONE connection settings shared by the client (pool) and server, and the socket options
/// of every connection the proxies make. Windows are sized so one stream can keep a
/// 10 Gbit/s link busy at datacenter round-trip times (bandwidth x delay ~ a few MiB), and a
/// connection can carry several such streams at once.
#[derive(Clone, Debug)]
pub struct H2Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    pub max_send_buffer: usize,
    /// Streams per pooled connection before the pool dials another.
    pub max_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A pooled connection with no stream for this long is closed.
    pub idle_timeout: Duration,
    /// Deadline for the TLS handshake and the HTTP/2 preface, on either side, so a peer that
    /// connects and goes silent cannot hold a task or a dial.
    pub handshake_timeout: Duration,
    /// Connect timeout and TCP keepalive of every socket the proxies open or accept.
    pub sockets: crate::proxy::SocketOptions,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 256 * 1024,
            max_send_buffer: 1024 * 1024,
            max_streams: 100,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            sockets: crate::proxy::SocketOptions::default(),
        }
    }
}

impl H2Settings {
    pub(crate) fn server(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer)
            .max_concurrent_streams(self.max_streams);
        b
    }

    pub(crate) fn client(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_send_buffer_size(self.max_send_buffer)
            .enable_push(false);
        b
    }
}
