//! A watch response: newline-delimited `{"type": ..., "object": ...}` events, streamed chunked
//! until the client goes away, `timeoutSeconds` passes, or the store closes all watches.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::render::Render;
use crate::resource::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Broadcast, Change, EventType, WatchStart};

pub(crate) struct WatchSpec {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    pub timeout: Option<Duration>,
    /// `sendInitialEvents=true`: mark the end of the synthetic ADDED events with a bookmark.
    pub initial_events_end: bool,
    /// How event objects are represented (a one-row Table for kubectl `get -w`).
    pub render: Render,
}

impl WatchSpec {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event a selector-filtered watcher sees for a change, if any.
    fn translate<'a>(&self, c: &'a Change) -> Option<(EventType, &'a Value)> {
        if c.resource != self.resource {
            return None;
        }
        if let Some(ns) = &self.namespace {
            let obj_ns = c.new.pointer("/metadata/namespace").and_then(Value::as_str);
            if obj_ns != Some(ns.as_str()) {
                return None;
            }
        }
        let now = self.matches(&c.new);
        let before = c.old.as_ref().map(|o| self.matches(o));
        let ty = match (c.ty, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Deleted, Some(true), _) => EventType::Deleted,
            (EventType::Modified, Some(true), true) => EventType::Modified,
            (EventType::Modified, Some(false), true) => EventType::Added,
            (EventType::Modified, Some(true), false) => EventType::Deleted,
            _ => return None,
        };
        Some((ty, &c.new))
    }

    fn line(&self, ty: &str, obj: &Value) -> Bytes {
        let object = match ty {
            "BOOKMARK" | "ERROR" => obj.clone(),
            _ => self.render.object(self.resource, obj),
        };
        let mut line = serde_json::to_vec(&json!({"type": ty, "object": object}))
            .expect("serializing a Value cannot fail");
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.resource.kind(), "apiVersion": "v1", "metadata": metadata});
        self.line("BOOKMARK", &obj)
    }
}

/// The single-event stream the real server sends when a watch cannot start (e.g. 410 Gone).
pub(crate) fn error_event(err: &ApiError) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": err.to_status()}))
        .expect("serializing a Value cannot fail");
    line.push(b'\n');
    Bytes::from(line)
}

/// Feeds `tx` until the watch ends; runs as its own task.
pub(crate) async fn run(spec: WatchSpec, start: WatchStart, tx: mpsc::Sender<Bytes>) {
    let WatchStart {
        initial,
        replay,
        mut rx,
        rv: mut last_rv,
    } = start;
    for obj in initial.iter().filter(|o| spec.matches(o)) {
        if tx.send(spec.line("ADDED", obj)).await.is_err() {
            return;
        }
    }
    if spec.initial_events_end && tx.send(spec.bookmark(last_rv, true)).await.is_err() {
        return;
    }
    for change in &replay {
        if !send_change(&spec, change, &tx).await {
            return;
        }
    }
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut bookmark_tick = tokio::time::interval_at(
        Instant::now() + spec.bookmark_interval,
        spec.bookmark_interval,
    );
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(Broadcast::Change(change)) => {
                    last_rv = change.rv;
                    if !send_change(&spec, &change, &tx).await {
                        return;
                    }
                }
                // A watcher too slow for the fan-out buffer is cut off, as the real watch
                // cache does; the client resumes from its last resourceVersion.
                Ok(Broadcast::CloseAll) | Err(broadcast::error::RecvError::Lagged(_))
                | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = bookmark_tick.tick(), if spec.bookmarks => {
                if tx.send(spec.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
            _ = sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn send_change(spec: &WatchSpec, change: &Arc<Change>, tx: &mpsc::Sender<Bytes>) -> bool {
    match spec.translate(change) {
        Some((ty, obj)) => tx.send(spec.line(ty.as_str(), obj)).await.is_ok(),
        None => true,
    }
}
