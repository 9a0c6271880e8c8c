//! The demo's look at what ztunnel reports and decides: its metrics for the traffic just moved,
//! an authorization policy applied with kubectl and pushed by istiod, enforced and explained, and the
//! debug CLI's workload table.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meshtunnel_e2e::apps::{connect_from, echo_exact, random_bytes};
use meshtunnel_e2e::cluster::{Cluster, Pod, TRUST_DOMAIN};
use meshtunnel_e2e::mesh::run_cmd;
use test_support::NodeId;

/// The label the demo gives b1, which the policy's selector names.
pub const APP_LABEL: (&str, &str) = ("app", "echo");
const METRICS: [&str; 2] = [
    "istio_tcp_received_bytes_total",
    "istio_tcp_sent_bytes_total",
];
/// The labels worth a line each; the rest are in the full scrape.
const SHOWN: [&str; 4] = [
    "source_workload",
    "source_principal",
    "destination_workload",
    "connection_security_policy",
];

/// Node B's ztunnel metrics for a1 -> b1 against the `moved` bytes each way.
pub fn metrics(cluster: &Cluster, a1: &Pod, b1: &Pod, moved: usize) -> Result<()> {
    println!(
        "\n== node B's ztunnel metrics (:15020/stats/prometheus), reporter=destination, a1 -> b1"
    );
    let text = cluster.metrics(NodeId::B)?;
    let src = principal(a1);
    let mut found = 0;
    for (name, labels, value) in text.lines().filter_map(sample) {
        if !METRICS.contains(&name)
            || labels.get("reporter").map(String::as_str) != Some("destination")
            || labels.get("source_principal") != Some(&src)
            || labels.get("destination_principal") != Some(&principal(b1))
        {
            continue;
        }
        let shown: Vec<String> = SHOWN
            .iter()
            .map(|k| format!("{k}={:?}", labels.get(*k).map_or("", String::as_str)))
            .collect();
        println!("   {name}{{{}}} {value}", shown.join(","));
        let what = if name == METRICS[0] {
            "a1 sent to b1"
        } else {
            "b1 echoed back"
        };
        if value != moved as f64 {
            bail!("{name} is {value}, but {what} {moved} bytes");
        }
        println!("     = the {moved} bytes {what} above");
        found += 1;
    }
    if found != METRICS.len() {
        bail!("expected both byte counters for a1 -> b1, found {found}");
    }
    Ok(())
}

/// `spiffe://` id of the pod's service account (the fixture's `sa-<name>`), as metrics show it.
fn principal(pod: &Pod) -> String {
    format!(
        "spiffe://{TRUST_DOMAIN}/ns/{}/sa/sa-{}",
        pod.namespace, pod.name
    )
}

/// One Prometheus text sample: (name, labels, value); comments and malformed lines are None.
fn sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = head.split_once('{') else {
        return Some((head, BTreeMap::new(), value));
    };
    Some((name, labels(rest.strip_suffix('}')?)?, value))
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes in values.
fn labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_owned(), value);
        s = &rest[end + 1..];
    }
    Some(out)
}

/// A DENY policy for a2's principal on b1, shown enforced and explained, then removed.
pub fn policy(cluster: &Cluster, a1: &Pod, a2: &Pod, b1: &Pod) -> Result<()> {
    let yaml = deny_policy(a2);
    println!(
        "\n== an AuthorizationPolicy applied with kubectl (DENY principal {} to pods with {}={}, i.e. b1); istiod pushes it to the ztunnels",
        a2_principal(a2),
        APP_LABEL.0,
        APP_LABEL.1
    );
    for line in yaml.lines() {
        println!("   | {line}");
    }
    let started = std::time::Instant::now();
    cluster.apply_policy(&yaml, &a2.namespace, "deny-a2", Duration::from_secs(20))?;
    println!(
        "   $ kubectl apply -f deny-a2.yaml: in both ztunnels {} ms later",
        started.elapsed().as_millis()
    );
    match try_echo(cluster, a2, b1) {
        Ok(()) => bail!("a2 -> b1 went through despite the DENY policy"),
        Err(e) => println!("   a2 -> b1: refused ({e:#})"),
    }
    let log = cluster.ztunnel_log(NodeId::B);
    if let Some(line) = log
        .lines()
        .rfind(|l| l.contains("denied by authorization policy"))
    {
        println!("   node B: {}", crate::strip_ansi(line));
    }
    try_echo(cluster, a1, b1).context("a1 -> b1 under the policy")?;
    println!("   a1 -> b1: ok, byte-exact");
    let b1_addr = b1.addr(8080).to_string();
    debug_cli(
        cluster,
        &[
            "explain",
            "--src-ip",
            &a2.ip.to_string(),
            "--dst",
            &b1_addr,
            "--admin",
            "127.0.0.1:15000",
        ],
    )?;
    cluster.delete_policy(&a2.namespace, "deny-a2", Duration::from_secs(20))?;
    try_echo(cluster, a2, b1).context("a2 -> b1 after the policy went")?;
    println!("   policy removed: a2 -> b1 ok again");
    Ok(())
}

