//! waypoint: the mesh's L7 proxy. Terminates HBONE from ztunnels, routes each HTTP request
//! by Gateway API HTTPRoute/GRPCRoute (plus Istio VirtualService faults/retries), authorizes
//! it with L7 AuthorizationPolicy, and re-originates HBONE to the chosen endpoint.

mod admin;
mod app;
mod authz;
mod balance;
mod body;
mod client_pool;
mod cluster;
mod config;
mod explain;
mod forward;
mod guarded;
mod h1guard;
mod handle;
mod reply;
mod route;
mod server;
mod settings;
mod shared;
mod sniff;
mod state;
mod tcp;
mod telemetry;
mod upstream;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "waypoint", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: settings::Settings,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect a running waypoint through its admin API (run where it runs).
    Debug {
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: std::net::SocketAddr,
        #[command(subcommand)]
        what: DebugWhat,
    },
    /// The argv istiod's waypoint Deployment gives Envoy's image (`proxy waypoint --domain
    /// ... --serviceCluster ...`): runs the waypoint; Envoy's flags are accepted and ignored,
    /// settings come from the environment.
    Proxy {
        /// Only `waypoint` is served.
        kind: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ignored: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DebugWhat {
    /// Routes by destination service, in match order (JSON).
    Routes,
    /// L7 authorization policies (JSON).
    Policies,
    /// Which route and which policy decide a request.
    Explain {
        /// Original destination, service VIP:port or pod IP:port.
        #[arg(long)]
        dst: std::net::SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Source principal, e.g. cluster.local/ns/demo/sa/web.
        #[arg(long)]
        principal: Option<String>,
        /// Request headers as name:value.
        #[arg(long = "header")]
        headers: Vec<String>,
    },
}

fn debug(admin: std::net::SocketAddr, what: &DebugWhat) -> anyhow::Result<String> {
    use meshtunnel::debug::client::get;
    let pick = |key: &str| -> anyhow::Result<String> {
        let v: serde_json::Value = serde_json::from_str(&get(admin, "/config_dump")?)?;
        Ok(serde_json::to_string_pretty(&v[key])? + "\n")
    };
    match what {
        DebugWhat::Routes => pick("routes"),
        DebugWhat::Policies => pick("policies"),
        DebugWhat::Explain {
            dst,
            path,
            method,
            principal,
            headers,
        } => {
            let enc = |s: &str| -> String {
                s.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z'
                        | b'a'..=b'z'
                        | b'0'..=b'9'
                        | b'-'
                        | b'.'
                        | b'_'
                        | b'~'
                        | b'/' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect()
            };
            let mut q = format!(
                "/debug/explain?dst={dst}&path={}&method={}",
                enc(path),
                enc(method)
            );
            if let Some(p) = principal {
                q += &format!("&principal={}", enc(p));
            }
            for h in headers {
                q += &format!("&header={}", enc(h));
            }
            let v: serde_json::Value = serde_json::from_str(&get(admin, &q)?)?;
            Ok(serde_json::to_string_pretty(&v)? + "\n")
        }
    }
}

fn main() -> std::process::ExitCode {
    // First: it may restart the process (see the module).
    meshtunnel::memcpy::avoid_slow_rep_movsb();
    let cli = Cli::parse();
    let settings = match &cli.command {
        None => cli.settings,
        Some(Command::Debug { admin, what }) => {
            return match debug(*admin, what) {
                Ok(out) => {
                    print!("{out}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("waypoint debug: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Some(Command::Proxy { kind, ignored }) => {
            if kind != "waypoint" {
                eprintln!("waypoint: `proxy {kind}` is not supported (only `proxy waypoint`)");
                return std::process::ExitCode::FAILURE;
            }
            // Flags come from the environment here; the argv after `proxy waypoint` is Envoy's.
            match Cli::try_parse_from(["waypoint"]) {
                Ok(c) => {
                    let _ = ignored;
                    c.settings
                }
                Err(e) => {
                    eprintln!("waypoint: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    };
    // The same memory pattern as ztunnel's (frame-sized buffers per request): the same settings.
    meshtunnel::allocator::tune();
    let _log = meshtunnel::logging::init(&settings.log_level, settings.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("waypoint: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(app::run(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("waypoint: {e:#}");
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
    fn accepts_istio_waypoint_argv() {
        let cli = Cli::try_parse_from([
            "waypoint",
            "proxy",
            "waypoint",
            "--domain",
            "ns.svc.cluster.local",
            "--serviceCluster",
            "wp.ns",
            "--proxyLogLevel",
            "warning",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Proxy { ref kind, .. }) if kind == "waypoint"));
        let cli = Cli::try_parse_from(["waypoint", "--hbone-addr", "127.0.0.1:25008"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.settings.hbone_addr.port(), 25008);
    }
}
