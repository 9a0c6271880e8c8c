//! nftables backend: everything lives in one table of our own, so removal is `delete table` and
//! nothing else in the pod's ruleset is touched. IPv4 only, like the iptables backend.

use std::fmt::Write;

use super::exec::NetnsHandle;
use super::rules::{self, Action, Hook, Match, Proto, Rule, Table};
use super::{RedirectConfig, RedirectError};

pub const NFT_TABLE: &str = "istio-inpod";

/// (table, hook, chain name, chain header). Priorities mirror iptables' so the two backends
/// order identically against other rules: mangle -150, nat -100. Mangle output is a `route`
/// chain because restoring the mark there must trigger a re-route to hit the fwmark rule.
const CHAINS: [(Table, Hook, &str, &str); 4] = [
    (
        Table::Mangle,
        Hook::Prerouting,
        "mangle_prerouting",
        "type filter hook prerouting priority mangle; policy accept;",
    ),
    (
        Table::Mangle,
        Hook::Output,
        "mangle_output",
        "type route hook output priority mangle; policy accept;",
    ),
    (
        Table::Nat,
        Hook::Prerouting,
        "nat_prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        Table::Nat,
        Hook::Output,
        "nat_output",
        "type nat hook output priority -100; policy accept;",
    ),
];

fn render_match(m: &Match, out: &mut String) {
    let op = |neg: bool| if neg { "!=" } else { "==" };
    let _ = match m {
        Match::Proto(Proto::Tcp) => write!(out, " meta l4proto tcp"),
        Match::Proto(Proto::Udp) => write!(out, " meta l4proto udp"),
        // The protocol match before it decides tcp vs udp; `th` works for both.
        Match::DstPort { port, neg } => write!(out, " th dport {} {port}", op(*neg)),
        Match::SrcAddr { addr, neg } => write!(out, " ip saddr {} {addr}", op(*neg)),
        Match::DstAddr { addr, neg } => write!(out, " ip daddr {} {addr}", op(*neg)),
        Match::OutIface(name) => write!(out, " oifname \"{name}\""),
        Match::Mark { value, mask, neg } => {
            write!(out, " meta mark & {mask:#x} {} {value:#x}", op(*neg))
        }
        Match::ConnMark { value, mask } => write!(out, " ct mark & {mask:#x} == {value:#x}"),
    };
}

fn render_action(a: &Action, out: &mut String) {
    let _ = match a {
        Action::Accept => write!(out, " accept"),
        Action::Redirect(port) => write!(out, " redirect to :{port}"),
        // xor, not or, to keep iptables' --set-xmark semantics exactly.
        Action::SetConnMark { value, mask } => {
            write!(out, " ct mark set ct mark & {:#x} ^ {value:#x}", !mask)
        }
        Action::RestoreMark => write!(out, " meta mark set ct mark"),
    };
}

fn render_rule(r: &Rule) -> String {
    let mut line = String::new();
    for m in &r.matches {
        render_match(m, &mut line);
    }
    render_action(&r.action, &mut line);
    line.trim_start().to_owned()
}

/// The install transaction for `nft -f -`. It starts with the declare-then-delete idiom, so the
/// same script both creates the table and atomically replaces an existing one (idempotent
/// install) in a single commit.
pub fn nft_script(cfg: &RedirectConfig) -> String {
    let all = rules::rules(cfg);
    let mut s = format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n");
    let _ = writeln!(s, "table ip {NFT_TABLE} {{");
    for (table, hook, name, header) in CHAINS {
        let _ = writeln!(s, "  chain {name} {{\n    {header}");
        for r in all.iter().filter(|r| r.table == table && r.hook == hook) {
            let _ = writeln!(s, "    {}", render_rule(r));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// Removal, also a no-op when the table is absent (declaring it first makes `delete` succeed).
pub fn nft_uninstall_script() -> String {
    format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
}

pub(crate) fn install(ns: &NetnsHandle, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    ns.run("nft", &["-f", "-"], Some(&nft_script(cfg)))?;
    Ok(())
}

pub(crate) fn is_installed(ns: &NetnsHandle) -> Result<bool, RedirectError> {
    let Ok(listing) = ns.run("nft", &["list", "table", "ip", NFT_TABLE], None) else {
        // `nft` fails when the table does not exist; a missing binary fails install too.
        return Ok(false);
    };
    Ok(CHAINS
        .iter()
        .all(|(_, _, name, _)| listing.contains(&format!("chain {name} {{"))))
}

pub(crate) fn uninstall(ns: &NetnsHandle) -> Result<(), RedirectError> {
    ns.run("nft", &["-f", "-"], Some(&nft_uninstall_script()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_shape() {
        let s = nft_script(&RedirectConfig::default());
        assert!(s.starts_with(
            "table ip istio-inpod\ndelete table ip istio-inpod\ntable ip istio-inpod {\n"
        ));
        for line in [
            "    meta mark & 0xfff == 0x539 ct mark set ct mark & 0xfffff000 ^ 0x111\n",
            "    ct mark & 0xfff == 0x111 meta mark set ct mark\n",
            "    meta l4proto tcp ip saddr == 169.254.7.127 accept\n",
            "    meta l4proto tcp th dport != 15008 ip daddr != 127.0.0.1 meta mark & 0xfff != 0x539 redirect to :15006\n",
            "    meta l4proto tcp ip daddr == 169.254.7.127 accept\n",
            "    meta l4proto tcp meta mark & 0xfff == 0x111 accept\n",
            "    ip daddr != 127.0.0.1 oifname \"lo\" accept\n",
            "    meta l4proto tcp ip daddr != 127.0.0.1 meta mark & 0xfff != 0x539 redirect to :15001\n",
            "type route hook output priority mangle;",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
        assert!(!s.contains("15053"));
        assert!(s.ends_with("  }\n}\n"));
    }

    #[test]
    fn dns_capture_rules() {
        let s = nft_script(&RedirectConfig {
            dns_capture: true,
            ..Default::default()
        });
        assert!(s.contains("meta l4proto udp th dport == 53 ip daddr != 127.0.0.1 meta mark & 0xfff != 0x539 redirect to :15053\n"));
        assert!(s.contains("meta l4proto tcp th dport == 53 "));
    }
}
