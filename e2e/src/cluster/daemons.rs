//! The node daemons of the cluster fixture: a real `cni-agent run` and a real `ztunnel` per
//! node, started, stopped and crashed on request, with their logs kept.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use test_support::NodeId;

use super::manifest_env;
use super::process::{log_tail, Proc};
use super::{idx, Cluster, ISTIOD_ADDR, READINESS_PORT, TRUST_DOMAIN};
use crate::mesh::{find_binary, http_in, STATS_PORT};

impl Cluster {
    fn lock_agents(&self) -> MutexGuard<'_, [Option<Proc>; 2]> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_ztunnels(&self) -> MutexGuard<'_, [Option<Proc>; 2]> {
        self.ztunnels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `cni-agent run` for `node`, in the host netns: it reaches the apiserver on 127.0.0.1
    /// and pods through their netns paths and Unix sockets.
    pub fn start_agent(&self, id: NodeId) -> Result<()> {
        let node = self.node(id);
        let bin = find_binary("cni-agent", self.opts.release_binary)?;
        let plugin = find_binary("meshtunnel-cni", self.opts.release_binary)?;
        let mut cmd = std::process::Command::new(bin);
        cmd.env_clear();
        let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
        manifest_env::apply(
            &mut cmd,
            "cni-agent.yaml",
            &[
                ("NODE_NAME", node.name.to_owned()),
                ("ZTUNNEL_UDS_ADDRESS", path(node.zds_socket())),
                ("CNI_BIN_DIR", path(node.cni_bin_dir())),
                ("CNI_CONF_DIR", path(node.cni_conf_dir())),
                ("MESHTUNNEL_CNI_AGENT_SOCKET", path(node.agent_socket())),
            ],
        )?;
        // Not in the DaemonSet: no in-cluster config here (a kubeconfig with the manifests'
        // service account's token instead), the plugin binary from the build, test timings.
        cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("KUBECONFIG", self.agent_kubeconfig())
            .env("RUST_LOG", &self.opts.log_level)
            .env("MESHTUNNEL_CNI_PLUGIN_BINARY", plugin)
            .env(
                "MESHTUNNEL_CNI_AGENT_TIMEOUT_MS",
                self.opts.plugin_timeout_ms.to_string(),
            )
            .env("MESHTUNNEL_CNI_RECHECK_MS", "500")
            // Where the agent looks for a running pod's netns by its IP: only this node's pods
            // of this run (other runs on the machine may use the same addresses), no /proc scan.
            .env("MESHTUNNEL_NETNS_PREFIX", self.pod_netns_prefix(id))
            .env("MESHTUNNEL_NETNS_SCAN_PROC", "false")
            .args(["run", "--redirect-backend", &self.opts.redirect_backend])
            .arg("--ztunnel-uds")
            .arg(node.zds_socket());
        let mut proc = Proc::spawn(
            cmd,
            &format!("cni-agent on {}", node.name),
            &node.agent_log(),
        )?;
        self.wait_agent_serving(id, &mut proc, Duration::from_secs(20))?;
        self.lock_agents()[idx(id)] = Some(proc);
        Ok(())
    }

    /// Serving = the plugin socket accepts connections and the plugin is chained into the
    /// node's conflist (from then on every pod's ADD reaches the agent).
    fn wait_agent_serving(&self, id: NodeId, proc: &mut Proc, timeout: Duration) -> Result<()> {
        let node = self.node(id);
        let deadline = Instant::now() + timeout;
        loop {
            proc.check_alive()?;
            let listening = unix_listening(&node.agent_socket());
            let chained = self
                .runtime(id)
                .current_conflist()
                .map(|c| c.to_string().contains("\"meshtunnel-cni\""))
                .unwrap_or(false);
            let installed = node.cni_bin_dir().join("meshtunnel-cni").is_file();
            if listening && chained && installed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "cni-agent on {} not serving after {timeout:?} (socket {listening}, chained {chained}, binary {installed}); log:\n{}",
                    node.name,
                    log_tail(&node.agent_log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERMs the agent and waits for its exit.
    pub fn terminate_agent(&self, id: NodeId, timeout: Duration) -> Result<ExitStatus> {
        let proc = self.lock_agents()[idx(id)]
            .take()
            .context("agent not running")?;
        proc.terminate(timeout)
    }

    /// SIGKILLs the agent (a crash; its sockets stay behind as files).
    pub fn kill_agent(&self, id: NodeId) {
        self.lock_agents()[idx(id)] = None;
    }

    pub fn agent_pid(&self, id: NodeId) -> Option<u32> {
        self.lock_agents()[idx(id)].as_ref().map(Proc::id)
    }

    pub fn start_ztunnel(&self, id: NodeId) -> Result<()> {
        let bin = find_binary("ztunnel", self.opts.release_binary)?;
        self.start_ztunnel_binary(id, &bin)
    }

    /// As [`Cluster::start_ztunnel`], with another ztunnel binary given the same environment
    /// (the side-by-side bench runs upstream's ztunnel this way: it reads the same settings).
    pub fn start_ztunnel_binary(&self, id: NodeId, bin: &std::path::Path) -> Result<()> {
        let node = self.node(id);
        let mut cmd = node.netns.command(bin.to_str().context("non-UTF-8 path")?);
        // As upstream's DaemonSet runs it: config over delta xDS and certificates from the
        // Istio CA, both istiod on :15012 (forwarded onto the node's loopback), with the
        // node's pod-bound istio-ca token.
        let istiod = &self.istiod_access[idx(id)];
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let istiod_url = format!("https://{ISTIOD_ADDR}");
        cmd.env_clear();
        manifest_env::apply(
            &mut cmd,
            "ztunnel.yaml",
            &[
                ("NODE_NAME", node.name.to_owned()),
                ("POD_NAME", istiod.credentials.pod_name.clone()),
                ("POD_NAMESPACE", istiod.credentials.pod_namespace.clone()),
                ("INSTANCE_IP", node.wire_ip.to_string()),
                ("INPOD_UDS", path(&node.zds_socket())),
                ("XDS_ADDRESS", istiod_url.clone()),
                ("CA_ADDRESS", istiod_url),
                ("XDS_ROOT_CA", path(&istiod.credentials.root_cert)),
                ("CA_ROOT_CA", path(&istiod.credentials.root_cert)),
                ("AUTH_TOKEN", path(&istiod.credentials.token)),
                ("CLUSTER_ID", istiod.cluster_id.clone()),
                ("TRUST_DOMAIN", TRUST_DOMAIN.to_owned()),
                ("RUST_LOG", self.opts.log_level.clone()),
            ],
        )?;
        // Not in the DaemonSet: istiod is dialled by address here (no cluster DNS), so the name
        // its certificate carries is given, as upstream's ALT_*_HOSTNAME do.
        cmd.env("ALT_XDS_HOSTNAME", &istiod.hostname)
            .env("ALT_CA_HOSTNAME", &istiod.hostname)
            .envs(self.opts.ztunnel_env.iter().map(|(k, v)| (k, v)));
        let proc = Proc::spawn(
            cmd,
            &format!("ztunnel on {}", node.name),
            &node.ztunnel_log(),
        )?;
        self.lock_ztunnels()[idx(id)] = Some(proc);
        Ok(())
    }

    pub fn ztunnel_pid(&self, id: NodeId) -> Option<u32> {
        self.lock_ztunnels()[idx(id)].as_ref().map(Proc::id)
    }

    /// SIGKILLs ztunnel on the node.
    pub fn kill_ztunnel(&self, id: NodeId) {
        self.lock_ztunnels()[idx(id)] = None;
    }

    /// GET /healthz/ready on the node's ztunnel: (status code, body).
    pub fn readiness(&self, id: NodeId) -> Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, READINESS_PORT));
        http_in(&self.node(id).netns, addr, "GET", "/healthz/ready")
    }

    /// The node ztunnel's `/stats/prometheus` text.
    pub fn metrics(&self, id: NodeId) -> Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, STATS_PORT));
        match http_in(&self.node(id).netns, addr, "GET", "/stats/prometheus")? {
            (200, body) => Ok(body),
            (code, body) => bail!("metrics answered {code}: {body}"),
        }
    }

    /// The ztunnel binary as a command run inside the node's namespace (`ztunnel debug ...`
    /// reaches the admin API on that namespace's loopback).
    pub fn ztunnel_command(&self, id: NodeId) -> Result<std::process::Command> {
        let bin = find_binary("ztunnel", self.opts.release_binary)?;
        Ok(self
            .node(id)
            .netns
            .command(bin.to_str().context("non-UTF-8 path")?))
    }

    pub fn wait_ready(&self, id: NodeId, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(p) = self.lock_ztunnels()[idx(id)].as_mut() {
                p.check_alive()?;
            }
            match self.readiness(id) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "ztunnel on {} not ready after {timeout:?}: {last}\n{}",
            self.node(id).name,
            self.diagnostics()
        )
    }

    /// The tails of every process log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s += &format!(
                "--- ztunnel {} ---\n{}\n--- cni-agent {} ---\n{}\n",
                n.name,
                log_tail(&n.ztunnel_log(), 30),
                n.name,
                log_tail(&n.agent_log(), 30)
            );
        }
        s
    }

    pub fn ztunnel_log(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.node(id).ztunnel_log()).unwrap_or_default()
    }

    pub fn agent_log(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.node(id).agent_log()).unwrap_or_default()
    }
}

/// Whether a Unix socket at `path` is listening in this thread's netns, read from
/// /proc/self/net/unix rather than by connecting (which the agent would log as a bad request).
/// A killed agent's socket file stays behind, but its entry there goes.
fn unix_listening(path: &std::path::Path) -> bool {
    // Flags 00010000 = __SO_ACCEPTCON: a listening socket.
    const ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/self/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 8
            && f[7] == want
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & ACCEPTCON != 0)
    })
}
