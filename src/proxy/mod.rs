//! The per-pod proxies: 15001 outbound, 15008 HBONE inbound, 15006 plaintext inbound. Each
//! pod gets its own set, with sockets from that pod's SocketFactory.

mod inbound;
mod inbound_passthrough;
mod outbound;
mod sockets;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz;
use crate::hbone::{H2Settings, Pool};
use crate::identity::{CertSlot, Identity, TlsContext};
use crate::state::{ConfigSnapshot, LocalPod, State, Workload, LOCAL_WORKLOAD_WAIT};

pub use sockets::{
    connect, connect_with, new_tcp_socket, original_dst, Keepalive, PlainSocketFactory,
    SocketFactory, SocketOptions,
};

/// The capture ports, as the in-pod redirect rules name them.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            outbound: 15001,
            inbound_plaintext: 15006,
            hbone: crate::hbone::HBONE_PORT,
        }
    }
}

impl Ports {
    fn contains(&self, port: u16) -> bool {
        port == self.outbound || port == self.inbound_plaintext || port == self.hbone
    }
}

/// Stop signals and task accounting for one pod's proxies. Stopping is two-step so a drain
/// can refuse new connections while existing ones finish.
#[derive(Clone, Default)]
pub struct Lifecycle {
    pub stop_accept: CancellationToken,
    /// Fired once `stop_accept` has closed all the pod's listeners: only then are HBONE peers
    /// told to go elsewhere (GOAWAY), so their new connections cannot land on a listener of
    /// ours that is about to close.
    pub listeners_closed: CancellationToken,
    pub force_close: CancellationToken,
    pub tracker: TaskTracker,
}

impl Lifecycle {
    /// Stops everything now (pod deleted). `listeners_closed` fires when the accept loops have
    /// actually dropped their listeners (they run on the worker threads), so a caller can wait
    /// for that.
    pub fn close(&self) {
        self.stop_accept.cancel();
        self.force_close.cancel();
        self.tracker.close();
    }
}

/// Everything one pod's proxies need.
pub struct ProxyInputs {
    /// The ZDS uid: names the pod in logs, metrics and the agent's requests.
    pub uid: String,
    /// Finds the pod's workload in the config.
    pub pod: LocalPod,
    pub identity: Identity,
    pub state: Arc<State>,
    pub tls: TlsContext,
    pub cert: Arc<CertSlot>,
    pub factory: Arc<dyn SocketFactory>,
    pub h2: H2Settings,
    pub ports: Ports,
    pub life: Lifecycle,
    pub meter: Arc<crate::metrics::PodMeter>,
}

impl ProxyInputs {
    /// IPs of this pod per the current config (empty when the workload is not known yet).
    fn pod_ips(&self) -> Vec<IpAddr> {
        self.pod
            .find(&self.state.current())
            .map(|w| w.workload_ips.clone())
            .unwrap_or_default()
    }

    /// The current config and this pod's workload in it; when the workload is not there yet,
    /// waits for it (bounded: [`LOCAL_WORKLOAD_WAIT`]), since the agent may hand a pod over
    /// before the control plane has pushed its workload.
    async fn local_workload(&self) -> (Arc<ConfigSnapshot>, Option<Arc<Workload>>) {
        let snapshot = self.state.current();
        if let Some(w) = self.pod.find(&snapshot).cloned() {
            return (snapshot, Some(w));
        }
        drop(snapshot);
        let (snapshot, w) = self.pod.wait(&self.state, LOCAL_WORKLOAD_WAIT).await;
        if w.is_none() {
            tracing::warn!(uid = %self.uid, pod = %self.pod.info, node = %self.pod.node, waited = ?LOCAL_WORKLOAD_WAIT,
                "timed out waiting for the pod's workload in the config");
        }
        (snapshot, w)
    }
}

/// Binds the pod's three listeners once per worker (all or none) and starts serving them, each
/// set on its worker with that worker's HBONE pool: a connection then lives on the thread that
/// accepted it (see [`crate::workers`]).
pub fn start(inputs: Arc<ProxyInputs>, workers: &[(Handle, Pool)]) -> std::io::Result<()> {
    let bind = |port| {
        let l = inputs
            .factory
            .listener(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        // Accepted sockets inherit keepalive from their listener: set once, not per connection.
        inputs.h2.sockets.apply(socket2::SockRef::from(&l))?;
        Ok::<_, std::io::Error>(l)
    };
    let mut sets = Vec::with_capacity(workers.len());
    for (worker, _) in workers {
        // Registered with the worker's reactor: the listener, and what it accepts, are polled
        // there.
        let _on_worker = worker.enter();
        let out = bind(inputs.ports.outbound)?;
        let hbone = bind(inputs.ports.hbone)?;
        let plain = bind(inputs.ports.inbound_plaintext)?;
        sets.push((out, hbone, plain));
    }
    let server = inputs
        .tls
        .server_config(inputs.cert.clone())
        .map_err(std::io::Error::other)?;
    // Admitted inbound connections, re-checked on every config change until the pod closes.
    // Not on the tracker: a drain waits for connections, not for this watcher.
    let live = authz::LiveConns::new();
    tokio::spawn(authz::recheck_on_change(
        inputs.state.clone(),
        inputs.uid.clone(),
        inputs.pod.clone(),
        live.clone(),
        inputs.life.force_close.clone(),
    ));
    let t = &inputs.life.tracker;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(3 * sets.len()));
    for ((out, hbone, plain), (worker, pool)) in sets.into_iter().zip(workers) {
        t.spawn_on(
            accept_loop(inputs.clone(), open.clone(), out, {
                let (i, p) = (inputs.clone(), pool.clone());
                move |s, peer| outbound::handle(i.clone(), p.clone(), s, peer)
            }),
            worker,
        );
        t.spawn_on(
            accept_loop(inputs.clone(), open.clone(), hbone, {
                let (i, l, server) = (inputs.clone(), live.clone(), server.clone());
                move |s, peer| inbound::handle(i.clone(), server.clone(), l.clone(), s, peer)
            }),
            worker,
        );
        t.spawn_on(
            accept_loop(inputs.clone(), open.clone(), plain, {
                let (i, l) = (inputs.clone(), live.clone());
                move |s, peer| inbound_passthrough::handle(i.clone(), l.clone(), s, peer)
            }),
            worker,
        );
    }
    Ok(())
}

