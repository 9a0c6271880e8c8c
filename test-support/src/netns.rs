use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A named network namespace this process created; dropping it deletes it.
///
/// Only namespaces made through [`Netns::create`] exist as guards, so Drop can never delete a
/// namespace that belongs to another run.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME` and bring `lo` up (sockets bound to 127.0.0.1 and `local` routes on lo
    /// need it). Fails if NAME already exists: adopting it would later delete someone else's.
    pub fn create(name: &str) -> Result<Netns> {
        run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating netns {name}"))?;
        // Guard first, so a failure below still removes the namespace.
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, usable wherever a netns path is accepted.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// A `Command` that runs `program` inside this namespace (`ip netns exec`), for callers that
    /// want their own stdio or environment.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Run to completion inside the namespace; returns stdout, or an error carrying stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.command(program).args(args))
            .with_context(|| format!("in netns {}: {program} {}", self.name, args.join(" ")))
    }

    /// Start a long-running child inside the namespace (stdin and stdout null, stderr inherited);
    /// it is killed and reaped when the returned guard drops, and killed when this Netns drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        self.spawn_command(cmd)
    }

    /// Like [`Netns::spawn`] for a command built with [`Netns::command`] (e.g. stdout piped).
    pub fn spawn_command(&self, mut cmd: Command) -> Result<ChildGuard> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning in netns {}: {cmd:?}", self.name))?;
        Ok(ChildGuard { child: Some(child) })
    }

    /// An fd for setns(2) or for handing to a proxy over SCM_RIGHTS.
    pub fn open_fd(&self) -> Result<OwnedFd> {
        let f = File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?;
        Ok(OwnedFd::from(f))
    }

    /// SIGKILL every process in the namespace. Only processes we started can be in a namespace
    /// we created, so this cannot hit anyone else's; `ip netns del` alone would leave them running
    /// (and the namespace alive through them).
    fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = match run(Command::new("ip").args(["netns", "pids", &self.name])) {
                Ok(out) => out,
                Err(_) => return,
            };
            let pids: Vec<i32> = pids
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            let me = std::process::id() as i32;
            if pids.iter().all(|p| *p == me) || Instant::now() > deadline {
                return;
            }
            // A process that setns'd its main thread in here must not shoot itself.
            for pid in pids.into_iter().filter(|p| *p != me) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this also runs while unwinding from a failed assertion.
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process that is killed and reaped on drop, so a failing test leaves no stray servers.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards a child started some other way (e.g. in the host netns with its own environment).
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child) }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Hand the child over without killing it (e.g. to wait for its exit status).
    pub fn into_inner(mut self) -> Child {
        self.child.take().expect("child present until drop")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run `f` on a fresh thread that has entered `ns`, and return its result (a panic in `f` is
/// propagated). Sockets created inside keep the namespace after the thread ends, so this is the
/// way to bind a listener or open a client socket "inside a pod" without a subprocess. A fresh
/// thread because setns is per thread and must not leak into the caller's thread or tokio pool.
pub fn run_in<F, R>(ns: &Netns, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let fd = ns.open_fd().expect("open netns fd");
    thread::scope(|s| {
        let handle = s.spawn(move || {
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns into test netns");
            drop(fd);
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Like [`run_in`] but detached: for servers that keep running while the test goes on.
pub fn thread_in<F, R>(ns: &Netns, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let fd = ns.open_fd().expect("open netns fd");
    thread::spawn(move || {
        setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns into test netns");
        drop(fd);
        f()
    })
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
