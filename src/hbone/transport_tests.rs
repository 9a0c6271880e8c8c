use std::future::poll_fn;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

async fn pair() -> (TcpStream, Transport) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, Transport::new(s))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Reads into a record-sized buffer, as rustls does.
async fn read_record(t: &mut Transport) -> Vec<u8> {
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let n = t.read(&mut buf).await.unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn a_record_sized_reader_gets_the_bytes_of_few_large_socket_reads_in_order() {
    let (mut peer, mut t) = pair().await;
    let sent = pattern(1024 * 1024);
    let writer = tokio::spawn(async move {
        peer.write_all(&sent).await.unwrap();
        peer.shutdown().await.unwrap();
        (peer, sent)
    });
    let mut got = Vec::new();
    let mut largest_ahead = 0;
    loop {
        let chunk = read_record(&mut t).await;
        if chunk.is_empty() {
            break;
        }
        got.extend_from_slice(&chunk);
        largest_ahead = largest_ahead.max(t.ahead().0);
    }
    let (_peer, sent) = writer.await.unwrap();
    assert!(got == sent, "bytes lost, duplicated or reordered");
    // The reader asked for one record at a time; the socket was read further ahead.
    assert!(
        largest_ahead > 32 * 1024,
        "largest read ahead {largest_ahead} B: the socket was read a record at a time"
    );
}

#[tokio::test]
async fn small_messages_skip_the_read_ahead_and_an_idle_connection_holds_no_buffer() {
    let (mut peer, mut t) = pair().await;
    for _ in 0..3 {
        peer.write_all(&[7u8; 1024]).await.unwrap();
        assert_eq!(read_record(&mut t).await, vec![7u8; 1024]);
        // Read straight into the caller's buffer: no allocation, no extra copy.
        assert_eq!(
            t.ahead(),
            (0, 0),
            "a small message went through the read-ahead buffer"
        );
        // Nothing more to read: the poll finds the socket empty and lets the buffer go.
        assert!(
            drained(&mut t).await,
            "no bytes were sent, yet the read completed"
        );
        assert_eq!(t.ahead(), (0, 0), "an idle connection holds a read buffer");
    }
}

#[tokio::test]
async fn a_reader_with_room_for_a_whole_chunk_reads_the_socket_directly() {
    let (mut peer, mut t) = pair().await;
    peer.write_all(b"hello").await.unwrap();
    let mut buf = vec![0u8; READ_AHEAD];
    let n = t.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(t.ahead(), (0, 0));
}

#[tokio::test]
async fn the_peers_fin_reads_as_eof_after_the_last_byte() {
    let (mut peer, mut t) = pair().await;
    peer.write_all(b"last").await.unwrap();
    peer.shutdown().await.unwrap();
    assert_eq!(read_record(&mut t).await, b"last");
    assert!(read_record(&mut t).await.is_empty(), "EOF expected");
    assert_eq!(t.ahead(), (0, 0));
}

#[tokio::test]
async fn writes_reach_the_peer_unchanged() {
    let (mut peer, mut t) = pair().await;
    let bufs = [IoSlice::new(b"head "), IoSlice::new(b"body")];
    let n = t.write_vectored(&bufs).await.unwrap();
    assert_eq!(n, 9);
    t.shutdown().await.unwrap();
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"head body");
}

/// Polls once; true when the read would wait (the socket is drained).
async fn drained(t: &mut Transport) -> bool {
    let mut buf = [0u8; 16];
    poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut buf);
        Poll::Ready(Pin::new(&mut *t).poll_read(cx, &mut rb).is_pending())
    })
    .await
}

#[tokio::test]
async fn a_bulk_reader_keeps_its_buffer_between_bursts_and_gives_it_up_when_traffic_is_small() {
    let (mut peer, mut t) = pair().await;
    // Room for the whole burst, so it is all queued before the first read.
    socket2::SockRef::from(&t.tcp)
        .set_recv_buffer_size(4 * READ_AHEAD)
        .unwrap();
    let burst = pattern(READ_AHEAD);
    peer.write_all(&burst).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut got = Vec::new();
    while got.len() < burst.len() {
        got.extend_from_slice(&read_record(&mut t).await);
    }
    assert!(got == burst);
    assert!(drained(&mut t).await);
    // Much was read since the socket was last drained: the buffer stays for the next burst.
    assert!(t.ahead().1 > 0, "bulk reader gave its buffer up");
    peer.write_all(b"small").await.unwrap();
    assert_eq!(read_record(&mut t).await, b"small");
    assert!(drained(&mut t).await);
    assert_eq!(
        t.ahead(),
        (0, 0),
        "small traffic: no buffer held while waiting"
    );
}
