//! Telling HTTP/2 (prior knowledge), HTTP/1.x and anything else apart from the first bytes a
//! client sends inside the tunnel, and handing those bytes back to whoever serves the stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    Http2,
    Opaque,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Classifies the first bytes of a stream.
pub fn classify(b: &[u8]) -> Sniffed {
    if b.is_empty() {
        return Sniffed::NeedMore;
    }
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniffed::Http2
        } else {
            Sniffed::NeedMore
        };
    }
    // An HTTP/1 request line starts with a method token (upper-case letters) and a space.
    let token = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    match b.get(token) {
        Some(b' ') if (3..=16).contains(&token) => Sniffed::Http1,
        None if token == b.len() && token <= 16 => Sniffed::NeedMore,
        _ => Sniffed::Opaque,
    }
}

/// An I/O object that first yields `prefix`, then reads from `inner`.
pub struct Prefixed<IO> {
    prefix: Bytes,
    inner: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        let cases: &[(&[u8], Sniffed)] = &[
            (b"", Sniffed::NeedMore),
            (b"GET / HTTP/1.1\r\n", Sniffed::Http1),
            (b"POST", Sniffed::NeedMore),
            (b"OPTIONS * HTTP/1.1", Sniffed::Http1),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Sniffed::Http2),
            (b"PRI * HTTP/2", Sniffed::NeedMore),
            (b"\x16\x03\x01\x00", Sniffed::Opaque),
            (b"get / HTTP/1.1", Sniffed::Opaque),
            (b"GE", Sniffed::NeedMore),
            (b"ABCDEFGHIJKLMNOPQRSTU ", Sniffed::Opaque),
            (b"SSH-2.0-OpenSSH", Sniffed::Opaque),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn prefixed_yields_prefix_then_inner() {
        use tokio::io::AsyncReadExt;
        let inner: &[u8] = b" world";
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), inner);
        let mut s = String::new();
        p.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}
