//! Backends of the whole-system waypoint tests: HTTP and gRPC servers in a pod's namespace
//! that report which pod answered and what request they received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use test_support::{run_in, thread_in, Netns};

use crate::mesh::NAMESPACE;

/// A small HTTP/1.1 server: answers like the Gateway API conformance suite's echo backends,
/// with which pod (and namespace) it is and the request it got. Paths:
/// `/delay/<ms>` waits first, `/status/<code>` answers that code, `/flaky` answers 503 half
/// the time, `/pad/<n>` adds `n` bytes to the body; anything else 200.
pub struct HttpBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl HttpBackend {
    pub fn start(ns: &Netns, addr: SocketAddr, pod: &str) -> Result<HttpBackend> {
        Self::start_as(ns, addr, pod, NAMESPACE)
    }

    /// A backend reporting `pod` in `namespace` (the pod name and namespace it stands for).
    pub fn start_as(
        ns: &Netns,
        addr: SocketAddr,
        pod: &str,
        namespace: &str,
    ) -> Result<HttpBackend> {
        let who: Arc<str> = format!("pod={pod}\nnamespace={namespace}\n").into();
        let listener = run_in(ns, || TcpListener::bind(addr))
            .with_context(|| format!("binding HTTP backend on {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let thread = thread_in(ns, move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (who, log) = (who.clone(), log.clone());
                        std::thread::spawn(move || serve_http(conn, &who, &log));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(HttpBackend {
            stop,
            thread: Some(thread),
            seen,
        })
    }

    /// The report of every request answered so far (what the reply body carried), in order.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_http(conn: TcpStream, who: &str, seen: &Mutex<Vec<String>>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    let mut seq = 0;
    loop {
        seq += 1;
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = Vec::new();
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
                if k == "content-length" {
                    len = v.parse().unwrap_or(0);
                }
                if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
                headers.push((k, v));
            }
        }
        let mut body = vec![0u8; len.min(1 << 20)];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let path = target.split('?').next().unwrap_or("").to_owned();
        let mut status = 200u16;
        if let Some(ms) = path.strip_prefix("/delay/").and_then(|m| m.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        } else if let Some(c) = path.strip_prefix("/status/").and_then(|c| c.parse().ok()) {
            status = c;
        } else if path == "/flaky" && rand::random::<bool>() {
            status = 503;
        }
        // `req` is the request's position on its TCP connection: 2 and up show reuse.
        let mut out = format!(
            "{who}req={seq}\nmethod={method}\ntarget={target}\nbody={}\n",
            body.len()
        );
        for (k, v) in &headers {
            out += &format!("header {k}={v}\n");
        }
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(out.clone());
        // The padding is answered, not recorded: benchmarks send it tens of thousands of times.
        if let Some(n) = path
            .strip_prefix("/pad/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            out.extend(std::iter::repeat_n('x', n.min(1 << 20)));
        }
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{out}",
            out.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if w.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// An HTTP/2 (prior knowledge, h2c) server answering like a gRPC service: 200,
/// `content-type: application/grpc`, a body naming the pod and path, trailer `grpc-status: 0`.
pub struct GrpcBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GrpcBackend {
    pub fn start(ns: &Netns, addr: SocketAddr, pod: &str) -> Result<GrpcBackend> {
        Self::start_as(ns, addr, pod, NAMESPACE)
    }

    /// A backend reporting `pod` in `namespace`.
    pub fn start_as(
        ns: &Netns,
        addr: SocketAddr,
        pod: &str,
        namespace: &str,
    ) -> Result<GrpcBackend> {
        let who: Arc<str> = format!("pod={pod}\nnamespace={namespace}\n").into();
        let listener = run_in(ns, || TcpListener::bind(addr))
            .with_context(|| format!("binding gRPC backend on {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                while !s.load(Ordering::Relaxed) {
                    let Ok(Ok((tcp, _))) =
                        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
                    else {
                        continue;
                    };
                    tokio::spawn(serve_grpc(tcp, who.clone()));
                }
            });
        });
        Ok(GrpcBackend {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_grpc(tcp: tokio::net::TcpStream, who: Arc<str>) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let body = format!("{who}path={}\n", req.uri().path());
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .body(())
            .expect("response");
        if let Ok(mut send) = respond.send_response(resp, false) {
            let _ = send.send_data(Bytes::from(body), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = send.send_trailers(trailers);
        }
    }
}
