//! `/debug/explain`: would this ztunnel let a connection through, and which policy decides.
//!
//! Evaluated here, in the running daemon, rather than in the CLI from `/config_dump`: the
//! answer then comes from the very snapshot and engine that enforce, with no version skew
//! between a CLI binary and the daemon and no need to rebuild the typed config from JSON.

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use crate::authz::{evaluate, ConnInfo};
use crate::identity::Identity;
use crate::state::{ConfigSnapshot, Protocol, Upstream};

#[derive(Debug, Default)]
pub(super) struct Query {
    pub src_ip: Option<String>,
    pub src_identity: Option<String>,
    /// The client is not meshed: no identity (what 15006 sees).
    pub plaintext: bool,
    pub dst: Option<String>,
}

pub(super) fn explain(snap: &ConfigSnapshot, q: &Query) -> Result<Value, String> {
    let src_ip: IpAddr = q
        .src_ip
        .as_deref()
        .ok_or("missing src_ip")?
        .parse()
        .map_err(|e| format!("src_ip: {e}"))?;
    let dst: SocketAddr = q
        .dst
        .as_deref()
        .ok_or("missing dst (ip:port)")?
        .parse()
        .map_err(|e| format!("dst: {e} (expected ip:port)"))?;
    let src_workload = snap.workload_by_ip(src_ip);
    let (src_identity, identity_from) = match (&q.src_identity, q.plaintext) {
        (Some(_), true) => return Err("give either src_identity or plaintext, not both".into()),
        (Some(id), false) => (
            Some(id.parse::<Identity>().map_err(|e| e.to_string())?),
            "given",
        ),
        (None, true) => (None, "plaintext: none"),
        // A meshed client reaches the destination over HBONE with its own certificate.
        (None, false) => match src_workload.filter(|w| w.protocol == Protocol::Hbone) {
            Some(w) => (Some(w.identity()), "the source workload's, from the config"),
            None => (None, "none: the source is not a meshed workload"),
        },
    };
    let targets = targets(snap, dst)?;
    let results: Vec<Value> = targets
        .iter()
        .map(|(w, addr)| {
            let conn = ConnInfo {
                src_ip: src_ip.to_canonical(),
                src_identity: src_identity.clone(),
                dst_ip: addr.ip().to_canonical(),
                dst_port: addr.port(),
            };
            let d = evaluate(snap, w, &conn);
            json!({
                "workload": format!("{}/{}", w.namespace, w.name),
                "uid": w.uid,
                "dst": addr.to_string(),
                "decision": d,
            })
        })
        .collect();
    Ok(json!({
        "src": {
            "ip": src_ip.to_string(),
            "workload": src_workload.map(|w| format!("{}/{}", w.namespace, w.name)),
            "identity": src_identity.map(|i| i.to_string()),
            "identityFrom": identity_from,
        },
        "dst": dst.to_string(),
        "results": results,
    }))
}

/// The workloads a connection to `dst` can land on: the workload itself, or each usable
/// endpoint of a service VIP with the port mapped as the proxy would.
fn targets(
    snap: &ConfigSnapshot,
    dst: SocketAddr,
) -> Result<Vec<(std::sync::Arc<crate::state::Workload>, SocketAddr)>, String> {
    let mut n = 0;
    let first = snap
        .resolve(dst, &mut |count| {
            n = count;
            0
        })
        .map_err(|e| e.to_string())?;
    match first {
        Upstream::Passthrough(_) => Err(format!(
            "{} is neither a workload nor a service VIP in the config: no policy applies there",
            dst.ip()
        )),
        Upstream::Workload {
            workload,
            addr,
            service: None,
        } => Ok(vec![(workload, addr)]),
        Upstream::Workload { .. } => (0..n)
            .map(|i| match snap.resolve(dst, &mut |_| i) {
                Ok(Upstream::Workload { workload, addr, .. }) => Ok((workload, addr)),
                Ok(_) => Err("config changed while resolving".to_string()),
                Err(e) => Err(e.to_string()),
            })
            .collect(),
    }
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
