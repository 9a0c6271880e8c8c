//! The installer against real files in temp dirs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_agent::install::{
    chain, install, uninstall, watch, ConfChange, InstallConfig, InstallError, PluginSettings,
};
use serde_json::Value;

const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "datastore_type": "kubernetes", "mtu": 1440,
     "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"},
     "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ]
}"#;

const BRIDGE_CONF: &str = r#"{"cniVersion": "1.0.0", "name": "bridge", "type": "bridge",
  "bridge": "cni0", "isGateway": true, "ipMasq": true,
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}"#;

struct Node {
    _dir: tempfile::TempDir,
    cfg: InstallConfig,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let plugin_binary = root.join("image/meshtunnel-cni");
        fs::create_dir_all(plugin_binary.parent().unwrap()).unwrap();
        fs::write(&plugin_binary, b"\x7fELF pretend plugin").unwrap();
        let cfg = InstallConfig {
            cni_bin_dir: root.join("opt/cni/bin"),
            cni_conf_dir: root.join("etc/cni/net.d"),
            plugin_binary,
            plugin: PluginSettings {
                agent_socket: "/var/run/meshtunnel/cni-plugin.sock".into(),
                agent_timeout_ms: 30_000,
                log_level: "info".into(),
                exclude_namespaces: vec!["kube-system".into()],
            },
        };
        fs::create_dir_all(&cfg.cni_conf_dir).unwrap();
        Node { _dir: dir, cfg }
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.cfg.cni_conf_dir.join(name)
    }

    fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.conf(name);
        fs::write(&p, body).unwrap();
        p
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(&self.cfg.cni_conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn read(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn plugin_types(doc: &Value) -> Vec<String> {
    doc["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn conflist_gets_our_entry_last_and_keeps_everything_else() {
    let node = Node::new();
    let primary = node.write("10-calico.conflist", CALICO);
    let other = node.write("20-other.conflist", CALICO);
    let report = install(&node.cfg).unwrap();
    assert!(report.binary_copied);
    assert_eq!(report.conf, ConfChange::Chained(primary.clone()));

    let after = read(&primary);
    assert_eq!(
        plugin_types(&after),
        ["calico", "portmap", "bandwidth", "meshtunnel-cni"]
    );
    // Everything but the new entry serializes exactly as the original did, key order included.
    let mut trimmed = after.clone();
    trimmed["plugins"].as_array_mut().unwrap().pop();
    assert_eq!(trimmed.to_string(), parse(CALICO).to_string());
    let ours = &after["plugins"][3];
    assert_eq!(ours["agent_socket"], "/var/run/meshtunnel/cni-plugin.sock");
    assert_eq!(ours["exclude_namespaces"][0], "kube-system");

    assert_eq!(
        fs::read_to_string(other).unwrap(),
        CALICO,
        "only the primary is touched"
    );
    let bin = node.cfg.cni_bin_dir.join("meshtunnel-cni");
    assert_eq!(fs::read(bin).unwrap(), b"\x7fELF pretend plugin");
}

#[test]
fn second_install_changes_nothing() {
    let node = Node::new();
    let primary = node.write("10-calico.conflist", CALICO);
    install(&node.cfg).unwrap();
    let first = fs::read(&primary).unwrap();
    let mtime = fs::metadata(&primary).unwrap().modified().unwrap();
    let report = install(&node.cfg).unwrap();
    assert!(!report.binary_copied);
    assert_eq!(report.conf, ConfChange::Unchanged(primary.clone()));
    assert_eq!(fs::read(&primary).unwrap(), first);
    assert_eq!(fs::metadata(&primary).unwrap().modified().unwrap(), mtime);
    assert_eq!(node.names(), ["10-calico.conflist"]);
}

#[test]
fn single_conf_is_converted_to_a_conflist() {
    let node = Node::new();
    let conf = node.write("10-bridge.conf", BRIDGE_CONF);
    let report = chain(&node.cfg).unwrap();
    let list = node.conf("10-bridge.conflist");
    assert_eq!(
        report,
        ConfChange::Converted {
            from: conf,
            to: list.clone()
        }
    );
    assert_eq!(node.names(), ["10-bridge.conflist"]);
    let after = read(&list);
    assert_eq!(after["cniVersion"], "1.0.0");
    assert_eq!(after["name"], "bridge");
    assert_eq!(plugin_types(&after), ["bridge", "meshtunnel-cni"]);
    assert_eq!(
        after["plugins"][0].to_string(),
        parse(BRIDGE_CONF).to_string()
    );
    assert_eq!(chain(&node.cfg).unwrap(), ConfChange::Unchanged(list));
}

#[test]
fn a_rewritten_conf_is_converted_again() {
    let node = Node::new();
    node.write("10-bridge.conf", BRIDGE_CONF);
    chain(&node.cfg).unwrap();
    // The primary CNI restarts and writes its single-plugin config again; it sorts before our
    // conflist, so the runtime would use it and skip us.
    let conf = node.write("10-bridge.conf", BRIDGE_CONF);
    let list = node.conf("10-bridge.conflist");
    assert_eq!(
        chain(&node.cfg).unwrap(),
        ConfChange::Converted {
            from: conf,
            to: list.clone()
        }
    );
    assert_eq!(node.names(), ["10-bridge.conflist"]);
    assert_eq!(plugin_types(&read(&list)), ["bridge", "meshtunnel-cni"]);
}

#[test]
fn lexically_first_file_is_the_primary() {
    let node = Node::new();
    node.write("99-last.conflist", CALICO);
    let first = node.write("05-first.conflist", CALICO);
    node.write("00-notes.txt", "not a config");
    assert_eq!(chain(&node.cfg).unwrap(), ConfChange::Chained(first));
}

#[test]
fn rewritten_config_is_chained_again() {
    let node = Node::new();
    let primary = node.write("10-calico.conflist", CALICO);
    install(&node.cfg).unwrap();
    // Calico's installer restarts and writes its config from scratch.
    fs::write(&primary, CALICO).unwrap();
    assert_eq!(
        chain(&node.cfg).unwrap(),
        ConfChange::Chained(primary.clone())
    );
    assert_eq!(
        plugin_types(&read(&primary)).last().unwrap(),
        "meshtunnel-cni"
    );

    // Another tool appends itself after us: we move back to the end, once.
    let mut doc = read(&primary);
    doc["plugins"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "tuning"}));
    fs::write(&primary, doc.to_string()).unwrap();
    chain(&node.cfg).unwrap();
    assert_eq!(
        plugin_types(&read(&primary)),
        ["calico", "portmap", "bandwidth", "tuning", "meshtunnel-cni"]
    );
}

#[test]
fn watch_restores_the_entry_and_the_binary() {
    let node = Node::new();
    let primary = node.write("10-calico.conflist", CALICO);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = rt.spawn(watch(node.cfg.clone(), Duration::from_millis(50), async {
        let _ = stopped.await;
    }));
    let chained = |p: &Path| {
        fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|d| plugin_types(&d).last().map(String::as_str) == Some("meshtunnel-cni"))
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        for _ in 0..100 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("watcher never {what}");
    };
    wait_for("chained the config", &|| chained(&primary));
    fs::write(&primary, CALICO).unwrap();
    wait_for("re-chained the config", &|| chained(&primary));
    let bin = node.cfg.cni_bin_dir.join("meshtunnel-cni");
    fs::remove_file(&bin).unwrap();
    wait_for("restored the binary", &|| bin.exists());
    stop.send(()).unwrap();
    rt.block_on(watcher).unwrap();
}