/// Ends a connection cut by a deadline or a Del with a FIN, not a RST: a socket closed with
/// unread bytes in its receive queue sends RST, so after the handler has had a moment to close
/// its own way (an HBONE stream ends with END_STREAM both ways, an HBONE connection sends
/// GOAWAY and TLS close_notify), we shut down our side and discard what the peer still sends
/// until its FIN, bounded by [`CLOSE_LINGER`].
async fn close_gracefully<F: std::future::Future<Output = ()>>(
    fd: std::os::fd::RawFd,
    mut fut: std::pin::Pin<&mut F>,
) {
    if tokio::time::timeout(crate::hbone::WIND_DOWN_GRACE, &mut fut)
        .await
        .is_ok()
    {
        return; // the handler finished and closed the socket itself
    }
    // SAFETY: `fut` owns the socket and is alive (pinned, not finished), so `fd` is still that
    // socket; the handler is not polled while we use it.
    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&sock);
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let until = tokio::time::Instant::now() + CLOSE_LINGER;
    // On the heap, only now: an array here would be part of every connection task's future
    // (the task holds the space of this path from the start), 4 KiB per open connection.
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 4096];
    while tokio::time::Instant::now() < until {
        match sock.recv_with_flags(&mut buf, nix::libc::MSG_DONTWAIT) {
            Ok(0) => break, // the peer's FIN: nothing left that could trigger a RST
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(_) => break,
        }
    }
}

/// Closes `s` with FIN after its far side failed (the HBONE peer went away, e.g. a ztunnel
/// stopping at its deadline): shut down our side, then discard what the app still sends until
/// its FIN, bounded by [`CLOSE_LINGER`]. Dropping the socket with unread bytes would send RST.
pub(crate) async fn close_after_failure(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.shutdown().await;
    // On the heap: this future is part of each handler's, which lives as long as the
    // connection; an array here would cost every open connection 4 KiB.
    let mut buf = vec![0u8; 4096];
    let discard = async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, discard).await;
}

/// A connection's handler in two phases: `setup` (routing, policy, dials: most of the state)
/// in a boxed future freed as soon as it is done, then `run` (the copy) in the task itself.
/// What an open connection holds is then only the copy's state. Callers pass their arguments
/// straight into `setup` from a plain `fn`: an `async fn` would keep room for them (and rustc
/// keeps a moved capture twice) for the connection's whole life.
fn two_phase<S, R, Fut>(setup: S, run: fn(R) -> Fut) -> impl std::future::Future<Output = ()> + Send
where
    S: std::future::Future<Output = Option<R>> + Send + 'static,
    R: Send,
    Fut: std::future::Future<Output = ()> + Send,
{
    let setup = Box::pin(setup);
    async move {
        let copy = match setup.await {
            Some(ready) => run(ready),
            None => return,
        };
        copy.await
    }
}

/// Runs a connection's handler until it ends or `stop` fires, then closes it with FIN
/// ([`close_gracefully`]).
fn until_force_close<F: std::future::Future<Output = ()>>(
    fut: F,
    stop: CancellationToken,
    fd: std::os::fd::RawFd,
) -> impl std::future::Future<Output = ()> {
    // On the heap: pinning `fut` inside the task would move it from the task's captures into a
    // local, and rustc keeps room for both, twice the handler's size per open connection.
    let mut fut = Box::pin(fut);
    async move {
        tokio::select! {
            _ = &mut fut => {},
            _ = stop.cancelled() => close_gracefully(fd, fut.as_mut()).await,
        }
    }
}

/// How long a cut connection waits for the peer's FIN after ours.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Upper bound for a cut connection to be closed, for a caller that must not leave earlier.
pub const CLOSE_BUDGET: std::time::Duration = crate::hbone::WIND_DOWN_GRACE
    .saturating_add(CLOSE_LINGER.saturating_add(std::time::Duration::from_millis(100)));

/// Accepts until `stop_accept`, then closes the listener; the last of the pod's listeners
/// (`open` counts them) to close fires `listeners_closed`.
async fn accept_loop<F, Fut>(
    inputs: Arc<ProxyInputs>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    listener: TcpListener,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let life = &inputs.life;
    loop {
        tokio::select! {
            // A stopped pod accepts nothing more, even with a connection already queued.
            biased;
            _ = life.stop_accept.cancelled() => {
                drop(listener);
                if open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                    life.listeners_closed.cancel();
                }
                return;
            }
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    let stop = life.force_close.clone();
                    // Only the number: the socket itself stays with the handler. Valid while
                    // `fut` (which owns the socket) is alive.
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
                    life.tracker.spawn(until_force_close(handle(s, peer), stop, fd));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on a hot error.
                    tracing::warn!(uid = %inputs.uid, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "task_size_tests.rs"]
mod task_size_tests;
