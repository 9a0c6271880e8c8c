//! The two-node mesh fixture. Everything it makes (namespaces, rules, sockets, processes, the
//! temp dir) is removed when it drops, also while a failing test unwinds.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meshtunnel::identity::LocalCa;
use meshtunnel::redirect::{self, Backend, RedirectConfig};
use meshtunnel::zds::{WorkloadInfo, ZdsError, ZdsServer};
use test_support::{unique_prefix, ChildGuard, Netns, NodeId, Topology};

mod tools;
pub use tools::{find_binary, http_in, run_cmd};

pub const NAMESPACE: &str = "demo";
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const READINESS_PORT: u16 = 15021;
pub const STATS_PORT: u16 = 15020;
pub const ADMIN_PORT: u16 = 15000;

#[derive(Clone, Debug)]
pub struct PodSpec {
    /// Topology pod name: a1, a2 (node A), b1, b2 (node B).
    pub name: &'static str,
    /// `HBONE` (meshed) or `TCP` (plain) in the config.
    pub protocol: &'static str,
    /// Capture rules installed and enrolled over ZDS.
    pub meshed: bool,
    /// Listed in the config file at start.
    pub in_config: bool,
    pub service_account: String,
    /// The service account the agent reports over ZDS, when it should differ from the config
    /// (an impostor: ztunnel then presents a certificate its peers do not expect).
    pub zds_service_account: Option<String>,
}

impl PodSpec {
    pub fn meshed(name: &'static str) -> Self {
        PodSpec {
            name,
            protocol: "HBONE",
            meshed: true,
            in_config: true,
            service_account: format!("sa-{name}"),
            zds_service_account: None,
        }
    }

    pub fn plain(name: &'static str) -> Self {
        PodSpec {
            protocol: "TCP",
            meshed: false,
            ..PodSpec::meshed(name)
        }
    }
}

#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub pods: Vec<PodSpec>,
    pub backend: Backend,
    pub log_level: String,
    pub release_binary: bool,
    /// Extra environment for both ztunnels (settings such as METRICS_RETENTION).
    pub env: Vec<(String, String)>,
    /// The config file's `policies:` list (YAML list items), written at start.
    pub policies: String,
    /// The echo service's `waypoint:` (a GatewayAddress in flow YAML), if any.
    pub echo_waypoint: Option<String>,
    /// Services besides `echo`, each backed by the pods it names.
    pub extra_services: Vec<ExtraService>,
}

/// A service of the config file (namespace demo) besides `echo`: `vip:port` -> `target_port`
/// on each of `endpoints` (pod names; may be empty: a service with no endpoint).
#[derive(Clone, Debug)]
pub struct ExtraService {
    pub name: &'static str,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub target_port: u16,
    pub endpoints: Vec<&'static str>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            pods: vec![
                PodSpec::meshed("a1"),
                PodSpec::meshed("a2"),
                PodSpec::meshed("b1"),
                PodSpec::plain("b2"),
            ],
            backend: Backend::Nftables,
            log_level: "info".into(),
            release_binary: false,
            env: Vec::new(),
            policies: String::new(),
            echo_waypoint: None,
            extra_services: Vec::new(),
        }
    }
}

pub struct Mesh {
    // Field order is drop order: processes, then agent sockets, then namespaces, then files.
    ztunnels: [Option<ChildGuard>; 2],
    /// The namespace a node's ztunnel runs in after [`Mesh::upgrade_ztunnel`] (its own, as a
    /// new DaemonSet pod's); None: the node's namespace.
    ztunnel_netns: [Option<Netns>; 2],
    /// Upgrades so far, for unique namespace names.
    upgrades: u32,
    zds: [Option<ZdsServer>; 2],
    pub topo: Topology,
    pub dir: tempfile::TempDir,
    pub opts: MeshOptions,
    pub rt: tokio::runtime::Runtime,
}

fn idx(node: NodeId) -> usize {
    match node {
        NodeId::A => 0,
        NodeId::B => 1,
    }
}

/// The node's name in the config (a workload's `node:`).
pub fn node_name(node: NodeId) -> &'static str {
    match node {
        NodeId::A => "node-a",
        NodeId::B => "node-b",
    }
}

