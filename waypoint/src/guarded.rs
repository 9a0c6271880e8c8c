//! The I/O side of the smuggling guard: reads the client's bytes through an
//! [`h1guard::Tracker`] and hands the HTTP/1 server only what it released; a refused request
//! looks like the client's EOF to the server, and the caller answers 400 itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h1guard::{Tracker, Violation};

pub struct Guarded<IO> {
    inner: IO,
    tracker: Tracker,
    pending: BytesMut,
    refused: Option<(Violation, bool)>,
    eof: bool,
}

impl<IO> Guarded<IO> {
    pub fn new(inner: IO, max_head: usize) -> Self {
        Guarded {
            inner,
            tracker: Tracker::new(max_head),
            pending: BytesMut::new(),
            refused: None,
            eof: false,
        }
    }

    /// The refusal, if any: the violation and whether it came before the request was passed on.
    pub fn refused(&self) -> Option<&(Violation, bool)> {
        self.refused.as_ref()
    }

    pub fn into_inner(self) -> IO {
        self.inner
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof || self.refused.is_some() {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let filled = rb.filled();
            if filled.is_empty() {
                self.eof = true;
                continue;
            }
            let fed = self.tracker.feed(filled);
            self.pending.extend_from_slice(&fed.release);
            self.refused = fed.refused;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
