//! A stream cut by the drain deadline ends the way HTTP/2 ends one (END_STREAM both ways), not
//! with RST_STREAM: an HBONE server on an in-memory pipe, whose streams copy to an echo app with
//! the server's `stop` as their wind-down, and a bare h2 client playing the far ztunnel.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::serve_draining;
use crate::copy::Unmetered;
use crate::hbone::{copy_bidirectional_metered, H2Settings};

const BOUND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_stream_wound_down_at_the_deadline_ends_with_end_stream_both_ways() {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let settings = H2Settings::default();
    let stop = CancellationToken::new();
    let (copied_tx, copied_rx) = oneshot::channel();
    let copied_tx = std::sync::Mutex::new(Some(copied_tx));
    let server = tokio::spawn({
        let (stop, settings) = (stop.clone(), settings.clone());
        async move {
            let wind_down = stop.clone();
            serve_draining(
                server_io,
                &settings,
                CancellationToken::new(),
                stop,
                move |req, mut respond| {
                    let wind_down = wind_down.clone();
                    let copied_tx = copied_tx.lock().unwrap().take();
                    async move {
                        let send = respond.send_response(Response::new(()), false).unwrap();
                        let (mut app, far) = tokio::io::duplex(64 * 1024);
                        tokio::spawn(async move {
                            let (mut r, mut w) = tokio::io::split(far);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        });
                        let body = req.into_body();
                        let r = copy_bidirectional_metered(
                            &mut app,
                            send,
                            body,
                            &Unmetered,
                            &Unmetered,
                            Some(&wind_down),
                        )
                        .await;
                        if let Some(tx) = copied_tx {
                            let _ = tx.send(r.map(drop));
                        }
                    }
                },
            )
            .await
        }
    });
    let (client, conn) = settings
        .client()
        .handshake::<_, Bytes>(client_io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let mut body = resp.await.unwrap().into_body();
    send.send_data(Bytes::from_static(b"ping"), false).unwrap();
    let echoed = tokio::time::timeout(BOUND, body.data()).await.unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Bytes::from_static(b"ping"));

    stop.cancel();
    // The server's side ends with END_STREAM (an empty last DATA frame): the body is complete,
    // not reset.
    loop {
        match tokio::time::timeout(BOUND, body.data()).await.unwrap() {
            None => break,
            Some(Ok(b)) if b.is_empty() => continue,
            other => panic!("wanted END_STREAM, got {other:?}"),
        }
    }
    assert!(body.is_end_stream());
    // The far ztunnel, its app having seen the FIN and closed, ends its side too.
    send.send_data(Bytes::new(), true).unwrap();
    let copied = tokio::time::timeout(BOUND, copied_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(copied.is_ok(), "the server's copy failed: {copied:?}");
    let served = tokio::time::timeout(BOUND, server).await.unwrap().unwrap();
    assert!(served.is_ok(), "{served:?}");
}
