//! L4 authorization: which AuthorizationPolicies apply to a destination workload, and whether
//! one connection may reach it. The decision ([`evaluate`]) is pure: no I/O, no clock, no
//! logging, so the proxies, the policy re-check and `ztunnel debug explain` share it.
//!
//! Semantics follow upstream Istio ztunnel: any matching DENY denies; with no ALLOW policy
//! the connection is allowed; otherwise some ALLOW must match. Dry-run policies never change
//! the verdict; the ones that would have are listed in [`Decision::dry_run`].
//!
//! Enforcement ([`LiveConns`]): the inbound proxies admit each connection through their pod's
//! registry, which also closes admitted connections that a policy change no longer allows.

mod eval;
mod live;

use std::fmt;
use std::net::IpAddr;

use crate::identity::Identity;

pub use eval::evaluate;
pub use live::{recheck_on_change, Admitted, LiveConns};

/// What the decision looks at for one connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnInfo {
    pub src_ip: IpAddr,
    /// The verified mTLS peer (HBONE); `None` for plaintext, where no identity field can
    /// match.
    pub src_identity: Option<Identity>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Serializes as `{verdict: "allow"|"deny", decided_by: [key, rule] | null, reason, dry_run}`
/// for admin/debug output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The policy (`namespace/name`) and rule index that decided; `None` = the default
    /// (no ALLOW policy applies → allow; ALLOW policies apply but none matched → deny).
    pub decided_by: Option<(String, usize)>,
    /// One line for logs and `debug explain`.
    pub reason: String,
    /// Dry-run policies (`namespace/name`) that would have flipped the verdict had they been
    /// enforced.
    pub dry_run: Vec<String>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.src_identity {
            Some(id) => write!(f, "{}({id})", self.src_ip)?,
            None => write!(f, "{}(no identity)", self.src_ip)?,
        }
        write!(
            f,
            " -> {}",
            std::net::SocketAddr::new(self.dst_ip, self.dst_port)
        )
    }
}

#[cfg(test)]
mod tests;
