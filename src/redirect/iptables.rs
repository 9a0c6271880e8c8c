//! iptables backend: one `iptables-restore -w --noflush` transaction per change.
//!
//! `--noflush` keeps everything else in the pod's tables; our rules live in dedicated chains
//! hooked from the built-ins, so removal is unhook + flush + delete. iptables-restore cannot say
//! "add this jump unless present", so install and uninstall first read `iptables-save` and emit
//! only the hooks that are missing (install) or present (uninstall).

use std::fmt::Write;

use super::exec::NetnsHandle;
use super::rules::{self, Action, Hook, Match, Proto, Rule, Table, CHAIN_OUTPUT, CHAIN_PREROUTING};
use super::{RedirectConfig, RedirectError};

const TABLES: [Table; 2] = [Table::Mangle, Table::Nat];
const HOOKS: [Hook; 2] = [Hook::Prerouting, Hook::Output];

fn table_name(t: Table) -> &'static str {
    match t {
        Table::Nat => "nat",
        Table::Mangle => "mangle",
    }
}

fn builtin(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "PREROUTING",
        Hook::Output => "OUTPUT",
    }
}

fn chain(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => CHAIN_PREROUTING,
        Hook::Output => CHAIN_OUTPUT,
    }
}

fn hook_rule(h: Hook) -> String {
    format!("-A {} -j {}", builtin(h), chain(h))
}

/// What of ours is already in the netns, parsed from `iptables-save`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    /// (table, hook) → number of jumps from the built-in chain into our chain.
    hooks: Vec<(Table, Hook, usize)>,
    /// (table, hook) whose dedicated chain exists.
    chains: Vec<(Table, Hook)>,
}

impl Existing {
    pub(crate) fn parse(save: &str) -> Existing {
        let mut out = Existing::default();
        let mut table = None;
        for line in save.lines() {
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix('*') {
                table = TABLES.into_iter().find(|t| table_name(*t) == name);
                continue;
            }
            let Some(t) = table else { continue };
            for h in HOOKS {
                if line.starts_with(&format!(":{} ", chain(h))) {
                    out.chains.push((t, h));
                }
                if line == hook_rule(h) {
                    match out
                        .hooks
                        .iter_mut()
                        .find(|(tt, hh, _)| *tt == t && *hh == h)
                    {
                        Some(entry) => entry.2 += 1,
                        None => out.hooks.push((t, h, 1)),
                    }
                }
            }
        }
        out
    }

    fn hook_count(&self, t: Table, h: Hook) -> usize {
        self.hooks
            .iter()
            .find(|(tt, hh, _)| *tt == t && *hh == h)
            .map_or(0, |e| e.2)
    }

    fn has_chain(&self, t: Table, h: Hook) -> bool {
        self.chains.contains(&(t, h))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.hooks.is_empty() && self.chains.is_empty()
    }
}

fn render_match(m: &Match, out: &mut String) {
    let not = |neg: bool| if neg { "! " } else { "" };
    let _ = match m {
        Match::Proto(Proto::Tcp) => write!(out, " -p tcp -m tcp"),
        Match::Proto(Proto::Udp) => write!(out, " -p udp -m udp"),
        Match::DstPort { port, neg } => write!(out, " {}--dport {port}", not(*neg)),
        Match::SrcAddr { addr, neg } => write!(out, " {}-s {addr}/32", not(*neg)),
        Match::DstAddr { addr, neg } => write!(out, " {}-d {addr}/32", not(*neg)),
        Match::OutIface(name) => write!(out, " -o {name}"),
        Match::Mark { value, mask, neg } => {
            write!(out, " -m mark {}--mark {value:#x}/{mask:#x}", not(*neg))
        }
        Match::ConnMark { value, mask } => write!(out, " -m connmark --mark {value:#x}/{mask:#x}"),
    };
}

