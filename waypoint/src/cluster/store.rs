//! The objects read from the Kubernetes API, each checked on its own with the same conversion
//! as file mode: an object that cannot be used is refused with its kind and ns/name, and its
//! last good version (if any) stays in force, so one bad route never takes the others down.
//! No I/O: the watch feeds [`ObjectStore::apply`], the config is [`ObjectStore::build`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::metrics::KubeMetrics;
use crate::config::{parse_documents, LoadError, WaypointConfig};

/// An object's kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One object as the API has it now, and what the waypoint made of it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The object as last seen.
    pub current: Value,
    /// The last version that converted, in force (may be older than `current`).
    pub good: Option<Value>,
    /// Why `current` was refused.
    pub error: Option<String>,
}

/// A change seen by the watch.
#[derive(Debug)]
pub enum Event {
    Upsert(Value),
    Delete(Key),
    /// A (re)list of `kind` starts: objects not seen again before `ListDone` are gone.
    ListStart(String),
    ListDone(String),
}

/// The waypoint's own Gateway: AuthorizationPolicy targetRefs of kind Gateway apply only when
/// they name it (file mode has one waypoint per directory and takes every Gateway ref).
#[derive(Clone, Debug)]
pub struct Scope {
    pub root_namespace: String,
    /// (namespace, name) of the waypoint's Gateway.
    pub gateway: (String, String),
}

#[derive(Debug, Default)]
pub struct ObjectStore {
    /// Where each conversion's outcome is counted.
    metrics: KubeMetrics,
    entries: BTreeMap<Key, Entry>,
    /// Kinds being relisted, with the keys seen since the list started.
    relisting: BTreeMap<String, BTreeSet<Key>>,
    /// Kinds listed completely at least once.
    listed: BTreeSet<String>,
}

/// The key of an API object (a Service's kind is `Service`, etc.).
pub fn key_of(obj: &Value) -> Option<Key> {
    Some(Key {
        kind: obj["kind"].as_str()?.to_owned(),
        namespace: obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        name: obj["metadata"]["name"].as_str()?.to_owned(),
    })
}

impl ObjectStore {
    /// An empty store counting its conversions in `metrics`.
    pub fn new(metrics: KubeMetrics) -> Self {
        ObjectStore {
            metrics,
            ..Default::default()
        }
    }

    /// Applies one change; returns whether the config may have changed.
    pub fn apply(&mut self, ev: Event, scope: &Scope) -> bool {
        match ev {
            Event::Upsert(obj) => {
                let Some(key) = key_of(&obj) else {
                    tracing::warn!("object without kind or name from the API; ignored");
                    return false;
                };
                if let Some(seen) = self.relisting.get_mut(&key.kind) {
                    seen.insert(key.clone());
                }
                if let Some(e) = self.entries.get_mut(&key) {
                    // Same spec and generation (a status write, a label): nothing to convert,
                    // but the status writer needs the latest resourceVersion and status.
                    if e.current["spec"] == obj["spec"]
                        && e.current["metadata"]["generation"] == obj["metadata"]["generation"]
                    {
                        e.current = obj;
                        return false;
                    }
                }
                let checked = check(&key, &obj, scope);
                self.metrics.checked(&key.kind, checked.is_ok());
                let prev_good = self.entries.remove(&key).and_then(|e| e.good);
                let entry = match checked {
                    Ok(()) => Entry {
                        good: Some(obj.clone()),
                        current: obj,
                        error: None,
                    },
                    Err(msg) => {
                        if prev_good.is_some() {
                            tracing::error!("{msg}; its previous version stays in force");
                        } else {
                            tracing::error!("{msg}; not applied");
                        }
                        Entry {
                            current: obj,
                            good: prev_good,
                            error: Some(msg),
                        }
                    }
                };
                self.entries.insert(key, entry);
                true
            }
            Event::Delete(key) => self.entries.remove(&key).is_some(),
            Event::ListStart(kind) => {
                self.relisting.insert(kind, BTreeSet::new());
                false
            }
            Event::ListDone(kind) => {
                self.listed.insert(kind.clone());
                let Some(seen) = self.relisting.remove(&kind) else {
                    return false;
                };
                let before = self.entries.len();
                self.entries
                    .retain(|k, _| k.kind != kind || seen.contains(k));
                before != self.entries.len()
            }
        }
    }

    /// Whether `kind` has been listed completely at least once.
    pub fn listed(&self, kind: &str) -> bool {
        self.listed.contains(kind)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter()
    }

    /// One config generation from every object's good version.
    pub fn build(&self, scope: &Scope) -> Result<WaypointConfig, String> {
        let docs: Vec<(String, String)> = self
            .entries
            .iter()
            .filter_map(|(k, e)| {
                let good = scoped(e.good.as_ref()?, scope)?;
                Some((k.to_string(), serde_yaml::to_string(&good).ok()?))
            })
            .collect();
        let refs: Vec<(&Path, &str)> = docs
            .iter()
            .map(|(k, t)| (Path::new(k.as_str()), t.as_str()))
            .collect();
        parse_documents(&refs, &scope.root_namespace).map_err(|e| describe(None, e))
    }
}

/// Converts `obj` alone, as the whole config would.
fn check(key: &Key, obj: &Value, scope: &Scope) -> Result<(), String> {
    let Some(obj) = scoped(obj, scope) else {
        return Ok(());
    };
    let text = serde_yaml::to_string(&obj).map_err(|e| format!("{key}: {e}"))?;
    let origin = key.to_string();
    parse_documents(&[(Path::new(&origin), &text)], &scope.root_namespace)
        .map(|_| ())
        .map_err(|e| describe(Some(key), e))
}

/// The error with the object named once (the conversion names it for some errors only).
fn describe(key: Option<&Key>, e: LoadError) -> String {
    match (key, e) {
        (Some(k), LoadError::Object { msg, .. }) => {
            let named = k.to_string();
            if msg.starts_with(&named) {
                msg
            } else {
                format!("{named}: {msg}")
            }
        }
        (None, LoadError::Object { path, msg, .. }) => {
            let named = path.display().to_string();
            if msg.starts_with(&named) {
                msg
            } else {
                format!("{named}: {msg}")
            }
        }
        (_, e) => e.to_string(),
    }
}

/// The object as it applies to this waypoint: an AuthorizationPolicy keeps only the Gateway
/// targetRefs that name this waypoint's Gateway (none left and nothing else: not ours).
fn scoped(obj: &Value, scope: &Scope) -> Option<Value> {
    if obj["kind"] != "AuthorizationPolicy" {
        return Some(obj.clone());
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let (gw_ns, gw_name) = &scope.gateway;
    let ours = |t: &Value| t["kind"] != "Gateway" || (ns == gw_ns && t["name"] == gw_name.as_str());
    let mut obj = obj.clone();
    let spec = obj.get_mut("spec")?.as_object_mut()?;
    let mut removed = false;
    if let Some(refs) = spec.get_mut("targetRefs").and_then(Value::as_array_mut) {
        let before = refs.len();
        refs.retain(ours);
        removed = refs.len() != before;
    }
    if spec
        .get("targetRef")
        .is_some_and(|t| t.is_object() && !ours(t))
    {
        spec.remove("targetRef");
        removed = true;
    }
    let left = spec
        .get("targetRefs")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty())
        || spec.contains_key("targetRef");
    if removed && !left {
        return None;
    }
    Some(obj)
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
