//! Which pods belong in the mesh (DESIGN.md §4, upstream Istio's ambient rules). Pure: the same
//! inputs always give the same answer, so every rule is a table test.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const AMBIENT: &str = "ambient";
pub const NONE: &str = "none";
/// Where the agent records a pod's state: [`ENABLED`] once captured, [`PENDING`] while waiting
/// for ztunnel.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
pub const ENABLED: &str = "enabled";
pub const PENDING: &str = "pending";
/// Set by Istio's sidecar injector: such a pod has its own proxy and must not be captured twice.
const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Mesh,
    /// Not for the mesh (now); the reason is for logs.
    Skip(&'static str),
}

/// Whether `pod` (scheduled on `node`) should be captured, given its namespace's labels (`None`
/// when the namespace is unknown, e.g. already deleted).
pub fn select(pod: &Pod, ns_labels: Option<&BTreeMap<String, String>>, node: &str) -> Selection {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let pod_mode = label(meta.labels.as_ref());
    if pod_mode == Some(NONE) {
        return Selection::Skip("pod opted out (dataplane-mode=none)");
    }
    if pod_mode != Some(AMBIENT) && label(ns_labels) != Some(AMBIENT) {
        return Selection::Skip("neither the pod nor its namespace is labelled ambient");
    }
    if spec.and_then(|s| s.node_name.as_deref()) != Some(node) {
        return Selection::Skip("not on this node");
    }
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Selection::Skip("host network");
    }
    if meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SIDECAR_STATUS_ANNOTATION))
    {
        return Selection::Skip("has an Istio sidecar");
    }
    if meta.deletion_timestamp.is_some() {
        return Selection::Skip("terminating");
    }
    if is_finished(pod) {
        return Selection::Skip("finished");
    }
    Selection::Mesh
}

/// Phase Succeeded or Failed: the sandbox is gone or going, and its IP may be reused.
pub fn is_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

fn label(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    labels
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
        .map(String::as_str)
}

/// The pod's `ambient.istio.io/redirection` annotation, if any.
pub fn redirection_annotation(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(REDIRECTION_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
#[path = "selection_tests.rs"]
mod tests;
