//! The redirect rules as data, written once and rendered by both backends so iptables and
//! nftables can never drift apart.

use std::net::Ipv4Addr;

use super::RedirectConfig;

/// ztunnel's own in-pod sockets carry `cfg.mark`; connections they create or accept get this
/// connmark so replies can be steered back to ztunnel (upstream's value).
pub const CONNMARK: u32 = 0x111;
/// Only the low 12 bits are ours: other agents may use the rest of the mark.
pub const MARK_MASK: u32 = 0xfff;
/// Routing table holding `local 0.0.0.0/0 dev lo`.
pub const ROUTE_TABLE: u32 = 100;
/// Priority of the fwmark rule: just before the kernel's `main` (32766).
pub const RULE_PREF: u32 = 32764;
/// Where DNS goes when `dns_capture` is on.
pub const DNS_PORT: u16 = 15053;
/// Upstream's chain names; the nft backend uses its own table instead.
pub const CHAIN_PREROUTING: &str = "ISTIO_PRERT";
pub const CHAIN_OUTPUT: &str = "ISTIO_OUTPUT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Nat,
    Mangle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One match; `neg` inverts it. Order within a rule is render order (protocol first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Proto(Proto),
    /// Requires a preceding `Proto`.
    DstPort {
        port: u16,
        neg: bool,
    },
    SrcAddr {
        addr: Ipv4Addr,
        neg: bool,
    },
    DstAddr {
        addr: Ipv4Addr,
        neg: bool,
    },
    OutIface(&'static str),
    Mark {
        value: u32,
        mask: u32,
        neg: bool,
    },
    ConnMark {
        value: u32,
        mask: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Redirect(u16),
    /// `ctmark = (ctmark & !mask) ^ value`, i.e. iptables' `--set-xmark`.
    SetConnMark {
        value: u32,
        mask: u32,
    },
    /// Copy the whole connmark into the packet mark.
    RestoreMark,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub hook: Hook,
    pub matches: Vec<Match>,
    pub action: Action,
}

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn rule(table: Table, hook: Hook, matches: Vec<Match>, action: Action) -> Rule {
    Rule {
        table,
        hook,
        matches,
        action,
    }
}

fn not_ours(cfg: &RedirectConfig) -> Match {
    Match::Mark {
        value: cfg.mark,
        mask: MARK_MASK,
        neg: true,
    }
}

/// All rules, in evaluation order per (table, hook).
pub fn rules(cfg: &RedirectConfig) -> Vec<Rule> {
    use Action::*;
    use Hook::*;
    use Match::*;
    use Table::*;
    let tcp = || Proto(self::Proto::Tcp);
    let mut out = vec![
        // Tag connections ztunnel accepts inside the pod (source-preserving) so their replies,
        // which leave through the pod's normal route, get marked below and routed to lo instead.
        rule(
            Mangle,
            Prerouting,
            vec![Mark {
                value: cfg.mark,
                mask: MARK_MASK,
                neg: false,
            }],
            SetConnMark {
                value: CONNMARK,
                mask: MARK_MASK,
            },
        ),
        rule(
            Mangle,
            Output,
            vec![ConnMark {
                value: CONNMARK,
                mask: MARK_MASK,
            }],
            RestoreMark,
        ),
        // Kubelet probes must reach the app directly, or a broken ztunnel fails every probe.
        rule(
            Nat,
            Prerouting,
            vec![
                tcp(),
                SrcAddr {
                    addr: cfg.probe_source,
                    neg: false,
                },
            ],
            Accept,
        ),
        // 15008 is ztunnel's own HBONE listener; everything else inbound goes through 15006.
        rule(
            Nat,
            Prerouting,
            vec![
                tcp(),
                DstPort {
                    port: cfg.hbone_port,
                    neg: true,
                },
                DstAddr {
                    addr: LOCALHOST,
                    neg: true,
                },
                not_ours(cfg),
            ],
            Redirect(cfg.inbound_port),
        ),
        rule(
            Nat,
            Output,
            vec![
                tcp(),
                DstAddr {
                    addr: cfg.probe_source,
                    neg: false,
                },
            ],
            Accept,
        ),
        // Replies of connections tagged above must not be redirected again.
        rule(
            Nat,
            Output,
            vec![
                tcp(),
                Mark {
                    value: CONNMARK,
                    mask: MARK_MASK,
                    neg: false,
                },
            ],
            Accept,
        ),
    ];
    if cfg.dns_capture {
        for proto in [self::Proto::Tcp, self::Proto::Udp] {
            out.push(rule(
                Nat,
                Output,
                vec![
                    Proto(proto),
                    DstPort {
                        port: 53,
                        neg: false,
                    },
                    DstAddr {
                        addr: LOCALHOST,
                        neg: true,
                    },
                    not_ours(cfg),
                ],
                Redirect(DNS_PORT),
            ));
        }
    }
    out.extend([
        // Traffic to the pod's own non-loopback address loops through lo and is caught by
        // PREROUTING as inbound; redirecting it here as well would proxy it twice.
        rule(
            Nat,
            Output,
            vec![
                DstAddr {
                    addr: LOCALHOST,
                    neg: true,
                },
                OutIface("lo"),
            ],
            Accept,
        ),
        rule(
            Nat,
            Output,
            vec![
                tcp(),
                DstAddr {
                    addr: LOCALHOST,
                    neg: true,
                },
                not_ours(cfg),
            ],
            Redirect(cfg.outbound_port),
        ),
    ]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_rules_only_when_enabled() {
        let off = rules(&RedirectConfig::default());
        let on = rules(&RedirectConfig {
            dns_capture: true,
            ..Default::default()
        });
        let dns = |rs: &[Rule]| {
            rs.iter()
                .filter(|r| r.action == Action::Redirect(DNS_PORT))
                .count()
        };
        assert_eq!(dns(&off), 0);
        assert_eq!(dns(&on), 2);
        // DNS capture must sit before the catch-all outbound redirect or it never matches.
        let last = on.last().unwrap();
        assert_eq!(last.action, Action::Redirect(15001));
    }

    #[test]
    fn every_redirect_exempts_our_mark_except_probes() {
        for r in rules(&RedirectConfig::default()) {
            if let Action::Redirect(_) = r.action {
                assert!(r.matches.iter().any(|m| matches!(
                    m,
                    Match::Mark {
                        value: 0x539,
                        neg: true,
                        ..
                    }
                )));
            }
        }
    }
}
