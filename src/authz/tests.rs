//! Table tests of the decision: evaluation order, scopes, dry-run, and every match field with
//! and without a peer identity. Policies are written as the local config file writes them.

use std::net::IpAddr;
use std::path::Path;

use super::*;
use crate::state::ConfigSnapshot;

const DST_IP: &str = "10.0.0.2";

/// `dst` (demo/dst, 10.0.0.2, selects demo/selected and demo/missing) plus `other` in
/// namespace `other`, with `policies` (a YAML list) appended.
fn snapshot(policies: &str) -> ConfigSnapshot {
    let yaml = format!(
        "workloads:
- {{uid: dst, name: dst, namespace: demo, workloadIps: [{DST_IP}], services: {{}},
   authorizationPolicies: [demo/selected, demo/missing]}}
- {{uid: other, name: other, namespace: other, workloadIps: [10.0.0.3], services: {{}}}}
policies:
{policies}"
    );
    crate::config::parse(&yaml, Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n--- yaml ---\n{yaml}"))
}

fn conn(src_ip: &str, identity: Option<&str>, dst_port: u16) -> ConnInfo {
    ConnInfo {
        src_ip: src_ip.parse().unwrap(),
        src_identity: identity.map(|i| i.parse().unwrap()),
        dst_ip: DST_IP.parse().unwrap(),
        dst_port,
    }
}

const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";

fn web() -> ConnInfo {
    conn("10.0.0.1", Some(WEB), 8080)
}

fn plaintext() -> ConnInfo {
    conn("10.0.0.1", None, 8080)
}

fn decide_for(s: &ConfigSnapshot, uid: &str, c: &ConnInfo) -> Decision {
    evaluate(s, s.workload_by_uid(uid).unwrap(), c)
}

fn decide(policies: &str, c: &ConnInfo) -> Decision {
    decide_for(&snapshot(policies), "dst", c)
}

/// One policy as a YAML list item.
fn pol(name: &str, scope: &str, action: &str, rules: &str) -> String {
    pol_in("demo", name, scope, action, rules)
}

fn pol_in(ns: &str, name: &str, scope: &str, action: &str, rules: &str) -> String {
    format!(
        "- {{name: {name}, namespace: {ns}, scope: {scope}, action: {action}, rules: {rules}}}\n"
    )
}

fn dry(name: &str, action: &str, rules: &str) -> String {
    format!(
        "- {{name: {name}, namespace: demo, scope: Namespace, action: {action}, dryRun: true, rules: {rules}}}\n"
    )
}

/// Rules matching the `web` identity, and rules matching nobody's port.
const WEB_RULE: &str = "[[[{principals: [!Exact cluster.local/ns/demo/sa/web]}]]]";
const NOBODY: &str = "[[[{destinationPorts: [1]}]]]";

type DecidedBy = Option<(String, usize)>;

fn by(key: &str, rule: usize) -> DecidedBy {
    Some((key.to_owned(), rule))
}

#[test]
fn evaluation_order() {
    use Verdict::*;
    let cases: Vec<(&str, String, Verdict, DecidedBy)> = vec![
        ("no policy at all", String::new(), Allow, None),
        (
            "matching DENY beats matching ALLOW",
            pol("a", "Namespace", "Allow", WEB_RULE) + &pol("d", "Namespace", "Deny", WEB_RULE),
            Deny,
            by("demo/d", 0),
        ),
        (
            "DENY that does not match, no ALLOW",
            pol("d", "Namespace", "Deny", NOBODY),
            Allow,
            None,
        ),
        (
            "ALLOW that matches",
            pol("d", "Namespace", "Deny", NOBODY) + &pol("a", "Namespace", "Allow", WEB_RULE),
            Allow,
            by("demo/a", 0),
        ),
        (
            "ALLOW that does not match",
            pol("a", "Namespace", "Allow", NOBODY),
            Deny,
            None,
        ),
        (
            "second ALLOW matches, on its second rule",
            pol("a1", "Namespace", "Allow", NOBODY)
                + &pol(
                    "a2",
                    "Namespace",
                    "Allow",
                    "[[[{destinationPorts: [1]}]], [[{destinationPorts: [8080]}]]]",
                ),
            Allow,
            by("demo/a2", 1),
        ),
        (
            "ALLOW without rules applies but matches nothing",
            pol("a", "Namespace", "Allow", "[]"),
            Deny,
            None,
        ),
        (
            "DENY without rules denies nothing",
            pol("d", "Namespace", "Deny", "[]"),
            Allow,
            None,
        ),
        (
            "a rule without clauses matches everything",
            pol("d", "Namespace", "Deny", "[[]]"),
            Deny,
            by("demo/d", 0),
        ),
        (
            "an empty clause holds, the other clause decides",
            pol(
                "d",
                "Namespace",
                "Deny",
                "[[[], [{destinationPorts: [8080]}]]]",
            ),
            Deny,
            by("demo/d", 0),
        ),
        (
            "a match with no fields matches nothing",
            pol("d", "Namespace", "Deny", "[[[{}]]]"),
            Allow,
            None,
        ),
        (
            "Namespace scope of another namespace does not apply",
            pol_in("other", "d", "Namespace", "Deny", "[[]]")
                + &pol_in("other", "a", "Namespace", "Allow", NOBODY),
            Allow,
            None,
        ),
        (
            "Global scope applies in every namespace",
            pol_in("istio-system", "g", "Global", "Deny", "[[]]"),
            Deny,
            by("istio-system/g", 0),
        ),
        (
            "Global ALLOW that does not match denies",
            pol_in("istio-system", "g", "Global", "Allow", NOBODY),
            Deny,
            None,
        ),
        (
            "WorkloadSelector policy named by the workload applies",
            pol("selected", "WorkloadSelector", "Deny", "[[]]"),
            Deny,
            by("demo/selected", 0),
        ),
        (
            "WorkloadSelector policy not named by the workload does not apply",
            pol("unselected", "WorkloadSelector", "Deny", "[[]]"),
            Allow,
            None,
        ),
        (
            "a DENY in any source beats an ALLOW in another",
            pol("selected", "WorkloadSelector", "Allow", WEB_RULE)
                + &pol_in("istio-system", "g", "Global", "Deny", WEB_RULE),
            Deny,
            by("istio-system/g", 0),
        ),
        (
            "dry-run DENY alone never denies",
            dry("d", "Deny", "[[]]"),
            Allow,
            None,
        ),
        (
            "dry-run ALLOW alone never makes ALLOW required",
            dry("a", "Allow", NOBODY),
            Allow,
            None,
        ),
        (
            "dry-run ALLOW that matches never rescues",
            pol("a", "Namespace", "Allow", NOBODY) + &dry("da", "Allow", WEB_RULE),
            Deny,
            None,
        ),
    ];
    for (name, policies, verdict, decided_by) in cases {
        let d = decide(&policies, &web());
        assert_eq!(
            (d.verdict, &d.decided_by),
            (verdict, &decided_by),
            "{name}: {d:?}"
        );
        assert!(!d.reason.is_empty(), "{name}");
    }
}

#[test]
fn scopes_pick_policies_per_workload() {
    let s = snapshot(
        &(pol("d", "Namespace", "Deny", "[[]]")
            + &pol("selected", "WorkloadSelector", "Deny", "[[]]")),
    );
    assert_eq!(decide_for(&s, "dst", &web()).verdict, Verdict::Deny);
    // `other` is in another namespace and selects nothing.
    let d = decide_for(&s, "other", &web());
    assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
    assert_eq!(d.reason, "no ALLOW policy applies");
}

#[test]
fn reasons_name_policy_and_rule() {
    let d = decide(&pol("d", "Namespace", "Deny", WEB_RULE), &web());
    assert_eq!(d.reason, "DENY policy demo/d matched (rule 0)");
    let d = decide(
        &(pol("a", "Namespace", "Allow", NOBODY) + &pol("b", "Namespace", "Allow", NOBODY)),
        &web(),
    );
    assert_eq!(d.reason, "no ALLOW policy matched (2 apply)");
}

#[test]
fn dry_run_lists_policies_that_would_flip_the_verdict() {
    use Verdict::*;
    let cases: Vec<(&str, String, Verdict, Vec<&str>)> = vec![
        (
            "dry-run DENY that matches: would deny",
            dry("d", "Deny", WEB_RULE),
            Allow,
            vec!["demo/d"],
        ),
        (
            "dry-run DENY that does not match: nothing",
            dry("d", "Deny", NOBODY),
            Allow,
            vec![],
        ),
        (
            "dry-run DENY over an enforced ALLOW that matches: would deny",
            pol("a", "Namespace", "Allow", WEB_RULE) + &dry("d", "Deny", WEB_RULE),
            Allow,
            vec!["demo/d"],
        ),
        (
            "enforced DENY: dry-run changes nothing",
            pol("e", "Namespace", "Deny", WEB_RULE) + &dry("d", "Deny", WEB_RULE),
            Deny,
            vec![],
        ),
        (
            "only dry-run ALLOWs, none matches: would deny",
            dry("a", "Allow", NOBODY) + &dry("b", "Allow", NOBODY),
            Allow,
            vec!["demo/a", "demo/b"],
        ),
        (
            "only dry-run ALLOWs, one matches: nothing",
            dry("a", "Allow", NOBODY) + &dry("b", "Allow", WEB_RULE),
            Allow,
            vec![],
        ),
        (
            "enforced ALLOW fails, dry-run ALLOW matches: would allow",
            pol("e", "Namespace", "Allow", NOBODY) + &dry("b", "Allow", WEB_RULE),
            Deny,
            vec!["demo/b"],
        ),
        (
            "would allow, but a dry-run DENY matches too: nothing",
            pol("e", "Namespace", "Allow", NOBODY)
                + &dry("b", "Allow", WEB_RULE)
                + &dry("d", "Deny", WEB_RULE),
            Deny,
            vec![],
        ),
        (
            "enforced ALLOW matches: dry-run ALLOWs change nothing",
            pol("e", "Namespace", "Allow", WEB_RULE) + &dry("b", "Allow", NOBODY),
            Allow,
            vec![],
        ),
    ];
    for (name, policies, verdict, dry_run) in cases {
        let d = decide(&policies, &web());
        assert_eq!(d.verdict, verdict, "{name}: {d:?}");
        assert_eq!(d.dry_run, dry_run, "{name}: {d:?}");
        // Dry-run policies never decide.
        if let Some((key, _)) = &d.decided_by {
            assert!(!dry_run.contains(&key.as_str()), "{name}: {d:?}");
        }
    }
}

/// Every field, positive and `not*`, with the `web` identity from 10.0.0.1 to :8080 and as
/// plaintext (no identity) from the same address. `true` = the match holds.
#[test]
fn match_fields() {
    let cases: &[(&str, bool, bool)] = &[
        // (match, holds for web, holds for plaintext)
        ("{namespaces: [!Exact demo]}", true, false),
        ("{namespaces: [!Exact other, !Prefix de]}", true, false),
        ("{namespaces: [!Suffix mo]}", true, false),
        ("{namespaces: [!Presence []]}", true, false),
        ("{namespaces: [!Exact other]}", false, false),
        ("{notNamespaces: [!Exact demo]}", false, true),
        ("{notNamespaces: [!Exact other]}", true, true),
        ("{notNamespaces: [!Presence []]}", false, true),
        (
            "{principals: [!Exact cluster.local/ns/demo/sa/web]}",
            true,
            false,
        ),
        // Compared without `spiffe://`, so the full URI never matches.
        (
            "{principals: [!Exact spiffe://cluster.local/ns/demo/sa/web]}",
            false,
            false,
        ),
        ("{principals: [!Prefix cluster.local/ns/demo/]}", true, false),
        ("{principals: [!Suffix /sa/web]}", true, false),
        ("{principals: [!Suffix /sa/db]}", false, false),
        ("{principals: [!Presence []]}", true, false),
        ("{notPrincipals: [!Suffix /sa/web]}", false, true),
        ("{notPrincipals: [!Suffix /sa/db]}", true, true),
        ("{notPrincipals: [!Presence []]}", false, true),
        (
            "{serviceAccounts: [{namespace: demo, serviceAccount: web}]}",
            true,
            false,
        ),
        (
            "{serviceAccounts: [{namespace: other, serviceAccount: web}]}",
            false,
            false,
        ),
        (
            "{serviceAccounts: [{namespace: demo, serviceAccount: db}, {namespace: demo, serviceAccount: web}]}",
            true,
            false,
        ),
        (
            "{notServiceAccounts: [{namespace: demo, serviceAccount: web}]}",
            false,
            true,
        ),
        (
            "{notServiceAccounts: [{namespace: demo, serviceAccount: db}]}",
            true,
            true,
        ),
        ("{sourceIps: [10.0.0.0/24]}", true, true),
        ("{sourceIps: [10.0.0.1]}", true, true),
        ("{sourceIps: [10.0.1.0/24, 10.0.0.0/31]}", true, true),
        ("{sourceIps: [10.0.1.0/24]}", false, false),
        ("{sourceIps: ['fd00::/8']}", false, false),
        ("{notSourceIps: [10.0.0.0/8]}", false, false),
        ("{notSourceIps: [192.168.0.0/16]}", true, true),
        ("{destinationIps: [10.0.0.2/32]}", true, true),
        ("{destinationIps: [10.0.0.3]}", false, false),
        ("{notDestinationIps: [10.0.0.0/30]}", false, false),
        ("{notDestinationIps: [10.0.0.3]}", true, true),
        ("{destinationPorts: [80, 8080]}", true, true),
        ("{destinationPorts: [80]}", false, false),
        ("{notDestinationPorts: [8080]}", false, false),
        ("{notDestinationPorts: [80]}", true, true),
        // Fields within a match: all must hold.
        (
            "{namespaces: [!Exact demo], destinationPorts: [8080]}",
            true,
            false,
        ),
        ("{namespaces: [!Exact demo], destinationPorts: [80]}", false, false),
        (
            "{sourceIps: [10.0.0.0/8], notSourceIps: [10.0.0.1]}",
            false,
            false,
        ),
        ("{destinationPorts: [8080], notDestinationPorts: [8080]}", false, false),
        ("{destinationPorts: [8080], notPrincipals: [!Presence []]}", false, true),
    ];
    for &(m, for_web, for_plain) in cases {
        let rules = format!("[[[{m}]]]");
        let policies = pol("a", "Namespace", "Allow", &rules);
        let s = snapshot(&policies);
        for (who, c, want) in [
            ("web", web(), for_web),
            ("plaintext", plaintext(), for_plain),
        ] {
            let d = decide_for(&s, "dst", &c);
            assert_eq!(d.allowed(), want, "{m} for {who}: {d:?}");
            // The same match in a DENY policy gives the opposite verdict.
            let d = decide(&pol("d", "Namespace", "Deny", &rules), &c);
            assert_eq!(d.allowed(), !want, "{m} as DENY for {who}: {d:?}");
        }
    }
}

#[test]
fn matches_or_clauses_and_rules_or() {
    let p80 = "{destinationPorts: [80]}";
    let p8080 = "{destinationPorts: [8080]}";
    let ns = "{namespaces: [!Exact demo]}";
    let other = "{namespaces: [!Exact other]}";
    let cases = [
        // clause = any of its matches
        (format!("[[[{p80}, {p8080}]]]"), true),
        (format!("[[[{p80}, {other}]]]"), false),
        // rule = all of its clauses
        (format!("[[[{p8080}], [{ns}]]]"), true),
        (format!("[[[{p8080}], [{other}]]]"), false),
        (format!("[[[{p8080}], [{other}, {ns}]]]"), true),
        // policy = any rule
        (
            format!("[[[{p80}]], [[{other}]], [[{ns}], [{p8080}]]]"),
            true,
        ),
        (format!("[[[{p80}]], [[{other}]]]"), false),
    ];
    for (rules, want) in cases {
        let d = decide(&pol("a", "Namespace", "Allow", &rules), &web());
        assert_eq!(d.allowed(), want, "{rules}: {d:?}");
    }
}

#[test]
fn ipv6_connections_match_ipv6_ranges_only() {
    let mut c = web();
    c.src_ip = "fd00::1".parse::<IpAddr>().unwrap();
    c.dst_ip = "fd00::2".parse().unwrap();
    let d = decide(
        &pol(
            "a",
            "Namespace",
            "Allow",
            "[[[{sourceIps: ['fd00::/16']}]]]",
        ),
        &c,
    );
    assert!(d.allowed(), "{d:?}");
    let d = decide(
        &pol("a", "Namespace", "Allow", "[[[{sourceIps: [0.0.0.0/0]}]]]"),
        &c,
    );
    assert!(!d.allowed(), "{d:?}");
}

#[test]
fn identity_without_matching_trust_domain_fails_principals_only() {
    let c = conn(
        "10.0.0.1",
        Some("spiffe://other.domain/ns/demo/sa/web"),
        8080,
    );
    let d = decide(&pol("a", "Namespace", "Allow", WEB_RULE), &c);
    assert!(!d.allowed(), "{d:?}");
    // Namespaces and service accounts come from the identity, whatever its trust domain.
    let d = decide(
        &pol(
            "a",
            "Namespace",
            "Allow",
            "[[[{namespaces: [!Exact demo], serviceAccounts: [{namespace: demo, serviceAccount: web}]}]]]",
        ),
        &c,
    );
    assert!(d.allowed(), "{d:?}");
}

#[test]
fn decisions_serialize_for_debug_output() {
    let d = decide(&pol("d", "Namespace", "Deny", WEB_RULE), &web());
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        serde_json::json!({
            "verdict": "deny",
            "decided_by": ["demo/d", 0],
            "reason": "DENY policy demo/d matched (rule 0)",
            "dry_run": [],
        })
    );
}
