//! One connection's meter: counts it open and closed, feeds the byte counters as data moves,
//! and writes the access log lines (opened at debug, complete at info).

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::series::Cached;
use super::{Metrics, ResponseFlags, TrafficLabels};
use crate::copy::Progress;

/// Addresses for the access log, as this proxy saw them.
#[derive(Clone, Copy, Debug)]
pub struct LogContext {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The CONNECT target when the connection rides HBONE.
    pub hbone_target: Option<SocketAddr>,
}

/// Bytes of one direction: this connection's total (for the log) and the shared counter.
pub struct Direction {
    total: AtomicU64,
    counter: Option<Counter>,
}

impl Direction {
    fn new(counter: Option<Counter>) -> Self {
        Direction {
            total: AtomicU64::new(0),
            counter,
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Progress for Direction {
    fn moved(&self, n: u64) {
        // Uncontended (one copy task per direction) and relaxed: a few ns per chunk.
        self.total.fetch_add(n, Ordering::Relaxed);
        if let Some(c) = &self.counter {
            c.inc_by(n);
        }
    }
}

pub struct ConnMeter {
    metrics: Option<Arc<Metrics>>,
    labels: Arc<TrafficLabels>,
    closed: Option<Counter>,
    open: Option<Arc<AtomicUsize>>,
    up: Direction,
    down: Direction,
    gauge: Gauge,
    log: LogContext,
    start: Instant,
    done: bool,
}

impl ConnMeter {
    pub(super) fn new(
        metrics: Arc<Metrics>,
        labels: Arc<TrafficLabels>,
        cached: Cached,
        gauge: Gauge,
        log: LogContext,
    ) -> Self {
        cached.opened.inc();
        let m = ConnMeter {
            metrics: Some(metrics),
            labels,
            closed: Some(cached.closed),
            open: Some(cached.open),
            up: Direction::new(Some(cached.received)),
            down: Direction::new(Some(cached.sent)),
            gauge,
            log,
            start: Instant::now(),
            done: false,
        };
        m.opened();
        m
    }

    /// Metrics are gone (shutting down): still log.
    pub(super) fn detached(labels: TrafficLabels, gauge: Gauge, log: LogContext) -> Self {
        let m = ConnMeter {
            metrics: None,
            labels: Arc::new(labels),
            closed: None,
            open: None,
            up: Direction::new(None),
            down: Direction::new(None),
            gauge,
            log,
            start: Instant::now(),
            done: false,
        };
        m.opened();
        m
    }

    pub fn labels(&self) -> &TrafficLabels {
        &self.labels
    }

    /// Hand to the copy loop for the client → server direction.
    pub fn client_to_server(&self) -> &Direction {
        &self.up
    }

    /// Hand to the copy loop for the server → client direction.
    pub fn server_to_client(&self) -> &Direction {
        &self.down
    }

    /// The connection was established and has ended (cleanly or with an I/O error).
    pub fn finish<E: Display>(mut self, result: Result<(), E>) {
        let err = result.err().map(|e| e.to_string());
        self.record(ResponseFlags::None, false, err);
    }

    /// An open connection closed by a policy re-check: counted closed with `DENY`.
    pub fn revoked(mut self) {
        self.record(
            ResponseFlags::Deny,
            false,
            Some("closed: no longer allowed by authorization policy".into()),
        );
    }

    /// The connection was never established: `flags` says why.
    pub fn fail(mut self, flags: ResponseFlags, error: &dyn Display) {
        self.record(flags, true, Some(error.to_string()));
    }

    fn opened(&self) {
        self.gauge.inc();
        let l = &self.labels;
        tracing::event!(
            target: "access",
            tracing::Level::DEBUG,
            src.addr = %self.log.src,
            src.workload = l.source_workload.as_str(),
            src.namespace = l.source_workload_namespace.as_str(),
            src.identity = l.source_principal.as_str(),
            dst.addr = %self.log.dst,
            dst.hbone_addr = self.log.hbone_target.map(tracing::field::display),
            dst.service = l.destination_service.as_str(),
            dst.workload = l.destination_workload.as_str(),
            dst.namespace = l.destination_workload_namespace.as_str(),
            dst.identity = l.destination_principal.as_str(),
            direction = l.reporter.direction(),
            "connection opened"
        );
    }

    fn record(&mut self, flags: ResponseFlags, failed: bool, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(m) = &self.metrics {
            match (&self.closed, flags) {
                (Some(c), ResponseFlags::None) => {
                    c.inc();
                }
                _ => m
                    .series
                    .inc_flagged(&m.traffic.closed, &self.labels.with_flags(flags)),
            }
            if failed {
                m.series
                    .inc_flagged(&m.traffic.failed, &self.labels.with_flags(flags));
            }
        }
        if let Some(open) = &self.open {
            // After the counters: once this reads 0 the series may be swept.
            open.fetch_sub(1, Ordering::Release);
        }
        self.gauge.dec();
        let l = &self.labels;
        let result = match (&error, flags) {
            (None, _) => "ok",
            (Some(_), ResponseFlags::None) => "error",
            (Some(_), f) => f.as_str(),
        };
        tracing::event!(
            target: "access",
            tracing::Level::INFO,
            src.addr = %self.log.src,
            src.workload = l.source_workload.as_str(),
            src.namespace = l.source_workload_namespace.as_str(),
            src.identity = l.source_principal.as_str(),
            dst.addr = %self.log.dst,
            dst.hbone_addr = self.log.hbone_target.map(tracing::field::display),
            dst.service = l.destination_service.as_str(),
            dst.workload = l.destination_workload.as_str(),
            dst.namespace = l.destination_workload_namespace.as_str(),
            dst.identity = l.destination_principal.as_str(),
            direction = l.reporter.direction(),
            bytes_sent = self.up.total(),
            bytes_recv = self.down.total(),
            duration_ms = self.start.elapsed().as_millis() as u64,
            result,
            error = error.as_deref(),
            "connection complete"
        );
    }
}

impl Drop for ConnMeter {
    fn drop(&mut self) {
        // The task was cancelled (pod removed, drain deadline) before it could report.
        self.record(
            ResponseFlags::None,
            false,
            Some("closed by ztunnel (pod removed or shutting down)".into()),
        );
    }
}
