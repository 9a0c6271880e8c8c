//! Byte copying shared by every proxy path. Buffers grow while a connection moves bulk data
//! and start small, so thousands of idle connections cost little memory.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Reads into a buffer whose size follows the traffic: doubled after a read that filled it,
/// reset to the minimum after a short read.
pub(crate) struct AdaptiveBuf {
    buf: BytesMut,
    next: usize,
}

impl AdaptiveBuf {
    pub(crate) fn new() -> Self {
        AdaptiveBuf {
            buf: BytesMut::new(),
            next: MIN_READ,
        }
    }

    /// Reads once; returns the bytes read (empty at EOF), without copying them.
    pub(crate) async fn read<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> std::io::Result<BytesMut> {
        self.buf.reserve(self.next);
        let want = self.buf.capacity() - self.buf.len();
        let n = rd.read_buf(&mut self.buf).await?;
        self.next = if n >= want {
            (self.next * 2).min(MAX_READ)
        } else {
            MIN_READ
        };
        Ok(self.buf.split())
    }
}

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
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = AdaptiveBuf::new();
    let mut total = 0u64;
    loop {
        let data = buf.read(rd).await?;
        if data.is_empty() {
            wr.shutdown().await?;
            return Ok(total);
        }
        wr.write_all(&data).await?;
        total += data.len() as u64;
        progress.moved(data.len() as u64);
    }
}

/// Bytes moved by [`copy_bidirectional`]: (a to b, b to a).
pub async fn copy_bidirectional<A, B>(a: A, b: B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    copy_bidirectional_metered(a, b, &Unmetered, &Unmetered).await
}

/// [`copy_bidirectional`], reporting each chunk to `a_to_b` / `b_to_a` as it is written.
pub async fn copy_bidirectional_metered<A, B>(
    a: A,
    b: B,
    a_to_b: &dyn Progress,
    b_to_a: &dyn Progress,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    tokio::try_join!(
        copy_one(&mut ar, &mut bw, a_to_b),
        copy_one(&mut br, &mut aw, b_to_a)
    )
}
