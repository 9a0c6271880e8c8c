//! Small helpers the fixtures, tests and the demo share: an HTTP request from inside a netns,
//! finding a workspace binary, running a command.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use test_support::{run_in, Netns};

/// One HTTP/1.1 request from inside `netns` (ztunnel's admin, stats and readiness ports listen
/// on the node namespace's loopback): (status code, body).
pub fn http_in(netns: &Netns, addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    run_in(netns, || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("malformed HTTP response")?;
        let body = resp
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((code, body))
    })
}

/// Finds a workspace binary next to the running executable (target/<profile>/NAME), or from
/// `$MESHTUNNEL_BIN_DIR`. Binaries are built by the test and demo scripts first.
pub fn find_binary(name: &str, release: bool) -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("MESHTUNNEL_BIN_DIR") {
        let p = Path::new(&dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    let exe = std::env::current_exe()?;
    let mut candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .collect();
    if let Some(target) = exe.ancestors().find(|d| d.ends_with("target")) {
        let profile = if release { "release" } else { "debug" };
        candidates.insert(0, target.join(profile).join(name));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "binary {name} not found near {}: run `cargo build{} --bins` first",
                exe.display(),
                if release { " --release" } else { "" }
            )
        })
}

/// Runs a command and returns its stdout; an error carries stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
