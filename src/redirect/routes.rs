//! Policy routing that returns replies of source-preserving connections to ztunnel: packets
//! whose mark was restored to the connmark are looked up in a table whose only route delivers
//! everything locally.
//!
//! IPv4 is mandatory. IPv6 is best effort: a netns with IPv6 disabled (or a kernel without it)
//! must not block capture, so v6 errors are ignored on install and on removal.

use super::exec::NetnsHandle;
use super::rules::{CONNMARK, MARK_MASK, ROUTE_TABLE, RULE_PREF};
use super::RedirectError;

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
}

fn fwmark() -> String {
    format!("{CONNMARK:#x}/{MARK_MASK:#x}")
}

fn has_rule(ns: &NetnsHandle, f: Family) -> Result<bool, RedirectError> {
    let pref = RULE_PREF.to_string();
    let out = ns.run("ip", &[f.flag(), "rule", "show", "pref", &pref], None)?;
    let want = format!("fwmark {} lookup {ROUTE_TABLE}", fwmark());
    Ok(out.lines().any(|l| l.contains(&want)))
}

fn rule_args(f: Family, verb: &'static str) -> Vec<String> {
    [
        f.flag(),
        "rule",
        verb,
        "fwmark",
        &fwmark(),
        "pref",
        &RULE_PREF.to_string(),
        "lookup",
        &ROUTE_TABLE.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn route_args(f: Family, verb: &'static str) -> Vec<String> {
    [
        f.flag(),
        "route",
        verb,
        "local",
        f.any(),
        "dev",
        "lo",
        "table",
        &ROUTE_TABLE.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn run(ns: &NetnsHandle, args: &[String]) -> Result<String, RedirectError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.run("ip", &args, None)
}

fn install_family(ns: &NetnsHandle, f: Family) -> Result<(), RedirectError> {
    if !has_rule(ns, f)? {
        run(ns, &rule_args(f, "add"))?;
    }
    // `replace` is idempotent on its own.
    run(ns, &route_args(f, "replace"))?;
    Ok(())
}

fn uninstall_family(ns: &NetnsHandle, f: Family) -> Result<(), RedirectError> {
    // Duplicates can exist if something else added the same rule; remove all of them.
    for _ in 0..16 {
        if !has_rule(ns, f)? {
            break;
        }
        run(ns, &rule_args(f, "del"))?;
    }
    let table = ROUTE_TABLE.to_string();
    let routes = ns.run("ip", &[f.flag(), "route", "show", "table", &table], None)?;
    if routes
        .lines()
        .any(|l| l.starts_with("local default dev lo"))
    {
        run(ns, &route_args(f, "del"))?;
    }
    Ok(())
}

pub(crate) fn install(ns: &NetnsHandle) -> Result<(), RedirectError> {
    install_family(ns, Family::V4)?;
    let _ = install_family(ns, Family::V6);
    Ok(())
}

pub(crate) fn is_installed(ns: &NetnsHandle) -> Result<bool, RedirectError> {
    if !has_rule(ns, Family::V4)? {
        return Ok(false);
    }
    let table = ROUTE_TABLE.to_string();
    let routes = ns.run("ip", &["-4", "route", "show", "table", &table], None)?;
    Ok(routes
        .lines()
        .any(|l| l.starts_with("local default dev lo")))
}

pub(crate) fn uninstall(ns: &NetnsHandle) -> Result<(), RedirectError> {
    uninstall_family(ns, Family::V4)?;
    let _ = uninstall_family(ns, Family::V6);
    Ok(())
}
