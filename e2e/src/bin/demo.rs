//! The local mesh demo: two nodes, two pods each, one ztunnel per node, pods enrolled over ZDS.
//! A client in pod a1 talks to a server on the other node (b1) and on its own node (a2); the
//! demo prints what moved, which identities each side saw, and what crossed the wire.
//! Everything it creates is removed at the end, also on Ctrl-C.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use meshtunnel_e2e::apps::{connect_from, echo_exact, random_bytes, EchoServer};
use meshtunnel_e2e::wire::Capture;
use meshtunnel_e2e::{Mesh, MeshOptions};
use test_support::{NodeId, WIRE_IF};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    println!("== building the mesh: nodes A and B, pods a1 a2 (A) b1 b2 (B), one ztunnel per node");
    let mesh = Mesh::start(MeshOptions {
        log_level: "info,meshtunnel::proxy=debug".into(),
        release_binary: !cfg!(debug_assertions),
        ..MeshOptions::default()
    })?;
    {
        // Ctrl-C only raises a flag: the steps check it and return, so every Drop cleans up.
        let flag = interrupted.clone();
        mesh.rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: cleaning up");
                flag.store(true, Ordering::SeqCst);
            }
        });
    }
    let check = || -> Result<()> {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    };
    for p in ["a1", "a2", "b1", "b2"] {
        let spec = mesh.spec(p);
        println!(
            "   pod {p:<3} {:<11} {:<5} {}",
            mesh.pod_ip(p).to_string(),
            spec.protocol,
            if spec.meshed {
                "meshed (capture rules + ZDS)"
            } else {
                "not meshed"
            }
        );
    }
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let b1 = EchoServer::start(mesh.pod_ns("b1"), any(8080))?;
    let a2 = EchoServer::start(mesh.pod_ns("a2"), any(8080))?;
    check()?;

    let size = 4 * 1024 * 1024;
    let capture = Capture::start(
        mesh.topo.node(NodeId::A),
        WIRE_IF,
        mesh.dir.path().join("wire.pcap"),
    )?;
    println!(
        "\n== a1 -> b1:8080 (other node): {} MiB each way",
        size >> 20
    );
    echo_exact(
        connect_from(mesh.pod_ns("a1"), mesh.addr("b1", 8080))?,
        &random_bytes(size),
    )?;
    println!("   ok: {size} bytes sent and echoed back byte-exact");
    println!("   b1's app saw its peer as {:?}", b1.peers());
    let wire = capture.stop()?;
    println!(
        "   wire between the nodes: {} segments, {} payload bytes, {} on ports other than 15008, {} TLS application records",
        wire.segments.len(),
        wire.payload_bytes(),
        wire.non_hbone().len(),
        wire.tls_app_records()
    );
    check()?;

    println!("\n== a1 -> a2:8080 (same node)");
    echo_exact(
        connect_from(mesh.pod_ns("a1"), mesh.addr("a2", 8080))?,
        &random_bytes(size),
    )?;
    println!(
        "   ok: {size} bytes each way; a2's app saw {:?}",
        a2.peers()
    );

    println!("\n== a1 -> b2:8080 (protocol TCP, not meshed): plain passthrough");
    let b2 = EchoServer::start(mesh.pod_ns("b2"), any(8080))?;
    echo_exact(
        connect_from(mesh.pod_ns("a1"), mesh.addr("b2", 8080))?,
        &random_bytes(64 * 1024),
    )?;
    println!("   ok; b2's app saw {:?}", b2.peers());
    check()?;

    std::thread::sleep(std::time::Duration::from_millis(200));
    println!("\n== identities, from the ztunnels' logs");
    for node in [NodeId::A, NodeId::B] {
        for line in mesh.logs(node).lines() {
            if line.contains("opening HBONE tunnel") || line.contains("HBONE tunnel accepted") {
                println!("   node {node:?}: {}", strip_ansi(line));
            }
        }
    }
    println!("\n== cleaning up (namespaces, rules, processes, files)");
    Ok(())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
