//! A Kubernetes node as the container runtime sees it: a node netns running a real containerd
//! whose CRI plugin executes a real CNI conflist (bridge + host-local, and whatever the
//! meshtunnel agent chains in) for every pod sandbox a test asks for through the CRI socket.
//!
//! Everything it makes (containerd, shims, sandboxes, their netns and mounts, cgroups, the node
//! netns with its bridge and veths, the temp dir) is removed on drop, also while a failing test
//! unwinds: sandboxes through the CRI first, then by force whatever is left.

mod cleanup;
mod config;
mod cri;
mod image;
pub mod mesh;
pub mod probe;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meshtunnel_e2e::mesh::run_cmd;
use test_support::{unique_prefix, Netns};

pub use cri::{PodRef, SandboxInfo};
pub use image::PAUSE_IMAGE;

use cri::CriClient;

/// The node's pod range, 10.160.0.0/24 to 10.223.255.0/24 picked by the unique prefix. The bridge
/// lives in the node netns, but the agent finds a running pod's netns by its IP among every netns
/// on the machine, so parallel nodes must not hand out the same addresses.
fn pod_subnet_for(prefix: &str) -> String {
    let n = u32::from_str_radix(prefix.trim_start_matches("mt"), 16).unwrap_or(0);
    format!("10.{}.{}.0/24", 160 + n % 64, (n / 64) % 256)
}

/// Whether a `containerd` binary is on PATH (tests skip without one outside CI; any other
/// missing piece fails with a message naming the package).
pub fn containerd_installed() -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("containerd").is_file())
    })
}

pub struct CriNode {
    // Taken apart in this order by Drop.
    cri: Option<CriClient>,
    containerd: Option<Child>,
    netns: Option<Netns>,
    dir: Option<tempfile::TempDir>,
    prefix: String,
    root: PathBuf,
    cgroup_parent: String,
}

impl CriNode {
    /// The node netns, the directories and the primary CNI config; containerd is not running yet
    /// (see [`CriNode::start_containerd`]), so a test can put an agent in place first.
    pub fn new() -> Result<CriNode> {
        let prefix = unique_prefix();
        let dir = tempfile::Builder::new()
            .prefix(&format!("meshtunnel-cri-{prefix}-"))
            .tempdir()?;
        let root = dir.path().to_owned();
        let mut node = CriNode {
            cri: None,
            containerd: None,
            netns: None,
            dir: Some(dir),
            cgroup_parent: format!("/{prefix}-kubepods"),
            prefix: prefix.clone(),
            root,
        };
        node.netns = Some(Netns::create(&format!("{prefix}-node"))?);
        for d in ["cni-bin", "cni-conf", "ipam", "pods", "image"] {
            std::fs::create_dir_all(node.root.join(d))?;
        }
        // One bin dir, as the CRI takes only one: the distribution's plugins plus (later) ours.
        for plugin in std::fs::read_dir("/usr/lib/cni")
            .context("/usr/lib/cni: install containernetworking-plugins")?
        {
            let plugin = plugin?;
            std::os::unix::fs::symlink(plugin.path(), node.cni_bin_dir().join(plugin.file_name()))?;
        }
        std::fs::write(
            node.primary_conflist_path(),
            config::primary_conflist(
                &format!("{prefix}-net"),
                &format!("{prefix}br"),
                &pod_subnet_for(&prefix),
                &node.root.join("ipam"),
            ),
        )?;
        Ok(node)
    }

    /// The node's pod range, e.g. `10.161.7.0/24`.
    pub fn pod_subnet(&self) -> String {
        pod_subnet_for(&self.prefix)
    }

    pub fn netns(&self) -> &Netns {
        self.netns.as_ref().expect("node netns lives until drop")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.root.join("cni-bin")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni-conf")
    }

    /// The node's only CNI config (the agent chains itself into it).
    pub fn primary_conflist_path(&self) -> PathBuf {
        self.cni_conf_dir().join("10-primary.conflist")
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("containerd.sock")
    }

    fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Where the CRI bind-mounts sandbox netns files (`netns_mounts_under_state_dir`).
    pub fn sandbox_netns_dir(&self) -> PathBuf {
        self.state_dir().join("io.containerd.grpc.v1.cri/netns")
    }

    pub fn containerd_log_path(&self) -> PathBuf {
        self.root.join("containerd.log")
    }

