//! Pods as network namespaces: a veth pair inside the netns (eth0 carries the pod IP), so the
//! pod has an address to be found by and nothing appears in the host netns.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;

use test_support::Netns;

pub struct TestPod {
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

impl TestPod {
    pub fn create(netns_name: &str, ip: Ipv4Addr) -> TestPod {
        let netns = Netns::create(netns_name).unwrap();
        netns
            .exec(
                "ip",
                &[
                    "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
                ],
            )
            .unwrap();
        netns
            .exec("ip", &["addr", "add", &format!("{ip}/28"), "dev", "eth0"])
            .unwrap();
        // No IPv6 link-local addresses: they (and their routes) appear a moment after link-up,
        // which would make "before" and "after" rule snapshots differ for reasons of their own.
        for dev in ["eth0", "peer0"] {
            netns
                .exec("ip", &["link", "set", dev, "addrgenmode", "none"])
                .unwrap();
        }
        netns.exec("ip", &["link", "set", "eth0", "up"]).unwrap();
        netns.exec("ip", &["link", "set", "peer0", "up"]).unwrap();
        TestPod {
            netns,
            ip,
            uid: String::new(),
            namespace: String::new(),
            name: String::new(),
        }
    }

    pub fn inode(&self) -> u64 {
        std::fs::metadata(self.netns.path()).unwrap().ino()
    }

    pub fn rules(&self) -> String {
        rules_snapshot(&self.netns)
    }

    /// Whether our redirect is in place, for either backend.
    pub fn captured(&self) -> bool {
        let s = self.rules();
        let nat = s.contains("REDIRECT --to-ports 15001") || s.contains("redirect to :15001");
        nat && s.contains("lookup 100")
    }
}

/// Everything redirect install touches, in a form that compares equal when nothing changed.
pub fn rules_snapshot(ns: &Netns) -> String {
    let run = |prog: &str, args: &[&str]| ns.exec(prog, args).unwrap();
    // iptables-save stamps comments with the time; they say nothing about state.
    let iptables: String = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    format!(
        "== iptables\n{iptables}== nft\n{}== ip rule\n{}{}== routes\n{}{}",
        run("nft", &["list", "ruleset"]),
        run("ip", &["-4", "rule"]),
        run("ip", &["-6", "rule"]),
        run("ip", &["-4", "route", "show", "table", "all"]),
        run("ip", &["-6", "route", "show", "table", "all"]),
    )
}