/// Without `spiffe://`, as policies match principals.
fn a2_principal(a2: &Pod) -> String {
    principal(a2).trim_start_matches("spiffe://").to_owned()
}

/// The policy as a user writes it (security.istio.io/v1).
fn deny_policy(a2: &Pod) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-a2\n  namespace: {ns}\nspec:\n  selector:\n    matchLabels:\n      {k}: {v}\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"{p}\"]\n",
        ns = a2.namespace,
        k = APP_LABEL.0,
        v = APP_LABEL.1,
        p = a2_principal(a2)
    )
}

fn try_echo(cluster: &Cluster, from: &Pod, to: &Pod) -> Result<()> {
    echo_exact(
        connect_from(cluster.netns_of(from), to.addr(8080))?,
        &random_bytes(16 * 1024),
    )
}

/// Runs the release `ztunnel debug ARGS` inside node B's namespace and prints what it says.
pub fn debug_cli(cluster: &Cluster, args: &[&str]) -> Result<()> {
    println!("$ ztunnel debug {}   # in node B's netns", args.join(" "));
    let out = run_cmd(cluster.ztunnel_command(NodeId::B)?.arg("debug").args(args))?;
    for line in out.lines() {
        println!("   {line}");
    }
    Ok(())
}

/// The CRDs installed with the control plane: Istio's and Gateway API's.
pub fn crds(cluster: &Cluster) -> Result<()> {
    println!("\n== CRDs installed (Istio's and Gateway API's, from their Go modules)");
    let out = cluster.kubectl.ok(&["get", "crd", "-o", "name"])?;
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in out.lines() {
        let name = name.trim_start_matches("customresourcedefinition.apiextensions.k8s.io/");
        if let Some((kind, group)) = name.split_once('.') {
            groups
                .entry(group.to_owned())
                .or_default()
                .push(kind.to_owned());
        }
    }
    for (group, kinds) in groups {
        println!("   {group}: {}", kinds.join(", "));
    }
    Ok(())
}

/// istiod's own view of the namespace's pods (its `/debug/ambientz` endpoint): the workloads
/// it pushes to ztunnels, named the istiod way, HBONE once the agent has captured them.
pub fn istiod_view(cluster: &Cluster, namespace: &str) -> Result<()> {
    let istiod = cluster
        .control_plane
        .istiod()
        .context("control plane without istiod")?;
    println!(
        "\n== istiod's view (GET {}/debug/ambientz): workloads in namespace {namespace}",
        istiod.http
    );
    let text = cluster.control_plane.istiod_debug("/debug/ambientz")?;
    let doc: serde_json::Value = serde_json::from_str(&text).context("ambientz is not JSON")?;
    let mut rows = Vec::new();
    collect_workloads(&doc, &format!("/Pod/{namespace}/"), &mut rows);
    rows.sort();
    rows.dedup();
    for row in rows {
        println!("   {row}");
    }
    Ok(())
}

fn collect_workloads(v: &serde_json::Value, needle: &str, rows: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(uid) = o.get("uid").and_then(|u| u.as_str()) {
                if uid.contains(needle) {
                    // proto3 JSON leaves defaults out: no tunnelProtocol is plain TCP.
                    let field = |k: &str, default: &str| {
                        o.get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or(default)
                            .to_owned()
                    };
                    rows.push(format!(
                        "{uid}  protocol={} node={} status={}",
                        field("tunnelProtocol", "TCP"),
                        field("node", "-"),
                        field("status", "HEALTHY")
                    ));
                    return;
                }
            }
            o.values().for_each(|v| collect_workloads(v, needle, rows));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_workloads(v, needle, rows)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_escaped_label_values() {
        let (name, labels, value) =
            sample(r#"istio_tcp_sent_bytes_total{reporter="destination",a="x\"y,z",b=""} 42"#)
                .unwrap();
        assert_eq!(name, "istio_tcp_sent_bytes_total");
        assert_eq!(value, 42.0);
        assert_eq!(labels["reporter"], "destination");
        assert_eq!(labels["a"], "x\"y,z");
        assert_eq!(labels["b"], "");
        assert!(sample("# TYPE x counter").is_none());
        assert!(sample(r#"x{a="unterminated} 1"#).is_none());
        assert_eq!(sample("up 1").unwrap().2, 1.0);
    }
}