#[test]
fn uninstall_restores_the_original_plugins() {
    let node = Node::new();
    let primary = node.write("10-calico.conflist", CALICO);
    let conf = node.write("20-bridge.conf", BRIDGE_CONF);
    install(&node.cfg).unwrap();
    let report = uninstall(&node.cfg.cni_bin_dir, &node.cfg.cni_conf_dir).unwrap();
    assert_eq!(report.unchained, vec![primary.clone()]);
    assert!(report.binary_removed);
    assert_eq!(read(&primary).to_string(), parse(CALICO).to_string());
    assert_eq!(fs::read_to_string(conf).unwrap(), BRIDGE_CONF);
    assert!(!node.cfg.cni_bin_dir.join("meshtunnel-cni").exists());
    // Nothing left to do the second time.
    let again = uninstall(&node.cfg.cni_bin_dir, &node.cfg.cni_conf_dir).unwrap();
    assert!(again.unchained.is_empty() && !again.binary_removed);
}

#[test]
fn uninstall_after_conversion_keeps_the_conflist_with_the_original_plugin() {
    let node = Node::new();
    node.write("10-bridge.conf", BRIDGE_CONF);
    install(&node.cfg).unwrap();
    uninstall(&node.cfg.cni_bin_dir, &node.cfg.cni_conf_dir).unwrap();
    let after = read(&node.conf("10-bridge.conflist"));
    assert_eq!(plugin_types(&after), ["bridge"]);
    assert_eq!(
        after["plugins"][0].to_string(),
        parse(BRIDGE_CONF).to_string()
    );
}

#[test]
fn errors_leave_files_alone() {
    let node = Node::new();
    assert!(matches!(
        install(&node.cfg),
        Err(InstallError::NoPrimaryConfig(_))
    ));
    let broken = node.write("10-broken.conflist", "{\"plugins\": [");
    assert!(matches!(chain(&node.cfg), Err(InstallError::Json { .. })));
    assert_eq!(fs::read_to_string(&broken).unwrap(), "{\"plugins\": [");
    let old = node.write(
        "05-old.conf",
        r#"{"cniVersion":"0.2.0","name":"x","type":"bridge"}"#,
    );
    let err = chain(&node.cfg).unwrap_err();
    assert!(matches!(err, InstallError::Conf { .. }), "{err}");
    assert!(err.to_string().contains("0.2.0"));
    assert!(old.exists());
    // uninstall skips files it cannot read instead of failing.
    assert!(uninstall(&node.cfg.cni_bin_dir, &node.cfg.cni_conf_dir).is_ok());
}
