//! `/config_dump`: what this ztunnel believes, as JSON. The `ztunnel debug` tables read it.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::Admin;
use crate::state::LocalPod;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn config_dump(a: &Admin) -> Value {
    let snap = a.state.current();
    let now = SystemTime::now();
    let source = a.certs.source().describe();
    let mut certs = a.certs.certificates();
    certs.sort_by_key(|c| c.identity.to_string());
    let certificates: Vec<Value> = certs
        .into_iter()
        .map(|c| {
            let left = c
                .not_after
                .duration_since(now)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            json!({
                "identity": c.identity.to_string(),
                "source": source,
                "issuer": c.issuer,
                "chainLength": c.chain_len,
                "notBefore": rfc3339(c.not_before),
                "notAfter": rfc3339(c.not_after),
                "refreshAt": rfc3339(c.refresh_at),
                "expiresInSeconds": left,
                "lastRefreshError": c.last_error.as_ref().map(|(at, why)| json!({
                    "at": rfc3339(*at),
                    "error": why,
                })),
            })
        })
        .collect();
    let mut pod_list = a.manager.pods();
    pod_list.sort_by(|x, y| {
        (&x.info.namespace, &x.info.name, &x.uid).cmp(&(&y.info.namespace, &y.info.name, &y.uid))
    });
    let pods: Vec<Value> = pod_list
        .into_iter()
        .map(|p| {
            let w = LocalPod::new(a.manager.node_name(), p.info.clone()).find(&snap);
            json!({
                "uid": p.uid,
                "workloadUid": w.map(|w| w.uid.clone()),
                "name": p.info.name,
                "namespace": p.info.namespace,
                "serviceAccount": p.info.service_account,
                "netnsInode": p.netns_inode,
                "inConfig": w.is_some(),
                "workloadIps": w.map(|w| w.workload_ips.clone()).unwrap_or_default(),
            })
        })
        .collect();
    // The snapshot's maps iterate in hash order; people diff dumps and read tables, so sort.
    let mut workloads: Vec<_> = snap.workloads().map(|w| &**w).collect();
    workloads.sort_by(|x, y| (&x.namespace, &x.name, &x.uid).cmp(&(&y.namespace, &y.name, &y.uid)));
    let mut services: Vec<_> = snap.services().map(|s| &**s).collect();
    services.sort_by(|x, y| (&x.namespace, &x.hostname).cmp(&(&y.namespace, &y.hostname)));
    let mut policies: Vec<_> = snap.policies().map(|p| &**p).collect();
    policies.sort_by(|x, y| (&x.namespace, &x.name).cmp(&(&y.namespace, &y.name)));
    json!({
        "configGeneration": a.state.generation(),
        "configSource": {
            "file": a.local_file.as_ref().map(|p| p.display().to_string()),
            "xds": a.xds.as_ref().map(|x| x.snapshot()),
            "conflicts": a.sources.conflicts(),
        },
        "workloads": workloads,
        "services": services,
        "policies": policies,
        "certificateSource": source,
        "certificates": certificates,
        "pods": pods,
        "ready": a.manager.ready().err().map_or(json!(true), |why| json!(why)),
    })
}
