//! Mutated inputs for the two parsers that face other programs: the plugin's stdin/env parsing
//! and the agent's frame decoding. No fuzzing crates are available offline, so this walks
//! deterministic mutations (every truncation, byte flips from a fixed-seed generator) and only
//! asks that nothing panics and every refusal carries a spec or plugin error code.

use cni_agent::cni::{self, CniEnv, Code};
use cni_agent::protocol::{encode, read_frame, EnrollRequest, PodRef, Request};

const CONF: &str = r#"{"cniVersion":"0.4.0","name":"net","type":"meshtunnel-cni","agent_socket":"/run/a.sock","agent_timeout_ms":100,"exclude_namespaces":["kube-system"],"prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/p"}],"ips":[{"version":"4","interface":0,"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"version":"6","address":"fd00::5/64"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}"#;

/// xorshift64*: enough variety for mutations, reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutations(seed: &[u8], count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out: Vec<Vec<u8>> = (0..=seed.len()).map(|n| seed[..n].to_vec()).collect();
    let interesting = b"{}[]\",:0-9.eE\\\x00\xff ntf";
    for _ in 0..count {
        let mut m = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(m.len());
            match rng.below(3) {
                0 => m[at] = interesting[rng.below(interesting.len())],
                1 => {
                    m.remove(at);
                }
                _ => m.insert(at, interesting[rng.below(interesting.len())]),
            }
        }
        out.push(m);
    }
    out
}

fn env(command: &str) -> CniEnv {
    CniEnv {
        command: Some(command.into()),
        container_id: Some("c".into()),
        netns: Some("/var/run/netns/p".into()),
        ifname: Some("eth0".into()),
        args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web".into()),
        path: Some("/opt/cni/bin".into()),
    }
}

#[test]
fn plugin_parsing_never_panics() {
    let known = [
        Code::IncompatibleVersion,
        Code::InvalidEnv,
        Code::Decoding,
        Code::InvalidConfig,
    ];
    let mut refused = 0;
    for input in mutations(CONF.as_bytes(), 20_000) {
        for command in ["ADD", "DEL", "CHECK"] {
            match cni::parse(&env(command), &input) {
                Ok(_) => {}
                Err(f) => {
                    assert_ne!(command, "DEL", "DEL must never fail");
                    assert!(known.contains(&f.error.code), "{:?}", f.error);
                    let v: serde_json::Value = serde_json::from_str(&f.to_json()).unwrap();
                    assert!(v["code"].is_u64());
                    refused += 1;
                }
            }
        }
    }
    assert!(
        refused > 1000,
        "mutations should mostly be refused: {refused}"
    );
}

#[test]
fn frame_decoding_never_panics() {
    let req = Request::Add(EnrollRequest {
        pod: PodRef {
            namespace: "demo".into(),
            name: "web".into(),
            uid: "u".into(),
        },
        container_id: "c".into(),
        infra_container_id: Some("i".into()),
        netns: "/var/run/netns/p".into(),
        ifname: "eth0".into(),
        ips: vec!["10.1.0.5".parse().unwrap()],
    });
    for input in mutations(&encode(&req), 20_000) {
        let _ = read_frame::<Request>(&mut input.as_slice());
    }
}
