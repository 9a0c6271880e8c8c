//! `net.ipv4.tcp_migrate_req=1` in the pod's netns, so a ztunnel upgrade loses no connection.
//!
//! ztunnel's listeners in a pod are SO_REUSEPORT: during an upgrade the new ztunnel binds beside
//! the old one, then the old one closes its sockets. Closing a listener normally resets every
//! connection still in its accept queue and every handshake in flight towards it; with this
//! sysctl (Linux ≥ 5.14, per netns) the kernel moves them to another listener of the same
//! reuseport group instead, i.e. to the new ztunnel. The agent sets it while it captures the pod
//! because it already works inside the pod's netns with the privileges a sysctl needs (ztunnel's
//! container sees /proc/sys read-only). It is left set on uncapture: it only changes what happens
//! when one of several SO_REUSEPORT listeners of the pod closes (its queue moves to a sibling
//! instead of being reset), which no app relies on.

use std::io::{self, Write};
use std::os::fd::AsFd;

use nix::sched::{setns, CloneFlags};

use super::exec::NetnsHandle;

const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Sets the sysctl inside `ns`. /proc/sys/net shows the namespace of the thread that opens the
/// file, so a short-lived thread enters the pod's netns, writes, and exits (it never comes back,
/// so no other work can run in the wrong namespace).
pub(crate) fn enable(ns: &NetnsHandle) -> io::Result<()> {
    let fd = ns.file().as_fd().try_clone_to_owned()?;
    std::thread::scope(|s| {
        s.spawn(move || -> io::Result<()> {
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let mut f = std::fs::OpenOptions::new().write(true).open(SYSCTL)?;
            f.write_all(b"1")
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("sysctl thread panicked")))
    })
}

/// The sysctl's value inside `ns` (tests and diagnostics).
pub(crate) fn read(ns: &NetnsHandle) -> io::Result<String> {
    let fd = ns.file().as_fd().try_clone_to_owned()?;
    std::thread::scope(|s| {
        s.spawn(move || -> io::Result<String> {
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(std::fs::read_to_string(SYSCTL)?.trim().to_owned())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("sysctl thread panicked")))
    })
}
