//! `limit`/`continue` paging of list responses.

use std::collections::HashMap;

use serde_json::Value;

use crate::status::ApiError;

pub(crate) struct Page {
    pub items: Vec<Value>,
    pub continue_token: Option<String>,
    pub remaining: usize,
}

fn sort_key(obj: &Value) -> (String, String) {
    let field = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (field("namespace"), field("name"))
}

/// `limit`/`continue` paging. The token is the last key served ("namespace/name"), so later
/// pages reflect the store as it is then rather than a snapshot at the first page's
/// resourceVersion, as a real server's would; clients treat the token as opaque either way.
pub(crate) fn paginate(
    items: Vec<Value>,
    query: &HashMap<String, String>,
) -> Result<Page, ApiError> {
    let limit = match query.get("limit").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
    };
    let after = match query.get("continue").map(String::as_str) {
        None | Some("") => None,
        Some(token) => {
            let (ns, name) = token
                .split_once('/')
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            Some((ns.to_string(), name.to_string()))
        }
    };
    let mut items: Vec<Value> = match &after {
        Some(after) => items.into_iter().filter(|o| sort_key(o) > *after).collect(),
        None => items,
    };
    let mut page = Page {
        items: Vec::new(),
        continue_token: None,
        remaining: 0,
    };
    if let Some(limit) = limit.filter(|l| items.len() > *l) {
        page.remaining = items.len() - limit;
        items.truncate(limit);
        let (ns, name) = sort_key(items.last().expect("limit is positive"));
        page.continue_token = Some(format!("{ns}/{name}"));
    }
    page.items = items;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages() {
        let items: Vec<Value> = ["a", "b", "c"]
            .iter()
            .map(|n| json!({"metadata": {"namespace": "ns", "name": n}}))
            .collect();
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let p = paginate(items.clone(), &q(&[("limit", "2")])).unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.remaining, 1);
        let token = p.continue_token.unwrap();
        let p = paginate(items.clone(), &q(&[("limit", "2"), ("continue", &token)])).unwrap();
        assert_eq!(p.items, items[2..]);
        assert!(p.continue_token.is_none());
        assert_eq!(
            paginate(items.clone(), &q(&[("limit", "500")]))
                .unwrap()
                .items
                .len(),
            3
        );
        assert!(paginate(items, &q(&[("continue", "garbage")])).is_err());
    }
}
