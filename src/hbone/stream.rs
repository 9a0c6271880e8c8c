//! Moving bytes between a TCP socket and one HTTP/2 stream, honouring HTTP/2 flow control in
//! both directions and carrying half-close across (TCP FIN <-> END_STREAM).

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::copy::{AdaptiveBuf, Duplex, FinProbe, FinWrite, Progress, ReadReady, Unmetered};

/// Bytes moved in each direction by [`copy_bidirectional`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From the TCP peer into the HTTP/2 stream.
    pub tcp_to_h2: u64,
    /// From the HTTP/2 stream to the TCP peer.
    pub h2_to_tcp: u64,
}

/// Copies until both directions have finished. A direction finishes on EOF (propagated as
/// END_STREAM or a TCP shutdown); an error in either direction ends both, and dropping the
/// h2 halves resets the stream so the far side learns of it.
pub async fn copy_bidirectional<T: Duplex>(
    mut tcp: T,
    send: SendStream<Bytes>,
    recv: RecvStream,
) -> std::io::Result<Transferred> {
    copy_bidirectional_metered(&mut tcp, send, recv, &Unmetered, &Unmetered, None).await
}

/// [`copy_bidirectional`], reporting each chunk to `tcp_to_h2` / `h2_to_tcp` as it is handed on.
/// The socket is borrowed: the proxy closes it cleanly itself when the tunnel failed.
///
/// `wind_down` (a ztunnel's drain deadline) ends the stream the way HTTP/2 ends one: no more
/// reads from the socket, END_STREAM to the peer (whose app then sees a FIN), and the copy
/// finishes once the peer's END_STREAM comes back, as when the app itself had closed. Bytes
/// still waiting for flow-control window go first. The socket's unread input is the caller's
/// to discard; a peer that never ends its side leaves the stream to the caller's fallback.
pub async fn copy_bidirectional_metered<T: Duplex>(
    tcp: &mut T,
    send: SendStream<Bytes>,
    recv: RecvStream,
    tcp_to_h2_progress: &dyn Progress,
    h2_to_tcp_progress: &dyn Progress,
    wind_down: Option<&CancellationToken>,
) -> std::io::Result<Transferred> {
    let (mut rd, mut wr) = tcp.halves();
    let up = tcp_to_h2(&mut rd, send, tcp_to_h2_progress, wind_down);
    let down = h2_to_tcp(recv, &mut wr, h2_to_tcp_progress);
    let (a, b) = tokio::try_join!(up, down)?;
    Ok(Transferred {
        tcp_to_h2: a,
        h2_to_tcp: b,
    })
}

async fn tcp_to_h2<R: AsyncRead + FinProbe + ReadReady + Unpin>(
    rd: &mut R,
    mut send: SendStream<Bytes>,
    progress: &dyn Progress,
    wind_down: Option<&CancellationToken>,
) -> std::io::Result<u64> {
    let mut buf = AdaptiveBuf::new();
    let mut total = 0u64;
    // Registered once, not per read: this loop runs per chunk on the data path.
    let wound_down = async {
        match wind_down {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(wound_down);
    loop {
        let data = tokio::select! {
            biased;
            _ = &mut wound_down => BytesMut::new(), // as if the app had sent its FIN
            r = buf.read(rd) => r?,
        };
        if data.is_empty() {
            send.send_data(Bytes::new(), true).map_err(h2_io)?;
            return Ok(total);
        }
        total += data.len() as u64;
        // The FIN right behind the bytes goes in their last DATA frame (END_STREAM), so the
        // far side can pass bytes and FIN on together (see `FinProbe`).
        let eof = buf.eof_follows(rd);
        let mut data = data.freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(h2_io(e)),
                None => return Err(std::io::Error::other("HTTP/2 stream closed by peer")),
            };
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            let n = chunk.len() as u64;
            send.send_data(chunk, eof && data.is_empty())
                .map_err(h2_io)?;
            progress.moved(n);
        }
        if eof {
            return Ok(total);
        }
    }
}

async fn h2_to_tcp<W: AsyncWrite + FinWrite + Unpin>(
    mut recv: RecvStream,
    wr: &mut W,
    progress: &dyn Progress,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(h2_io)?;
        let n = chunk.len();
        if recv.is_end_stream() {
            // END_STREAM came with these bytes: they and the FIN leave together.
            wr.last_write();
        }
        wr.write_all(&chunk).await?;
        total += n as u64;
        progress.moved(n as u64);
        // Only after the bytes are handed to the socket: the window is the backpressure.
        let _ = recv.flow_control().release_capacity(n);
    }
    wr.shutdown().await?;
    Ok(total)
}

pub(crate) fn h2_io(e: h2::Error) -> std::io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| std::io::Error::other("HTTP/2 I/O error"))
    } else {
        std::io::Error::other(e)
    }
}
