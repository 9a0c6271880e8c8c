use clap::{Parser, Subcommand};

/// ztunnel: the per-node mesh tunnel. Captures meshed pods' TCP (handed over by the CNI agent
/// over ZDS) and carries it between nodes over HBONE (HTTP/2 CONNECT inside mutual TLS).
/// Without a subcommand it runs the daemon.
#[derive(Parser, Debug)]
#[command(name = "ztunnel", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    settings: meshtunnel::config::Settings,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect a running ztunnel through its admin API (run on its node).
    Debug(meshtunnel::debug::DebugArgs),
}

fn main() -> std::process::ExitCode {
    // First: it may restart the process (see the module).
    meshtunnel::memcpy::avoid_slow_rep_movsb();
    let cli = Cli::parse();
    if let Some(Command::Debug(args)) = &cli.command {
        return match meshtunnel::debug::run(args) {
            Ok(out) => {
                print!("{out}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ztunnel debug: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    meshtunnel::allocator::tune();
    let log = meshtunnel::logging::init(&cli.settings.log_level, cli.settings.log_format);
    // The control plane on this thread; the traffic on worker threads of their own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let workers = meshtunnel::workers::Workers::start(cli.settings.worker_threads);
    let (rt, workers) = match (rt, workers) {
        (Ok(rt), Ok(w)) => (rt, w),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ztunnel: cannot start the async runtimes: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(meshtunnel::app::run(cli.settings, log, workers.clone()));
    workers.stop();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ztunnel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_runs_the_daemon_with_its_flags() {
        let cli = Cli::try_parse_from(["ztunnel", "--node-name", "n1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.settings.node_name, "n1");
        let cli = Cli::try_parse_from(["ztunnel", "debug", "workloads", "--json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Debug(_))));
        let cli = Cli::try_parse_from([
            "ztunnel",
            "debug",
            "explain",
            "--src-ip",
            "10.0.0.1",
            "--dst",
            "10.0.0.2:80",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Debug(_))));
        for bad in [
            &["ztunnel", "debug"][..],
            &["ztunnel", "debug", "explain", "--dst", "10.0.0.2:80"],
            &[
                "ztunnel",
                "debug",
                "explain",
                "--src-ip",
                "x",
                "--dst",
                "10.0.0.2:80",
            ],
            &[
                "ztunnel",
                "debug",
                "explain",
                "--src-ip",
                "10.0.0.1",
                "--dst",
                "10.0.0.2:80",
                "--plaintext",
                "--src-identity",
                "spiffe://td/ns/a/sa/b",
            ],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?} accepted");
        }
    }
}
