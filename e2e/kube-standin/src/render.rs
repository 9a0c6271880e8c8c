//! Content negotiation: the same objects as full JSON, as a server-side printed Table
//! (kubectl `get`), or as PartialObjectMetadata (`kube`'s `list_metadata`/`metadata_watcher`,
//! client-go's metadata informers).

use serde_json::{json, Value};

use crate::resource::Resource;
use crate::table::{self, IncludeObject};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Render {
    Full,
    Table(IncludeObject),
    Metadata,
}

/// Whether an alternative in the Accept header asks for `as=<kind>` in meta.k8s.io.
fn accepts_as(accept: &str, kind: &str) -> bool {
    let want = format!("as={kind}");
    accept.split(',').any(|alt| {
        let params: Vec<&str> = alt.split(';').map(str::trim).collect();
        params.contains(&want.as_str()) && params.contains(&"g=meta.k8s.io")
    })
}

impl Render {
    pub(crate) fn negotiate(accept: &str, include_object: Option<&str>) -> Self {
        if accepts_as(accept, "Table") {
            Render::Table(IncludeObject::parse(include_object))
        } else if accepts_as(accept, "PartialObjectMetadata")
            || accepts_as(accept, "PartialObjectMetadataList")
        {
            Render::Metadata
        } else {
            Render::Full
        }
    }

    pub(crate) fn content_type(self, list: bool) -> &'static str {
        match (self, list) {
            (Render::Full, _) => "application/json",
            (Render::Table(_), _) => table::CONTENT_TYPE,
            (Render::Metadata, false) => {
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
            }
            (Render::Metadata, true) => {
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            }
        }
    }

    /// One object, as a GET returns it or a watch event carries it.
    pub(crate) fn object(self, resource: Resource, obj: &Value) -> Value {
        match self {
            Render::Full => obj.clone(),
            Render::Table(include) => {
                table::table(resource, std::slice::from_ref(obj), include, None)
            }
            Render::Metadata => partial(obj),
        }
    }

    /// A list response; `metadata` carries resourceVersion and paging fields.
    pub(crate) fn list(self, resource: Resource, items: &[Value], metadata: Value) -> Value {
        match self {
            Render::Full => json!({
                "kind": resource.list_kind(),
                "apiVersion": "v1",
                "metadata": metadata,
                "items": items,
            }),
            Render::Table(include) => {
                let mut t = table::table(resource, items, include, None);
                t["metadata"] = metadata;
                t
            }
            Render::Metadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
                "items": items.iter().map(partial).collect::<Vec<_>>(),
            }),
        }
    }
}

pub(crate) fn partial(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            Render::negotiate(kubectl_get, None),
            Render::Table(IncludeObject::Metadata)
        );
        assert_eq!(
            Render::negotiate(kubectl_get, Some("Object")),
            Render::Table(IncludeObject::Object)
        );
        assert_eq!(
            Render::negotiate(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                None
            ),
            Render::Metadata
        );
        assert_eq!(
            Render::negotiate("application/json, */*", None),
            Render::Full
        );
        assert_eq!(Render::negotiate("", None), Render::Full);
    }

    #[test]
    fn metadata_lists() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "a"}, "spec": {"x": 1}});
        let l = Render::Metadata.list(Resource::Pod, &[pod], json!({"resourceVersion": "5"}));
        assert_eq!(l["kind"], "PartialObjectMetadataList");
        assert_eq!(l["items"][0]["kind"], "PartialObjectMetadata");
        assert_eq!(l["items"][0]["metadata"]["name"], "a");
        assert!(l["items"][0].get("spec").is_none());
    }
}
