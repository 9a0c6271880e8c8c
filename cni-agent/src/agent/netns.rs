//! Finding and holding on to a pod's network namespace.
//!
//! The CNI ADD names the netns path; for pods that were running before the agent saw their ADD
//! (namespace labelled later, agent restarted) the netns is found by the pod's IP: every netns
//! bind mount in the netns dir and every process's `/proc/PID/ns/net`, deduplicated by inode, is
//! asked which addresses it has. Exactly one match is required: two namespaces with the pod's IP
//! mean we cannot tell which one is the pod, and capturing the wrong one is worse than waiting.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use super::cgroup;

/// A netns as (path, identity). The path is re-opened on every use and checked against the
/// identity, so a recycled `/proc/PID` or a re-created bind mount is never mistaken for the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsRef {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netns {}: {source}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("{} is not a network namespace", .0.display())]
    NotNetns(PathBuf),
    #[error("netns {} was replaced or removed", .0.display())]
    Replaced(PathBuf),
    #[error("no network namespace has the pod's IPs {0:?}")]
    NotFound(Vec<IpAddr>),
    #[error("several network namespaces have the pod's IPs {ips:?}: {paths:?}")]
    Ambiguous {
        ips: Vec<IpAddr>,
        paths: Vec<PathBuf>,
    },
}

impl NetnsRef {
    /// Opens `path` and records its identity; fails unless it is a network namespace.
    pub fn open(path: &Path) -> Result<(NetnsRef, File), NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        // A namespace file lives on nsfs; which kind of namespace is settled when it is entered
        // (setns with CLONE_NEWNET refuses the others).
        let on_nsfs = fstatfs(&file).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC);
        if !on_nsfs {
            return Err(NetnsError::NotNetns(path.to_owned()));
        }
        let this = NetnsRef {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        Ok((this, file))
    }

    /// The same namespace, whatever path reached it.
    pub fn same_as(&self, other: &NetnsRef) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// Opens the netns again, failing if the path now names something else.
    pub fn reopen(&self) -> Result<File, NetnsError> {
        let (now, file) = match NetnsRef::open(&self.path) {
            Ok(x) => x,
            Err(NetnsError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(NetnsError::Replaced(self.path.clone()))
            }
            Err(e) => return Err(e),
        };
        if (now.dev, now.ino) != (self.dev, self.ino) {
            return Err(NetnsError::Replaced(self.path.clone()));
        }
        Ok(file)
    }
}

/// The fd's path through our own `/proc`, valid while `file` stays open: handing this to tools
/// guarantees they act on the netns we checked, not whatever the original path names by then.
pub fn fd_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Where [`discover`] looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Bind-mounted netns files (runtimes put pod sandboxes' here).
    pub netns_dir: PathBuf,
    /// Only entries of `netns_dir` whose name starts with this.
    pub name_prefix: String,
    /// Also every process's `PID/ns/net` under this dir (normally `/proc`); `None` to search
    /// `netns_dir` only.
    pub proc_dir: Option<PathBuf>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            netns_dir: "/var/run/netns".into(),
            name_prefix: String::new(),
            proc_dir: Some("/proc".into()),
        }
    }
}

/// Finds the one netns that has any of `ips` on an interface and is not known to be another
/// pod's: a netns whose processes sit in the cgroup of a different pod uid is skipped, so an IP
/// already reused by a new pod cannot make the old pod's uid capture the new pod. Blocking (it
/// scans `/proc` and enters namespaces on a helper thread); call from a blocking context.
pub fn discover(uid: &str, ips: &[IpAddr], scope: &Discovery) -> Result<NetnsRef, NetnsError> {
    let own = File::open("/proc/self/ns/net")
        .and_then(|f| f.metadata())
        .map(|m| (m.dev(), m.ino()))
        .ok();
    let mut seen = HashSet::new();
    let mut candidates = Vec::new();
    // (dev, ino) → pod uids whose processes live in that netns.
    let mut owners: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut consider = |path: PathBuf, pod_uids: Vec<String>| {
        let Ok((r, file)) = NetnsRef::open(&path) else {
            return;
        };
        let id = (r.dev, r.ino);
        if Some(id) == own {
            return;
        }
        owners.entry(id).or_default().extend(pod_uids);
        if seen.insert(id) {
            candidates.push((r, file));
        }
    };
    // Bind mounts first so that, for a netns reachable both ways, the stable path is kept.
    if let Ok(dir) = std::fs::read_dir(&scope.netns_dir) {
        for entry in dir.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&scope.name_prefix)
            {
                consider(entry.path(), Vec::new());
            }
        }
    }
    let procs = scope
        .proc_dir
        .as_ref()
        .and_then(|p| std::fs::read_dir(p).ok());
    if let Some(dir) = procs {
        for entry in dir.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                let cgroup =
                    std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
                consider(entry.path().join("ns/net"), cgroup::pod_uids(&cgroup));
            }
        }
    }
    candidates.retain(|(r, _)| {
        let uids = owners.get(&(r.dev, r.ino)).map_or(&[][..], Vec::as_slice);
        uids.is_empty() || uids.iter().any(|u| u == uid)
    });
    let wanted: Vec<IpAddr> = ips.to_vec();
    let matches = std::thread::scope(|s| {
        s.spawn(|| {
            candidates
                .into_iter()
                .filter(|(_, file)| netns_has_any(file, &wanted))
                .map(|(r, _)| r)
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap_or_default()
    });
    match matches.len() {
        0 => Err(NetnsError::NotFound(ips.to_vec())),
        1 => Ok(matches.into_iter().next().expect("one match")),
        _ => Err(NetnsError::Ambiguous {
            ips: ips.to_vec(),
            paths: matches.into_iter().map(|m| m.path).collect(),
        }),
    }
}

/// Runs on a throwaway thread (setns is per thread and this one is never returned to a pool).
fn netns_has_any(netns: &File, ips: &[IpAddr]) -> bool {
    if setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs.into_iter().any(|a| {
        let Some(addr) = a.address else { return false };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            return false;
        };
        ips.contains(&ip)
    })
}
