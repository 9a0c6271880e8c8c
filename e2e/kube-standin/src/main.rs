//! `kube-standin`: run the in-memory Kubernetes API stand-in until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kube_standin::KubeStandin;

/// In-memory Kubernetes API (core/v1 namespaces and pods) for meshtunnel's tests and demo.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to serve plain HTTP on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig for this server here (for kubectl and the kube crate).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Changes retained for watches to resume from; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 10_000)]
    history_limit: usize,
    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 30)]
    bookmark_interval: u64,
    /// Log every request (method, URI, Accept, Content-Type, status) to stderr.
    #[arg(long)]
    log_requests: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let api = KubeStandin::builder()
        .history_limit(args.history_limit)
        .bookmark_interval(Duration::from_secs(args.bookmark_interval.max(1)))
        .log_requests(args.log_requests)
        .start(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    if let Some(path) = &args.kubeconfig {
        api.write_kubeconfig(path)
            .with_context(|| format!("writing kubeconfig {}", path.display()))?;
    }
    // One line on stdout so scripts can wait for readiness and learn the port.
    println!("{}", api.url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    drop(api);
    Ok(())
}
