//! The decision for one connection. Policies: rules OR, clauses AND, matches OR, fields within
//! a match AND (any entry of a field may hold, no `not*` entry may).

use std::cell::OnceCell;

use super::{ConnInfo, Decision, Verdict};
use crate::state::{Action, ConfigSnapshot, Match, Policy, Scope, Workload};

/// Decides whether `conn` may reach `dst` under the policies of `snapshot`.
///
/// Applicable policies: Namespace-scope ones of `dst`'s namespace, every Global-scope one, and
/// those `dst` names in `authorizationPolicies` (names not in the snapshot are skipped: the
/// control plane may send a workload before its policy). DENY first; then no ALLOW → allow,
/// else allow iff some ALLOW matches.
pub fn evaluate(snapshot: &ConfigSnapshot, dst: &Workload, conn: &ConnInfo) -> Decision {
    let peer = Peer {
        conn,
        principal: OnceCell::new(),
    };
    let policies = || applicable(snapshot, dst);

    // Dry-run DENYs that match: enforced, they would turn an allow into a deny.
    let mut dry_denies = Vec::new();
    for p in policies().filter(|p| p.action == Action::Deny) {
        let Some(rule) = first_matching_rule(p, &peer) else {
            continue;
        };
        if p.dry_run {
            dry_denies.push(p.key());
            continue;
        }
        // Nothing a dry-run policy says can undo an enforced DENY.
        let key = p.key();
        return Decision {
            verdict: Verdict::Deny,
            reason: format!("DENY policy {key} matched (rule {rule})"),
            decided_by: Some((key, rule)),
            dry_run: Vec::new(),
        };
    }

    let mut enforced_allows = 0usize;
    let mut dry_allows = Vec::new();
    let mut dry_allows_matching = Vec::new();
    for p in policies().filter(|p| p.action == Action::Allow) {
        let rule = first_matching_rule(p, &peer);
        if p.dry_run {
            if rule.is_some() {
                dry_allows_matching.push(p.key());
            }
            dry_allows.push(p.key());
            continue;
        }
        enforced_allows += 1;
        if let Some(rule) = rule {
            let key = p.key();
            return Decision {
                verdict: Verdict::Allow,
                reason: format!("ALLOW policy {key} matched (rule {rule})"),
                decided_by: Some((key, rule)),
                dry_run: dry_denies,
            };
        }
    }

    if enforced_allows == 0 {
        // Enforced, dry-run ALLOWs of which none matches would make this a deny.
        let dry_run = if !dry_denies.is_empty() {
            dry_denies
        } else if dry_allows_matching.is_empty() {
            dry_allows
        } else {
            Vec::new()
        };
        return Decision {
            verdict: Verdict::Allow,
            decided_by: None,
            reason: "no ALLOW policy applies".into(),
            dry_run,
        };
    }
    Decision {
        verdict: Verdict::Deny,
        decided_by: None,
        reason: format!(
            "no ALLOW policy matched ({enforced_allows} appl{})",
            if enforced_allows == 1 { "ies" } else { "y" }
        ),
        // A matching dry-run ALLOW would have allowed, unless a dry-run DENY also matched.
        dry_run: if dry_denies.is_empty() {
            dry_allows_matching
        } else {
            Vec::new()
        },
    }
}

/// The policies that apply to `dst`, each once.
fn applicable<'a>(
    snapshot: &'a ConfigSnapshot,
    dst: &'a Workload,
) -> impl Iterator<Item = &'a Policy> + 'a {
    let selected = dst
        .authorization_policies
        .iter()
        .filter_map(|key| snapshot.policy(key))
        // Already taken from the namespace or global lists.
        .filter(|p| match p.scope {
            Scope::Global => false,
            Scope::Namespace => p.namespace != dst.namespace,
            Scope::WorkloadSelector => true,
        });
    snapshot
        .namespace_policies(&dst.namespace)
        .chain(snapshot.global_policies())
        .chain(selected)
        .map(|p| &**p)
}

/// The index of the first rule of `p` that matches; a policy without rules matches nothing.
fn first_matching_rule(p: &Policy, peer: &Peer<'_>) -> Option<usize> {
    p.rules.iter().position(|clauses| {
        // An empty clause holds (upstream); so does a rule without clauses.
        clauses
            .iter()
            .all(|matches| matches.is_empty() || matches.iter().any(|m| match_holds(m, peer)))
    })
}

struct Peer<'a> {
    conn: &'a ConnInfo,
    /// The SPIFFE id without `spiffe://`, built on first use: most policies never ask.
    principal: OnceCell<Option<String>>,
}

impl Peer<'_> {
    fn principal(&self) -> Option<&str> {
        self.principal
            .get_or_init(|| {
                self.conn.src_identity.as_ref().map(|id| {
                    format!(
                        "{}/ns/{}/sa/{}",
                        id.trust_domain, id.namespace, id.service_account
                    )
                })
            })
            .as_deref()
    }
}

/// Any positive entry holds (or there is none) and no negative entry holds. An identity field
/// tested without an identity holds for no entry, so its positive form fails and its `not*`
/// form passes, as upstream.
fn field<T>(positive: &[T], negative: &[T], holds: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&holds)) && !negative.iter().any(holds)
}

fn match_holds(m: &Match, peer: &Peer<'_>) -> bool {
    // A match with no fields at all matches nothing (upstream skips it).
    if is_empty(m) {
        return false;
    }
    let c = peer.conn;
    let id = c.src_identity.as_ref();
    field(&m.destination_ports, &m.not_destination_ports, |p| {
        *p == c.dst_port
    }) && field(&m.destination_ips, &m.not_destination_ips, |n| {
        n.contains(c.dst_ip)
    }) && field(&m.source_ips, &m.not_source_ips, |n| n.contains(c.src_ip))
        && field(&m.namespaces, &m.not_namespaces, |s| {
            id.is_some_and(|id| s.matches(&id.namespace))
        })
        && field(&m.service_accounts, &m.not_service_accounts, |sa| {
            id.is_some_and(|id| {
                id.namespace == sa.namespace && id.service_account == sa.service_account
            })
        })
        && field(&m.principals, &m.not_principals, |s| {
            peer.principal().is_some_and(|p| s.matches(p))
        })
}

fn is_empty(m: &Match) -> bool {
    m.namespaces.is_empty()
        && m.not_namespaces.is_empty()
        && m.service_accounts.is_empty()
        && m.not_service_accounts.is_empty()
        && m.principals.is_empty()
        && m.not_principals.is_empty()
        && m.source_ips.is_empty()
        && m.not_source_ips.is_empty()
        && m.destination_ips.is_empty()
        && m.not_destination_ips.is_empty()
        && m.destination_ports.is_empty()
        && m.not_destination_ports.is_empty()
}