fn render_action(a: &Action, out: &mut String) {
    let _ = match a {
        Action::Accept => write!(out, " -j ACCEPT"),
        Action::Redirect(port) => write!(out, " -j REDIRECT --to-ports {port}"),
        Action::SetConnMark { value, mask } => {
            write!(out, " -j CONNMARK --set-xmark {value:#x}/{mask:#x}")
        }
        Action::RestoreMark => write!(
            out,
            " -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        ),
    };
}

fn render_rule(r: &Rule) -> String {
    let mut line = format!("-A {}", chain(r.hook));
    for m in &r.matches {
        render_match(m, &mut line);
    }
    render_action(&r.action, &mut line);
    line
}

/// The install transaction given what is already there. Declaring an existing chain under
/// `--noflush` flushes it, which is what makes re-install replace rather than duplicate rules.
pub(crate) fn install_script(cfg: &RedirectConfig, existing: &Existing) -> String {
    let all = rules::rules(cfg);
    let mut s = String::new();
    for t in TABLES {
        let _ = writeln!(s, "*{}", table_name(t));
        for h in HOOKS {
            let _ = writeln!(s, ":{} - [0:0]", chain(h));
        }
        for h in HOOKS {
            if existing.hook_count(t, h) == 0 {
                let _ = writeln!(s, "{}", hook_rule(h));
            }
        }
        for r in all.iter().filter(|r| r.table == t) {
            let _ = writeln!(s, "{}", render_rule(r));
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// The removal transaction for what is there; empty when nothing of ours exists.
pub(crate) fn uninstall_script(existing: &Existing) -> String {
    let mut s = String::new();
    for t in TABLES {
        let hooks: usize = HOOKS.iter().map(|h| existing.hook_count(t, *h)).sum();
        let chains = HOOKS.iter().filter(|h| existing.has_chain(t, **h)).count();
        if hooks == 0 && chains == 0 {
            continue;
        }
        let _ = writeln!(s, "*{}", table_name(t));
        for h in HOOKS {
            for _ in 0..existing.hook_count(t, h) {
                let _ = writeln!(s, "-D {} -j {}", builtin(h), chain(h));
            }
        }
        for h in HOOKS.into_iter().filter(|h| existing.has_chain(t, *h)) {
            let _ = writeln!(s, "-F {}\n-X {}", chain(h), chain(h));
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// The full install script for a netns that has none of our rules yet.
pub fn iptables_restore_script(cfg: &RedirectConfig) -> String {
    install_script(cfg, &Existing::default())
}

fn existing(ns: &NetnsHandle) -> Result<Existing, RedirectError> {
    Ok(Existing::parse(&ns.run("iptables-save", &[], None)?))
}

pub(crate) fn install(ns: &NetnsHandle, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    let script = install_script(cfg, &existing(ns)?);
    ns.run("iptables-restore", &["-w", "--noflush"], Some(&script))?;
    Ok(())
}

pub(crate) fn is_installed(ns: &NetnsHandle) -> Result<bool, RedirectError> {
    let found = existing(ns)?;
    Ok(TABLES.iter().all(|t| {
        HOOKS
            .iter()
            .all(|h| found.hook_count(*t, *h) > 0 && found.has_chain(*t, *h))
    }))
}

pub(crate) fn uninstall(ns: &NetnsHandle) -> Result<(), RedirectError> {
    let found = existing(ns)?;
    if !found.is_empty() {
        ns.run(
            "iptables-restore",
            &["-w", "--noflush"],
            Some(&uninstall_script(&found)),
        )?;
    }
    drop_empty_nft_tables(ns);
    Ok(())
}

/// iptables-nft creates `ip nat`/`ip mangle` nftables tables on first use and never deletes
/// them. An empty table with ACCEPT built-ins is behaviourally nothing, so remove it to leave the
/// netns as we found it (we cannot know whether an empty table predated us; either way no packet
/// is treated differently). Legacy iptables tables cannot be removed; nothing to do there.
fn drop_empty_nft_tables(ns: &NetnsHandle) {
    let is_nft = ns
        .run("iptables", &["-V"], None)
        .map(|v| v.contains("nf_tables"))
        .unwrap_or(false);
    if !is_nft {
        return;
    }
    let Ok(save) = ns.run("iptables-save", &[], None) else {
        return;
    };
    for t in TABLES {
        if table_is_empty(&save, table_name(t)) {
            let _ = ns.run("nft", &["delete", "table", "ip", table_name(t)], None);
        }
    }
}

fn table_is_empty(save: &str, name: &str) -> bool {
    let mut inside = false;
    for line in save.lines() {
        if let Some(n) = line.strip_prefix('*') {
            inside = n == name;
            continue;
        }
        if !inside || line == "COMMIT" || line.starts_with('#') {
            continue;
        }
        // Only built-in chains with ACCEPT policy and no rules may remain.
        let builtin_accept = line.starts_with(':') && line.contains(" ACCEPT ");
        if !builtin_accept {
            return false;
        }
    }
    // A table that is absent from the dump is "empty" too; `nft delete` then fails harmlessly.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_script_hooks_and_redirects() {
        let s = iptables_restore_script(&RedirectConfig::default());
        let expected_nat = "*nat\n\
            :ISTIO_PRERT - [0:0]\n\
            :ISTIO_OUTPUT - [0:0]\n\
            -A PREROUTING -j ISTIO_PRERT\n\
            -A OUTPUT -j ISTIO_OUTPUT\n\
            -A ISTIO_PRERT -p tcp -m tcp -s 169.254.7.127/32 -j ACCEPT\n\
            -A ISTIO_PRERT -p tcp -m tcp ! --dport 15008 ! -d 127.0.0.1/32 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006\n\
            -A ISTIO_OUTPUT -p tcp -m tcp -d 169.254.7.127/32 -j ACCEPT\n\
            -A ISTIO_OUTPUT -p tcp -m tcp -m mark --mark 0x111/0xfff -j ACCEPT\n\
            -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT\n\
            -A ISTIO_OUTPUT -p tcp -m tcp ! -d 127.0.0.1/32 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001\n\
            COMMIT\n";
        assert!(s.ends_with(expected_nat), "{s}");
        assert!(s.starts_with(
            "*mangle\n\
             :ISTIO_PRERT - [0:0]\n\
             :ISTIO_OUTPUT - [0:0]\n\
             -A PREROUTING -j ISTIO_PRERT\n\
             -A OUTPUT -j ISTIO_OUTPUT\n\
             -A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff\n\
             -A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n\
             COMMIT\n"
        ));
        assert!(!s.contains("15053"));
    }

    #[test]
    fn dns_capture_adds_port_53_redirects() {
        let s = iptables_restore_script(&RedirectConfig {
            dns_capture: true,
            ..Default::default()
        });
        assert!(s.contains("-A ISTIO_OUTPUT -p udp -m udp --dport 53 ! -d 127.0.0.1/32 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053\n"));
        assert!(s.contains("-p tcp -m tcp --dport 53 "));
    }

    #[test]
    fn reinstall_skips_present_hooks_and_uninstall_removes_all() {
        let save = "# Generated\n*mangle\n:PREROUTING ACCEPT [0:0]\n:ISTIO_PRERT - [0:0]\n\
                    :ISTIO_OUTPUT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\n-A OUTPUT -j ISTIO_OUTPUT\n\
                    COMMIT\n*nat\n:ISTIO_PRERT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\n\
                    -A PREROUTING -j ISTIO_PRERT\nCOMMIT\n";
        let e = Existing::parse(save);
        let s = install_script(&RedirectConfig::default(), &e);
        assert_eq!(s.matches("-A PREROUTING -j ISTIO_PRERT").count(), 0);
        // nat OUTPUT was not hooked yet.
        assert_eq!(s.matches("-A OUTPUT -j ISTIO_OUTPUT").count(), 1);
        let u = uninstall_script(&e);
        assert_eq!(
            u,
            "*mangle\n-D PREROUTING -j ISTIO_PRERT\n-D OUTPUT -j ISTIO_OUTPUT\n\
             -F ISTIO_PRERT\n-X ISTIO_PRERT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT\n\
             *nat\n-D PREROUTING -j ISTIO_PRERT\n-D PREROUTING -j ISTIO_PRERT\n\
             -F ISTIO_PRERT\n-X ISTIO_PRERT\nCOMMIT\n"
        );
        assert_eq!(uninstall_script(&Existing::default()), "");
    }

    #[test]
    fn empty_table_detection() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [3:180]\nCOMMIT\n\
                    *mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j MARK --set-mark 1\nCOMMIT\n";
        assert!(table_is_empty(save, "nat"));
        assert!(!table_is_empty(save, "mangle"));
    }
}
