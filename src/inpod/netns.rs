//! Entering a pod's network namespace to create sockets. setns affects only the calling
//! thread, so we enter, create, and return on the same thread with no await in between; the
//! socket stays in the pod's namespace for its whole life.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};

/// A pod's network namespace, held open by its fd (the path may be gone already).
pub struct InpodNetns {
    netns: OwnedFd,
    host: Arc<OwnedFd>,
    inode: u64,
}

impl std::fmt::Debug for InpodNetns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "netns(inode {})", self.inode)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("fd is not a network namespace (it is {0:?})")]
    NotNetns(String),
    #[error("inspecting netns fd: {0}")]
    Io(#[from] io::Error),
}

/// ztunnel's own namespace, captured at start-up before any thread enters another.
pub fn host_netns() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
}

impl InpodNetns {
    /// Takes ownership of `netns` after checking it really is a network namespace. The
    /// kernel is asked (NS_GET_NSTYPE) rather than the fd's path, because an fd opened on a
    /// bind mount such as /run/netns/X reads back as that path.
    pub fn new(host: Arc<OwnedFd>, netns: OwnedFd) -> Result<InpodNetns, NetnsError> {
        const NS_GET_NSTYPE: nix::libc::c_ulong = 0xb703;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd's namespace type.
        let kind = unsafe { nix::libc::ioctl(netns.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != nix::libc::CLONE_NEWNET {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", netns.as_raw_fd()))
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_else(|e| e.to_string());
            return Err(NetnsError::NotNetns(link));
        }
        let inode = nix::sys::stat::fstat(&netns)
            .map_err(io::Error::from)?
            .st_ino;
        Ok(InpodNetns { netns, host, inode })
    }

    /// Identifies the namespace: a pod re-added with the same inode is the same pod sandbox.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Runs `f` with this thread inside the pod's namespace.
    pub fn run<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        setns(self.netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let out = f();
        if let Err(e) = setns(self.host.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A worker thread stranded in a pod namespace would put later sockets of other
            // pods in the wrong place: that is worse than stopping.
            tracing::error!(error = %e, "cannot return to the host network namespace");
            std::process::abort();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_netns_and_refuses_other_fds() {
        let host = Arc::new(host_netns().unwrap());
        let ns: OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        let expected = nix::sys::stat::fstat(&ns).unwrap().st_ino;
        assert_eq!(InpodNetns::new(host.clone(), ns).unwrap().inode(), expected);
        let file: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
        let err = InpodNetns::new(host.clone(), file).unwrap_err();
        assert!(err.to_string().contains("not a network namespace"), "{err}");
        let uts: OwnedFd = std::fs::File::open("/proc/self/ns/uts").unwrap().into();
        assert!(
            InpodNetns::new(host, uts).is_err(),
            "a UTS namespace passed as netns"
        );
    }
}
