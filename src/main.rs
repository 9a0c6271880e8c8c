use clap::Parser;

/// ztunnel: the per-node mesh tunnel. Captures meshed pods' TCP (handed over by the CNI agent
/// over ZDS) and carries it between nodes over HBONE (HTTP/2 CONNECT inside mutual TLS).
#[derive(Parser, Debug)]
#[command(name = "ztunnel", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    settings: meshtunnel::config::Settings,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    meshtunnel::logging::init(&cli.settings.log_level, cli.settings.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ztunnel: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(meshtunnel::app::run(cli.settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ztunnel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
