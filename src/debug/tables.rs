//! Tables from `/config_dump` JSON. Read as untyped JSON so the CLI keeps working against a
//! ztunnel that adds fields.

use std::collections::HashSet;

use serde_json::Value;

use super::table::Table;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn list<'a>(dump: &'a Value, key: &str) -> &'a [Value] {
    dump.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub fn workloads(dump: &Value) -> String {
    // A pod's ZDS uid is not its workload's uid: the dump names the workload each pod matched.
    let proxied: HashSet<&str> = list(dump, "pods")
        .iter()
        .filter_map(|p| p.get("workloadUid")?.as_str())
        .collect();
    let mut t = Table::new(&[
        "NAMESPACE",
        "NAME",
        "IP",
        "NODE",
        "PROTOCOL",
        "IDENTITY",
        "PROXIED",
    ]);
    for w in list(dump, "workloads") {
        let identity = format!(
            "spiffe://{}/ns/{}/sa/{}",
            s(&w["trustDomain"]),
            s(&w["namespace"]),
            s(&w["serviceAccount"])
        );
        let uid = w["uid"].as_str().unwrap_or_default();
        t.row(vec![
            s(&w["namespace"]),
            s(&w["name"]),
            s(&w["workloadIps"]),
            s(&w["node"]),
            s(&w["protocol"]),
            identity,
            if proxied.contains(uid) { "yes" } else { "no" }.into(),
        ]);
    }
    t.render()
}

pub fn services(dump: &Value) -> String {
    let mut t = Table::new(&[
        "NAMESPACE",
        "NAME",
        "HOSTNAME",
        "VIPS",
        "PORTS",
        "ENDPOINTS",
    ]);
    for svc in list(dump, "services") {
        let key = format!("{}/{}", s(&svc["namespace"]), s(&svc["hostname"]));
        let endpoints = list(dump, "workloads")
            .iter()
            .filter(|w| w["services"].get(&key).is_some())
            .count();
        let mut ports: Vec<String> = svc["ports"]
            .as_object()
            .map(|m| m.iter().map(|(p, t)| format!("{p}->{t}")).collect())
            .unwrap_or_default();
        ports.sort();
        t.row(vec![
            s(&svc["namespace"]),
            s(&svc["name"]),
            s(&svc["hostname"]),
            s(&svc["vips"]),
            ports.join(","),
            endpoints.to_string(),
        ]);
    }
    t.render()
}

pub fn policies(dump: &Value) -> String {
    let mut t = Table::new(&["NAMESPACE", "NAME", "SCOPE", "ACTION", "DRY-RUN", "RULES"]);
    for p in list(dump, "policies") {
        t.row(vec![
            s(&p["namespace"]),
            s(&p["name"]),
            s(&p["scope"]),
            s(&p["action"]),
            s(&p["dryRun"]),
            p["rules"].as_array().map_or(0, Vec::len).to_string(),
        ]);
    }
    t.render()
}

pub fn certs(dump: &Value) -> String {
    let mut t = Table::new(&["IDENTITY", "NOT-BEFORE", "NOT-AFTER", "EXPIRES-IN"]);
    for c in list(dump, "certificates") {
        let left = c["expiresInSeconds"].as_u64().unwrap_or(0);
        t.row(vec![
            s(&c["identity"]),
            s(&c["notBefore"]),
            s(&c["notAfter"]),
            humantime::format_duration(std::time::Duration::from_secs(left)).to_string(),
        ]);
    }
    t.render()
}

/// The part of the dump a `--json` listing prints.
pub fn section<'a>(dump: &'a Value, key: &str) -> &'a Value {
    dump.get(key).unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump() -> Value {
        json!({
            "workloads": [
                {"uid": "Kubernetes//Pod/demo/web", "name": "web", "namespace": "demo", "serviceAccount": "web",
                 "trustDomain": "cluster.local", "workloadIps": ["10.0.0.1"], "node": "n1",
                 "protocol": "HBONE", "services": {"demo/echo.demo.svc": {"80": 8080}}},
                {"uid": "u2", "name": "db", "namespace": "demo", "serviceAccount": "db",
                 "trustDomain": "cluster.local", "workloadIps": [], "node": "n2",
                 "protocol": "TCP", "services": {}}
            ],
            "services": [{"name": "echo", "namespace": "demo", "hostname": "echo.demo.svc",
                          "vips": ["/10.96.0.10"], "ports": {"80": 8080}}],
            "policies": [{"name": "deny-db", "namespace": "demo", "scope": "Namespace",
                          "action": "Deny", "dryRun": false, "rules": [[[]]]}],
            "certificates": [{"identity": "spiffe://cluster.local/ns/demo/sa/web",
                              "notBefore": "2026-01-01T00:00:00Z", "notAfter": "2026-01-02T00:00:00Z",
                              "expiresInSeconds": 3600}],
            // The ZDS uid is a pod UID; `workloadUid` is what the pod matched in the config.
            "pods": [{"uid": "7d1e-pod-uid", "workloadUid": "Kubernetes//Pod/demo/web"}]
        })
    }

    #[test]
    fn workload_table_marks_proxied_pods_and_builds_identities() {
        let out = workloads(&dump());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAMESPACE"));
        assert!(lines[1].contains("web") && lines[1].contains("10.0.0.1"));
        assert!(lines[1].contains("spiffe://cluster.local/ns/demo/sa/web"));
        assert!(lines[1].trim_end().ends_with("yes"), "{}", lines[1]);
        assert!(lines[2].trim_end().ends_with("no"), "{}", lines[2]);
    }

    #[test]
    fn service_policy_and_cert_tables() {
        let d = dump();
        let svc = services(&d);
        assert!(svc.lines().nth(1).unwrap().contains("80->8080"), "{svc}");
        assert!(
            svc.lines().nth(1).unwrap().trim_end().ends_with('1'),
            "{svc}"
        );
        let pol = policies(&d);
        assert!(pol.contains("deny-db") && pol.contains("Deny"), "{pol}");
        let c = certs(&d);
        assert!(c.contains("1h"), "{c}");
        // Missing sections give an empty table, not a panic.
        assert_eq!(workloads(&json!({})).lines().count(), 1);
    }
}
