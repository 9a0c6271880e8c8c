//! The proxies' sockets: a connect to a peer that never answers the SYN fails at the
//! connect timeout, and sockets carry the configured TCP keepalive.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshtunnel::proxy::{connect_with, Keepalive, PlainSocketFactory, SocketOptions};
use socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// A listener that never accepts, with the smallest backlog, filled up: further SYNs are
/// dropped, so a connect to it hangs the way one to a dead peer does.
fn black_hole() -> (Socket, SocketAddr, Vec<std::net::TcpStream>) {
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&SockAddr::from(
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
    ))
    .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    // The accept queue holds backlog + 1; a few more make sure it is full.
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fill.push(s);
        }
    }
    (l, addr, fill)
}

#[tokio::test]
async fn connect_gives_up_at_the_connect_timeout() {
    let (_l, addr, _fill) = black_hole();
    let opts = SocketOptions {
        connect_timeout: Duration::from_millis(300),
        ..SocketOptions::default()
    };
    let start = Instant::now();
    let e = connect_with(&PlainSocketFactory { mark: None }, addr, None, &opts)
        .await
        .expect_err("nothing accepts");
    let took = start.elapsed();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "took {took:?}"
    );
}

#[tokio::test]
async fn sockets_carry_the_configured_keepalive() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = SocketOptions {
        keepalive: Some(Keepalive {
            time: Duration::from_secs(42),
            interval: Duration::from_secs(7),
            retries: 3,
        }),
        ..SocketOptions::default()
    };
    let s = connect_with(&PlainSocketFactory { mark: None }, addr, None, &opts)
        .await
        .unwrap();
    let r = SockRef::from(&s);
    assert!(r.keepalive().unwrap());
    assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
    assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
    assert_eq!(r.tcp_keepalive_retries().unwrap(), 3);

    // A listener passes it on to what it accepts from then on (the proxies set it once, right
    // after binding). The connection above is already queued: take it out first.
    let _first = listener.accept().await.unwrap();
    opts.apply(SockRef::from(&listener)).unwrap();
    let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    let r = SockRef::from(&accepted);
    assert!(r.keepalive().unwrap());
    assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(42));

    // Disabled: no keepalive.
    let off = SocketOptions {
        keepalive: None,
        ..SocketOptions::default()
    };
    let s = connect_with(&PlainSocketFactory { mark: None }, addr, None, &off)
        .await
        .unwrap();
    assert!(!SockRef::from(&s).keepalive().unwrap());
}
