//! Admission of inbound connections and their re-check when policies change.
//!
//! Each pod keeps one [`LiveConns`]: a map from a connection id to what the decision needs and
//! a token that ends the connection. A connection costs one insert and one remove under the
//! mutex; the re-check copies the entries out and evaluates without holding it. No task per
//! connection: the connection's own task watches its token.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use super::{evaluate, ConnInfo, Decision, Verdict};
use crate::state::{ConfigSnapshot, LocalPod, State};

/// The admitted inbound connections of one pod.
#[derive(Default)]
pub struct LiveConns {
    conns: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
}

struct Entry {
    conn: ConnInfo,
    revoke: CancellationToken,
}

/// An admitted connection: listed in its pod's [`LiveConns`] until dropped.
pub struct Admitted {
    owner: Arc<LiveConns>,
    id: u64,
    revoke: CancellationToken,
}

impl Admitted {
    /// Runs `work` (the connection) until it ends or a policy re-check revokes the connection;
    /// `None` = revoked, and `work` has been dropped (its sockets closed).
    pub async fn run<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.revoke.cancelled() => None,
            out = work => Some(out),
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.id);
    }
}

impl LiveConns {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        // Entries are inserted and removed whole; a panic elsewhere cannot leave half of one.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live connections right now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides `conn` to `pod` (ZDS uid `uid`, for the logs) under the current config and,
    /// when allowed, lists it for re-checks. Denials and dry-run findings are logged here; `Err` carries the decision.
    ///
    /// The connection is listed before the config is read: a reload that lands in between
    /// then either re-checks this entry or is already visible to this read, never neither.
    pub fn admit(
        self: &Arc<Self>,
        state: &State,
        uid: &str,
        pod: &LocalPod,
        conn: ConnInfo,
        listener: &'static str,
    ) -> Result<Admitted, Decision> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoke = CancellationToken::new();
        let entry = Arc::new(Entry {
            conn,
            revoke: revoke.clone(),
        });
        self.lock().insert(id, entry.clone());
        let admitted = Admitted {
            owner: self.clone(),
            id,
            revoke,
        };
        let snapshot = state.current();
        // A pod not (yet) in the config has no policies: nothing to enforce.
        let Some(dst) = pod.find(&snapshot) else {
            return Ok(admitted);
        };
        let d = evaluate(&snapshot, dst, &entry.conn);
        log_dry_run(uid, &entry.conn, &d, listener);
        if d.allowed() {
            Ok(admitted)
        } else {
            tracing::info!(%uid, listener, src = %entry.conn.src_ip,
                src_identity = %Identity(&entry.conn), dst = %dst_addr(&entry.conn),
                policy = %Policy(&d), reason = %d.reason, "connection denied by authorization policy");
            Err(d)
        }
    }

    /// Evaluates every live connection to `pod` (ZDS uid `uid`) under `snapshot` and revokes
    /// those no longer allowed; returns how many. A pod missing from `snapshot` keeps its
    /// connections.
    pub fn recheck(&self, snapshot: &ConfigSnapshot, uid: &str, pod: &LocalPod) -> usize {
        let Some(dst) = pod.find(snapshot) else {
            return 0;
        };
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        // Connections of one client pod to one port share their ConnInfo: decide each once.
        let mut decided: HashMap<&ConnInfo, Option<Decision>> = HashMap::new();
        let mut revoked = 0;
        for e in &entries {
            if e.revoke.is_cancelled() {
                continue;
            }
            let denial = decided.entry(&e.conn).or_insert_with(|| {
                Some(evaluate(snapshot, dst, &e.conn)).filter(|d| d.verdict == Verdict::Deny)
            });
            if let Some(d) = denial {
                tracing::info!(%uid, src = %e.conn.src_ip, src_identity = %Identity(&e.conn),
                    dst = %dst_addr(&e.conn), policy = %Policy(d), reason = %d.reason,
                    "open connection closed: no longer allowed by authorization policy");
                e.revoke.cancel();
                revoked += 1;
            }
        }
        revoked
    }
}

/// Re-checks the live connections of `pod` (ZDS uid `uid`) after every config change until
/// `stop`.
///
/// Subscribes before returning, so a change between this call and the first poll of the
/// future is not missed.
pub fn recheck_on_change(
    state: Arc<State>,
    uid: String,
    pod: LocalPod,
    live: Arc<LiveConns>,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let changes = state.subscribe();
    recheck_loop(state, changes, uid, pod, live, stop)
}

async fn recheck_loop(
    state: Arc<State>,
    mut changes: tokio::sync::watch::Receiver<u64>,
    uid: String,
    pod: LocalPod,
    live: Arc<LiveConns>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
        if live.is_empty() {
            continue;
        }
        let snapshot = state.current();
        // Thousands of connections under thousands of policies take milliseconds or more:
        // off the async workers, so the pod's traffic keeps moving meanwhile.
        let (l, u, p) = (live.clone(), uid.clone(), pod.clone());
        match tokio::task::spawn_blocking(move || l.recheck(&snapshot, &u, &p)).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(%uid, revoked = n, "policy re-check done"),
            Err(e) => tracing::error!(%uid, error = %e, "policy re-check failed"),
        }
    }
}

fn log_dry_run(uid: &str, conn: &ConnInfo, d: &Decision, listener: &str) {
    if d.dry_run.is_empty() {
        return;
    }
    let would = match d.verdict {
        Verdict::Allow => "deny",
        Verdict::Deny => "allow",
    };
    tracing::info!(%uid, listener, src = %conn.src_ip, src_identity = %Identity(conn),
        dst = %dst_addr(conn), verdict = %d.verdict, dry_run_policies = ?d.dry_run,
        "dry-run authorization policy would {would} this connection");
}

fn dst_addr(c: &ConnInfo) -> std::net::SocketAddr {
    std::net::SocketAddr::new(c.dst_ip, c.dst_port)
}

struct Identity<'a>(&'a ConnInfo);

impl std::fmt::Display for Identity<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.src_identity {
            Some(id) => id.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// `namespace/name rule N`, or `default` when no policy decided.
struct Policy<'a>(&'a Decision);

impl std::fmt::Display for Policy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.decided_by {
            Some((key, rule)) => write!(f, "{key} rule {rule}"),
            None => f.write_str("default"),
        }
    }
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
