//! `ztunnel debug explain`: asks the daemon's `/debug/explain` (which evaluates with the
//! snapshot and engine that enforce) and prints the verdict and the deciding policy.

use std::net::{IpAddr, SocketAddr};

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// IP of the client.
    #[arg(long, value_name = "IP")]
    src_ip: IpAddr,

    /// SPIFFE id the client presents (default: the source workload's own, when it is meshed).
    #[arg(long, value_name = "SPIFFE-ID", conflicts_with = "plaintext")]
    src_identity: Option<String>,

    /// The client connects in plaintext (not meshed): no identity.
    #[arg(long)]
    plaintext: bool,

    /// Where it connects: a workload IP or a service VIP, with the port.
    #[arg(long, value_name = "IP:PORT")]
    dst: SocketAddr,
}

impl ExplainArgs {
    pub(super) fn path(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("src_ip", &self.src_ip.to_string());
        q.append_pair("dst", &self.dst.to_string());
        if let Some(id) = &self.src_identity {
            q.append_pair("src_identity", id);
        }
        if self.plaintext {
            q.append_pair("plaintext", "true");
        }
        format!("/debug/explain?{}", q.finish())
    }
}

fn or_dash(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub(super) fn render(v: &Value) -> String {
    let src = &v["src"];
    let mut out = format!(
        "source:      {} {} identity {} ({})\ndestination: {}\n",
        or_dash(&src["ip"]),
        or_dash(&src["workload"]),
        or_dash(&src["identity"]),
        or_dash(&src["identityFrom"]),
        or_dash(&v["dst"]),
    );
    for r in v["results"].as_array().into_iter().flatten() {
        let d = &r["decision"];
        let verdict = match d["verdict"].as_str() {
            Some("allow") => "ALLOWED",
            Some("deny") => "DENIED",
            _ => "UNKNOWN",
        };
        let by = match d["decided_by"].as_array().map(Vec::as_slice) {
            Some([policy, rule]) => format!("by policy {} rule {rule}", or_dash(policy)),
            _ => "by default".into(),
        };
        out += &format!(
            "{} {}: {verdict} {by}\n  reason: {}\n",
            or_dash(&r["workload"]),
            or_dash(&r["dst"]),
            or_dash(&d["reason"]),
        );
        for p in d["dry_run"].as_array().into_iter().flatten() {
            out += &format!(
                "  dry-run: {} would change this verdict if enforced\n",
                or_dash(p)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_verdict_policy_rule_and_dry_run() {
        let v = json!({
            "src": {"ip": "10.0.0.1", "workload": "demo/web",
                    "identity": "spiffe://cluster.local/ns/demo/sa/web", "identityFrom": "given"},
            "dst": "10.96.0.10:80",
            "results": [
                {"workload": "demo/echo-0", "dst": "10.0.0.2:8080",
                 "decision": {"verdict": "allow", "decided_by": null,
                              "reason": "no ALLOW policy applies", "dry_run": ["demo/audit"]}},
                {"workload": "demo/echo-1", "dst": "10.0.0.3:8080",
                 "decision": {"verdict": "deny", "decided_by": ["demo/no-web", 0],
                              "reason": "DENY policy demo/no-web matched (rule 0)", "dry_run": []}}
            ]
        });
        let out = render(&v);
        assert!(
            out.contains("demo/echo-0 10.0.0.2:8080: ALLOWED by default"),
            "{out}"
        );
        assert!(out.contains("dry-run: demo/audit"), "{out}");
        assert!(
            out.contains("demo/echo-1 10.0.0.3:8080: DENIED by policy demo/no-web rule 0"),
            "{out}"
        );
        assert!(
            out.contains("identity spiffe://cluster.local/ns/demo/sa/web (given)"),
            "{out}"
        );
    }

    #[test]
    fn query_is_encoded() {
        let a = ExplainArgs {
            src_ip: "10.0.0.1".parse().unwrap(),
            src_identity: Some("spiffe://td/ns/a/sa/b".into()),
            plaintext: false,
            dst: "10.0.0.2:80".parse().unwrap(),
        };
        assert_eq!(
            a.path(),
            "/debug/explain?src_ip=10.0.0.1&dst=10.0.0.2%3A80&src_identity=spiffe%3A%2F%2Ftd%2Fns%2Fa%2Fsa%2Fb"
        );
    }
}
