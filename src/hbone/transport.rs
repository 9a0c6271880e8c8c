//! The TCP socket under a HBONE connection's TLS, and the TLS handshakes that put it there.
//!
//! Why a wrapper: rustls reads the socket one record at a time (at most ~16 KiB per `recv`),
//! and writes after every 64 KiB of plaintext. On a bulk stream that is a system call (and
//! often a TCP window update) per record, the largest cost the profile showed after the
//! kernel's own copies (issue 12). Here, while bulk data flows, the socket is read in chunks
//! of up to [`READ_AHEAD`] that rustls then takes from memory; small messages are still read
//! straight into rustls' buffer. And rustls may hold a whole HTTP/2 frame of records for one
//! `writev`.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

/// Largest single read from the socket. A TCP receive queue on a fast link typically holds
/// tens of KiB when the reader wakes, so this rarely limits a read.
const READ_AHEAD: usize = 128 * 1024;
/// The smallest read: one TLS record. While reads bring less than half of it (small
/// messages), the socket is read straight into the caller's buffer, with no buffer here.
const READ_MIN: usize = 16 * 1024 + 256;

/// Encrypted bytes rustls may queue before a write returns: one 256 KiB HTTP/2 frame (our
/// `max_frame_size`) with its record overhead, so a frame leaves in one `writev`.
const TLS_SEND_BUFFER: usize = 320 * 1024;

/// A HBONE connection's TLS stream, client side (what a [`super::Dialer`] returns).
pub type ClientTls = tokio_rustls::client::TlsStream<Transport>;
/// A HBONE connection's TLS stream, server side.
pub type ServerTls = tokio_rustls::server::TlsStream<Transport>;

/// A TCP socket read ahead in large chunks while bulk data flows. The buffer is released
/// when the socket is found drained after little traffic (see [`Transport::drained`]), so an
/// idle connection holds none.
pub struct Transport {
    tcp: TcpStream,
    /// Read from the socket, not yet taken by TLS.
    ahead: BytesMut,
    /// Room for the next read: twice what the last one brought, so bulk traffic reads
    /// [`READ_AHEAD`] at a time and small messages stay small.
    next: usize,
    /// Bytes read since the socket was last found drained.
    since_drained: usize,
}

impl Transport {
    fn new(tcp: TcpStream) -> Self {
        Transport {
            tcp,
            ahead: BytesMut::new(),
            next: READ_MIN,
            since_drained: 0,
        }
    }

    /// The socket has nothing to read. A connection waiting for its peer holds no buffer,
    /// except while bulk data flows (much was read since the socket was last drained): then
    /// it is drained many times a second, and freeing and allocating up to 128 KiB each time
    /// left the heap fragmented once the load ended (RSS +8 MiB on the receiving node after
    /// a bulk run). A connection that goes idle gives the buffer up the next time it is found
    /// drained (after a keepalive PING at the latest).
    fn drained(&mut self) {
        if self.since_drained < READ_AHEAD / 2 {
            self.ahead = BytesMut::new();
        }
        self.since_drained = 0;
    }

    /// Reads straight into the caller's buffer.
    fn poll_direct(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = out.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, out) {
            Poll::Pending => {
                self.drained();
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                self.note_read(out.filled().len() - before);
                Poll::Ready(Ok(()))
            }
            err => err,
        }
    }

    /// Sizes the next read from this one.
    fn note_read(&mut self, n: usize) {
        self.next = (2 * n).clamp(READ_MIN, READ_AHEAD);
        self.since_drained += n;
    }

    /// Fills `ahead` with one read; Ok(0) at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        // The buffer is allocated only once the socket says it is readable.
        if self.tcp.poll_read_ready(cx)?.is_pending() {
            self.drained();
            return Poll::Pending;
        }
        self.ahead.reserve(self.next);
        // tokio's own read, not `try_read_buf`: after a short read it knows the socket is
        // drained, which saves a `recv` that would only say EAGAIN on every small message.
        match poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.ahead) {
            Poll::Pending => {
                self.drained();
                Poll::Pending
            }
            Poll::Ready(Ok(n)) => {
                self.note_read(n);
                Poll::Ready(Ok(n))
            }
            err => err,
        }
    }
}

/// Socket options (keepalive, the FIN probe) apply to the socket itself.
impl std::os::fd::AsFd for Transport {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.tcp.as_fd()
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            if out.remaining() >= READ_AHEAD || this.next == READ_MIN {
                // Small messages (the last read brought less than half a record), or a reader
                // with room for a whole chunk: the detour would only add a copy (and for small
                // messages an allocation per message).
                return this.poll_direct(cx, out);
            }
            if ready!(this.poll_fill(cx))? == 0 {
                this.ahead = BytesMut::new();
                return Poll::Ready(Ok(())); // EOF
            }
        }
        let n = out.remaining().min(this.ahead.len());
        out.put_slice(&this.ahead[..n]);
        this.ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// The client side of a HBONE connection's TLS handshake.
pub async fn tls_connect(
    cfg: Arc<rustls::ClientConfig>,
    server: rustls::pki_types::ServerName<'static>,
    tcp: TcpStream,
) -> std::io::Result<ClientTls> {
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(server, Transport::new(tcp))
        .await?;
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    Ok(tls)
}

/// The server side of a HBONE connection's TLS handshake.
pub async fn tls_accept(
    cfg: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
) -> std::io::Result<ServerTls> {
    let mut tls = tokio_rustls::TlsAcceptor::from(cfg)
        .accept(Transport::new(tcp))
        .await?;
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    Ok(tls)
}

#[cfg(test)]
impl Transport {
    /// Bytes read from the socket and not yet handed on, and the buffer holding them.
    fn ahead(&self) -> (usize, usize) {
        (self.ahead.len(), self.ahead.capacity())
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
