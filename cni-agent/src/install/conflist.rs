//! Pure edits of a CNI config document: chain our plugin in, or take it out again. Everything
//! else in the document is carried over untouched (serde_json keeps key order).

use serde_json::{Map, Value};

use crate::cni::Version;

/// The `type` that marks our entry; also the binary's name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "meshtunnel-cni";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfError {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("\"plugins\" is not an array")]
    PluginsNotAnArray,
    #[error("neither a conflist (\"plugins\") nor a single plugin config (\"type\")")]
    NotACniConfig,
    #[error("cniVersion {0:?} is not one meshtunnel-cni speaks ({1:?})")]
    UnsupportedVersion(String, [&'static str; 4]),
}

/// The document with `entry` as the last plugin, or `None` when it already is exactly that (so
/// an unchanged file is never rewritten). A single-plugin `.conf` becomes a conflist whose first
/// plugin is the original object, as is.
pub fn with_entry(doc: &Value, entry: &Value) -> Result<Option<Value>, ConfError> {
    let obj = doc.as_object().ok_or(ConfError::NotAnObject)?;
    check_version(obj)?;
    let mut list = match obj.get("plugins") {
        Some(Value::Array(_)) => obj.clone(),
        Some(_) => return Err(ConfError::PluginsNotAnArray),
        None if obj.contains_key("type") => conf_to_list(obj),
        None => return Err(ConfError::NotACniConfig),
    };
    let Some(Value::Array(plugins)) = list.get_mut("plugins") else {
        unreachable!("checked above")
    };
    // Also collapses duplicates and moves a stray entry of ours to the end, where it must run
    // to see every earlier plugin's result.
    plugins.retain(|p| !is_ours(p));
    plugins.push(entry.clone());
    let list = Value::Object(list);
    Ok((&list != doc).then_some(list))
}

/// The document without our entries, or `None` when there were none.
pub fn without_entry(doc: &Value) -> Option<Value> {
    let mut out = doc.clone();
    let Some(Value::Array(plugins)) = out.get_mut("plugins") else {
        return None;
    };
    let before = plugins.len();
    plugins.retain(|p| !is_ours(p));
    (plugins.len() != before).then_some(out)
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn check_version(obj: &Map<String, Value>) -> Result<(), ConfError> {
    // Missing versions are left to the runtime to judge; a version we cannot speak would make
    // every pod on the node fail, so refuse to chain into it.
    match obj.get("cniVersion").and_then(Value::as_str) {
        Some(v) if Version::parse(v).is_none() => Err(ConfError::UnsupportedVersion(
            v.to_string(),
            crate::cni::SUPPORTED_VERSIONS,
        )),
        _ => Ok(()),
    }
}

fn conf_to_list(conf: &Map<String, Value>) -> Map<String, Value> {
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = conf.get(key) {
            list.insert(key.into(), v.clone());
        }
    }
    list.insert(
        "plugins".into(),
        Value::Array(vec![Value::Object(conf.clone())]),
    );
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({"type": PLUGIN_TYPE, "agent_socket": "/run/a.sock"})
    }

    fn calico() -> Value {
        serde_json::from_str(
            r#"{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[
                {"type":"calico","ipam":{"type":"calico-ipam"},"zeta":1,"alpha":2},
                {"type":"portmap","snat":true,"capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn appends_and_preserves_order() {
        let out = with_entry(&calico(), &entry()).unwrap().unwrap();
        let s = out.to_string();
        assert!(s.starts_with(r#"{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[{"type":"calico","ipam":{"type":"calico-ipam"},"zeta":1,"alpha":2},"#), "{s}");
        assert_eq!(out["plugins"][2], entry());
        assert_eq!(out["plugins"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn idempotent() {
        let once = with_entry(&calico(), &entry()).unwrap().unwrap();
        assert_eq!(with_entry(&once, &entry()).unwrap(), None);
    }

    #[test]
    fn changed_settings_replace_our_entry_and_move_it_last() {
        let mut doc = calico();
        doc["plugins"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"type": PLUGIN_TYPE, "agent_socket": "/old"}));
        doc["plugins"].as_array_mut().unwrap().push(entry());
        let out = with_entry(&doc, &entry()).unwrap().unwrap();
        let types: Vec<_> = out["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["calico", "portmap", PLUGIN_TYPE]);
        assert_eq!(out["plugins"][2], entry());
    }

    #[test]
    fn single_conf_becomes_a_list() {
        let conf: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"bridge-net","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.22.0.0/16"}}"#,
        )
        .unwrap();
        let out = with_entry(&conf, &entry()).unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["name"], "bridge-net");
        assert_eq!(out["plugins"][0].to_string(), conf.to_string());
        assert_eq!(out["plugins"][1], entry());
    }

    #[test]
    fn refuses_what_it_cannot_chain_into() {
        assert_eq!(
            with_entry(&json!([]), &entry()),
            Err(ConfError::NotAnObject)
        );
        assert_eq!(
            with_entry(&json!({"plugins": {}}), &entry()),
            Err(ConfError::PluginsNotAnArray)
        );
        assert_eq!(
            with_entry(&json!({"name": "x"}), &entry()),
            Err(ConfError::NotACniConfig)
        );
        assert!(matches!(
            with_entry(&json!({"cniVersion": "0.2.0", "type": "bridge"}), &entry()),
            Err(ConfError::UnsupportedVersion(..))
        ));
    }

    #[test]
    fn removal_restores_the_original_list() {
        let once = with_entry(&calico(), &entry()).unwrap().unwrap();
        assert_eq!(
            without_entry(&once).unwrap().to_string(),
            calico().to_string()
        );
        assert_eq!(without_entry(&calico()), None);
        assert_eq!(without_entry(&json!({"type": "bridge"})), None);
    }
}
