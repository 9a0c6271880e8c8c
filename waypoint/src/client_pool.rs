//! Upstream HTTP connections kept for reuse, so a client's keep-alive requests do not each
//! cost a new CONNECT stream and a new connection from the destination ztunnel to the app.
//!
//! One pool per downstream tunnel (one client connection), keyed by (endpoint, HTTP
//! version): the HBONE CONNECT under an upstream connection names that client in
//! `forwarded`, so it must not serve another client; and when the client's tunnel ends, its
//! upstream connections go with it (nothing lingers on a timer). HTTP/1 connections are lent
//! out one request at a time and come back when the response body has been read to its end;
//! an HTTP/2 connection is shared.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};

use crate::body::Body;

/// (endpoint address, HTTP/2).
pub type Key = (SocketAddr, bool);

pub enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Sender {
    fn closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Waits (bounded) until the connection can take a request; false if it cannot.
    pub async fn ready(&mut self) -> bool {
        let r = async {
            match self {
                Sender::H1(s) => s.ready().await.is_ok(),
                Sender::H2(s) => s.ready().await.is_ok(),
            }
        };
        tokio::time::timeout(Duration::from_secs(1), r)
            .await
            .unwrap_or(false)
    }

    pub async fn send(
        &mut self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

pub struct ClientPool {
    idle: Mutex<HashMap<Key, Vec<(Sender, Instant)>>>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = lock(&self.idle).values().map(Vec::len).sum();
        f.debug_struct("ClientPool").field("idle", &idle).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientPool {
    pub fn new(max_idle_per_key: usize, idle_timeout: Duration) -> Arc<ClientPool> {
        Arc::new(ClientPool {
            idle: Mutex::new(HashMap::new()),
            max_idle_per_key,
            idle_timeout,
        })
    }

    /// An idle connection for `key`, if one is still open. HTTP/2 ones stay in the pool.
    pub fn take(&self, key: &Key) -> Option<Sender> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(key)?;
        let mut found = None;
        while let Some((s, at)) = list.pop() {
            if s.closed() || at.elapsed() >= self.idle_timeout {
                continue;
            }
            if let Sender::H2(h2) = &s {
                let shared = Sender::H2(h2.clone());
                list.push((s, Instant::now()));
                found = Some(shared);
            } else {
                found = Some(s);
            }
            break;
        }
        if list.is_empty() {
            idle.remove(key);
        }
        tracing::debug!(endpoint = %key.0, reused = found.is_some(), "upstream connection from the pool");
        found
    }

    /// Keeps `s` for the next request of `key` (an HTTP/2 sender is kept once).
    pub fn put(&self, key: Key, s: Sender) {
        tracing::debug!(endpoint = %key.0, closed = s.closed(), "upstream connection back to the pool");
        if s.closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        let list = idle.entry(key).or_default();
        if matches!(s, Sender::H2(_)) && list.iter().any(|(x, _)| matches!(x, Sender::H2(_))) {
            return;
        }
        if list.len() < self.max_idle_per_key {
            list.push((s, Instant::now()));
        }
    }
}

/// A response body that hands its HTTP/1 connection back to the pool once read to the end;
/// dropped early, the connection (with unread bytes in it) is dropped too.
pub struct ReturnOnEnd {
    inner: Incoming,
    back: Option<(Arc<ClientPool>, Key, Sender)>,
}

impl ReturnOnEnd {
    pub fn new(inner: Incoming, back: Option<(Arc<ClientPool>, Key, Sender)>) -> Self {
        ReturnOnEnd { inner, back }
    }
}

impl HttpBody for ReturnOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        // The reader may stop at the last frame without polling for the end (a sized body):
        // `is_end_stream` after a frame counts as the end too.
        let ended = match &r {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                self.back = None;
                false
            }
            Poll::Pending => false,
        };
        if ended {
            if let Some((pool, key, s)) = self.back.take() {
                pool.put(key, s);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
