//! Server-side printing: the `meta.k8s.io/v1` Table kubectl asks `get` to return, with the
//! columns the real server prints for namespaces and pods.

use serde_json::{json, Value};

use crate::clock;
use crate::resource::Resource;

/// How much of each object a row carries, per the `includeObject` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub(crate) fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

pub(crate) const CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

fn column(name: &str, ty: &str, format: &str, priority: u8, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn columns(resource: Resource) -> Value {
    let name = column(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace.",
    );
    let age = column(
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match resource {
        Resource::Namespace => json!([
            name,
            column("Status", "string", "", 0, "The status of the namespace"),
            age
        ]),
        Resource::Pod => json!([
            name,
            column("Ready", "string", "", 0, "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "string", "", 0, "The aggregate status of the containers in this pod."),
            column("Restarts", "string", "", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            column("IP", "string", "", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            column("Node", "string", "", 1, "NodeName is a request to schedule this pod onto a specific node."),
            column("Nominated Node", "string", "", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            column("Readiness Gates", "string", "", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ]),
    }
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn cells(resource: Resource, obj: &Value, now: i64) -> Value {
    let name = str_at(obj, "/metadata/name").unwrap_or("");
    let age = str_at(obj, "/metadata/creationTimestamp")
        .and_then(clock::parse_rfc3339)
        .map(|t| clock::human_age(now - t))
        .unwrap_or_else(|| "<unknown>".into());
    let terminating = obj.pointer("/metadata/deletionTimestamp").is_some();
    match resource {
        Resource::Namespace => {
            let phase = str_at(obj, "/status/phase").unwrap_or("Active");
            json!([name, phase, age])
        }
        Resource::Pod => {
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
                .sum();
            let status = if terminating {
                "Terminating"
            } else {
                str_at(obj, "/status/reason")
                    .or_else(|| str_at(obj, "/status/phase"))
                    .unwrap_or("Pending")
            };
            let none = "<none>";
            json!([
                name,
                format!("{ready}/{total}"),
                status,
                restarts,
                age,
                str_at(obj, "/status/podIP").unwrap_or(none),
                str_at(obj, "/spec/nodeName").unwrap_or(none),
                str_at(obj, "/status/nominatedNodeName").unwrap_or(none),
                none,
            ])
        }
    }
}

fn row(resource: Resource, obj: &Value, include: IncludeObject, now: i64) -> Value {
    let mut row = json!({"cells": cells(resource, obj, now)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Object => row["object"] = obj.clone(),
        // kubectl reads the namespace for `-A` and the name for `-o name` from here.
        IncludeObject::Metadata => row["object"] = crate::render::partial(obj),
    }
    row
}

pub(crate) fn table(
    resource: Resource,
    objs: &[Value],
    include: IncludeObject,
    resource_version: Option<u64>,
) -> Value {
    let now = clock::now_unix();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = rv.to_string().into();
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(resource),
        "rows": objs.iter().map(|o| row(resource, o, include, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_row() {
        let pod = json!({"metadata": {"name": "web", "namespace": "demo",
                                      "creationTimestamp": clock::rfc3339(clock::now_unix() - 30)},
                         "spec": {"nodeName": "node-a", "containers": [{"name": "a"}, {"name": "b"}]},
                         "status": {"phase": "Running", "podIP": "10.0.0.5",
                                    "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let t = table(Resource::Pod, &[pod], IncludeObject::Metadata, Some(7));
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], 3);
        assert!(cells[4].as_str().unwrap().ends_with('s'));
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(cells[6], "node-a");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "demo");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
    }
}
