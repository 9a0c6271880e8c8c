//! What a process holds, read from /proc: open fds, how many of them are sockets, resident
//! memory; and TCP sockets by state in a network namespace. The churn test and the soak bench
//! compare these before and after, so a leak shows as a number that does not come back.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use test_support::Netns;

/// Open file descriptors of `pid`, and how many of them are sockets (in any netns, also in a
/// pod netns that is gone by now: those are invisible to `ss`, not to /proc).
pub fn fds(pid: u32) -> Result<(usize, usize)> {
    let dir = format!("/proc/{pid}/fd");
    let (mut all, mut sockets) = (0, 0);
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(e) = e else { continue };
        all += 1;
        // An fd closed between the listing and the readlink is simply not counted as a socket.
        if std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")) {
            sockets += 1;
        }
    }
    Ok((all, sockets))
}

/// Resident set size of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS for {pid}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// TCP sockets in `netns` by state as `ss` names them (ESTAB, CLOSE-WAIT, FIN-WAIT-2, ...).
pub fn tcp_states(netns: &Netns) -> Result<BTreeMap<String, usize>> {
    Ok(count_states(&netns.exec("ss", &["-Htan"])?))
}

fn count_states(ss: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for state in ss.lines().filter_map(|l| l.split_whitespace().next()) {
        *m.entry(state.to_owned()).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tztunnel\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn states_are_counted_per_line() {
        let ss = "ESTAB 0 0 10.0.0.1:1 10.0.0.2:2\nCLOSE-WAIT 1 0 a:1 b:2\nESTAB 0 0 c:1 d:2\n";
        let m = count_states(ss);
        assert_eq!(m.get("ESTAB"), Some(&2));
        assert_eq!(m.get("CLOSE-WAIT"), Some(&1));
        assert_eq!(m.get("FIN-WAIT-2"), None);
    }

    #[test]
    fn this_process_has_fds_and_memory() {
        let me = std::process::id();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (all, sockets) = fds(me).unwrap();
        assert!(sockets >= 1 && sockets < all, "{sockets} of {all}");
        drop(l);
        assert!(rss_kib(me).unwrap() > 0);
    }
}
