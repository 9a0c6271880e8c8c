//! Stand-ins for the applications in the pods: an echo server that records who connected, and
//! clients that open their sockets inside a pod (so the pod's capture rules apply to them).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use test_support::{run_in, thread_in, Netns};

/// Echoes every connection until EOF, then half-closes back. Stops when dropped.
pub struct EchoServer {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: SocketAddr) -> Result<EchoServer> {
        let listener = run_in(ns, || TcpListener::bind(addr))
            .with_context(|| format!("binding echo server on {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peers.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        p.lock().unwrap().push(peer);
                        std::thread::spawn(move || echo(conn));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(EchoServer {
            peers,
            stop,
            thread: Some(thread),
            addr,
        })
    }

    /// Peer addresses of every connection accepted so far, as the app saw them.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// Opens a connection from inside pod `ns` the way its app would.
pub fn connect_from(ns: &Netns, dst: SocketAddr) -> Result<TcpStream> {
    let s = run_in(ns, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })
    .with_context(|| format!("connecting from {} to {dst}", ns.name()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Sends `data` (then half-closes) while reading the echo back to EOF; checks it is exact.
pub fn echo_exact(conn: TcpStream, data: &[u8]) -> Result<()> {
    let mut writer = conn.try_clone()?;
    let to_send = data.to_vec();
    let w = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&to_send)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::with_capacity(data.len());
    let mut reader = conn;
    reader
        .read_to_end(&mut back)
        .context("reading the echo back")?;
    w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if back.len() != data.len() {
        bail!("echo returned {} bytes, sent {}", back.len(), data.len());
    }
    if back != data {
        bail!("echoed bytes differ from those sent");
    }
    Ok(())
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

/// Runs `f` on a thread inside `ns` and returns its join handle (servers that outlive a call).
pub fn spawn_in<F, R>(ns: &Netns, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    thread_in(ns, f)
}
