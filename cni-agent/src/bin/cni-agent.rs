//! `cni-agent`: meshtunnel's per-node CNI agent. Installs and uninstalls the chained plugin, and
//! runs the node agent: watches Kubernetes, captures ambient pods, hands them to ztunnel over ZDS
//! and answers the plugin's CNI ADD/DEL.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cni_agent::agent::{Agent, AgentConfig, Discovery};
use cni_agent::cni::{DEFAULT_AGENT_SOCKET, DEFAULT_AGENT_TIMEOUT_MS};
use cni_agent::install::{self, InstallConfig, InstallError, PluginSettings};
use cni_agent::server::PluginServer;
use meshtunnel::redirect::{self, Backend, RedirectConfig};

/// meshtunnel CNI node agent.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Copy meshtunnel-cni into the CNI bin dir and chain it into the node's primary CNI config.
    /// Idempotent.
    Install(InstallArgs),
    /// Take meshtunnel off this node: remove the plugin entry from every CNI config and the
    /// binary. Never part of a restart or upgrade (pods would then start uncaptured); run it
    /// only when removing meshtunnel, e.g. from the DaemonSet's uninstall job.
    Uninstall(DirArgs),
    /// Run the agent: watch this node's pods and all namespaces, capture ambient pods (ZDS to
    /// ztunnel, in-pod redirect rules, annotation), serve plugin requests, install, and keep the
    /// plugin chained until stopped. Stopping neither uninstalls nor releases captured pods.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct DirArgs {
    /// Directory the container runtime executes CNI plugins from.
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Directory holding the node's CNI configs; the lexically first one is chained.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
}

#[derive(Args, Debug)]
struct InstallArgs {
    #[command(flatten)]
    dirs: DirArgs,
    /// meshtunnel-cni binary to copy [default: meshtunnel-cni beside this executable].
    #[arg(long, env = "MESHTUNNEL_CNI_PLUGIN_BINARY")]
    plugin_binary: Option<PathBuf>,
    /// Unix socket the plugin asks the agent on (written into the plugin's config).
    #[arg(long, env = "MESHTUNNEL_CNI_AGENT_SOCKET", default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// How long the plugin waits for the agent on ADD before failing the pod (milliseconds).
    #[arg(long, env = "MESHTUNNEL_CNI_AGENT_TIMEOUT_MS", default_value_t = DEFAULT_AGENT_TIMEOUT_MS)]
    agent_timeout_ms: u64,
    /// The plugin's stderr log level.
    #[arg(long, env = "MESHTUNNEL_CNI_LOG_LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug"])]
    plugin_log_level: String,
    /// Namespaces whose pods never wait for the agent (comma-separated).
    #[arg(
        long,
        env = "MESHTUNNEL_CNI_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    exclude_namespaces: Vec<String>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    install: InstallArgs,
    /// How often to check that the plugin is still chained and installed (milliseconds).
    #[arg(long, env = "MESHTUNNEL_CNI_RECHECK_MS", default_value_t = 5_000)]
    recheck_ms: u64,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BackendArg {
    /// nftables when `nft` works here, else iptables.
    Auto,
    Iptables,
    Nftables,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// This node's name: only pods with this spec.nodeName are watched and captured.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Kubeconfig(s) to reach the API server, colon-separated like kubectl's
    /// [default: in-cluster, else ~/.kube/config].
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The ZDS socket the agent listens on and ztunnel connects to.
    #[arg(long, env = "ZTUNNEL_UDS_ADDRESS", default_value = meshtunnel::zds::DEFAULT_SOCKET_PATH)]
    ztunnel_uds: PathBuf,
    /// Which tool writes the in-pod redirect rules.
    #[arg(long, env = "MESHTUNNEL_REDIRECT_BACKEND", value_enum, default_value_t = BackendArg::Auto)]
    redirect_backend: BackendArg,
    /// Directory of bind-mounted netns files searched (with /proc/*/ns/net) when a pod's netns
    /// must be found by its IP (pods that were running before the agent saw their CNI ADD).
    #[arg(long, env = "MESHTUNNEL_NETNS_DIR", default_value = "/var/run/netns")]
    netns_dir: PathBuf,
    /// Only netns files in --netns-dir whose name starts with this are searched (e.g. a test
    /// run's own prefix, when several "nodes" share one machine).
    #[arg(long, env = "MESHTUNNEL_NETNS_PREFIX", default_value = "")]
    netns_prefix: String,
    /// Also search every process's /proc/PID/ns/net (needs the host PID namespace). Turn off
    /// where other nodes' pods run on the same machine with the same IPs (tests, demo).
    #[arg(long, env = "MESHTUNNEL_NETNS_SCAN_PROC", default_value_t = true,
          action = clap::ArgAction::Set)]
    netns_scan_proc: bool,
    /// The first wait before retrying to capture (or release) a pod (milliseconds); it doubles
    /// with every failure up to --retry-max-ms. A ztunnel connecting retries at once anyway.
    #[arg(long, env = "MESHTUNNEL_RETRY_MIN_MS", default_value_t = 200)]
    retry_min_ms: u64,
    /// The longest wait between two attempts to capture (or release) a pod (milliseconds);
    /// attempts never stop while the pod should be captured.
    #[arg(long, env = "MESHTUNNEL_RETRY_MAX_MS", default_value_t = 30_000)]
    retry_max_ms: u64,
    /// How long CNI ADD waits for a new pod to reach the watch cache before asking the API
    /// server directly (milliseconds).
    #[arg(long, env = "MESHTUNNEL_CNI_POD_WAIT_MS", default_value_t = 5_000)]
    pod_wait_ms: u64,
}

