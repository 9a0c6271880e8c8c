//! L4 authorization policies as data. Parsed and validated here; evaluation belongs to the
//! authorization code (rules OR, clauses AND, matches OR, fields within a match AND).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// Rules → clauses → matches.
    #[serde(default)]
    pub rules: Vec<Vec<Vec<Match>>>,
    /// Upstream always writes it; a hand-written file may leave it out.
    #[serde(default)]
    pub dry_run: bool,
}

impl Policy {
    /// `namespace/name`, the form workloads use in `authorizationPolicies`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One match: every non-empty field must hold; within a field any entry may match, and no
/// `not*` entry may.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Compared against the peer's SPIFFE id without the `spiffe://` prefix.
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ips: Vec<Cidr>,
    pub not_destination_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// A string test, written as serde_yaml writes enums: `!Exact x`, `!Prefix x`, `!Suffix x`,
/// `!Presence`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "RawStringMatch")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatch {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            StringMatch::Exact(x) => s == x,
            StringMatch::Prefix(x) => s.starts_with(x.as_str()),
            StringMatch::Suffix(x) => s.ends_with(x.as_str()),
            StringMatch::Presence => !s.is_empty(),
        }
    }
}

/// Upstream's `Presence` is a zero-field tuple variant, which serde_yaml writes `!Presence []`;
/// people write a bare `!Presence`. Taking whatever follows the tag accepts both.
#[derive(Deserialize)]
enum RawStringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence(serde::de::IgnoredAny),
}

impl From<RawStringMatch> for StringMatch {
    fn from(r: RawStringMatch) -> Self {
        match r {
            RawStringMatch::Exact(s) => StringMatch::Exact(s),
            RawStringMatch::Prefix(s) => StringMatch::Prefix(s),
            RawStringMatch::Suffix(s) => StringMatch::Suffix(s),
            RawStringMatch::Presence(_) => StringMatch::Presence,
        }
    }
}

/// An address range `ip/len`; a bare IP means that one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CIDR {0:?}: expected `ip/prefix-length` (e.g. 10.0.0.0/8) or an IP")]
pub struct CidrParseError(pub String);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

impl FromStr for Cidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError(s.to_owned());
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            // Reject "+8" and "08" forms that u8::from_str would let through or that hide typos.
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) && l.len() <= 3 => {
                l.parse::<u8>().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
        };
        if prefix_len > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matches_parse_from_yaml_tags() {
        let yaml = "- !Exact cluster.local/ns/demo/sa/web\n- !Prefix a\n- !Suffix b\n- !Presence\n- !Presence []\n";
        let got: Vec<StringMatch> = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            got,
            vec![
                StringMatch::Exact("cluster.local/ns/demo/sa/web".into()),
                StringMatch::Prefix("a".into()),
                StringMatch::Suffix("b".into()),
                StringMatch::Presence,
                StringMatch::Presence,
            ]
        );
        assert!(serde_yaml::from_str::<Vec<StringMatch>>("- !Regex x").is_err());
    }

    #[test]
    fn string_match_semantics() {
        assert!(StringMatch::Prefix("cluster.local/ns/demo/".into())
            .matches("cluster.local/ns/demo/sa/x"));
        assert!(StringMatch::Suffix("/sa/x".into()).matches("cluster.local/ns/demo/sa/x"));
        assert!(!StringMatch::Exact("a".into()).matches("ab"));
        assert!(StringMatch::Presence.matches("x"));
        assert!(!StringMatch::Presence.matches(""));
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(c.contains("10.244.9.1".parse().unwrap()));
        assert!(!c.contains("10.245.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let host: Cidr = "10.0.0.1".parse().unwrap();
        assert_eq!(host.prefix_len, 32);
        assert!(host.contains("10.0.0.1".parse().unwrap()));
        let odd: Cidr = "10.0.0.0/9".parse().unwrap();
        assert!(odd.contains("10.127.255.255".parse().unwrap()));
        assert!(!odd.contains("10.128.0.0".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "fd00::/129",
            "x/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn policy_parses_with_defaults() {
        let yaml = "name: p\nnamespace: demo\nscope: Namespace\naction: Deny\n";
        let p: Policy = serde_yaml::from_str(yaml).unwrap();
        assert!(!p.dry_run);
        assert!(p.rules.is_empty());
        assert_eq!(p.key(), "demo/p");
        assert!(serde_yaml::from_str::<Policy>(&yaml.replace("Deny", "Audit")).is_err());
    }
}
