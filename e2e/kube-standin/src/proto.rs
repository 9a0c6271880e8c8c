//! Just enough protobuf: decoding a Namespace body, and encoding small messages.
//!
//! kubectl 1.32+ sends `kubectl create namespace` as `application/vnd.kubernetes.protobuf`
//! (its typed clientset prefers protobuf for built-in kinds, and unlike CBOR there is no JSON
//! fallback on 415). The object has only metadata, so decoding the envelope, ObjectMeta's
//! identity fields, labels, annotations and finalizers covers it; every other field is skipped.

use serde_json::{json, Map, Value};

pub(crate) const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The 4-byte prefix of every Kubernetes protobuf message ("k8s" + version 0).
const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

/// Iterates the (field number, value) pairs of one message.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<(u64, Field<'_>), String>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let mut next = || -> Result<(u64, Field<'_>), String> {
            let tag = varint(&mut buf)?;
            let field = match tag & 7 {
                0 => {
                    varint(&mut buf)?;
                    Field::Varint
                }
                1 | 5 => {
                    let n = if tag & 7 == 1 { 8 } else { 4 };
                    buf = buf.get(n..).ok_or("truncated fixed field")?;
                    Field::Fixed
                }
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).map_err(|_| "length overflow")?;
                    let (v, rest) = (
                        buf.get(..len).ok_or("truncated field")?,
                        &buf[len.min(buf.len())..],
                    );
                    buf = rest;
                    Field::Bytes(v)
                }
                w => return Err(format!("unsupported wire type {w}")),
            };
            Ok((tag >> 3, field))
        };
        let item = next();
        if item.is_err() {
            buf = &[];
        }
        Some(item)
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encodes one length-delimited field (string, bytes or embedded message).
pub(crate) fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 6);
    put_varint(&mut out, u64::from(number) << 3 | 2);
    put_varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

fn string(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "invalid UTF-8 in string field".into())
}

fn map_entry(bytes: &[u8]) -> Result<(String, String), String> {
    let (mut k, mut v) = (String::new(), String::new());
    for f in fields(bytes) {
        match f? {
            (1, Field::Bytes(b)) => k = string(b)?,
            (2, Field::Bytes(b)) => v = string(b)?,
            _ => {}
        }
    }
    Ok((k, v))
}

fn object_meta(bytes: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for f in fields(bytes) {
        let (num, Field::Bytes(b)) = f? else { continue };
        let key = match num {
            1 => "name",
            2 => "generateName",
            3 => "namespace",
            11 => {
                let (k, v) = map_entry(b)?;
                labels.insert(k, v.into());
                continue;
            }
            12 => {
                let (k, v) = map_entry(b)?;
                annotations.insert(k, v.into());
                continue;
            }
            14 => {
                finalizers.push(Value::from(string(b)?));
                continue;
            }
            _ => continue,
        };
        let s = string(b)?;
        if !s.is_empty() {
            meta.insert(key.into(), s.into());
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), labels.into());
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), annotations.into());
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), finalizers.into());
    }
    Ok(meta.into())
}

/// Decodes a protobuf-encoded `v1/Namespace` into its JSON form.
pub(crate) fn decode_namespace(body: &[u8]) -> Result<Value, String> {
    let msg = body
        .strip_prefix(MAGIC)
        .ok_or("missing the k8s protobuf envelope prefix")?;
    let (mut kind, mut api_version, mut raw) = (String::new(), String::new(), None);
    for f in fields(msg) {
        match f? {
            (1, Field::Bytes(type_meta)) => {
                for tf in fields(type_meta) {
                    match tf? {
                        (1, Field::Bytes(b)) => api_version = string(b)?,
                        (2, Field::Bytes(b)) => kind = string(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    if kind != "Namespace" || api_version != "v1" {
        return Err(format!(
            "protobuf is only accepted for v1/Namespace, not {api_version}/{kind}"
        ));
    }
    let mut ns = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {}});
    for f in fields(raw.unwrap_or_default()) {
        match f? {
            (1, Field::Bytes(b)) => ns["metadata"] = object_meta(b)?,
            (2, Field::Bytes(spec)) => {
                let mut fin = Vec::new();
                for sf in fields(spec) {
                    if let (1, Field::Bytes(b)) = sf? {
                        fin.push(Value::from(string(b)?));
                    }
                }
                if !fin.is_empty() {
                    ns["spec"] = json!({"finalizers": fin});
                }
            }
            _ => {}
        }
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_kubectl_create_namespace() {
        // Captured from `kubectl` 1.33 `create namespace demo`.
        let body = b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x1c\n\x14\n\x04demo\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\n\x00\x1a\x00\"\x00";
        let ns = decode_namespace(body).unwrap();
        assert_eq!(
            ns,
            json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "demo"}})
        );
    }

    #[test]
    fn encodes_long_fields() {
        let long = vec![b'x'; 300];
        let enc = field(16, &long);
        assert_eq!(&enc[..4], &[0x82, 0x01, 0xac, 0x02]);
        let parsed: Vec<_> = fields(&enc).collect::<Result<_, _>>().unwrap();
        assert!(matches!(parsed[..], [(16, Field::Bytes(b))] if b.len() == 300));
    }

    #[test]
    fn decodes_labels_and_annotations() {
        let ld = |n: u32, b: &[u8]| field(n, b);
        let entry = |k: &[u8], v: &[u8]| [ld(1, k), ld(2, v)].concat();
        let meta = [
            ld(1, b"web"),
            ld(11, &entry(b"istio.io/dataplane-mode", b"ambient")),
            ld(12, &entry(b"note", b"x")),
        ]
        .concat();
        let raw = [ld(1, &meta), ld(2, &ld(1, b"kubernetes"))].concat();
        let type_meta = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &type_meta), ld(2, &raw)].concat();
        let ns = decode_namespace(&body).unwrap();
        assert_eq!(ns["metadata"]["name"], "web");
        assert_eq!(
            ns["metadata"]["labels"]["istio.io/dataplane-mode"],
            "ambient"
        );
        assert_eq!(ns["metadata"]["annotations"]["note"], "x");
        assert_eq!(ns["spec"]["finalizers"][0], "kubernetes");
    }

    #[test]
    fn rejects_other_kinds_and_garbage() {
        assert!(decode_namespace(b"{}").is_err());
        assert!(decode_namespace(b"k8s\0\n\x0a\n\x02v1\x12\x03Pod").is_err());
        assert!(decode_namespace(b"k8s\0\x12\xff").is_err());
    }
}
