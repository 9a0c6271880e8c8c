//! In-pod traffic redirection: the netfilter rules and policy routes that send a pod's TCP
//! traffic to the ztunnel listeners opened inside that pod (DESIGN.md §3). Used by the tests now
//! and by the cni-agent later; installed inside the pod's netns, removed without a trace.
//!
//! Both backends render the same rule list ([`rules::rules`]) and apply it in one atomic
//! transaction. IPv4 only for the netfilter rules; see [`routes`] for IPv6 routing.

mod exec;
mod iptables;
mod migrate;
mod nft;
pub mod routes;
pub mod rules;

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use iptables::iptables_restore_script;
pub use nft::{nft_script, nft_uninstall_script, NFT_TABLE};

use exec::NetnsHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-restore`/`iptables-save` as installed (nft- or legacy-flavoured).
    Iptables,
    /// Native `nft`, one table of our own.
    Nftables,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub hbone_port: u16,
    /// Mark on ztunnel's own in-pod sockets (masked with 0xfff); such traffic is never redirected.
    pub mark: u32,
    /// Redirect DNS (TCP and UDP port 53) to 15053.
    pub dns_capture: bool,
    /// Kubelet's probe source address, exempted so probes reach the app directly.
    pub probe_source: Ipv4Addr,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            inbound_port: 15006,
            outbound_port: 15001,
            hbone_port: 15008,
            mark: 0x539,
            dns_capture: false,
            probe_source: Ipv4Addr::new(169, 254, 7, 127),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("netns {}: cannot open: {source}", .netns.display())]
    OpenNetns { netns: PathBuf, source: io::Error },
    #[error("netns {}: net.ipv4.tcp_migrate_req: {source}", .netns.display())]
    Sysctl { netns: PathBuf, source: io::Error },
    #[error("netns {}: cannot run `{command}`: {source}", .netns.display())]
    Spawn {
        netns: PathBuf,
        command: String,
        source: io::Error,
    },
    #[error("netns {}: `{command}` failed ({status}): {stderr}", .netns.display())]
    Command {
        netns: PathBuf,
        command: String,
        status: String,
        stderr: String,
    },
}

/// Install the redirect rules and routes into the netns at `netns`. Idempotent: installing
/// again replaces our rules instead of duplicating them. If the routes cannot be added the
/// netfilter rules are removed again, so a failed install does not leave half a redirect.
pub fn install(netns: &Path, backend: Backend, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    let ns = NetnsHandle::open(netns)?;
    match backend {
        Backend::Iptables => iptables::install(&ns, cfg)?,
        Backend::Nftables => nft::install(&ns, cfg)?,
    }
    if let Err(e) = routes::install(&ns) {
        let _ = uninstall_rules(&ns, backend);
        return Err(e);
    }
    // Best effort: without it (kernel < 5.14) capture still works, only a ztunnel upgrade may
    // reset the few connections queued on the old ztunnel's listeners.
    if let Err(e) = migrate::enable(&ns) {
        tracing::warn!(netns = %netns.display(), error = %e,
            "cannot set net.ipv4.tcp_migrate_req=1; a ztunnel upgrade may reset connections queued on the old listeners");
    }
    Ok(())
}

/// Sets `net.ipv4.tcp_migrate_req=1` in the netns at `netns` (what [`install`] does besides
/// the rules), for a pod whose rules an earlier agent installed.
pub fn enable_listener_migration(netns: &Path) -> Result<(), RedirectError> {
    let ns = NetnsHandle::open(netns)?;
    migrate::enable(&ns).map_err(|source| RedirectError::Sysctl {
        netns: netns.to_owned(),
        source,
    })
}

/// Whether the netns at `netns` moves a closing SO_REUSEPORT listener's queued connections to
/// a sibling (`net.ipv4.tcp_migrate_req=1`, set by [`install`]).
pub fn listener_migration_enabled(netns: &Path) -> Result<bool, RedirectError> {
    let ns = NetnsHandle::open(netns)?;
    migrate::read(&ns)
        .map(|v| v == "1")
        .map_err(|source| RedirectError::Sysctl {
            netns: netns.to_owned(),
            source,
        })
}

/// Remove everything [`install`] added; a netns without our rules is fine. `cfg` is accepted
/// for symmetry with install (removal does not depend on it: chains and tables are ours by name).
pub fn uninstall(
    netns: &Path,
    backend: Backend,
    _cfg: &RedirectConfig,
) -> Result<(), RedirectError> {
    let ns = NetnsHandle::open(netns)?;
    let rules = uninstall_rules(&ns, backend);
    let routes = routes::uninstall(&ns);
    rules.and(routes)
}

/// Whether everything [`install`] adds is present in the netns at `netns` (our chains hooked or
/// our table, and the v4 policy route). Lets a restarted agent leave a captured pod alone instead
/// of re-applying rules it already has. Presence, not content: install is atomic, so our chains
/// exist either complete or not at all unless someone edits them by hand.
pub fn is_installed(netns: &Path, backend: Backend) -> Result<bool, RedirectError> {
    let ns = NetnsHandle::open(netns)?;
    let rules = match backend {
        Backend::Iptables => iptables::is_installed(&ns)?,
        Backend::Nftables => nft::is_installed(&ns)?,
    };
    Ok(rules && routes::is_installed(&ns)?)
}

fn uninstall_rules(ns: &NetnsHandle, backend: Backend) -> Result<(), RedirectError> {
    match backend {
        Backend::Iptables => iptables::uninstall(ns),
        Backend::Nftables => nft::uninstall(ns),
    }
}

/// Nftables when `nft list tables` works in our own netns (binary present, kernel nf_tables
/// usable), else Iptables. Deliberately simple: rules go into the pod's netns, which starts
/// empty, so the host's choice does not constrain ours; nft is preferred because one table is
/// cleaner to own than chains inside shared tables.
pub fn detect_backend() -> Backend {
    let works = Command::new("nft")
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if works {
        Backend::Nftables
    } else {
        Backend::Iptables
    }
}
