//! Request URLs: which resource a path addresses, and its decoded query parameters.

use std::collections::HashMap;

use crate::resource::Resource;

pub(crate) fn decode_component(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

pub(crate) fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("1" | "true" | "True"))
}

/// A request path resolved to the resource it addresses.
pub(crate) struct Target {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
}

pub(crate) fn route(path: &str) -> Option<Target> {
    let segs: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(decode_component)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let target = |resource, namespace: Option<&str>, name: Option<&str>, status| {
        Some(Target {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            status,
        })
    };
    match segs.as_slice() {
        ["api", "v1", plural] => target(Resource::from_plural(plural)?, None, None, false),
        ["api", "v1", "namespaces", name] => target(Resource::Namespace, None, Some(name), false),
        ["api", "v1", "namespaces", name, "status"] => {
            target(Resource::Namespace, None, Some(name), true)
        }
        ["api", "v1", "namespaces", ns, "pods"] => target(Resource::Pod, Some(ns), None, false),
        ["api", "v1", "namespaces", ns, "pods", name] => {
            target(Resource::Pod, Some(ns), Some(name), false)
        }
        ["api", "v1", "namespaces", ns, "pods", name, "status"] => {
            target(Resource::Pod, Some(ns), Some(name), true)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "labelSelector=istio.io%2Fdataplane-mode%3Dambient&fieldSelector=spec.nodeName%3Dnode-a&watch=1",
        ));
        assert_eq!(q["labelSelector"], "istio.io/dataplane-mode=ambient");
        assert_eq!(q["fieldSelector"], "spec.nodeName=node-a");
        assert!(truthy(&q, "watch"));
        assert_eq!(decode_component("a%2"), "a%2");
        assert_eq!(decode_component("in+(a%2Cb)"), "in (a,b)");
    }

    #[test]
    fn routes() {
        let t = route("/api/v1/namespaces/demo/pods/web/status").unwrap();
        assert_eq!(
            (
                t.resource,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.status
            ),
            (Resource::Pod, Some("demo"), Some("web"), true)
        );
        let t = route("/api/v1/pods").unwrap();
        assert_eq!(
            (t.resource, t.namespace, t.name),
            (Resource::Pod, None, None)
        );
        let t = route("/api/v1/namespaces/").unwrap();
        assert_eq!((t.resource, t.name), (Resource::Namespace, None));
        assert!(route("/api/v1/services").is_none());
        assert!(route("/api/v1/namespaces/demo/services/x").is_none());
    }
}
