//! Recording a pod's capture state in its `ambient.istio.io/redirection` annotation.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;

use super::selection::REDIRECTION_ANNOTATION;

/// Sets the annotation to `value`, or removes it with `None` (a merge patch with null). A pod
/// that no longer exists is not an error: there is nothing left to annotate.
pub async fn set(client: &Client, ns: &str, name: &str, value: Option<&str>) -> kube::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = json!({"metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}});
    match pods
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
