//! HTTPRoute filters applied to a request's head and to a response's headers, and the weighted
//! choice of a backend. No I/O: the data path calls these and tests call them alone.

use http::header::{HeaderName, HeaderValue, HOST, LOCATION};
use http::{HeaderMap, StatusCode, Uri};

use super::model::{Backend, HeaderModifier, PathMatch, PathModifier, Redirect};

/// Applies set / add / remove to `headers`. Names and values were validated at load time;
/// one that is still not a valid header is skipped rather than failing the request.
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    for name in &m.remove {
        headers.remove(name.as_str());
    }
}

/// The new path for a rewrite or redirect. `ReplacePrefixMatch` needs the rule's PathPrefix
/// match (validation refuses it otherwise); the query string is kept.
pub fn rewrite_path(path: &str, matched: &PathMatch, m: &PathModifier) -> String {
    match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(repl) => {
            let prefix = match matched {
                PathMatch::Prefix(p) => p.as_str(),
                _ => return path.to_owned(),
            };
            let rest = path.get(prefix.len()..).unwrap_or("");
            // "/prefix" -> "/" must not become "" nor "//rest".
            let repl = repl.trim_end_matches('/');
            match (repl.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) => format!("{repl}{rest}"),
            }
        }
    }
}

/// The `Location` of a RequestRedirect. The port is left out when it is the scheme's default
/// (as the spec asks), and a scheme change without a port drops the request's port.
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
    matched: &PathMatch,
) -> String {
    let (req_host, req_port) = split_host_port(host);
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let hostname = r.hostname.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => req_port,
    };
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let new_path = match &r.path {
        Some(m) => rewrite_path(path, matched, m),
        None => path.to_owned(),
    };
    let mut loc = format!("{scheme}://{hostname}");
    if let Some(p) = port {
        loc += &format!(":{p}");
    }
    loc += &new_path;
    if let Some(q) = query {
        loc += "?";
        loc += q;
    }
    loc
}

fn split_host_port(host: &str) -> (&str, Option<u16>) {
    // "[v6]:port", "name:port", or a bare name.
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (&host[..h.len() + 2], port);
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

/// Redirect status codes the spec allows; anything else was refused at load time.
pub fn redirect_status(code: u16) -> StatusCode {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308))
        .unwrap_or(StatusCode::FOUND)
}

/// Sets the request's Host (HTTP/1) and authority (HTTP/2) to `hostname`, keeping the port.
pub fn rewrite_host(uri: &mut Uri, headers: &mut HeaderMap, hostname: &str) {
    if let Ok(v) = HeaderValue::from_str(hostname) {
        headers.insert(HOST, v);
    }
    let mut parts = std::mem::take(uri).into_parts();
    if parts.authority.is_some() {
        parts.authority = hostname.parse().ok();
    }
    *uri = Uri::from_parts(parts).unwrap_or_default();
}

/// Location header helper for redirect responses.
pub fn location_header(loc: &str) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::from_str(loc).ok().map(|v| (LOCATION, v))
}

/// Picks a backend by weight; `roll` is uniform in `0..total` (the caller's random number).
/// `None` when every weight is 0 (the caller answers 500).
pub fn pick_backend(backends: &[Backend], roll: u64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = roll % total;
    for b in backends {
        let w = u64::from(b.weight);
        if x < w {
            return Some(b);
        }
        x -= w;
    }
    None
}

/// Sum of the backends' weights (0 = "every backend weighs 0").
pub fn total_weight(backends: &[Backend]) -> u64 {
    backends.iter().map(|b| u64::from(b.weight)).sum()
}
