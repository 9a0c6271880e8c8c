//! Load shapes shared by the benchmarks: a fixed request rate over keep-alive connections (the
//! shape of Istio's published ztunnel and waypoint figures), and the HTTP/1.1 exchange the
//! waypoint bench sends on them.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a fixed-rate run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Done {
    /// Exchanges that completed.
    pub ok: u64,
    /// Connections that failed (each stops at its first error).
    pub failed: u64,
}

/// Runs `exchange` on every connection of `conns`, each on a thread of its own, paced so the
/// sum over all of them is `rps` per second, for `dur`. A connection that falls behind does
/// not catch up in a burst beyond its schedule; one that fails stops and is counted.
pub fn fixed_rate<C, F>(conns: Vec<C>, rps: u32, dur: Duration, exchange: F) -> Done
where
    C: Send,
    F: Fn(&mut C) -> io::Result<()> + Sync,
{
    let period = Duration::from_secs_f64(conns.len() as f64 / f64::from(rps.max(1)));
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for mut c in conns {
            let (ok, failed, exchange) = (&ok, &failed, &exchange);
            s.spawn(move || {
                let start = Instant::now();
                let mut next = start;
                while start.elapsed() < dur {
                    if exchange(&mut c).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                    next += period;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            });
        }
    });
    Done {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}

/// An HTTP/1.1 keep-alive connection sending one fixed request again and again.
pub struct KeepAlive {
    conn: BufReader<TcpStream>,
    request: Vec<u8>,
    body: Vec<u8>,
}

impl KeepAlive {
    /// `GET path` with `Host: host` on `conn` (bounded reads: 10 s).
    pub fn new(conn: TcpStream, host: &str, path: &str) -> io::Result<KeepAlive> {
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.set_nodelay(true)?;
        Ok(KeepAlive {
            conn: BufReader::new(conn),
            request: format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            body: Vec::new(),
        })
    }

    /// Sends the request and reads the whole answer; an error unless it is a 200 that keeps
    /// the connection open.
    pub fn exchange(&mut self) -> io::Result<()> {
        self.conn.get_mut().write_all(&self.request)?;
        let mut line = String::new();
        self.conn.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200 ") {
            return Err(io::Error::other(format!("answer {line:?}")));
        }
        let mut len = None;
        loop {
            line.clear();
            if self.conn.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            } else if k.eq_ignore_ascii_case("connection") && v.trim() == "close" {
                return Err(io::Error::other("the server closes the connection"));
            }
        }
        let len = len.ok_or_else(|| io::Error::other("no content-length"))?;
        self.body.resize(len, 0);
        self.conn.read_exact(&mut self.body)
    }

    /// The body of the last answer.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}
