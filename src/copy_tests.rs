use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

#[tokio::test]
async fn fin_probe_sees_a_fin_queued_behind_the_bytes_and_nothing_else() {
    // Loopback delivers synchronously: once write/shutdown return, the peer has it queued.
    let (mut a, mut b) = pair().await;
    a.write_all(b"response").await.unwrap();
    let (mut rd, _wr) = b.halves();
    let mut buf = AdaptiveBuf::new();
    let got = buf.read(&mut rd).await.unwrap();
    assert_eq!(&got[..], b"response");
    assert!(!buf.eof_follows(&rd), "no FIN sent yet");

    a.write_all(b"more").await.unwrap();
    a.shutdown().await.unwrap();
    let got = buf.read(&mut rd).await.unwrap();
    assert_eq!(&got[..], b"more");
    assert!(buf.eof_follows(&rd), "FIN queued behind the bytes");
    // The probe consumed nothing: the next read is the EOF.
    assert!(buf.read(&mut rd).await.unwrap().is_empty());
}

#[tokio::test]
async fn fin_probe_is_false_while_more_bytes_are_queued() {
    let (mut a, mut b) = pair().await;
    a.write_all(b"first").await.unwrap();
    let (mut rd, _wr) = b.halves();
    let mut buf = AdaptiveBuf::new();
    buf.read(&mut rd).await.unwrap();
    a.write_all(b"second").await.unwrap();
    a.shutdown().await.unwrap();
    // Bytes before the FIN: not EOF yet, and they are still there to read.
    assert!(!buf.eof_follows(&rd));
    assert_eq!(&buf.read(&mut rd).await.unwrap()[..], b"second");
}

#[tokio::test]
async fn copy_passes_bytes_and_fin_on_together() {
    // client <-> proxy_in | proxy_out <-> server, copied by copy_bidirectional.
    let (mut client, proxy_in) = pair().await;
    let (proxy_out, mut server) = pair().await;
    let copy = tokio::spawn(copy_bidirectional(proxy_in, proxy_out));
    client.write_all(b"GET").await.unwrap();
    let mut req = [0u8; 3];
    server.read_exact(&mut req).await.unwrap();
    server.write_all(b"answer").await.unwrap();
    server.shutdown().await.unwrap();
    // The client sees the answer and the EOF; bounded so a lost FIN fails instead of hanging.
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut back))
        .await
        .expect("FIN passed on")
        .unwrap();
    assert_eq!(back, b"answer");
    drop(client);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), copy)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        (3, 6)
    );
}

#[tokio::test]
async fn an_idle_read_holds_no_buffer() {
    let (mut a, mut b) = pair().await;
    let (mut rd, _wr) = b.halves();
    let mut buf = AdaptiveBuf::new();
    // A short read hands its bytes on and keeps no buffer for the next wait.
    a.write_all(b"ping").await.unwrap();
    assert_eq!(&buf.read(&mut rd).await.unwrap()[..], b"ping");
    assert_eq!(buf.held(), 0);
    let waited = tokio::time::timeout(Duration::from_millis(50), buf.read(&mut rd)).await;
    assert!(waited.is_err(), "nothing more was sent");
    assert_eq!(buf.held(), 0);
    // And it still reads what comes next.
    a.write_all(b"pong").await.unwrap();
    assert_eq!(&buf.read(&mut rd).await.unwrap()[..], b"pong");
}

#[tokio::test]
async fn a_connection_that_never_sent_holds_no_buffer() {
    let (_a, mut b) = pair().await;
    let (mut rd, _wr) = b.halves();
    let mut buf = AdaptiveBuf::new();
    let waited = tokio::time::timeout(Duration::from_millis(50), buf.read(&mut rd)).await;
    assert!(waited.is_err(), "nothing was sent");
    assert_eq!(buf.held(), 0);
}

/// Counts the probes that cost a system call.
struct CountingProbe {
    probes: std::cell::Cell<u32>,
    seen: bool,
}

impl FinProbe for CountingProbe {
    fn fin_queued(&self) -> bool {
        self.probes.set(self.probes.get() + 1);
        false
    }
    fn fin_seen(&self) -> bool {
        self.seen
    }
}

#[test]
fn a_long_lived_direction_stops_probing_but_still_trusts_a_fin_the_reactor_saw() {
    let mut buf = AdaptiveBuf::new();
    buf.drained = true;
    let probe = CountingProbe {
        probes: Default::default(),
        seen: false,
    };
    for _ in 0..u32::from(FIN_PROBES) + 5 {
        assert!(!buf.eof_follows(&probe));
    }
    assert_eq!(probe.probes.get(), u32::from(FIN_PROBES));
    let seen = CountingProbe {
        probes: Default::default(),
        seen: true,
    };
    assert!(buf.eof_follows(&seen));
    assert_eq!(
        seen.probes.get(),
        0,
        "no system call when the reactor saw the FIN"
    );
    buf.drained = false;
    assert!(
        !buf.eof_follows(&seen),
        "a full read says nothing about a FIN"
    );
}

/// Drained reads of one byte each until the probe budget is spent.
async fn spend_the_probes(
    a: &mut TcpStream,
    rd: &mut tokio::net::tcp::ReadHalf<'_>,
    buf: &mut AdaptiveBuf,
) {
    for _ in 0..FIN_PROBES {
        a.write_all(b"x").await.unwrap();
        assert_eq!(&buf.read(rd).await.unwrap()[..], b"x");
        assert!(!buf.eof_follows(rd));
    }
    assert_eq!(buf.probes_left, 0);
}

#[tokio::test]
async fn without_probes_a_fin_that_came_before_the_last_read_still_goes_with_the_bytes() {
    let (mut a, mut b) = pair().await;
    let (mut rd, _wr) = b.halves();
    let mut buf = AdaptiveBuf::new();
    spend_the_probes(&mut a, &mut rd, &mut buf).await;
    a.write_all(b"last").await.unwrap();
    a.shutdown().await.unwrap();
    // The reactor sees bytes and FIN before the read.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(&buf.read(&mut rd).await.unwrap()[..], b"last");
    assert!(
        buf.eof_follows(&rd),
        "FIN seen by the reactor before the read"
    );
    assert!(buf.read(&mut rd).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_fin_seen_after_the_last_read_is_not_trusted_while_bytes_may_precede_it() {
    let (mut a, mut b) = pair().await;
    let (mut rd, _wr) = b.halves();
    let mut buf = AdaptiveBuf::new();
    spend_the_probes(&mut a, &mut rd, &mut buf).await;
    a.write_all(b"first").await.unwrap();
    assert_eq!(&buf.read(&mut rd).await.unwrap()[..], b"first");
    // More bytes and the FIN arrive after that read, and the reactor sees them.
    a.write_all(b"second").await.unwrap();
    a.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !buf.eof_follows(&rd),
        "would have dropped the bytes before the FIN"
    );
    assert_eq!(&buf.read(&mut rd).await.unwrap()[..], b"second");
}
