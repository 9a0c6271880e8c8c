//! Applying istiod's config at scale: one delta-xDS push of 10,000 workloads and 1,000 services,
//! then 1,000 single-workload updates; time to apply (decode + convert + publish a snapshot) and
//! resident memory, next to the same state loaded from the local file. Each source runs in its
//! own child process so their RSS figures do not mix. Plain timing, no harness:
//! `cargo bench -p meshtunnel --bench xds`.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshtunnel::config::{self, ConfigSources};
use meshtunnel::state::{ConfigSnapshot, State};
use meshtunnel::xds::proto::{core::Node, discovery, workload as pw};
use meshtunnel::xds::protocol::{Session, ADDRESS_TYPE, AUTHORIZATION_TYPE};
use meshtunnel::xds::Defaults;
use prost::Message;

const WORKLOADS: usize = 10_000;
const SERVICES: usize = 1_000;
const UPDATES: usize = 1_000;
const MODE: &str = "MESHTUNNEL_XDS_BENCH_MODE";

fn ip(i: usize) -> [u8; 4] {
    [10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

fn uid(i: usize) -> String {
    format!("Kubernetes//Pod/ns{}/pod-{i}", i % 100)
}

fn svc_key(s: usize) -> String {
    format!("ns{}/svc-{s}.ns{}.svc.cluster.local", s % 100, s % 100)
}

fn workload(i: usize, healthy: bool) -> pw::Workload {
    let s = i % SERVICES;
    pw::Workload {
        uid: uid(i),
        name: format!("pod-{i}"),
        namespace: format!("ns{}", i % 100),
        service_account: format!("sa-{s}"),
        addresses: vec![ip(i).to_vec()],
        tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
        node: format!("node-{}", i % 50),
        cluster_id: "Kubernetes".into(),
        workload_name: format!("deploy-{s}"),
        canonical_name: format!("svc-{s}"),
        canonical_revision: "v1".into(),
        status: if healthy { 0 } else { 1 },
        services: [(
            svc_key(s),
            pw::PortList {
                ports: vec![pw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]
        .into(),
        ..Default::default()
    }
}

fn service(s: usize) -> pw::Service {
    pw::Service {
        name: format!("svc-{s}"),
        namespace: format!("ns{}", s % 100),
        hostname: format!("svc-{s}.ns{}.svc.cluster.local", s % 100),
        addresses: vec![pw::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, (s >> 8) as u8, s as u8],
            length: None,
        }],
        ports: vec![pw::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

fn resource(name: String, t: pw::address::Type, version: &str) -> discovery::Resource {
    discovery::Resource {
        name,
        version: version.into(),
        resource: Some(prost_types::Any {
            type_url: ADDRESS_TYPE.into(),
            value: pw::Address { r#type: Some(t) }.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn response(type_url: &str, nonce: usize, resources: Vec<discovery::Resource>) -> Vec<u8> {
    discovery::DeltaDiscoveryResponse {
        system_version_info: format!("v{nonce}"),
        resources,
        type_url: type_url.into(),
        nonce: nonce.to_string(),
        removed_resources: vec![],
    }
    .encode_to_vec()
}

/// Resident set size in KiB, from /proc/self/status.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn run_xds() {
    let full: Vec<discovery::Resource> = (0..SERVICES)
        .map(|s| resource(svc_key(s), pw::address::Type::Service(service(s)), "1"))
        .chain(
            (0..WORKLOADS)
                .map(|i| resource(uid(i), pw::address::Type::Workload(workload(i, true)), "1")),
        )
        .collect();
    let push = response(ADDRESS_TYPE, 0, full);
    let no_policies = response(AUTHORIZATION_TYPE, 1, vec![]);
    let updates: Vec<Vec<u8>> = (0..UPDATES)
        .map(|n| {
            let i = (n * 7) % WORKLOADS;
            let w = workload(i, n % 2 == 1);
            response(
                ADDRESS_TYPE,
                n + 2,
                vec![resource(
                    uid(i),
                    pw::address::Type::Workload(w),
                    &format!("u{n}"),
                )],
            )
        })
        .collect();
    let rss_before = rss_kib();

    let state = Arc::new(State::new(ConfigSnapshot::empty()));
    let sources = ConfigSources::new(state.clone(), true);
    let mut session = Session::new(
        Node::default(),
        Defaults {
            trust_domain: "cluster.local".into(),
        },
    );
    let apply = |session: &mut Session, bytes: &[u8]| {
        let resp = discovery::DeltaDiscoveryResponse::decode(bytes).unwrap();
        let h = session.on_response(resp);
        assert!(h.reply.error_detail.is_none());
        sources.apply_xds(h.kind.unwrap(), h.change);
    };
    let t = Instant::now();
    apply(&mut session, &push);
    apply(&mut session, &no_policies);
    let first = t.elapsed();
    let rss_after_push = rss_kib();

    let mut each = Vec::with_capacity(UPDATES);
    let t = Instant::now();
    for u in &updates {
        let t1 = Instant::now();
        apply(&mut session, u);
        each.push(t1.elapsed());
    }
    let all = t.elapsed();
    each.sort();
    // The same updates arriving as a burst: the client applies up to 64 waiting responses
    // with one snapshot rebuild.
    let t = Instant::now();
    for chunk in updates.chunks(64) {
        let changes: Vec<_> = chunk
            .iter()
            .map(|u| {
                let h =
                    session.on_response(discovery::DeltaDiscoveryResponse::decode(&u[..]).unwrap());
                (h.kind.unwrap(), h.change)
            })
            .collect();
        sources.apply_xds_batch(changes);
    }
    let burst = t.elapsed();
    let cur = state.current();
    assert_eq!(cur.workloads().count(), WORKLOADS);
    assert_eq!(cur.services().count(), SERVICES);
    println!(
        "xds  : first push ({} KiB encoded, {WORKLOADS} workloads + {SERVICES} services) applied in {}",
        push.len() / 1024,
        ms(first)
    );
    println!(
        "xds  : {UPDATES} single-workload updates in {} (p50 {}, p99 {}, max {})",
        ms(all),
        ms(each[UPDATES / 2]),
        ms(each[UPDATES * 99 / 100]),
        ms(each[UPDATES - 1]),
    );
    println!(
        "xds  : the same {UPDATES} updates as a burst (batches of 64) in {}",
        ms(burst)
    );
    println!(
        "xds  : RSS {} MiB after the push ({} MiB for the state; the encoded pushes held by the bench are counted before)",
        rss_after_push / 1024,
        rss_after_push.saturating_sub(rss_before) / 1024
    );
}

fn run_file() {
    let mut y = String::with_capacity(4 << 20);
    y.push_str("workloads:\n");
    for i in 0..WORKLOADS {
        let s = i % SERVICES;
        let [a, b, c, d] = ip(i);
        let _ = writeln!(
            y,
            "- {{uid: \"{}\", name: pod-{i}, namespace: ns{}, serviceAccount: sa-{s}, \
             workloadIps: [{a}.{b}.{c}.{d}], protocol: HBONE, node: node-{}, \
             workloadName: deploy-{s}, canonicalName: svc-{s}, canonicalRevision: v1, \
             services: {{\"{}\": {{80: 8080}}}}}}",
            uid(i),
            i % 100,
            i % 50,
            svc_key(s)
        );
    }
    y.push_str("services:\n");
    for s in 0..SERVICES {
        let _ = writeln!(
            y,
            "- {{name: svc-{s}, namespace: ns{ns}, hostname: svc-{s}.ns{ns}.svc.cluster.local, \
             vips: [/10.96.{}.{}], ports: {{80: 8080}}}}",
            (s >> 8) as u8,
            s as u8,
            ns = s % 100
        );
    }
    let rss_before = rss_kib();
    let state = Arc::new(State::new(ConfigSnapshot::empty()));
    let sources = ConfigSources::new(state.clone(), false);
    let t = Instant::now();
    let snap = config::parse(&y, std::path::Path::new("bench.yaml")).unwrap();
    sources.set_file(snap);
    let took = t.elapsed();
    let rss_after = rss_kib();
    assert_eq!(state.current().workloads().count(), WORKLOADS);
    println!(
        "file : same state from a {} KiB file parsed and applied in {} (every change re-reads the whole file)",
        y.len() / 1024,
        ms(took)
    );
    println!(
        "file : RSS {} MiB after loading ({} MiB for the state)",
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / 1024
    );
}

fn main() {
    match std::env::var(MODE).as_deref() {
        Ok("xds") => return run_xds(),
        Ok("file") => return run_file(),
        _ => {}
    }
    let me = std::env::current_exe().expect("own path");
    for mode in ["xds", "file"] {
        let st = Command::new(&me)
            .env(MODE, mode)
            .status()
            .expect("run the bench child");
        assert!(st.success(), "{mode} bench failed");
    }
}
