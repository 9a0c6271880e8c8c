//! The smallest OpenAPI v3 documents that let kubectl use server-side field validation.
//!
//! `kubectl create -f`/`apply` validate with `--validate=strict` by default: kubectl asks
//! `/openapi/v3` whether the server's PATCH operation for the object's group/version/kind
//! takes the `fieldValidation` parameter. If it does, kubectl skips client-side schema
//! validation (which would need the full `/openapi/v2` schema) and passes
//! `fieldValidation=Strict` to the server, which this stand-in accepts and ignores.

use serde_json::{json, Value};

/// Bumped whenever [`core_v1`] changes, so kubectl's on-disk cache keyed by it is refreshed.
const HASH: &str = "kube-standin-1";

pub(crate) fn root() -> Value {
    json!({"paths": {"api/v1": {"serverRelativeURL": format!("/openapi/v3/api/v1?hash={HASH}")}}})
}

fn patch_path(kind: &str) -> Value {
    json!({
        "patch": {
            "operationId": format!("patchCoreV1{kind}"),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind},
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
        }
    })
}

pub(crate) fn core_v1() -> Value {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1"},
        "paths": {
            "/api/v1/namespaces/{name}": patch_path("Namespace"),
            "/api/v1/namespaces/{namespace}/pods/{name}": patch_path("Pod"),
        },
        "components": {"schemas": {}},
    })
}
