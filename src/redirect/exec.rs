//! Run a tool inside a network namespace without nsenter or `ip netns exec`: the namespace is
//! opened once in the parent and the child enters it between fork and exec. This works for
//! `/var/run/netns/X` and `/proc/PID/ns/net` alike, and a path that is not a netns fails the spawn
//! instead of silently running the command in our own namespace.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};

use super::RedirectError;

pub(crate) struct NetnsHandle {
    path: PathBuf,
    file: File,
}

impl NetnsHandle {
    pub(crate) fn open(path: &Path) -> Result<NetnsHandle, RedirectError> {
        let file = File::open(path).map_err(|source| RedirectError::OpenNetns {
            netns: path.to_owned(),
            source,
        })?;
        Ok(NetnsHandle {
            path: path.to_owned(),
            file,
        })
    }

    /// The open namespace file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Run `program args` inside the namespace, feeding `stdin`; stdout on success, otherwise an
    /// error carrying the netns, the command line and its stderr.
    pub(crate) fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, RedirectError> {
        let command = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let spawn_err = |source: io::Error| RedirectError::Spawn {
            netns: self.path.clone(),
            command: command.clone(),
            source,
        };
        let raw = self.file.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child and only calls setns(2), which is
        // async-signal-safe, and builds an io::Error from an errno, which does not allocate. `raw`
        // stays open until exec: `self.file` outlives the spawn and CLOEXEC only closes it at exec.
        unsafe {
            cmd.pre_exec(move || {
                setns(BorrowedFd::borrow_raw(raw), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::from_raw_os_error(e as i32))
            });
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(RedirectError::Command {
                netns: self.path.clone(),
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
