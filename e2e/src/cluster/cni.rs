//! Runs a node's CNI conflist the way a container runtime does (libcni's `AddNetworkList` /
//! `DelNetworkList`): the lexically first config in the conf dir, each plugin in turn from the
//! bin dir with the CNI_* environment, the network config on stdin with the previous plugin's
//! result as `prevResult`, DEL in reverse order with the cached ADD result. Plugins run inside
//! the node's network namespace, so the bridge they create lives there.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use test_support::Netns;

/// What a runtime passes to every plugin for one pod sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

impl Sandbox {
    /// Kubelet's CNI_ARGS; `IgnoreUnknown` because plugins refuse keys they do not know.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }
}

/// A failed plugin: which one, and the CNI error it printed (`code`, `msg`, `details`).
#[derive(Debug, Clone)]
pub struct PluginError {
    pub plugin: String,
    pub command: String,
    pub code: Option<u64>,
    pub output: Value,
    pub stderr: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CNI {} failed in plugin {} (code {:?}): {}; stderr: {}",
            self.command,
            self.plugin,
            self.code,
            self.output,
            self.stderr.trim()
        )
    }
}

impl std::error::Error for PluginError {}

/// The outcome of a successful ADD: the conflist that ran (cached for DEL, as libcni does)
/// and the final result.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub conflist: Value,
    pub result: Value,
}

impl Attachment {
    /// The first IPv4 address in the result.
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        self.result["ips"].as_array()?.iter().find_map(|ip| {
            ip["address"]
                .as_str()?
                .split('/')
                .next()?
                .parse::<std::net::Ipv4Addr>()
                .ok()
        })
    }
}

pub struct Runtime<'a> {
    pub node: &'a Netns,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// Upper bound per plugin call; our plugin has its own, shorter, agent deadline.
    pub timeout: Duration,
}

impl Runtime<'_> {
    /// The config a runtime would pick: the lexically first `.conflist`/`.conf`/`.json` file.
    pub fn current_conflist(&self) -> Result<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .with_context(|| format!("reading {}", self.conf_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let path = files
            .first()
            .with_context(|| format!("no CNI config in {}", self.conf_dir.display()))?;
        let v: Value = serde_json::from_slice(&std::fs::read(path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        if v.get("plugins").is_some() {
            Ok(v)
        } else {
            // A single-plugin .conf is a list of one.
            let mut list = serde_json::json!({
                "cniVersion": v["cniVersion"].clone(),
                "name": v["name"].clone(),
                "plugins": [v.clone()]
            });
            if let Some(p) = list["plugins"][0].as_object_mut() {
                p.remove("cniVersion");
                p.remove("name");
            }
            Ok(list)
        }
    }

    /// ADD through the list. On a failure, runs DEL over the whole list (the runtime's
    /// teardown of the failed sandbox, which frees the address) and returns the error.
    pub fn add(&self, sb: &Sandbox) -> Result<Attachment> {
        let conflist = self.current_conflist()?;
        let mut prev: Option<Value> = None;
        for plugin in plugins(&conflist)? {
            match self.exec(&conflist, &plugin, "ADD", sb, prev.as_ref())? {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    let _ = self.del_with(&conflist, sb, prev.as_ref());
                    return Err(e.into());
                }
            }
        }
        Ok(Attachment {
            result: prev.context("empty plugin list")?,
            conflist,
        })
    }

    /// DEL in reverse order with the cached ADD result. Every plugin is called even when one
    /// fails; the first failure is returned.
    pub fn del(&self, sb: &Sandbox, attachment: &Attachment) -> Result<()> {
        self.del_with(&attachment.conflist, sb, Some(&attachment.result))
    }

    fn del_with(&self, conflist: &Value, sb: &Sandbox, prev: Option<&Value>) -> Result<()> {
        let mut first_err = None;
        for plugin in plugins(conflist)?.iter().rev() {
            let outcome = self.exec(conflist, plugin, "DEL", sb, prev);
            let err = match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(anyhow::Error::from(e)),
                Err(e) => Some(e),
            };
            if first_err.is_none() {
                first_err = err;
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// One plugin call. Outer error: the plugin could not be run at all; inner: it ran and
    /// reported a CNI error.
    fn exec(
        &self,
        conflist: &Value,
        plugin: &Value,
        command: &str,
        sb: &Sandbox,
        prev: Option<&Value>,
    ) -> Result<std::result::Result<Value, PluginError>> {
        let ty = plugin["type"]
            .as_str()
            .context("plugin entry without a type")?
            .to_owned();
        if ty.contains('/') {
            bail!("plugin type {ty:?} is not a file name");
        }
        let binary = self.bin_dir.join(&ty);
        let mut conf = plugin.clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["name"] = conflist["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let mut cmd = self.node.command(path_str(&binary)?);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sb.container_id)
            .env("CNI_NETNS", &sb.netns)
            .env("CNI_IFNAME", &sb.ifname)
            .env("CNI_PATH", &self.bin_dir)
            .env("CNI_ARGS", sb.cni_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (status, stdout, stderr) = run_with_timeout(cmd, &conf.to_string(), self.timeout)
            .with_context(|| format!("running CNI plugin {ty} {command}"))?;
        let output: Value = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or(Value::String(stdout.clone()))
        };
        if status {
            return Ok(Ok(output));
        }
        Ok(Err(PluginError {
            plugin: ty,
            command: command.to_owned(),
            code: output["code"].as_u64(),
            output,
            stderr,
        }))
    }
}

fn plugins(conflist: &Value) -> Result<Vec<Value>> {
    conflist["plugins"]
        .as_array()
        .cloned()
        .context("conflist without plugins")
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

/// Runs `cmd` with `stdin`, killing it after `timeout`: (success, stdout, stderr).
fn run_with_timeout(
    mut cmd: Command,
    stdin: &str,
    timeout: Duration,
) -> Result<(bool, String, String)> {
    let mut child = cmd.spawn()?;
    let mut input = child.stdin.take().context("no stdin pipe")?;
    // A plugin that exits without reading stdin closes the pipe: not our error.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let mut out = child.stdout.take().context("no stdout pipe")?;
    let mut err = child.stderr.take().context("no stderr pipe")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok((status.success(), stdout, stderr))
}
