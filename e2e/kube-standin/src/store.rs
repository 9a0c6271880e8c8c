//! The in-memory object store: one global resourceVersion counter, a bounded history of changes
//! for watches to resume from, and a broadcast fan-out to live watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::clock;
use crate::patch::{self, PatchKind};
use crate::resource::Resource;
use crate::status::ApiError;

/// Object identity: namespace is "" for cluster-scoped resources.
type Key = (Resource, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change. `old` lets a selector-filtered watch turn "stopped matching" into
/// DELETED and "started matching" into ADDED, as the real watch cache does.
#[derive(Debug)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: Resource,
    pub ty: EventType,
    pub old: Option<Value>,
    pub new: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Broadcast {
    Change(Arc<Change>),
    /// Ends every open watch, as an API server restart would.
    CloseAll,
}

/// Where a watch starts.
pub(crate) enum WatchFrom {
    /// No resourceVersion or "0": synthetic ADDED events for the current state, then changes.
    Now,
    /// Changes strictly after this resourceVersion.
    After(u64),
}

pub(crate) struct WatchStart {
    pub initial: Vec<Value>,
    pub replay: Vec<Arc<Change>>,
    pub rx: broadcast::Receiver<Broadcast>,
    pub rv: u64,
}

/// How a write treats the `status` stanza.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusMode {
    /// The main resource over HTTP: status is server-owned and left as it was.
    Keep,
    /// The `/status` subresource: only status changes.
    Only,
    /// In-process helpers: take the whole object as given.
    All,
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Watches asking to resume from below this have lost events: they get 410 Gone.
    oldest_resumable: u64,
}

pub(crate) struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Broadcast>,
    history_limit: usize,
}

