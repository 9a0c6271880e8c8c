//! Byte copying shared by every proxy path. Buffers grow while a connection moves bulk data,
//! start small, and exist only while bytes are there to read, so thousands of idle
//! connections cost little memory.

use std::os::fd::AsRawFd;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;

const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Reads into a buffer whose size follows the traffic: doubled after a read that filled it,
/// reset to the minimum after a short read. After a short read the buffer is released and the
/// next read waits for the socket to be readable before allocating one: an idle connection
/// holds no read buffer (4 KiB or more per direction otherwise, issue 12).
pub(crate) struct AdaptiveBuf {
    buf: BytesMut,
    next: usize,
    /// The last read left room in the buffer: the socket had nothing more queued then.
    drained: bool,
    /// Nothing read yet: a new socket's first readiness can be stale (see [`ReadReady`]).
    fresh: bool,
    /// FIN probes (a system call each) this direction may still make; see [`FIN_PROBES`].
    probes_left: u8,
}

/// Drained reads after which a direction stops probing for a FIN with a system call and
/// relies on the reactor having seen it. A connection that closes right behind its last bytes
/// (an HTTP/1.1 `Connection: close` exchange, where the probe matters: see [`FinProbe`]) does
/// so within its first few messages; one that has carried more is long-lived, and a probe per
/// message would be one more `recv` on every request of a keep-alive connection.
const FIN_PROBES: u8 = 8;

impl AdaptiveBuf {
    pub(crate) fn new() -> Self {
        AdaptiveBuf {
            buf: BytesMut::new(),
            next: MIN_READ,
            drained: false,
            fresh: true,
            probes_left: FIN_PROBES,
        }
    }

    /// Reads once; returns the bytes read (empty at EOF), without copying them.
    pub(crate) async fn read<R: AsyncRead + ReadReady + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> std::io::Result<BytesMut> {
        if self.buf.capacity() == 0 {
            let confirm = std::mem::take(&mut self.fresh);
            std::future::poll_fn(|cx| rd.poll_read_ready(cx, confirm)).await?;
        }
        self.buf.reserve(self.next);
        let want = self.buf.capacity() - self.buf.len();
        let n = rd.read_buf(&mut self.buf).await?;
        self.drained = n < want;
        self.next = if n >= want {
            (self.next * 2).min(MAX_READ)
        } else {
            MIN_READ
        };
        let data = self.buf.split();
        if self.drained {
            // The rest of the allocation would sit idle until the peer sends again.
            self.buf = BytesMut::new();
        }
        Ok(data)
    }

    /// Bytes of read buffer held between reads (tests: an idle connection holds none).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// Whether the bytes just read were followed by the peer's FIN. Asked only after a read
    /// that drained the socket (a full read says nothing, and a bulk stream never pays).
    pub(crate) fn eof_follows<R: FinProbe>(&mut self, rd: &R) -> bool {
        if !self.drained {
            return false;
        }
        if rd.fin_seen() {
            return true;
        }
        if self.probes_left == 0 {
            return false;
        }
        self.probes_left -= 1;
        rd.fin_queued()
    }
}

/// A byte stream the copy loops split without a lock (a TCP socket's own halves) and whose
/// read half can tell whether the peer's FIN is already queued.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {
    type Read<'a>: AsyncRead + FinProbe + ReadReady + Unpin + Send
    where
        Self: 'a;
    type Write<'a>: AsyncWrite + FinWrite + Unpin + Send
    where
        Self: 'a;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
}

/// Why this exists: a web server answers `Connection: close` with its response and a FIN
/// back to back. When a proxy hands the response on and only passes the FIN after a further
/// reactor turn (or, over HBONE, in a later HTTP/2 frame), a client that closes as soon as
/// the response is complete (wrk, most HTTP clients) becomes the side that closes first and
/// keeps the TIME_WAIT: ~28k ephemeral ports / 60 s caps it at ~470 new connections/s to one
/// destination (issue 12). Seeing the FIN together with the last bytes lets both leave at once.
pub trait FinProbe {
    /// True when the next read would return EOF without waiting (may ask the kernel).
    fn fin_queued(&self) -> bool {
        false
    }

    /// True when the reactor has already seen the peer's FIN; no system call. False says
    /// nothing: the FIN may have come after the reactor last looked.
    fn fin_seen(&self) -> bool {
        false
    }
}

