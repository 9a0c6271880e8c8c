//! The real `kubectl` (built with the apiserver), pointed at it through a kubeconfig file.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub binary: PathBuf,
}

impl Kubectl {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            // kubectl caches discovery under $HOME; keep it out of the user's home.
            .env("KUBECACHEDIR", self.kubeconfig.with_file_name("kube-cache"))
            .args(args);
        cmd
    }

    /// Runs kubectl; the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("running {}", self.binary.display()))
    }

    /// Runs kubectl and returns stdout; an error carries stderr.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
