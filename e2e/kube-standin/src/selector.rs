//! Label and field selectors as the API server's `labelSelector` / `fieldSelector` query parameters
//! spell them.

use serde_json::Value;

use crate::resource::Resource;

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelReq {
    fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            // Kubernetes treats `k!=v` as true when `k` is absent.
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        }
    }
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelReq>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(s)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_label_req(term)?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.0.iter().all(|r| r.matches(labels))
    }
}

/// Splits on commas that are not inside `in (...)` value sets.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' in selector {s:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in selector {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_label_req(term: &str) -> Result<LabelReq, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(valid_key(key.trim())?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelReq::NotEq(
            valid_key(k.trim())?,
            valid_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(valid_key(k.trim())?, valid_value(v.trim())?));
    }
    if let Some(open) = term.find('(') {
        let head = term[..open].trim();
        let body = term[open + 1..]
            .trim_end()
            .strip_suffix(')')
            .ok_or_else(|| format!("expected ')' at end of {term:?}"))?;
        let values = body
            .split(',')
            .map(|v| valid_value(v.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut words = head.split_whitespace();
        let (key, op) = match (words.next(), words.next(), words.next()) {
            (Some(k), Some(op), None) => (valid_key(k)?, op),
            _ => return Err(format!("cannot parse set requirement {term:?}")),
        };
        return match op {
            "in" => Ok(LabelReq::In(key, values)),
            "notin" => Ok(LabelReq::NotIn(key, values)),
            _ => Err(format!("unknown set operator {op:?} in {term:?}")),
        };
    }
    Ok(LabelReq::Exists(valid_key(term)?))
}

fn valid_key(k: &str) -> Result<String, String> {
    let ok = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!("invalid label key {k:?}"))
    }
}

fn valid_value(v: &str) -> Result<String, String> {
    let ok = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("invalid label value {v:?}"))
    }
}

/// A parsed `fieldSelector`: only the field labels the real server accepts for the resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str, resource: Resource) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let field = field.trim();
            if !resource.field_labels().contains(&field) {
                return Err(format!(
                    "field label not supported: {field} for {}",
                    resource.plural()
                ));
            }
            reqs.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(field, eq, want)| (field_value(obj, field) == *want) == *eq)
    }
}

/// The string form the server compares against; an absent field compares as "" so that
/// `spec.nodeName=` selects unscheduled pods, and booleans as "true"/"false".
fn field_value(obj: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match obj.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) if field == "spec.hostNetwork" => "false".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels},
               "spec": {"nodeName": "node-a"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn equality_and_inequality() {
        let p = pod(json!({"app": "web", "tier": "fe"}));
        assert!(LabelSelector::parse("app=web").unwrap().matches(&p));
        assert!(LabelSelector::parse("app==web,tier=fe")
            .unwrap()
            .matches(&p));
        assert!(!LabelSelector::parse("app=web,tier=be").unwrap().matches(&p));
        assert!(LabelSelector::parse("app!=db").unwrap().matches(&p));
        assert!(!LabelSelector::parse("app!=web").unwrap().matches(&p));
        // Absent key satisfies `!=`, as on the real server.
        assert!(LabelSelector::parse("missing!=x").unwrap().matches(&p));
    }

    #[test]
    fn existence() {
        let p = pod(json!({"istio.io/dataplane-mode": "ambient"}));
        assert!(LabelSelector::parse("istio.io/dataplane-mode")
            .unwrap()
            .matches(&p));
        assert!(!LabelSelector::parse("!istio.io/dataplane-mode")
            .unwrap()
            .matches(&p));
        assert!(LabelSelector::parse("!other").unwrap().matches(&p));
        assert!(LabelSelector::parse("").unwrap().matches(&p));
        assert!(!LabelSelector::parse("x")
            .unwrap()
            .matches(&json!({"metadata": {}})));
    }

    #[test]
    fn set_based() {
        let p = pod(json!({"env": "prod", "app": "web"}));
        let s = LabelSelector::parse("env in (prod, staging),app notin (db)").unwrap();
        assert_eq!(s.0.len(), 2);
        assert!(s.matches(&p));
        assert!(!LabelSelector::parse("env in (dev)").unwrap().matches(&p));
        assert!(!LabelSelector::parse("env notin (prod)")
            .unwrap()
            .matches(&p));
        assert!(LabelSelector::parse("zone notin (a)").unwrap().matches(&p));
        assert!(!LabelSelector::parse("zone in (a)").unwrap().matches(&p));
    }

    #[test]
    fn rejects_garbage() {
        assert!(LabelSelector::parse("a in (b").is_err());
        assert!(LabelSelector::parse("a) ,b").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
        assert!(LabelSelector::parse("a within (b)").is_err());
    }

    #[test]
    fn field_selectors() {
        let p = pod(json!({}));
        let f = |s| FieldSelector::parse(s, Resource::Pod).unwrap();
        assert!(f("spec.nodeName=node-a").matches(&p));
        assert!(!f("spec.nodeName=node-b").matches(&p));
        assert!(f("spec.nodeName!=node-b,metadata.name=p").matches(&p));
        assert!(f("metadata.namespace==ns,status.phase=Running").matches(&p));
        assert!(f("spec.hostNetwork=false").matches(&p));
        let unscheduled = json!({"metadata": {"name": "q"}, "spec": {}});
        assert!(f("spec.nodeName=").matches(&unscheduled));
        assert!(FieldSelector::parse("spec.bogus=1", Resource::Pod).is_err());
        assert!(FieldSelector::parse("spec.nodeName=x", Resource::Namespace).is_err());
    }
}