impl Mesh {
    /// Builds the topology, writes config and CA, binds the agents' ZDS sockets, installs the
    /// capture rules of meshed pods, starts both ztunnels and waits until they are ready.
    pub fn start(opts: MeshOptions) -> Result<Mesh> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let topo = Topology::two_nodes(&unique_prefix())?;
        let dir = tempfile::Builder::new()
            .prefix("meshtunnel-e2e-")
            .tempdir()?;
        LocalCa::load_or_create(&dir.path().join("ca"), TRUST_DOMAIN)?;
        let mut mesh = Mesh {
            ztunnels: [None, None],
            ztunnel_netns: [None, None],
            upgrades: 0,
            zds: [None, None],
            topo,
            dir,
            opts,
            rt,
        };
        mesh.write_config(&mesh.opts.pods.clone())?;
        for node in [NodeId::A, NodeId::B] {
            let path = mesh.zds_path(node);
            let server = mesh.rt.block_on(async { ZdsServer::bind(&path) })?;
            mesh.zds[idx(node)] = Some(server);
        }
        for pod in mesh.opts.pods.clone() {
            if pod.meshed {
                mesh.enroll(pod.name)?;
            }
        }
        for node in [NodeId::A, NodeId::B] {
            mesh.start_ztunnel(node)?;
        }
        for node in [NodeId::A, NodeId::B] {
            mesh.wait_ready(node, Duration::from_secs(20))?;
        }
        Ok(mesh)
    }

    /// The pod's ZDS uid (a Kubernetes pod UID in a cluster).
    pub fn uid(&self, pod: &str) -> String {
        format!("{}-uid-{pod}", self.topo.prefix())
    }

    /// The uid of the pod's workload in the config, named the way istiod names it: ztunnel must
    /// match the pod to it by name, namespace, service account and node, not by [`Mesh::uid`].
    pub fn workload_uid(&self, pod: &str) -> String {
        crate::cluster::workload_uid(NAMESPACE, pod)
    }

    pub fn pod_ns(&self, pod: &str) -> &Netns {
        self.topo.pod_ns(pod)
    }

    pub fn pod_ip(&self, pod: &str) -> Ipv4Addr {
        self.topo.pod_ip(pod)
    }

    pub fn addr(&self, pod: &str, port: u16) -> SocketAddr {
        SocketAddr::from((self.pod_ip(pod), port))
    }

    pub fn node_of(&self, pod: &str) -> NodeId {
        self.topo.pod(pod).node
    }

    pub fn spec(&self, pod: &str) -> &PodSpec {
        self.opts
            .pods
            .iter()
            .find(|p| p.name == pod)
            .expect("pod in the mesh options")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn zds_path(&self, node: NodeId) -> PathBuf {
        self.dir
            .path()
            .join(format!("zds-{}.sock", node_name(node)))
    }

    pub fn log_path(&self, node: NodeId) -> PathBuf {
        self.dir
            .path()
            .join(format!("ztunnel-{}.log", node_name(node)))
    }

    /// ztunnel's log so far (for failure messages and the demo).
    pub fn logs(&self, node: NodeId) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// Writes the local config file (upstream ztunnel's local-config schema) listing `pods`
    /// that have `in_config`, plus a service `echo` (VIP 10.96.0.10:80 -> 8080) backed by b1,
    /// and the policies of the mesh options.
    pub fn write_config(&self, pods: &[PodSpec]) -> Result<()> {
        self.write_config_with(pods, &self.opts.policies)
    }

    /// As [`Mesh::write_config`], with `policies` (YAML list items) as the `policies:` list.
    pub fn write_config_with(&self, pods: &[PodSpec], policies: &str) -> Result<()> {
        self.write_config_full(pods, policies, self.opts.echo_waypoint.as_deref())
    }

    /// As [`Mesh::write_config_with`], with `echo_waypoint` as the echo service's waypoint.
    pub fn write_config_full(
        &self,
        pods: &[PodSpec],
        policies: &str,
        echo_waypoint: Option<&str>,
    ) -> Result<()> {
        let mut y = String::from("workloads:\n");
        for p in pods.iter().filter(|p| p.in_config) {
            let mut svc = if p.name == "b1" {
                format!("    \"{NAMESPACE}/echo.{NAMESPACE}.svc.cluster.local\":\n      80: 8080\n")
            } else {
                String::new()
            };
            for x in self
                .opts
                .extra_services
                .iter()
                .filter(|x| x.endpoints.contains(&p.name))
            {
                svc += &format!(
                    "    \"{NAMESPACE}/{n}.{NAMESPACE}.svc.cluster.local\":\n      {port}: {target}\n",
                    n = x.name,
                    port = x.port,
                    target = x.target_port
                );
            }
            y += &format!(
                "- uid: {uid}\n  name: {name}\n  namespace: {NAMESPACE}\n  serviceAccount: {sa}\n  trustDomain: {TRUST_DOMAIN}\n  workloadIps: [\"{ip}\"]\n  protocol: {proto}\n  node: {node}\n  network: \"\"\n  services:{empty}\n{svc}",
                uid = self.workload_uid(p.name),
                name = p.name,
                sa = p.service_account,
                ip = self.pod_ip(p.name),
                proto = p.protocol,
                node = node_name(self.node_of(p.name)),
                empty = if svc.is_empty() { " {}" } else { "" },
            );
        }
        y += &format!(
            "services:\n- name: echo\n  namespace: {NAMESPACE}\n  hostname: echo.{NAMESPACE}.svc.cluster.local\n  vips: [\"/10.96.0.10\"]\n  ports:\n    80: 8080\n  subjectAltNames: []\n"
        );
        if let Some(w) = echo_waypoint {
            y += &format!("  waypoint: {w}\n");
        }
        for x in &self.opts.extra_services {
            y += &format!(
                "- name: {n}\n  namespace: {NAMESPACE}\n  hostname: {n}.{NAMESPACE}.svc.cluster.local\n  vips: [\"/{vip}\"]\n  ports:\n    {port}: {target}\n  subjectAltNames: []\n",
                n = x.name,
                vip = x.vip,
                port = x.port,
                target = x.target_port
            );
        }
        if !policies.is_empty() {
            y += "policies:\n";
            y += policies;
        }
        // Write-then-rename: the watcher must never read half a file.
        let tmp = self.dir.path().join("config.yaml.tmp");
        std::fs::write(&tmp, y)?;
        std::fs::rename(&tmp, self.config_path())?;
        Ok(())
    }

    fn ztunnel_bin(&self) -> Result<PathBuf> {
        find_binary("ztunnel", self.opts.release_binary)
    }

    pub fn start_ztunnel(&mut self, node: NodeId) -> Result<()> {
        let child = self.spawn_ztunnel(node, self.topo.node(node))?;
        self.ztunnels[idx(node)] = Some(child);
        self.ztunnel_netns[idx(node)] = None;
        Ok(())
    }

    /// Starts a ztunnel for `node`'s pods inside `netns`, with the node's settings.
    fn spawn_ztunnel(&self, node: NodeId, netns: &Netns) -> Result<ChildGuard> {
        let bin = self.ztunnel_bin()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(node))?;
        let mut cmd = netns.command(bin.to_str().unwrap_or("ztunnel"));
        cmd.env_clear()
            .env("LOCAL_XDS_PATH", self.config_path())
            .env("INPOD_UDS", self.zds_path(node))
            .env("NODE_NAME", node_name(node))
            .env("TRUST_DOMAIN", TRUST_DOMAIN)
            .env("LOCAL_CA_DIR", self.ca_dir())
            .env("RUST_LOG", &self.opts.log_level)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        netns.spawn_command(cmd)
    }

    /// Rolls `node`'s ztunnel as a DaemonSet with maxSurge does: a new ztunnel starts in a
    /// namespace of its own (a new pod) while the old one runs, the agent hands it every pod, and
    /// once it is ready the old one gets SIGTERM. Returns when the old one has exited (within
    /// `exit_timeout`) with its exit status and how long the old one took to stop.
    pub fn upgrade_ztunnel(
        &mut self,
        node: NodeId,
        exit_timeout: Duration,
    ) -> Result<(std::process::ExitStatus, Duration)> {
        self.upgrades += 1;
        let netns = Netns::create(&format!(
            "{}-z{}{}",
            self.topo.prefix(),
            idx(node),
            self.upgrades
        ))?;
        let new = self.spawn_ztunnel(node, &netns)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, READINESS_PORT));
        loop {
            match http_in(&netns, ready_addr, "GET", "/healthz/ready") {
                Ok((200, _)) => break,
                other if Instant::now() > deadline => bail!(
                    "new ztunnel on {} not ready: {other:?}\n--- log ---\n{}",
                    node_name(node),
                    self.logs(node)
                ),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let old_pid = self.ztunnel_pid(node).context("no old ztunnel running")?;
        let mut old = self.ztunnels[idx(node)]
            .replace(new)
            .context("no old ztunnel")?;
        let old_netns = self.ztunnel_netns[idx(node)].replace(netns);
        let started = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old_pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let stop_by = started + exit_timeout;
        let status = loop {
            if let Some(status) = old.child_mut().try_wait()? {
                break status;
            }
            if Instant::now() > stop_by {
                bail!("old ztunnel did not exit within {exit_timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(old_netns);
        Ok((status, started.elapsed()))
    }

    /// Stops ztunnel on `node` (SIGKILL: the crash case) and waits for it.
    pub fn kill_ztunnel(&mut self, node: NodeId) {
        self.ztunnels[idx(node)] = None;
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate_ztunnel(
        &mut self,
        node: NodeId,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let pid = self.ztunnel_pid(node).context("ztunnel not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        self.wait_ztunnel_exit(node, timeout)
            .context("after SIGTERM")
    }

    /// Waits up to `timeout` for ztunnel on `node` to exit by itself; returns its status.
    pub fn wait_ztunnel_exit(
        &mut self,
        node: NodeId,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let mut guard = self.ztunnels[idx(node)]
            .take()
            .context("ztunnel not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = guard.child_mut().try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                // Put it back so the guard still kills it when the mesh drops.
                self.ztunnels[idx(node)] = Some(guard);
                bail!("ztunnel did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ztunnel_pid(&self, node: NodeId) -> Option<u32> {
        self.ztunnels[idx(node)].as_ref().map(|c| c.id())
    }

    /// Open file descriptors of ztunnel on `node`.
    pub fn ztunnel_fds(&self, node: NodeId) -> Result<usize> {
        let pid = self.ztunnel_pid(node).context("ztunnel not running")?;
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }

    /// Installs the pod's capture rules and hands its netns to its node's ztunnel.
    pub fn enroll(&self, pod: &str) -> Result<()> {
        let ns = self.pod_ns(pod);
        redirect::install(&ns.path(), self.opts.backend, &RedirectConfig::default())
            .with_context(|| format!("installing capture rules in {pod}"))?;
        let info = WorkloadInfo {
            name: pod.to_owned(),
            namespace: NAMESPACE.to_owned(),
            service_account: self
                .spec(pod)
                .zds_service_account
                .clone()
                .unwrap_or_else(|| self.spec(pod).service_account.clone()),
        };
        let zds = self.zds[idx(self.node_of(pod))]
            .as_ref()
            .context("no ZDS server")?;
        match self
            .rt
            .block_on(zds.add(&self.uid(pod), info, ns.open_fd()?))
        {
            // Recorded; the ztunnel gets it in its snapshot when it connects.
            Ok(()) | Err(ZdsError::NotConnected) => Ok(()),
            Err(e) => bail!("ZDS add of {pod}: {e}"),
        }
    }

    /// Tells the node's ztunnel the pod is gone (ZDS Del), leaving its rules in place.
    pub fn del(&self, pod: &str) -> Result<()> {
        let zds = self.zds[idx(self.node_of(pod))]
            .as_ref()
            .context("no ZDS server")?;
        self.rt
            .block_on(zds.del(&self.uid(pod)))
            .with_context(|| format!("ZDS del of {pod}"))
    }

    pub fn zds(&self, node: NodeId) -> &ZdsServer {
        self.zds[idx(node)].as_ref().expect("ZDS server bound")
    }

    /// GET /healthz/ready on the node's ztunnel: (status code, body).
    pub fn readiness(&self, node: NodeId) -> Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, READINESS_PORT));
        self.http(node, addr, "GET", "/healthz/ready")
    }

    /// One HTTP/1.1 request from inside the node's namespace: (status code, body).
    pub fn http(
        &self,
        node: NodeId,
        addr: SocketAddr,
        method: &str,
        path: &str,
    ) -> Result<(u16, String)> {
        http_in(self.ztunnel_ns(node), addr, method, path)
    }

    /// The namespace `node`'s ztunnel runs in (its admin, stats and readiness ports are on its
    /// loopback): the node's, or its own after an upgrade.
    pub fn ztunnel_ns(&self, node: NodeId) -> &Netns {
        self.ztunnel_netns[idx(node)]
            .as_ref()
            .unwrap_or_else(|| self.topo.node(node))
    }

    /// The node ztunnel's `/stats/prometheus` text.
    pub fn metrics(&self, node: NodeId) -> Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, STATS_PORT));
        match self.http(node, addr, "GET", "/stats/prometheus")? {
            (200, body) => Ok(body),
            (code, body) => bail!("metrics answered {code}: {body}"),
        }
    }

    /// A request to the node ztunnel's admin API on 127.0.0.1.
    pub fn admin(&self, node: NodeId, method: &str, path: &str) -> Result<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
        self.http(node, addr, method, path)
    }

    /// The ztunnel binary as a command run inside the node's namespace (`ztunnel debug ...`).
    pub fn ztunnel_command(&self, node: NodeId) -> Result<Command> {
        let bin = self.ztunnel_bin()?;
        Ok(self
            .ztunnel_ns(node)
            .command(bin.to_str().unwrap_or("ztunnel")))
    }

    pub fn wait_ready(&self, node: NodeId, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match self.readiness(node) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "ztunnel on {} not ready after {timeout:?}: {last}\n--- log ---\n{}",
            node_name(node),
            self.logs(node)
        )
    }
}
