//! Last-resort cleanup for when containerd could not tear its sandboxes down itself (it crashed,
//! or a test panicked mid-call). Each step only touches what carries this fixture's unique names:
//! its temp root, its cgroup parent, its containerd socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// SIGKILLs the processes in cgroups under `cgroup_parent` (sandbox processes) and the runc
/// shims serving `containerd_socket`.
pub fn kill_leftovers(cgroup_parent: &str, containerd_socket: &Path) {
    let socket = containerd_socket.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let in_our_cgroup = std::fs::read_to_string(entry.path().join("cgroup"))
            .map(|c| c.lines().any(|l| cgroup_path(l).starts_with(cgroup_parent)))
            .unwrap_or(false);
        let our_shim = std::fs::read(entry.path().join("cmdline"))
            .map(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first()
                    .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"-address" && w[1] == socket.as_bytes())
            })
            .unwrap_or(false);
        if in_our_cgroup || our_shim {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// `3:pids:/a/b` -> `/a/b`
fn cgroup_path(line: &str) -> &str {
    line.splitn(3, ':').nth(2).unwrap_or("")
}

/// Lazily unmounts everything mounted at or below `root`, deepest first (sandbox netns files,
/// /dev/shm tmpfs, overlay rootfs).
pub fn unmount_under(root: &Path) {
    let mut points = mounts_under(root);
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .filter(|p| p.starts_with(root))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the (by now empty) cgroup directories runc made under `cgroup_parent` in every
/// hierarchy, children first.
pub fn remove_cgroups(cgroup_parent: &str) {
    let rel = cgroup_parent.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = vec![PathBuf::from("/sys/fs/cgroup").join(rel)];
    roots.extend(hierarchies.flatten().map(|h| h.path().join(rel)));
    for root in roots {
        rmdir_tree(&root);
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    // cgroupfs only allows rmdir (its control files cannot be unlinked).
    let _ = std::fs::remove_dir(dir);
}

/// The sockets of the shims containerd started (they live in /run/containerd/s whatever the
/// state dir; a shim removes its own on a clean exit, a killed one leaves it behind).
pub fn shim_sockets(state: &Path) -> Vec<PathBuf> {
    let Ok(namespaces) = std::fs::read_dir(state.join("io.containerd.runtime.v2.task")) else {
        return Vec::new();
    };
    namespaces
        .flatten()
        .filter_map(|ns| std::fs::read_dir(ns.path()).ok())
        .flat_map(|tasks| tasks.flatten())
        .filter_map(|task| std::fs::read_to_string(task.path().join("address")).ok())
        .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
        .collect()
}