    /// containerd's log so far (for failure messages).
    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(self.containerd_log_path()).unwrap_or_default()
    }

    /// Starts containerd inside the node netns, imports the pause image into `k8s.io` and
    /// waits until the CRI reports runtime and network ready and knows the image.
    pub fn start_containerd(&mut self, timeout: Duration) -> Result<()> {
        anyhow::ensure!(self.containerd.is_none(), "containerd already started");
        let deadline = Instant::now() + timeout;
        let toml = config::containerd_toml(&config::Paths {
            root: &self.root.join("root"),
            state: &self.state_dir(),
            socket: &self.socket(),
            opt: &self.root.join("opt"),
            runc_root: &self.root.join("runc"),
            cni_bin: &self.cni_bin_dir(),
            cni_conf: &self.cni_conf_dir(),
        });
        let config_path = self.root.join("containerd.toml");
        std::fs::write(&config_path, toml)?;
        let image_tar = self.root.join("pause.tar");
        image::build_pause_tar(&self.root.join("image"), &image_tar)?;

        let log = std::fs::File::create(self.containerd_log_path())?;
        // nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup mounts
        // runc needs.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns().path().display()))
            .arg("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.containerd = Some(cmd.spawn().context("spawning containerd")?);
        self.cri = Some(CriClient::new(&self.socket())?);

        let remaining = deadline.saturating_duration_since(Instant::now());
        self.cri()
            .wait_ready(remaining)
            .with_context(|| format!("--- containerd log ---\n{}", self.containerd_log()))?;
        run_cmd(
            Command::new("ctr")
                .arg("-a")
                .arg(self.socket())
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&image_tar),
        )
        .context("importing the pause image")?;
        // The CRI learns of the import from containerd's event stream, a moment later.
        while !self.cri().has_image(PAUSE_IMAGE)? {
            if Instant::now() > deadline {
                bail!("the CRI never saw the imported {PAUSE_IMAGE}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn cri(&self) -> &CriClient {
        self.cri.as_ref().expect("containerd started")
    }

    /// RunPodSandbox for `pod` with a kubelet-style config; returns the sandbox id.
    pub fn run_pod_sandbox(&self, pod: &PodRef) -> Result<String> {
        let log_dir = self
            .root
            .join("pods")
            .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid));
        std::fs::create_dir_all(&log_dir)?;
        let cgroup = format!("{}/pod{}", self.cgroup_parent, pod.uid);
        self.cri().run_pod_sandbox(pod, &log_dir, &cgroup)
    }

    /// The CNI config the CRI is using now (it reloads the conf dir on change, asynchronously).
    pub fn loaded_cni_config(&self) -> Result<String> {
        self.cri().loaded_cni_config()
    }

    pub fn sandbox_status(&self, id: &str) -> Result<SandboxInfo> {
        self.cri().sandbox_status(id)
    }

    pub fn list_sandboxes(&self) -> Result<Vec<String>> {
        self.cri().list_sandboxes()
    }

    /// StopPodSandbox then RemovePodSandbox, as the kubelet does when a pod is deleted.
    pub fn stop_and_remove(&self, id: &str) -> Result<()> {
        self.cri().stop_sandbox(id)?;
        self.cri().remove_sandbox(id)
    }

    /// Mount points under the node's temp root (sandbox netns, shm, rootfs); empty once every
    /// sandbox is gone.
    pub fn mounts(&self) -> Vec<PathBuf> {
        cleanup::mounts_under(&self.root)
    }

    /// The sockets of the runc shims serving this node's sandboxes.
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        cleanup::shim_sockets(&self.state_dir())
    }

    /// SIGKILLs containerd, as a crash would: shims and sandboxes stay behind for Drop to find.
    pub fn kill_containerd(&mut self) {
        if let Some(mut child) = self.containerd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops containerd (SIGTERM, then SIGKILL after `grace`). Its shims and sandboxes keep
    /// running, as on a real node.
    fn stop_containerd(&mut self, grace: Duration) {
        let Some(mut child) = self.containerd.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        if let Some(cri) = self.cri.take() {
            if self.containerd.is_some() {
                for id in cri.list_sandboxes().unwrap_or_default() {
                    let _ = cri.stop_sandbox(&id);
                    let _ = cri.remove_sandbox(&id);
                }
            }
        }
        let shim_sockets = cleanup::shim_sockets(&self.state_dir());
        self.stop_containerd(Duration::from_secs(10));
        cleanup::kill_leftovers(&self.cgroup_parent, &self.socket());
        // Give the kernel a moment to reap the killed processes before unmounting their files.
        std::thread::sleep(Duration::from_millis(100));
        for s in shim_sockets {
            let _ = std::fs::remove_file(s);
        }
        cleanup::unmount_under(&self.root);
        cleanup::remove_cgroups(&self.cgroup_parent);
        // Kills whatever else runs in the node netns (a test's agent or ztunnel), deletes the
        // bridge and the host ends of the veths with it.
        self.netns.take();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}
