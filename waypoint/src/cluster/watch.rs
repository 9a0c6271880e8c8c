//! Watches the objects the waypoint reads in a cluster and feeds them to one task that keeps
//! the [`ObjectStore`] and swaps the config: HTTPRoute, GRPCRoute (gateway.networking.k8s.io),
//! VirtualService (networking.istio.io), AuthorizationPolicy (security.istio.io), Service.
//! Each kind is watched on its own (a CRD that is missing only stalls its own kind, retried
//! with backoff); changes arriving together are applied with one config rebuild.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::KubeMetrics;
use super::store::{Event, ObjectStore, Scope};
use crate::state::ConfigCell;

/// (group, version, kind, plural) of what is watched.
pub const KINDS: [(&str, &str, &str, &str); 5] = [
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
    (
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    (
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    ("", "v1", "Service", "services"),
];

/// Most changes applied with one rebuild.
const MAX_BATCH: usize = 256;

pub fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Starts one watch per kind and the task applying their changes to `store` and `cell`.
pub fn spawn(
    client: kube::Client,
    scope: Scope,
    store: Arc<Mutex<ObjectStore>>,
    cell: Arc<ConfigCell>,
    metrics: KubeMetrics,
    stop: CancellationToken,
) {
    let (tx, rx) = mpsc::channel::<Event>(1024);
    for (group, version, kind, plural) in KINDS {
        let ar = api_resource(group, version, kind, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        tokio::spawn(watch_kind(
            api,
            ar,
            tx.clone(),
            metrics.clone(),
            stop.clone(),
        ));
    }
    tokio::spawn(apply_loop(rx, scope, store, cell, stop));
}

async fn watch_kind(
    api: Api<DynamicObject>,
    ar: ApiResource,
    tx: mpsc::Sender<Event>,
    metrics: KubeMetrics,
    stop: CancellationToken,
) {
    let kind = ar.kind.clone();
    let mut listed_before = false;
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut last_error: Option<String> = None;
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = stop.cancelled() => return,
        };
        let ev = match ev {
            None => return,
            Some(Err(e)) => {
                metrics.watch_error(&kind);
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(kind = %kind, error = %msg, "watch failed; retrying with backoff (the config in force stays)");
                    last_error = Some(msg);
                }
                continue;
            }
            Some(Ok(ev)) => ev,
        };
        last_error = None;
        let out = match ev {
            WatchEvent::Init => {
                if listed_before {
                    metrics.relisted(&kind);
                }
                listed_before = true;
                Event::ListStart(kind.clone())
            }
            WatchEvent::InitDone => Event::ListDone(kind.clone()),
            WatchEvent::Apply(o) | WatchEvent::InitApply(o) => match typed_value(o, &ar) {
                Some(v) => Event::Upsert(v),
                None => continue,
            },
            WatchEvent::Delete(o) => {
                match typed_value(o, &ar).and_then(|v| super::store::key_of(&v)) {
                    Some(k) => Event::Delete(k),
                    None => continue,
                }
            }
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}

/// The object as JSON with apiVersion and kind (list items come without them).
fn typed_value(o: DynamicObject, ar: &ApiResource) -> Option<serde_json::Value> {
    let mut v = serde_json::to_value(o).ok()?;
    v["apiVersion"] = ar.api_version.clone().into();
    v["kind"] = ar.kind.clone().into();
    Some(v)
}

async fn apply_loop(
    mut rx: mpsc::Receiver<Event>,
    scope: Scope,
    store: Arc<Mutex<ObjectStore>>,
    cell: Arc<ConfigCell>,
    stop: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        let first = tokio::select! {
            ev = rx.recv() => ev,
            _ = stop.cancelled() => return,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for ev in batch {
            changed |= s.apply(ev, &scope);
        }
        if !changed {
            continue;
        }
        match s.build(&scope) {
            Ok(cfg) => {
                tracing::info!(
                    objects = cfg.objects.len(),
                    policies = cfg.policies.len(),
                    "route config applied from the API"
                );
                last_error = None;
                cell.replace(cfg);
            }
            // Each object converted alone; together they should too. Should they not, the
            // previous generation stays.
            Err(e) => {
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::error!("route config refused: {e}; keeping the previous config");
                    last_error = Some(e);
                }
            }
        }
    }
}
