//! Route status in cluster mode. istiod already writes a `parents[]` entry (controllerName
//! `istio.io/gateway-controller`) for every GAMMA route (parentRef kind Service): its verdict
//! on the route as Istio's Envoy waypoint would take it. This waypoint does not fight it: it
//! writes an entry of its own, controllerName [`CONTROLLER_NAME`], for each parentRef whose
//! Service it serves, saying whether *it* accepted the route (Accepted) and whether every
//! backend Service is known (ResolvedRefs), with the route's observedGeneration; istiod's and
//! any other controller's entries are kept as they are.
//!
//! An entry of ours whose parent is no longer served goes, as the Gateway API asks of a
//! controller: when the parentRef left the route, or its Service is gone or bound to no
//! waypoint, any waypoint of ours removes it; when the Service is bound to another waypoint,
//! only the waypoint that wrote the entry does (it remembers what it wrote; another waypoint
//! of ours may own the entry now). What a waypoint wrote before a restart is forgotten, so an
//! entry left while it was down, for a Service now bound to a waypoint that is not ours, stays.
//! [`desired_parents`], [`keep_ours`] and [`merged`] have no I/O; [`spawn`] writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::served::served_services;
use super::store::{Key, ObjectStore};
use super::watch::{api_resource, KINDS};
use crate::route::ServiceRef;
use meshtunnel::state::{ConfigSnapshot, State};
use meshtunnel::xds::status::XdsStatus;

pub const CONTROLLER_NAME: &str = "meshtunnel.io/waypoint";
/// The API's limit on a condition message.
const MAX_MESSAGE: usize = 32 * 1024;

fn condition(type_: &str, ok: bool, reason: &str, message: &str, generation: &Value) -> Value {
    let mut message = message.to_owned();
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    json!({
        "type": type_,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    })
}

/// The Service a parentRef names, if it names one.
fn parent_service(p: &Value, route_ns: &str) -> Option<ServiceRef> {
    let group = p["group"].as_str().unwrap_or("");
    if p["kind"].as_str() != Some("Service") || !(group.is_empty() || group == "core") {
        return None;
    }
    Some(ServiceRef::new(
        p["namespace"].as_str().unwrap_or(route_ns),
        p["name"].as_str()?,
    ))
}

/// Our entries for `route` (an HTTPRoute or GRPCRoute object): one per parentRef whose Service
/// is in `served`. `error` is why the waypoint refused the route; `known` says whether a
/// backend Service exists (in istiod's workload xDS).
pub fn desired_parents(
    route: &Value,
    error: Option<&str>,
    served: &BTreeSet<ServiceRef>,
    known: impl Fn(&ServiceRef) -> bool,
) -> Vec<Value> {
    let ns = route["metadata"]["namespace"].as_str().unwrap_or("default");
    let generation = &route["metadata"]["generation"];
    let mut missing = Vec::new();
    for rule in route["spec"]["rules"].as_array().into_iter().flatten() {
        for b in rule["backendRefs"].as_array().into_iter().flatten() {
            let group = b["group"].as_str().unwrap_or("");
            let kind = b["kind"].as_str().unwrap_or("Service");
            if kind != "Service" || !(group.is_empty() || group == "core") {
                continue;
            }
            let Some(name) = b["name"].as_str() else {
                continue;
            };
            let svc = ServiceRef::new(b["namespace"].as_str().unwrap_or(ns), name);
            if !known(&svc) && !missing.contains(&svc) {
                missing.push(svc);
            }
        }
    }
    let accepted = match error {
        None => condition(
            "Accepted",
            true,
            "Accepted",
            "Route accepted by the waypoint",
            generation,
        ),
        Some(e) => condition("Accepted", false, "UnsupportedValue", e, generation),
    };
    let resolved = if missing.is_empty() {
        condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All references resolved",
            generation,
        )
    } else {
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        condition(
            "ResolvedRefs",
            false,
            "BackendNotFound",
            &format!("backend Service not found: {}", names.join(", ")),
            generation,
        )
    };
    route["spec"]["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| parent_service(p, ns).is_some_and(|s| served.contains(&s)))
        .map(|p| {
            json!({
                "parentRef": p,
                "controllerName": CONTROLLER_NAME,
                "conditions": [accepted.clone(), resolved.clone()],
            })
        })
        .collect()
}

fn same_parent(a: &Value, b: &Value) -> bool {
    let norm = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, x| !x.is_null());
            if o.get("group").and_then(Value::as_str) == Some("") {
                o.remove("group");
            }
        }
        v
    };
    norm(a) == norm(b)
}

/// Where a parentRef's Service is bound now, as istiod's workload xDS says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// To this waypoint.
    Ours,
    /// To another waypoint (ours or not).
    Elsewhere,
    /// To no waypoint, or the Service is gone.
    Unbound,
}

