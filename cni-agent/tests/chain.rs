//! The real `bridge` + `host-local` plugins followed by ours, driven as a runtime drives a
//! conflist: ADD in order with each result as the next plugin's prevResult, DEL in reverse.
//! Everything runs inside a throwaway "node" netns so the bridge never touches the host.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use cni_agent::protocol::Request;
use common::Agent;
use serde_json::{json, Value};

const OUR_PLUGIN: &str = env!("CARGO_BIN_EXE_meshtunnel-cni");
const REAL_PLUGINS: &str = "/usr/lib/cni";

/// A network namespace deleted on drop, including when the test panics.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        sh("ip", &["netns", "add", &name]);
        Netns(name)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Unique across parallel tests in this process (the counter) and across runs and other
/// processes on the machine (pid and clock).
fn unique() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (std::process::id() << 12) ^ (nanos >> 8) ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 20)
}

struct Chain {
    node: Netns,
    pod: Netns,
    conflist: Value,
    ipam_dir: PathBuf,
    subnet_prefix: String,
    _tmp: tempfile::TempDir,
}

impl Chain {
    fn new(agent_socket: &Path) -> Chain {
        assert!(
            Path::new(REAL_PLUGINS).join("bridge").exists(),
            "apt-get install -y containernetworking-plugins"
        );
        let id = unique();
        let tag = format!("{:06x}", id & 0xff_ffff);
        let node = Netns::new(format!("mtn{tag}"));
        let pod = Netns::new(format!("mtp{tag}"));
        let tmp = tempfile::tempdir().unwrap();
        let ipam_dir = tmp.path().join("ipam");
        let subnet_prefix = format!("10.199.{}", 1 + id % 254);
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": format!("mtnet{tag}"),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": format!("mtbr{tag}"),
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("{subnet_prefix}.0/24")}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": ipam_dir
                    }
                },
                {
                    "type": "meshtunnel-cni",
                    "agent_socket": agent_socket,
                    "agent_timeout_ms": 5000,
                    "log_level": "debug"
                }
            ]
        });
        Chain {
            node,
            pod,
            conflist,
            ipam_dir,
            subnet_prefix,
            _tmp: tmp,
        }
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"].as_array().unwrap().clone()
    }

    /// One plugin invocation, with the network's name and version merged in as libcni does.
    fn exec(
        &self,
        plugin: &Value,
        command: &str,
        pod_name: &str,
        prev: Option<&Value>,
    ) -> (bool, Value) {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let ty = plugin["type"].as_str().unwrap();
        let binary = if ty == "meshtunnel-cni" {
            OUR_PLUGIN.to_string()
        } else {
            format!("{REAL_PLUGINS}/{ty}")
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node.0, &binary])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("ctr-{}", self.pod.0))
            .env("CNI_NETNS", self.pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REAL_PLUGINS)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={pod_name};\
                     K8S_POD_INFRA_CONTAINER_ID=ctr-{};K8S_POD_UID=uid-{pod_name}",
                    self.pod.0
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{ty} {command}: {e}: {stdout}"))
        };
        (out.status.success(), value)
    }

    /// ADD through the whole list; on a failure, DEL what ran, as runtimes do.
    fn add(&self, pod_name: &str) -> Result<Vec<Value>, Value> {
        let mut results: Vec<Value> = Vec::new();
        for plugin in self.plugins() {
            let (ok, out) = self.exec(&plugin, "ADD", pod_name, results.last());
            if !ok {
                self.del(pod_name, results.last());
                return Err(out);
            }
            results.push(out);
        }
        Ok(results)
    }

    fn del(&self, pod_name: &str, prev: Option<&Value>) {
        for plugin in self.plugins().iter().rev() {
            let (ok, out) = self.exec(plugin, "DEL", pod_name, prev);
            assert!(ok, "DEL {}: {out}", plugin["type"]);
        }
    }

    fn pod_addrs(&self) -> String {
        sh("ip", &["-n", &self.pod.0, "-4", "addr", "show"])
    }

    fn leases(&self) -> Vec<String> {
        let Ok(dirs) = std::fs::read_dir(&self.ipam_dir) else {
            return Vec::new();
        };
        dirs.flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("10."))
            .collect()
    }
}

fn netns_list() -> String {
    sh("ip", &["netns", "list"])
}

#[test]
fn meshed_pod_through_a_real_chain() {
    let agent = Agent::start();
    let names;
    {
        let chain = Chain::new(&agent.socket);
        names = (chain.node.0.clone(), chain.pod.0.clone());
        let results = chain.add("web").expect("chain ADD");
        let (bridge, ours) = (&results[0], &results[1]);
        assert_eq!(
            ours, bridge,
            "our plugin hands the bridge's result on unchanged"
        );

        let ip = bridge["ips"][0]["address"].as_str().unwrap();
        assert!(ip.starts_with(&format!("{}.", chain.subnet_prefix)), "{ip}");
        assert!(chain.pod_addrs().contains(ip), "pod netns lacks {ip}");
        assert_eq!(chain.leases().len(), 1);

        let seen = agent.seen();
        let [Request::Add(req)] = seen.as_slice() else {
            panic!("{seen:?}")
        };
        assert_eq!(req.pod.name, "web");
        assert_eq!(req.netns, chain.pod.path());
        assert_eq!(
            req.ips,
            vec![ip
                .split('/')
                .next()
                .unwrap()
                .parse::<std::net::IpAddr>()
                .unwrap()]
        );

        chain.del("web", Some(ours));
        assert!(matches!(agent.seen().last(), Some(Request::Del(_))));
        assert!(!chain.pod_addrs().contains(ip), "DEL left the address");
        assert!(
            chain.leases().is_empty(),
            "host-local kept {:?}",
            chain.leases()
        );
        let links = sh(
            "ip",
            &["-n", &chain.node.0, "-o", "link", "show", "type", "veth"],
        );
        assert!(links.trim().is_empty(), "veth left behind: {links}");
    }
    let left = netns_list();
    assert!(
        !left.contains(&names.0) && !left.contains(&names.1),
        "{left}"
    );
}

#[test]
fn failed_enrolment_fails_the_chain_and_releases_the_address() {
    let agent = Agent::start();
    let chain = Chain::new(&agent.socket);
    let err = chain
        .add("mesh-fail")
        .expect_err("enrolment failure must fail ADD");
    assert_eq!(err["code"], 100, "{err}");
    assert!(
        chain.leases().is_empty(),
        "address not released after the failed ADD"
    );
}

#[test]
fn unreachable_agent_fails_the_chain() {
    let chain = Chain::new(Path::new("/nonexistent/meshtunnel/agent.sock"));
    let err = chain.add("web").expect_err("must fail closed");
    assert_eq!(err["code"], 11, "{err}");
    assert!(chain.leases().is_empty());
}
