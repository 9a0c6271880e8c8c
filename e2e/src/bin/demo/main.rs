//! The local mesh demo, driven by a namespace label as in a cluster: a real control plane
//! (etcd, kube-apiserver, kube-controller-manager and istiod, built from their Go modules) with
//! the real `kubectl`, two nodes with a real `cni-agent` and `ztunnel` each, pods made by
//! the real CNI chain (bridge + host-local + meshtunnel-cni). It shows plain TCP between pods,
//! labels the namespace, shows the same traffic crossing the wire as HBONE (from a packet
//! capture), shows ztunnel's metrics, an authorization policy and the debug CLI at work, and
//! removes the label again. Everything it creates is removed at the end, also on Ctrl-C.

mod l7;
mod observe;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use meshtunnel::state::Protocol;
use meshtunnel_e2e::apps::{connect_from, echo_exact, random_bytes, EchoServer};
use meshtunnel_e2e::cluster::{
    wait_until, Cluster, ClusterOptions, Pod, PodSpec, DATAPLANE_LABEL, PROXY_PORTS,
};
use meshtunnel_e2e::wire::{Capture, Summary};
use test_support::{NodeId, WIRE_IF};

const NS: &str = "demo";
const MARKER: &[u8] = b"hello-from-a1-in-plain-text";

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
    {
        // Ctrl-C only raises a flag: the steps check it and return, so every Drop cleans up.
        let flag = interrupted.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                    eprintln!("interrupted: cleaning up");
                    flag.store(true, Ordering::SeqCst);
                }
            }
        });
    }
    let check = || -> Result<()> {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    };
    let started = Instant::now();

    println!(
        "== a two-node cluster: etcd, kube-apiserver, kube-controller-manager and istiod, and per node a cni-agent and a ztunnel"
    );
    let cluster = Cluster::start(ClusterOptions {
        log_level: "info,meshtunnel::proxy=debug".into(),
        release_binary: !cfg!(debug_assertions),
        ..ClusterOptions::default()
    })?;
    for n in &cluster.nodes {
        println!(
            "   {}: pod subnet {}, CNI chain {}",
            n.name,
            n.subnet_cidr(),
            chain(&cluster, n.id)
        );
    }
    check()?;
    kubectl(&cluster, &["version"])?;
    kubectl(&cluster, &["get", "nodes", "-o", "wide"])?;
    observe::crds(&cluster)?;
    check()?;

    kubectl(&cluster, &["create", "namespace", NS])?;
    println!(
        "\n== pods, each made like a kubelet makes them: Pod object, netns, CNI ADD, status.podIP"
    );
    let a1 = cluster.create_pod(&PodSpec::new("a1", NodeId::A))?;
    let a2 = cluster.create_pod(&PodSpec::new("a2", NodeId::A))?;
    let (app, echo) = observe::APP_LABEL;
    let b1 = cluster.create_pod(&PodSpec::new("b1", NodeId::B).label(app, echo))?;
    // b2 opts out of the mesh with its own label.
    let b2 = cluster.create_pod(&PodSpec::new("b2", NodeId::B).label(DATAPLANE_LABEL, "none"))?;
    kubectl(&cluster, &["get", "pods", "-n", NS, "-o", "wide"])?;
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let echo_b1 = EchoServer::start(cluster.netns_of(&b1), any(8080))?;
    let echo_a2 = EchoServer::start(cluster.netns_of(&a2), any(8080))?;
    let echo_b2 = EchoServer::start(cluster.netns_of(&b2), any(8080))?;
    check()?;

    println!("\n== a1 -> b1:8080 before the label: plain TCP");
    show_wire(&exchange(&cluster, &a1, &b1, 256 * 1024)?);
    check()?;

    println!();
    kubectl(
        &cluster,
        &["label", "namespace", NS, "istio.io/dataplane-mode=ambient"],
    )?;
    let pods = [&a1, &a2, &b1];
    let took = wait_until(Duration::from_secs(20), "pods enrolled", || {
        pods.iter().all(|p| enrolled(&cluster, p))
    })?;
    println!(
        "   every running pod captured {} ms after the label (rules in its netns, ztunnel's listeners on {:?}, annotation set)",
        took.as_millis(),
        PROXY_PORTS
    );
    kubectl(
        &cluster,
        &[
            "get",
            "pods",
            "-n",
            NS,
            "-o",
            r"custom-columns=NAME:.metadata.name,IP:.status.podIP,NODE:.spec.nodeName,DATAPLANE:.metadata.labels.istio\.io/dataplane-mode,REDIRECTION:.metadata.annotations.ambient\.istio\.io/redirection",
        ],
    )?;
    // istiod republishes the captured pods as HBONE workloads (it reads the annotation).
    cluster.wait_config(&[&a1, &a2, &b1], Protocol::Hbone, Duration::from_secs(20))?;
    observe::istiod_view(&cluster, NS)?;
    check()?;

    let size = 4 * 1024 * 1024;
    println!(
        "\n== a1 -> b1:8080 (other node), {} MiB each way",
        size >> 20
    );
    let wire = exchange(&cluster, &a1, &b1, size)?;
    let moved = MARKER.len() + size;
    show_wire(&wire);
    println!(
        "   b1's app saw its peer as {:?} (a1's own address)",
        echo_b1.peers().last()
    );
    println!("\n== a1 -> a2:8080 (same node)");
    echo_exact(
        connect_from(cluster.netns_of(&a1), a2.addr(8080))?,
        &random_bytes(size),
    )?;
    println!(
        "   ok, byte-exact; a2's app saw {:?}",
        echo_a2.peers().last()
    );
    println!("\n== a1 -> b2:8080 (b2 opted out): ztunnel A passes it through as plain TCP");
    show_wire(&exchange(&cluster, &a1, &b2, 64 * 1024)?);
    println!("   b2's app saw {:?}", echo_b2.peers().last());
    check()?;

    println!("\n== a pod created now is captured before its first connection (CNI ADD waits for the agent)");
    let a3 = cluster.create_pod(&PodSpec::new("a3", NodeId::A))?;
    show_wire(&exchange(&cluster, &a3, &b1, 64 * 1024)?);
    check()?;

    std::thread::sleep(Duration::from_millis(200));
    println!("\n== identities, from the ztunnels' logs");
    for node in [NodeId::A, NodeId::B] {
        for line in cluster.ztunnel_log(node).lines() {
            if line.contains("opening HBONE tunnel") || line.contains("HBONE tunnel accepted") {
                println!("   node {node:?}: {}", strip_ansi(line));
            }
        }
    }
    check()?;

    observe::metrics(&cluster, &a1, &b1, moved)?;
    check()?;
    observe::policy(&cluster, &a1, &a2, &b1)?;
    check()?;
    l7::run(&cluster)?;
    check()?;
    println!("\n== the debug CLI: the workloads node B's ztunnel knows");
    observe::debug_cli(&cluster, &["workloads"])?;
    println!("\n== the certificates node B's ztunnel holds, issued by istiod's CA");
    observe::debug_cli(&cluster, &["certs"])?;
    check()?;

    println!();
    kubectl(
        &cluster,
        &["label", "namespace", NS, "istio.io/dataplane-mode-"],
    )?;
    let pods: [&Pod; 4] = [&a1, &a2, &a3, &b1];
    let took = wait_until(Duration::from_secs(20), "pods released", || {
        pods.iter().all(|p| released(&cluster, p))
    })?;
    println!(
        "   every pod released {} ms after the label went (rules, listeners and annotation gone)",
        took.as_millis()
    );
    cluster.wait_config(&pods, Protocol::Tcp, Duration::from_secs(20))?;
    println!("\n== a1 -> b1:8080 after the label: plain TCP again");
    show_wire(&exchange(&cluster, &a1, &b1, 256 * 1024)?);

    println!(
        "\n== cleaning up (pods via CNI DEL, processes, namespaces, bridges, files); demo ran {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints and runs the real kubectl against the apiserver.
pub(crate) fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<()> {
    println!("$ kubectl {}", shell_words(args));
    let out = cluster.kubectl.run(args)?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }
    if !out.status.success() {
        bail!(
            "kubectl failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(['\\', ' ', '(', '{']) {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn chain(cluster: &Cluster, node: NodeId) -> String {
    cluster
        .runtime(node)
        .current_conflist()
        .ok()
        .and_then(|c| {
            Some(
                c["plugins"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| {
                        let ty = p["type"].as_str()?;
                        Some(match p["ipam"]["type"].as_str() {
                            Some(ipam) => format!("{ty} (ipam {ipam})"),
                            None => ty.to_owned(),
                        })
                    })
                    .collect::<Vec<_>>()
                    .join(" -> "),
            )
        })
        .unwrap_or_else(|| "?".into())
}

fn enrolled(cluster: &Cluster, p: &Pod) -> bool {
    cluster.redirection(&p.namespace, &p.name).as_deref() == Some("enabled")
        && cluster.captured(p)
        && cluster.proxy_listeners(p).unwrap_or_default() == PROXY_PORTS
}

fn released(cluster: &Cluster, p: &Pod) -> bool {
    cluster.redirection(&p.namespace, &p.name).is_none()
        && !cluster.captured(p)
        && cluster.proxy_listeners(p).is_ok_and(|l| l.is_empty())
}

/// `size` bytes (starting with a plaintext marker) from `from` to `to`:8080 and back, with
/// the wire between the nodes captured meanwhile.
fn exchange(cluster: &Cluster, from: &Pod, to: &Pod, size: usize) -> Result<Summary> {
    let capture = Capture::start(
        &cluster.node(NodeId::A).netns,
        WIRE_IF,
        cluster.dir.path().join("wire.pcap"),
    )?;
    let mut data = MARKER.to_vec();
    data.extend(random_bytes(size));
    echo_exact(connect_from(cluster.netns_of(from), to.addr(8080))?, &data)?;
    println!(
        "   {} -> {}: {} bytes sent and echoed back byte-exact",
        from.name,
        to.name,
        data.len()
    );
    capture.stop()
}

fn show_wire(wire: &Summary) {
    let ports: BTreeSet<u16> = wire
        .segments
        .iter()
        .map(|s| s.src_port.min(s.dst_port))
        .collect();
    println!(
        "   tshark on the wire between the nodes: {} segments, {} payload bytes, server ports {:?}, {} TLS application records, plaintext marker visible: {}",
        wire.segments.len(),
        wire.payload_bytes(),
        ports,
        wire.tls_app_records(),
        if wire.contains(MARKER) { "YES" } else { "no" }
    );
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
