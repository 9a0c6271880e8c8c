//! Looking into a pod sandbox from outside: its addresses, rules, listeners and connections,
//! through the netns file the CRI made.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Runs `program args` inside the netns file `netns` (a sandbox's) and returns stdout.
pub fn exec_in(netns: &Path, program: &str, args: &[&str]) -> Result<String> {
    meshtunnel_e2e::mesh::run_cmd(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg(program)
            .args(args),
    )
}

/// Runs `f` on a fresh thread that entered the netns file `netns` (a sandbox's), so sockets
/// made in `f` live in that pod.
pub fn run_in_file<F, R>(netns: &Path, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let fd = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
            drop(fd);
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `ip -4 -o addr` inside a sandbox's netns, entered through the file the CRI made.
pub fn addrs_in(netns: &Path) -> String {
    exec_in(netns, "ip", &["-4", "-o", "addr", "show"])
        .unwrap_or_else(|e| panic!("reading addresses in {}: {e:#}", netns.display()))
}

/// Polls `f` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether our capture table is in the sandbox's netns (the agent is told to use nftables).
pub fn has_capture_rules(netns: &Path) -> bool {
    exec_in(netns, "nft", &["list", "ruleset"])
        .unwrap()
        .contains("table ip istio-inpod")
}

/// TCP ports listening inside the sandbox's netns.
pub fn listening_ports(netns: &Path) -> Vec<u16> {
    exec_in(netns, "ss", &["-ltnH"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|local| local.rsplit(':').next()?.parse().ok())
        .collect()
}

/// Opens a connection from the pod in `client_netns` to a server in `server_netns`, checks bytes
/// cross it, and returns `ss -tnp` of the established connections in both pods while it is open
/// (which shows whose sockets carry it).
pub fn exchange(client_netns: &Path, server_netns: &Path, server_ip: &str) -> String {
    let listener = run_in_file(server_netns, || TcpListener::bind(("0.0.0.0", 8080)))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        s.write_all(&buf)?;
        // Hold the connection until the client closes it.
        let _ = s.read(&mut buf);
        Ok(())
    });
    let addr: SocketAddr = format!("{server_ip}:8080").parse().unwrap();
    let mut client = run_in_file(client_netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    let mut seen = String::new();
    for ns in [client_netns, server_netns] {
        seen += &exec_in(ns, "ss", &["-tnpH", "state", "established"]).unwrap();
    }
    drop(client);
    server.join().unwrap().unwrap();
    seen
}

/// Whether an `ss -tnp` line shows ztunnel's end of a connection on local `port`.
pub fn carried_by_ztunnel(ss: &str, port: u16) -> bool {
    ss.lines().any(|l| {
        l.split_whitespace()
            .nth(2)
            .is_some_and(|local| local.ends_with(&format!(":{port}")))
            && l.contains("((\"ztunnel\"")
    })
}
