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

/// Not the `...spec.v2@v1.0+protobuf` type kubectl puts in Accept: Go's MIME parser rejects
/// the `@`, and client-go fails the whole response if it cannot parse its Content-Type.
pub(crate) const V2_CONTENT_TYPE: &str = "application/octet-stream";

/// kubectl 1.27/1.28 check the same thing against `/openapi/v2`, which they only accept as
/// gnostic `openapi.v2.Document` protobuf. Field numbers are from gnostic's OpenAPIv2.proto.
pub(crate) fn v2_protobuf() -> Vec<u8> {
    use crate::proto::field;
    let patch_item = |path: &str, kind: &str| {
        let query_param = [
            field(2, b"query"),
            field(4, b"fieldValidation"),
            field(6, b"string"),
        ]
        .concat();
        // ParametersItem.parameter -> Parameter.non_body_parameter -> .query_parameter_sub_schema
        let param = field(1, &field(2, &field(3, &query_param)));
        let gvk_yaml = format!("group: \"\"\nkind: {kind}\nversion: v1\n");
        let extension = [
            field(1, b"x-kubernetes-group-version-kind"),
            field(2, &field(2, gvk_yaml.as_bytes())),
        ]
        .concat();
        let operation = [
            field(5, format!("patchCoreV1{kind}").as_bytes()),
            field(8, &param),
            field(13, &extension),
        ]
        .concat();
        let path_item = field(8, &operation);
        field(
            2,
            &[field(1, path.as_bytes()), field(2, &path_item)].concat(),
        )
    };
    let paths = [
        patch_item("/api/v1/namespaces/{name}", "Namespace"),
        patch_item("/api/v1/namespaces/{namespace}/pods/{name}", "Pod"),
    ]
    .concat();
    let info = [field(1, b"Kubernetes"), field(2, b"v1")].concat();
    [field(1, b"2.0"), field(2, &info), field(8, &paths)].concat()
}