fn key_of(resource: Resource, ns: Option<&str>, name: &str) -> Key {
    let ns = if resource.namespaced() {
        ns.unwrap_or("")
    } else {
        ""
    };
    (resource, ns.to_string(), name.to_string())
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Store {
            inner: Mutex::new(Inner {
                // Real clusters never hand out small numbers; starting high flushes out clients
                // that compare resourceVersions as anything but opaque strings.
                rv: 1000,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest_resumable: 1000,
            }),
            tx,
            history_limit: history_limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not wedge the server for the remaining tests.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Commits a change under the lock so that history order, broadcast order and
    /// resourceVersion order are the same.
    fn commit(
        &self,
        inner: &mut Inner,
        resource: Resource,
        ty: EventType,
        old: Option<Value>,
        new: Value,
    ) {
        let change = Arc::new(Change {
            rv: inner.rv,
            resource,
            ty,
            old,
            new,
        });
        inner.history.push_back(change.clone());
        while inner.history.len() > self.history_limit {
            if let Some(dropped) = inner.history.pop_front() {
                inner.oldest_resumable = dropped.rv;
            }
        }
        let _ = self.tx.send(Broadcast::Change(change));
    }

    pub(crate) fn get(&self, resource: Resource, ns: Option<&str>, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&key_of(resource, ns, name))
            .cloned()
    }

    /// Objects of `resource` (in `ns` if given) passing `filter`, and the list resourceVersion.
    pub(crate) fn list(
        &self,
        resource: Resource,
        ns: Option<&str>,
        filter: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((r, n, _), _)| *r == resource && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
            .filter(|v| filter(v))
            .cloned()
            .collect();
        (items, inner.rv)
    }

    pub(crate) fn create(
        &self,
        resource: Resource,
        ns: Option<&str>,
        mut obj: Value,
        mode: StatusMode,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(kind) = obj.get("kind").and_then(Value::as_str) {
            if kind != resource.kind() {
                return Err(ApiError::bad_request(format!(
                    "the kind of the provided object ({kind}) does not match {}",
                    resource.kind()
                )));
            }
        }
        let mut inner = self.lock();
        let meta = obj
            .as_object_mut()
            .unwrap()
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !meta.is_object() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", clock::name_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    resource,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        };
        validate_name(resource, &name)?;
        let ns = if resource.namespaced() {
            let body_ns = meta_str(&obj, "namespace").filter(|n| !n.is_empty());
            let ns = match (ns, body_ns) {
                (Some(p), Some(b)) if p != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace \
                         sent on the request",
                    ))
                }
                (Some(p), _) => p.to_string(),
                (None, Some(b)) => b.to_string(),
                (None, None) => "default".to_string(),
            };
            if !inner
                .objects
                .contains_key(&key_of(Resource::Namespace, None, &ns))
            {
                return Err(ApiError::not_found(Resource::Namespace, &ns));
            }
            Some(ns)
        } else {
            None
        };
        let key = key_of(resource, ns.as_deref(), &name);
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        inner.rv += 1;
        let map = obj.as_object_mut().unwrap();
        map.insert("kind".into(), resource.kind().into());
        map.insert("apiVersion".into(), "v1".into());
        let meta = map["metadata"].as_object_mut().unwrap();
        meta.insert("name".into(), name.clone().into());
        if let Some(ns) = &ns {
            meta.insert("namespace".into(), ns.clone().into());
        }
        meta.insert("uid".into(), clock::uuid().into());
        meta.insert("resourceVersion".into(), inner.rv.to_string().into());
        meta.insert(
            "creationTimestamp".into(),
            clock::rfc3339(clock::now_unix()).into(),
        );
        default_fields(resource, &name, &mut obj, mode);
        inner.objects.insert(key, obj.clone());
        self.commit(&mut inner, resource, EventType::Added, None, obj.clone());
        Ok(obj)
    }

    /// PUT semantics: a stale `metadata.resourceVersion` in `obj` is a 409 Conflict.
    pub(crate) fn update(
        &self,
        resource: Resource,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        mode: StatusMode,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = key_of(resource, ns, name);
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        if let Some(body_name) = meta_str(&obj, "name") {
            if body_name != name {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
        }
        self.replace(&mut inner, key, current, obj, mode)
    }

    pub(crate) fn patch(
        &self,
        resource: Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &Value,
        mode: StatusMode,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = key_of(resource, ns, name);
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let mut patched = patch::apply(kind, &current, body).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the server rejected our request: {e}"),
            )
        })?;
        // A patch only preconditions on resourceVersion when it names one itself.
        let wants_rv = match kind {
            PatchKind::Json => false,
            _ => body.pointer("/metadata/resourceVersion").is_some(),
        };
        if !wants_rv {
            if let Some(m) = patched.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
        }
        self.replace(&mut inner, key, current, patched, mode)
    }

    fn replace(
        &self,
        inner: &mut Inner,
        key: Key,
        current: Value,
        mut obj: Value,
        mode: StatusMode,
    ) -> Result<Value, ApiError> {
        let (resource, _, name) = &key;
        if !obj.is_object() || !obj.get("metadata").is_some_and(Value::is_object) {
            return Err(ApiError::bad_request(
                "the body must be an object with metadata",
            ));
        }
        let current_rv = meta_str(&current, "resourceVersion").unwrap_or("");
        match meta_str(&obj, "resourceVersion") {
            Some(rv) if !rv.is_empty() && rv != current_rv => {
                return Err(ApiError::conflict(*resource, name));
            }
            _ => {}
        }
        match mode {
            StatusMode::Keep => match current.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    obj.as_object_mut().unwrap().remove("status");
                }
            },
            StatusMode::Only => {
                let status = obj.get("status").cloned();
                obj = current.clone();
                match status {
                    Some(s) => obj["status"] = s,
                    None => {
                        obj.as_object_mut().unwrap().remove("status");
                    }
                }
            }
            StatusMode::All => {}
        }
        // Identity and bookkeeping fields are the server's, whatever the client sent.
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            match current["metadata"].get(field) {
                Some(v) => obj["metadata"][field] = v.clone(),
                None => {
                    obj["metadata"].as_object_mut().unwrap().remove(field);
                }
            }
        }
        obj["kind"] = resource.kind().into();
        obj["apiVersion"] = "v1".into();
        if resource == &Resource::Namespace {
            // The server keeps this label in step with the name; clients cannot drop it.
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name.clone().into();
        }
        let mut compare = obj.clone();
        compare["metadata"]["resourceVersion"] = current_rv.into();
        if compare == current {
            // A no-op write changes nothing and emits no event, like the real server.
            return Ok(current);
        }
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = inner.rv.to_string().into();
        inner.objects.insert(key.clone(), obj.clone());
        self.commit(
            inner,
            key.0,
            EventType::Modified,
            Some(current),
            obj.clone(),
        );
        Ok(obj)
    }

    /// Removes the object at once (no graceful termination); a namespace takes its pods along.
    pub(crate) fn delete(
        &self,
        resource: Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = key_of(resource, ns, name);
        if !inner.objects.contains_key(&key) {
            return Err(ApiError::not_found(resource, name));
        }
        if resource == Resource::Namespace {
            let pods: Vec<Key> = inner
                .objects
                .keys()
                .filter(|(r, n, _)| *r == Resource::Pod && n == name)
                .cloned()
                .collect();
            for pod in pods {
                self.remove(&mut inner, pod);
            }
        }
        Ok(self.remove(&mut inner, key))
    }

    fn remove(&self, inner: &mut Inner, key: Key) -> Value {
        let old = inner.objects.remove(&key).expect("caller checked presence");
        inner.rv += 1;
        let mut gone = old.clone();
        gone["metadata"]["resourceVersion"] = inner.rv.to_string().into();
        self.commit(inner, key.0, EventType::Deleted, Some(old), gone.clone());
        gone
    }

    /// Subscribes a watch, atomically with taking its starting point.
    pub(crate) fn watch(
        &self,
        resource: Resource,
        ns: Option<&str>,
        from: WatchFrom,
    ) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let in_scope = |r: Resource, obj: &Value| {
            r == resource && ns.is_none_or(|ns| meta_str(obj, "namespace") == Some(ns))
        };
        match from {
            WatchFrom::Now => Ok(WatchStart {
                initial: inner
                    .objects
                    .iter()
                    .filter(|((r, _, _), v)| in_scope(*r, v))
                    .map(|(_, v)| v.clone())
                    .collect(),
                replay: Vec::new(),
                rx,
                rv: inner.rv,
            }),
            WatchFrom::After(rv) if rv < inner.oldest_resumable => Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                inner.oldest_resumable
            ))),
            WatchFrom::After(rv) => Ok(WatchStart {
                initial: Vec::new(),
                replay: inner
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && in_scope(c.resource, &c.new))
                    .cloned()
                    .collect(),
                rx,
                rv: inner.rv,
            }),
        }
    }

    /// Forgets all retained history and ends open watches: clients that resume from any
    /// resourceVersion they already hold get 410 Gone and must re-list.
    pub(crate) fn expire_history(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest_resumable = inner.rv + 1;
        let _ = self.tx.send(Broadcast::CloseAll);
    }

    /// Open watch streams (each holds one subscription).
    pub(crate) fn active_watches(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Ends open watches without losing history: clients resume where they were.
    pub(crate) fn close_watches(&self) {
        let _inner = self.lock();
        let _ = self.tx.send(Broadcast::CloseAll);
    }
}