/// Whether our entry for `parent` (a parentRef in `route`'s status) may stay when this
/// waypoint does not want it: `binding` is where its Service is bound, `claimed` whether this
/// waypoint wrote the entry.
pub fn keep_ours(
    route: &Value,
    parent: &Value,
    binding: impl Fn(&ServiceRef) -> Binding,
    claimed: bool,
) -> bool {
    let in_spec = route["spec"]["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| same_parent(p, parent));
    if !in_spec {
        return false;
    }
    let ns = route["metadata"]["namespace"].as_str().unwrap_or("default");
    // Not a Service: not an entry any waypoint of ours writes; not ours to judge.
    let Some(svc) = parent_service(parent, ns) else {
        return true;
    };
    match binding(&svc) {
        Binding::Ours => true,
        Binding::Unbound => false,
        Binding::Elsewhere => !claimed,
    }
}

/// The new `status.parents`: `current` with our entries for the served parents replaced by
/// `desired` (a condition that did not change keeps its lastTransitionTime) and our other
/// entries kept only where `keep` says so; `None` when nothing changes. `now` is an RFC 3339
/// time.
pub fn merged(
    current: &[Value],
    desired: Vec<Value>,
    keep: impl Fn(&Value) -> bool,
    now: &str,
) -> Option<Vec<Value>> {
    let ours = |e: &Value| e["controllerName"] == CONTROLLER_NAME;
    let mut out: Vec<Value> = current
        .iter()
        .filter(|e| {
            !ours(e)
                || (!desired
                    .iter()
                    .any(|d| same_parent(&d["parentRef"], &e["parentRef"]))
                    && keep(&e["parentRef"]))
        })
        .cloned()
        .collect();
    for mut d in desired {
        let old = current
            .iter()
            .find(|e| ours(e) && same_parent(&e["parentRef"], &d["parentRef"]));
        for c in d["conditions"].as_array_mut().into_iter().flatten() {
            let prev = old
                .and_then(|o| o["conditions"].as_array())
                .and_then(|cs| cs.iter().find(|x| x["type"] == c["type"]));
            c["lastTransitionTime"] = match prev {
                Some(p) if p["status"] == c["status"] => p["lastTransitionTime"].clone(),
                _ => now.into(),
            };
        }
        out.push(d);
    }
    let changed = out.len() != current.len() || out.iter().any(|e| !current.contains(e));
    changed.then_some(out)
}

/// Every `interval`, once istiod's first push is in, brings our entries of every route up to
/// date with the config and with istiod's services (a binding or a backend appearing or going
/// changes them too).
pub fn spawn(
    client: kube::Client,
    gateway: ServiceRef,
    store: Arc<Mutex<ObjectStore>>,
    mesh: Arc<State>,
    xds: Arc<XdsStatus>,
    interval: Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        let mut claims = Claims::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // Before istiod's first push every Service looks unbound: nothing is judged.
            if !xds.synced() {
                continue;
            }
            let snapshot = mesh.current();
            let writes = pending_writes(&store, &snapshot, &gateway, &mut claims);
            for w in writes {
                let Key {
                    kind,
                    namespace: ns,
                    name,
                } = &w.key;
                let Some((g, v, k, p)) = KINDS.iter().find(|k| k.2 == kind) else {
                    continue;
                };
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), ns, &api_resource(g, v, k, p));
                // resourceVersion in the patch: a concurrent writer (istiod) makes it fail with
                // a conflict, and the next round starts from the newer object.
                match api
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&w.body))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(route = %w.key, "route status written");
                        last_error = None;
                        claim(&mut claims, w.key, w.claims);
                    }
                    Err(e) => {
                        let msg = format!("{}: {e}", w.key);
                        if last_error.as_deref() != Some(msg.as_str()) {
                            tracing::warn!("writing route status: {msg}; retrying");
                            last_error = Some(msg);
                        }
                    }
                }
            }
        }
    });
}

/// The parentRefs of each route whose entry this waypoint wrote.
type Claims = BTreeMap<Key, Vec<Value>>;

fn claim(claims: &mut Claims, key: Key, parents: Vec<Value>) {
    if parents.is_empty() {
        claims.remove(&key);
    } else {
        claims.insert(key, parents);
    }
}

/// One status write: the route, its merge patch, and the parents ours once it is written.
struct Write {
    key: Key,
    body: Value,
    claims: Vec<Value>,
}

/// Where `svc` is bound: to `served` (this waypoint), another waypoint, or none.
fn binding(snapshot: &ConfigSnapshot, served: &BTreeSet<ServiceRef>, svc: &ServiceRef) -> Binding {
    if served.contains(svc) {
        return Binding::Ours;
    }
    match snapshot
        .services()
        .find(|x| x.namespace == svc.namespace && x.name == svc.name)
    {
        Some(s) if s.waypoint.is_some() => Binding::Elsewhere,
        _ => Binding::Unbound,
    }
}

/// Every route whose status is not what it should be. Routes already right update `claims`
/// here (nothing to write); routes gone from the store leave it.
fn pending_writes(
    store: &Mutex<ObjectStore>,
    snapshot: &ConfigSnapshot,
    gateway: &ServiceRef,
    claims: &mut Claims,
) -> Vec<Write> {
    let served = served_services(snapshot, gateway);
    let known = |s: &ServiceRef| {
        snapshot
            .services()
            .any(|x| x.namespace == s.namespace && x.name == s.name)
    };
    let now = rfc3339_now();
    let store = store.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    let mut routes = BTreeSet::new();
    for (key, entry) in store.entries() {
        if key.kind != "HTTPRoute" && key.kind != "GRPCRoute" {
            continue;
        }
        routes.insert(key.clone());
        let obj = &entry.current;
        let desired = desired_parents(obj, entry.error.as_deref(), &served, known);
        let wanted: Vec<Value> = desired.iter().map(|d| d["parentRef"].clone()).collect();
        let claimed = claims.get(key).map(Vec::as_slice).unwrap_or_default();
        let keep = |p: &Value| {
            let mine = claimed.iter().any(|c| same_parent(c, p));
            keep_ours(obj, p, |s| binding(snapshot, &served, s), mine)
        };
        let current: Vec<Value> = obj["status"]["parents"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match merged(&current, desired, keep, &now) {
            Some(parents) => out.push(Write {
                key: key.clone(),
                body: json!({
                    "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    "status": {"parents": parents},
                }),
                claims: wanted,
            }),
            // Nothing of ours left to remove: what we hold is what we want.
            None => claim(claims, key.clone(), wanted),
        }
    }
    claims.retain(|k, _| routes.contains(k));
    out
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
