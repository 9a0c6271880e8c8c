//! `ztunnel debug ...`: read a running ztunnel's admin API and print what it knows, as
//! tables or JSON.

pub mod client;
mod explain;
mod source;
mod table;
mod tables;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct DebugArgs {
    #[command(subcommand)]
    what: What,

    /// Address of the ztunnel admin API.
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        default_value = "127.0.0.1:15000"
    )]
    admin: SocketAddr,

    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Workloads in the config, and whether this ztunnel proxies them.
    Workloads,
    /// Services and their VIPs, ports and endpoint counts.
    Services,
    /// Authorization policies.
    Policies,
    /// Certificates held for the pods on this node, with expiry.
    Certs,
    /// Where the config comes from: the file, istiod's xDS (last push, version, NACKs).
    Source,
    /// Would a connection be allowed, and which policy and rule decide.
    Explain(explain::ExplainArgs),
}

/// Runs the subcommand; what to print on stdout.
pub fn run(args: &DebugArgs) -> Result<String> {
    let (key, table): (&str, fn(&Value) -> String) = match &args.what {
        What::Workloads => ("workloads", tables::workloads),
        What::Services => ("services", tables::services),
        What::Policies => ("policies", tables::policies),
        What::Certs => ("certificates", tables::certs),
        What::Source => ("configSource", source::render),
        What::Explain(e) => {
            let body = client::get(args.admin, &e.path())?;
            let v: Value = serde_json::from_str(&body).context("admin API answer is not JSON")?;
            return Ok(if args.json { body } else { explain::render(&v) });
        }
    };
    let dump: Value = serde_json::from_str(&client::get(args.admin, "/config_dump")?)
        .context("admin API /config_dump is not JSON")?;
    Ok(if args.json {
        let mut s = serde_json::to_string_pretty(tables::section(&dump, key))?;
        s.push('\n');
        s
    } else {
        table(&dump)
    })
}
