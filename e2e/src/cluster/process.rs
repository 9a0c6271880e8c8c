//! A child process the fixture owns: killed and reaped when dropped, its output appended to a
//! log file that failure messages quote.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct Proc {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout+stderr appended to `log`.
    pub fn spawn(mut cmd: Command, what: &str, log: &Path) -> Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {what}: {cmd:?}"))?;
        Ok(Proc {
            child,
            what: what.to_owned(),
            log: log.to_owned(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the log's tail when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log tail:\n{}",
                self.what,
                log_tail(&self.log, 40)
            );
        }
        Ok(())
    }

    /// SIGTERM, then wait up to `timeout` for the exit.
    pub fn terminate(mut self, timeout: Duration) -> Result<ExitStatus> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL: also the "crash" a test asks for by dropping the guard.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same tail the control plane's failure reports quote.
pub use controlplane::log_tail;
