//! The agent with the real `ztunnel` binary (not a scripted peer): labelling a namespace makes
//! ztunnel open its listeners inside the pod and the rules point at them; unlabelling removes
//! both. Needs `cargo build --bins` first (scripts/test.sh does it).

mod node;

use std::path::PathBuf;
use std::process::Stdio;

use node::{wait_for, Node, AMBIENT};
use serde_json::json;
use test_support::{ChildGuard, Netns};

fn ztunnel_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .find(|d| d.join("ztunnel").is_file())
        .unwrap_or_else(|| {
            panic!(
                "ztunnel binary not found near {}: run `cargo build --bins` first",
                exe.display()
            )
        });
    target.join("ztunnel")
}

/// Listening TCP ports inside the pod's netns.
fn listening(netns: &Netns) -> Vec<u16> {
    netns
        .exec("ss", &["-Hltn"])
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn real_ztunnel_opens_listeners_in_labelled_pods() {
    let mut node = Node::new("nftables");
    node.create_namespace("shop", false);
    let pod = node.running_pod("shop", "web", json!({}), json!({}));
    let before = pod.rules();

    // ztunnel runs in a netns of its own, as on a node, so its admin and readiness ports do
    // not meet anyone else's.
    let zt_ns = Netns::create(&format!("{}-zt", node.prefix)).unwrap();
    let config = node.root().join("ztunnel.yaml");
    std::fs::write(&config, "workloads: []\nservices: []\n").unwrap();
    let log = std::fs::File::create(node.root().join("ztunnel.log")).unwrap();
    let mut cmd = zt_ns.command(ztunnel_binary().to_str().unwrap());
    cmd.env_clear()
        .env("LOCAL_XDS_PATH", &config)
        .env("INPOD_UDS", node.zds_path())
        .env("NODE_NAME", &node.name)
        .env("LOCAL_CA_DIR", node.root().join("ca"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _ztunnel: ChildGuard = zt_ns.spawn_command(cmd).unwrap();
    let zt_log_path = node.root().join("ztunnel.log");
    let zt_log = move || std::fs::read_to_string(&zt_log_path).unwrap_or_default();

    node.start_agent();
    node.wait_watching();
    node.label_namespace("shop", Some(AMBIENT));
    let captured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("capture with ztunnel's listeners in the pod", || {
            let ports = listening(&pod.netns);
            pod.captured()
                && [15001, 15006, 15008].iter().all(|p| ports.contains(p))
                && node.annotation("shop", "web").as_deref() == Some("enabled")
        })
    }));
    if captured.is_err() {
        panic!("not captured\nztunnel log:\n{}", zt_log());
    }

    node.label_namespace("shop", None);
    wait_for("release: listeners closed, rules gone", || {
        let ports = listening(&pod.netns);
        !ports.contains(&15001) && node.annotation("shop", "web").is_none()
    });
    assert_eq!(
        pod.rules(),
        before,
        "rules left behind\nztunnel log:\n{}",
        zt_log()
    );
    node.stop_agent();
}