fn validate_name(resource: Resource, name: &str) -> Result<(), ApiError> {
    // RFC 1123 label for namespaces, subdomain for pods.
    let max = if resource == Resource::Namespace {
        63
    } else {
        253
    };
    let ok = name.len() <= max
        && name.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || c == '-'
                || (c == '.' && resource == Resource::Pod)
        })
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            resource,
            name,
            format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 {} must consist \
                 of lower case alphanumeric characters or '-'",
                if resource == Resource::Namespace {
                    "label"
                } else {
                    "subdomain"
                }
            ),
        ))
    }
}

/// Fields the real server fills in on create.
fn default_fields(resource: Resource, name: &str, obj: &mut Value, mode: StatusMode) {
    match resource {
        Resource::Namespace => {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name.into();
            if obj.get("spec").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            obj["status"] = json!({"phase": "Active"});
        }
        Resource::Pod => {
            if mode != StatusMode::All || obj.get("status").is_none() {
                obj["status"] = json!({"phase": "Pending"});
            }
            if obj.get("spec").is_none() {
                obj["spec"] = json!({});
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_ns(ns: &str) -> Store {
        let s = Store::new(100);
        s.create(
            Resource::Namespace,
            None,
            json!({"metadata": {"name": ns}}),
            StatusMode::Keep,
        )
        .unwrap();
        s
    }

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"containers": []}, "status": {"phase": "Running"}})
    }

    #[test]
    fn create_fills_server_fields() {
        let s = store_with_ns("demo");
        let ns = s.get(Resource::Namespace, None, "demo").unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "demo"
        );
        assert_eq!(ns["status"]["phase"], "Active");
        let p = s
            .create(Resource::Pod, Some("demo"), pod("a"), StatusMode::Keep)
            .unwrap();
        assert_eq!(p["kind"], "Pod");
        assert_eq!(p["metadata"]["namespace"], "demo");
        // Over HTTP the server owns status; in-process helpers may set it.
        assert_eq!(p["status"]["phase"], "Pending");
        let q = s
            .create(Resource::Pod, Some("demo"), pod("b"), StatusMode::All)
            .unwrap();
        assert_eq!(q["status"]["phase"], "Running");
        let g = s
            .create(
                Resource::Pod,
                Some("demo"),
                json!({"metadata": {"generateName": "web-"}}),
                StatusMode::Keep,
            )
            .unwrap();
        let name = g["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    }

    #[test]
    fn create_rejects_bad_input() {
        let s = store_with_ns("demo");
        let code = |r: Result<Value, ApiError>| r.unwrap_err().code;
        assert_eq!(
            code(s.create(Resource::Pod, Some("nope"), pod("a"), StatusMode::Keep)),
            404
        );
        assert_eq!(
            code(s.create(
                Resource::Pod,
                Some("demo"),
                pod("Bad_Name"),
                StatusMode::Keep
            )),
            422
        );
        let mut other_ns = pod("a");
        other_ns["metadata"]["namespace"] = "default".into();
        assert_eq!(
            code(s.create(Resource::Pod, Some("demo"), other_ns, StatusMode::Keep)),
            400
        );
        let mut wrong_kind = pod("a");
        wrong_kind["kind"] = "Service".into();
        assert_eq!(
            code(s.create(Resource::Pod, Some("demo"), wrong_kind, StatusMode::Keep)),
            400
        );
    }

    #[test]
    fn noop_writes_do_not_bump_resource_version() {
        let s = store_with_ns("demo");
        s.create(Resource::Pod, Some("demo"), pod("a"), StatusMode::Keep)
            .unwrap();
        let before = s.resource_version();
        let patch = json!({"metadata": {"labels": null}});
        s.patch(
            Resource::Pod,
            Some("demo"),
            "a",
            PatchKind::Merge,
            &patch,
            StatusMode::Keep,
        )
        .unwrap();
        assert_eq!(s.resource_version(), before);
        let patch = json!({"metadata": {"labels": {"x": "1"}}});
        s.patch(
            Resource::Pod,
            Some("demo"),
            "a",
            PatchKind::Merge,
            &patch,
            StatusMode::Keep,
        )
        .unwrap();
        assert_eq!(s.resource_version(), before + 1);
    }

    #[test]
    fn namespace_label_cannot_be_removed() {
        let s = store_with_ns("demo");
        let patch = json!({"metadata": {"labels": null}});
        let ns = s
            .patch(
                Resource::Namespace,
                None,
                "demo",
                PatchKind::Merge,
                &patch,
                StatusMode::Keep,
            )
            .unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "demo"
        );
    }

    #[test]
    fn deleting_a_namespace_deletes_its_pods_first() {
        let s = store_with_ns("demo");
        for p in ["a", "b"] {
            s.create(Resource::Pod, Some("demo"), pod(p), StatusMode::Keep)
                .unwrap();
        }
        let from = s.resource_version();
        s.delete(Resource::Namespace, None, "demo").unwrap();
        assert!(s.list(Resource::Pod, None, |_| true).0.is_empty());
        let start = s
            .watch(Resource::Pod, None, WatchFrom::After(from))
            .unwrap();
        let deleted: Vec<_> = start
            .replay
            .iter()
            .map(|c| {
                (
                    c.ty,
                    c.new["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            deleted,
            [
                (EventType::Deleted, "a".into()),
                (EventType::Deleted, "b".into())
            ]
        );
    }

    #[test]
    fn history_is_bounded() {
        let s = Store::new(2);
        let start = s.resource_version();
        for ns in ["a", "b", "c"] {
            s.create(
                Resource::Namespace,
                None,
                json!({"metadata": {"name": ns}}),
                StatusMode::Keep,
            )
            .unwrap();
        }
        assert_eq!(
            s.watch(Resource::Namespace, None, WatchFrom::After(start))
                .err()
                .map(|e| e.code),
            Some(410)
        );
        let ok = s
            .watch(Resource::Namespace, None, WatchFrom::After(start + 1))
            .unwrap();
        assert_eq!(ok.replay.len(), 2);
    }
}
