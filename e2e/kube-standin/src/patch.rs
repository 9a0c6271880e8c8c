//! PATCH bodies: JSON merge patch (RFC 7386), a strategic-merge subset, and JSON patch (RFC 6902).

use serde_json::Value;

/// The patch flavours selected by the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Strategic,
    Json,
}

impl PatchKind {
    pub(crate) fn from_content_type(ct: &str) -> Option<Self> {
        let media = ct.split(';').next().unwrap_or("").trim();
        match media {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/json-patch+json" => Some(PatchKind::Json),
            _ => None,
        }
    }
}

pub(crate) fn apply(kind: PatchKind, target: &Value, patch: &Value) -> Result<Value, String> {
    match kind {
        PatchKind::Merge => Ok(merge(target, patch, false)),
        PatchKind::Strategic => Ok(merge(target, patch, true)),
        PatchKind::Json => json_patch(target, patch),
    }
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
///
/// With `strategic`, `$`-prefixed directive keys (`$patch`, `$setElementOrder/...`,
/// `$retainKeys`) are dropped rather than stored. Lists are replaced whole in both modes: the
/// merge-by-key list semantics of strategic patches matter for containers, not for the labels and
/// annotations the mesh touches.
pub(crate) fn merge(target: &Value, patch: &Value, strategic: bool) -> Value {
    let Value::Object(p) = patch else {
        return strip_directives(patch, strategic);
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => serde_json::Map::new(),
    };
    for (k, v) in p {
        if strategic && k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge(out.get(k).unwrap_or(&Value::Null), v, strategic);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// A patch value landing where nothing was must not carry `null`s or directives into the object.
fn strip_directives(v: &Value, strategic: bool) -> Value {
    match v {
        Value::Object(_) => merge(&Value::Null, v, strategic),
        other => other.clone(),
    }
}

fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch
        .as_array()
        .ok_or("json patch must be an array of operations")?;
    let mut doc = target.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation without \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation without \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{name} without \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{name} without \"from\""))
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| format!("copy: no value at {:?}", from().unwrap_or("")))?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown json patch op {other:?}")),
        }
    }
    Ok(doc)
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a JSON pointer into (parent pointer, last reference token).
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    if !path.starts_with('/') {
        return Err(format!("invalid json pointer {path:?}"));
    }
    let idx = path.rfind('/').unwrap_or(0);
    Ok((&path[..idx], unescape(&path[idx + 1..])))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| format!("bad array index in {path:?}"))?
            };
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("add: parent of {path:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("remove: no value at {path:?}");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(missing),
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_adds_replaces_and_deletes() {
        let target = json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}},
                            "spec": {"containers": [{"name": "c"}]}});
        let patch = json!({"metadata": {"labels": {"a": null, "b": "3", "c": "4"}}});
        let out = merge(&target, &patch, false);
        assert_eq!(out["metadata"]["labels"], json!({"b": "3", "c": "4"}));
        assert_eq!(out["metadata"]["name"], "p");
        assert_eq!(out["spec"], target["spec"]);
    }

    #[test]
    fn merge_creates_missing_maps_without_nulls() {
        let out = merge(
            &json!({"metadata": {"name": "p"}}),
            &json!({"metadata": {"annotations": {"x": "y", "gone": null}}}),
            false,
        );
        assert_eq!(out["metadata"]["annotations"], json!({"x": "y"}));
    }

    #[test]
    fn merge_replaces_lists_and_scalars() {
        let out = merge(
            &json!({"a": [1, 2], "b": {"c": 1}}),
            &json!({"a": [3], "b": "s"}),
            false,
        );
        assert_eq!(out, json!({"a": [3], "b": "s"}));
        assert_eq!(merge(&json!({"a": 1}), &json!(null), false), json!(null));
    }

    #[test]
    fn strategic_drops_directives() {
        let out = merge(
            &json!({"metadata": {"labels": {"a": "1"}}}),
            &json!({"$setElementOrder/x": [], "metadata": {"labels": {"a": null, "b": "2", "$patch": "merge"}}}),
            true,
        );
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2"}}}));
    }

    #[test]
    fn json_patch_ops() {
        let target = json!({"metadata": {"labels": {"a/b": "1"}, "finalizers": ["x"]}});
        let patch = json!([
            {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
            {"op": "add", "path": "/metadata/annotations", "value": {}},
            {"op": "add", "path": "/metadata/annotations/k", "value": "v"},
            {"op": "remove", "path": "/metadata/labels/a~1b"},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "y"},
            {"op": "replace", "path": "/metadata/finalizers/0", "value": "z"},
            {"op": "copy", "from": "/metadata/annotations/k", "path": "/metadata/labels/k"},
            {"op": "move", "from": "/metadata/labels/k", "path": "/metadata/labels/m"},
        ]);
        let out = json_patch(&target, &patch).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"m": "v"}, "annotations": {"k": "v"}, "finalizers": ["z", "y"]}})
        );
        assert!(json_patch(&target, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(
            &target,
            &json!([{"op": "test", "path": "/metadata/labels/a~1b", "value": "2"}])
        )
        .is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchKind::Strategic)
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml"),
            None
        );
    }
}
