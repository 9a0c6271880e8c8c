//! Discovery documents: what clients fetch to learn which resources exist and how to call them.
//!
//! Only the legacy (unaggregated) JSON forms are served. kubectl asks for the aggregated
//! `apidiscovery.k8s.io` form first but lists plain `application/json` as an alternative and
//! falls back when the response's Content-Type is not the aggregated one.

use serde_json::{json, Value};

/// The Kubernetes minor version the stand-in reports. The resource shapes served are stable
/// across 1.27–1.33, so the exact number only affects kubectl's version-skew warning.
pub(crate) const MINOR: &str = "32";

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": MINOR,
        "gitVersion": format!("v1.{MINOR}.0-kube-standin"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub(crate) fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
}

pub(crate) fn core_v1_resources() -> Value {
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    let sub_verbs = json!(["get", "patch", "update"]);
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false,
             "kind": "Namespace", "verbs": verbs, "shortNames": ["ns"]},
            {"name": "namespaces/status", "singularName": "", "namespaced": false,
             "kind": "Namespace", "verbs": sub_verbs},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": verbs, "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod",
             "verbs": sub_verbs},
        ],
    })
}