impl AgentArgs {
    fn config(&self) -> anyhow::Result<AgentConfig> {
        anyhow::ensure!(!self.node_name.is_empty(), "--node-name must not be empty");
        anyhow::ensure!(
            0 < self.retry_min_ms && self.retry_min_ms <= self.retry_max_ms,
            "need 0 < --retry-min-ms <= --retry-max-ms"
        );
        let backend = match self.redirect_backend {
            BackendArg::Auto => redirect::detect_backend(),
            BackendArg::Iptables => Backend::Iptables,
            BackendArg::Nftables => Backend::Nftables,
        };
        let mut cfg = AgentConfig::new(self.node_name.clone());
        cfg.ztunnel_uds = self.ztunnel_uds.clone();
        cfg.backend = backend;
        cfg.redirect = RedirectConfig::default();
        cfg.discovery = Discovery {
            netns_dir: self.netns_dir.clone(),
            name_prefix: self.netns_prefix.clone(),
            proc_dir: self.netns_scan_proc.then(|| "/proc".into()),
        };
        cfg.retry_max = Duration::from_millis(self.retry_max_ms);
        cfg.retry_base = Duration::from_millis(self.retry_min_ms);
        cfg.pod_wait = Duration::from_millis(self.pod_wait_ms);
        Ok(cfg)
    }

    async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = match &self.kubeconfig {
            Some(paths) => {
                // Like kubectl, a colon-separated list is merged (earlier files win).
                let mut merged: Option<kube::config::Kubeconfig> = None;
                for path in std::env::split_paths(paths) {
                    let kc = kube::config::Kubeconfig::read_from(&path)
                        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                    merged = Some(match merged {
                        Some(m) => m.merge(kc)?,
                        None => kc,
                    });
                }
                let kc = merged.context("--kubeconfig is empty")?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .with_context(|| format!("using kubeconfig {}", paths.display()))?
            }
            None => kube::Config::infer()
                .await
                .context("finding the API server (no kubeconfig, not in a cluster)")?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

impl InstallArgs {
    fn config(&self) -> anyhow::Result<InstallConfig> {
        anyhow::ensure!(
            self.agent_timeout_ms > 0,
            "--agent-timeout-ms must be positive"
        );
        let plugin_binary = match &self.plugin_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("locating this executable")?
                .with_file_name(install::PLUGIN_TYPE),
        };
        Ok(InstallConfig {
            cni_bin_dir: self.dirs.cni_bin_dir.clone(),
            cni_conf_dir: self.dirs.cni_conf_dir.clone(),
            plugin_binary,
            plugin: PluginSettings {
                agent_socket: self.agent_socket.clone(),
                agent_timeout_ms: self.agent_timeout_ms,
                log_level: self.plugin_log_level.clone(),
                exclude_namespaces: self
                    .exclude_namespaces
                    .iter()
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .collect(),
            },
        })
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Install(args) => {
            let report = install::install(&args.config()?)?;
            if report.binary_copied {
                println!("copied the plugin into {}", args.dirs.cni_bin_dir.display());
            }
            match report.conf {
                install::ConfChange::Unchanged(p) => println!("already chained in {}", p.display()),
                install::ConfChange::Chained(p) => println!("chained into {}", p.display()),
                install::ConfChange::Converted { from, to } => {
                    println!(
                        "converted {} to {} and chained",
                        from.display(),
                        to.display()
                    )
                }
            }
            Ok(())
        }
        Cmd::Uninstall(dirs) => {
            let report = install::uninstall(&dirs.cni_bin_dir, &dirs.cni_conf_dir)?;
            for p in &report.unchained {
                println!("removed the plugin entry from {}", p.display());
            }
            if report.binary_removed {
                println!("removed the plugin from {}", dirs.cni_bin_dir.display());
            }
            Ok(())
        }
        Cmd::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(args)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Registered first: a SIGTERM during start-up (copying the plugin can take a while) must
    // still mean a clean stop, not death by the default action.
    let stop_signal = shutdown_signal()?;
    let cfg = args.install.config()?;
    let agent_cfg = args.agent.config()?;
    let client = args.agent.client().await?;
    let agent = Agent::start(agent_cfg, client)?;
    // Listen before chaining: from the moment the entry is in place, every new pod's ADD comes
    // to this socket.
    let server = PluginServer::bind(&cfg.plugin.agent_socket, agent.enroller())
        .with_context(|| format!("binding {}", cfg.plugin.agent_socket.display()))?;
    match install::install(&cfg) {
        Ok(report) => tracing::info!(?report, "meshtunnel-cni installed"),
        // The primary CNI may simply not have written its config yet; the watcher retries.
        Err(e @ InstallError::NoPrimaryConfig(_)) => tracing::warn!(error = %e, "waiting"),
        Err(e) => return Err(e.into()),
    }
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut stop_watch = stop_tx.subscribe();
    let mut stop_serve = stop_tx.subscribe();
    let watcher = tokio::spawn(install::watch(
        cfg,
        Duration::from_millis(args.recheck_ms.max(100)),
        async move {
            let _ = stop_watch.recv().await;
        },
    ));
    let served = tokio::spawn(server.serve(async move {
        let _ = stop_serve.recv().await;
    }));
    stop_signal.await;
    tracing::info!("stopping; meshtunnel-cni stays installed so pods keep failing closed");
    let _ = stop_tx.send(());
    let _ = tokio::join!(watcher, served);
    drop(agent);
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future completes on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
