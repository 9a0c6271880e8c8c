//! `/config_dump`: what this ztunnel believes, as JSON. The `ztunnel debug` tables read it.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::Admin;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn config_dump(a: &Admin) -> Value {
    let snap = a.state.current();
    let now = SystemTime::now();
    let certificates: Vec<Value> = a
        .certs
        .certificates()
        .into_iter()
        .map(|c| {
            let left = c
                .not_after
                .duration_since(now)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            json!({
                "identity": c.identity.to_string(),
                "notBefore": rfc3339(c.not_before),
                "notAfter": rfc3339(c.not_after),
                "expiresInSeconds": left,
            })
        })
        .collect();
    let pods: Vec<Value> = a
        .manager
        .pods()
        .into_iter()
        .map(|p| {
            let w = snap.workload_by_uid(&p.uid);
            json!({
                "uid": p.uid,
                "name": p.info.name,
                "namespace": p.info.namespace,
                "serviceAccount": p.info.service_account,
                "netnsInode": p.netns_inode,
                "inConfig": w.is_some(),
                "workloadIps": w.map(|w| w.workload_ips.clone()).unwrap_or_default(),
            })
        })
        .collect();
    json!({
        "configGeneration": a.state.generation(),
        "workloads": snap.workloads().map(|w| &**w).collect::<Vec<_>>(),
        "services": snap.services().map(|s| &**s).collect::<Vec<_>>(),
        "policies": snap.policies().map(|p| &**p).collect::<Vec<_>>(),
        "certificates": certificates,
        "pods": pods,
        "ready": a.manager.ready().err().map_or(json!(true), |why| json!(why)),
    })
}