/// A read half that can wait for bytes (or EOF) without a buffer to read them into, so an idle
/// connection allocates none.
pub trait ReadReady {
    /// Ready when a read would not wait. The default is always ready: the buffer is then
    /// allocated before the read waits, as for any `AsyncRead`. With `confirm`, readiness the
    /// reactor reports is checked against the socket first: a socket nothing was read from
    /// yet starts out ready in tokio, and a connection whose client never sends (a
    /// server-first protocol, a held-open idle connection) would hold a 4 KiB buffer for its
    /// whole life.
    fn poll_read_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _confirm: bool,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ReadReady for tokio::net::tcp::ReadHalf<'_> {
    fn poll_read_ready(
        &mut self,
        cx: &mut Context<'_>,
        confirm: bool,
    ) -> Poll<std::io::Result<()>> {
        let sock = self.as_ref();
        loop {
            // After a read, tokio clears the readiness on a short read: this waits for new bytes.
            std::task::ready!(sock.poll_read_ready(cx))?;
            if !confirm {
                return Poll::Ready(Ok(()));
            }
            // WouldBlock clears the stale readiness and the loop waits again; bytes, EOF or an
            // error are for the read to take.
            let peeked = sock.try_io(tokio::io::Interest::READABLE, || {
                peek_one(sock).map_err(std::io::Error::from)
            });
            match peeked {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// The write side of [`FinProbe`]'s story: the last bytes and the FIN in one segment, so the
/// client's first read finds the connection already closed by the server and the client does
/// not end up holding the TIME_WAIT.
pub trait FinWrite {
    /// Called before writing the stream's last bytes, when shutdown follows at once: holds
    /// them (TCP_CORK) until the shutdown, which sends them with the FIN.
    fn last_write(&self) {}
}

impl Duplex for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
}

impl FinProbe for tokio::net::tcp::ReadHalf<'_> {
    fn fin_queued(&self) -> bool {
        // Bypasses the reactor's readiness, which a short read has just cleared: Ok(0) is EOF;
        // data or EAGAIN means not (yet).
        matches!(peek_one(self.as_ref()), Ok(0))
    }

    fn fin_seen(&self) -> bool {
        use futures_util::FutureExt;
        // Exact only as asked right after a read that drained the socket. That read cleared
        // "readable" unless the reactor had news since; "read closed" (EPOLLRDHUP) is never
        // cleared. So closed and not readable: the FIN came before that read, which took every
        // byte up to it. Closed and readable: bytes may have come after the read (before the
        // FIN), and only a probe can tell. A readiness already known resolves without waiting.
        // (tokio's `is_readable` includes "read closed": the bit is tested on its own.)
        use tokio::io::Ready;
        let ready = self.ready(tokio::io::Interest::READABLE).now_or_never();
        matches!(ready, Some(Ok(r)) if r.is_read_closed() && (r & Ready::READABLE).is_empty())
    }
}

/// A one-byte MSG_PEEK that never blocks: Ok(0) is EOF, Ok(1) bytes are queued, EAGAIN none.
fn peek_one(sock: &TcpStream) -> nix::Result<usize> {
    use nix::sys::socket::{recv, MsgFlags};
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    recv(sock.as_raw_fd(), &mut [0u8; 1], flags)
}

impl FinWrite for tokio::net::tcp::WriteHalf<'_> {
    fn last_write(&self) {
        // Best effort: without it the FIN merely follows in its own segment.
        let _ = socket2::SockRef::from(self.as_ref()).set_tcp_cork(true);
    }
}

/// A borrowed stream: the proxy keeps the app's socket to close it cleanly after the copy.
/// In-memory pipes (the waypoint's HTTP side, tests): no FIN to look ahead for.
impl Duplex for DuplexStream {
    type Read<'a> = tokio::io::ReadHalf<&'a mut DuplexStream>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut DuplexStream>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }
}

impl<T> FinProbe for tokio::io::ReadHalf<T> {}
impl<T> ReadReady for tokio::io::ReadHalf<T> {}
impl<T> FinWrite for tokio::io::WriteHalf<T> {}

/// Told about bytes as they are handed on, so counters move while a long connection is
/// open and not only when it closes.
pub trait Progress: Send + Sync {
    fn moved(&self, n: u64);
}

/// For copies nobody meters.
pub struct Unmetered;

impl Progress for Unmetered {
    fn moved(&self, _: u64) {}
}

/// Copies `rd` to `wr` until EOF, then shuts `wr` down (propagating the half-close).
pub(crate) async fn copy_one<R, W>(
    rd: &mut R,
    wr: &mut W,
    progress: &dyn Progress,
) -> std::io::Result<u64>
where
    R: AsyncRead + FinProbe + ReadReady + Unpin,
    W: AsyncWrite + FinWrite + Unpin,
{
    let mut buf = AdaptiveBuf::new();
    let mut total = 0u64;
    loop {
        let data = buf.read(rd).await?;
        if data.is_empty() {
            wr.shutdown().await?;
            return Ok(total);
        }
        let eof = buf.eof_follows(rd);
        if eof {
            wr.last_write();
        }
        wr.write_all(&data).await?;
        total += data.len() as u64;
        progress.moved(data.len() as u64);
        if eof {
            // The FIN right behind the bytes, as the peer sent it.
            wr.shutdown().await?;
            return Ok(total);
        }
    }
}

/// Bytes moved by [`copy_bidirectional`]: (a to b, b to a).
pub async fn copy_bidirectional<A: Duplex, B: Duplex>(a: A, b: B) -> std::io::Result<(u64, u64)> {
    copy_bidirectional_metered(a, b, &Unmetered, &Unmetered).await
}

/// [`copy_bidirectional`], reporting each chunk to `a_to_b` / `b_to_a` as it is written.
pub async fn copy_bidirectional_metered<A: Duplex, B: Duplex>(
    mut a: A,
    mut b: B,
    a_to_b: &dyn Progress,
    b_to_a: &dyn Progress,
) -> std::io::Result<(u64, u64)> {
    let (mut ar, mut aw) = a.halves();
    let (mut br, mut bw) = b.halves();
    tokio::try_join!(
        copy_one(&mut ar, &mut bw, a_to_b),
        copy_one(&mut br, &mut aw, b_to_a)
    )
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
