//! The Gateway API conformance suite's mesh profile on the real control plane: every test of
//! upstream's `conformance/tests/mesh/` with its routes applied by kubectl to the real
//! kube-apiserver, the mesh manifests' Services as real Services and their Deployments as
//! pods enrolled by the node agent and pushed by istiod, and our waypoint in cluster mode
//! (objects from the API watch, workloads from istiod's workload xDS). Requests go client pod
//! → its ztunnel → waypoint → backend's ztunnel → backend; the cases and their checks are the
//! file-mode test's. One cluster and one waypoint for all tests, run in sequence. Needs root,
//! the built binaries, the control plane (MESHTUNNEL_CONTROLPLANE_DIR, else it is built) and
//! the suite (MESHTUNNEL_GATEWAY_API_DIR); a missing one fails the test.

use std::collections::BTreeSet;
use std::time::Instant;

use meshtunnel_e2e::conformance::{upstream, ClusterHarness, KubectlApply, ALL};

#[test]
fn gateway_api_mesh_conformance_on_the_real_control_plane() {
    let suite = upstream::suite_dir().unwrap();
    let ported: BTreeSet<String> = ALL.iter().map(|t| t.name.to_owned()).collect();
    let upstream = upstream::short_names(&suite).unwrap();
    assert_eq!(
        upstream.difference(&ported).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "upstream mesh tests not ported"
    );

    let start = Instant::now();
    let h = ClusterHarness::start(suite).unwrap_or_else(|e| panic!("setting up: {e:#}"));
    eprintln!("cluster, pods and waypoint up in {:?}", start.elapsed());
    let src = KubectlApply { harness: &h };
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for t in ALL {
        let began = Instant::now();
        let failed = h
            .run(&src, t)
            .unwrap_or_else(|e| panic!("{}: {e:#}\n{}", t.name, h.diagnostics()));
        eprintln!("{} in {:?}", t.name, began.elapsed());
        report.push(t.report_line(failed.is_empty()));
        failures.extend(failed);
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        h.diagnostics()
    );
    eprintln!("all in {:?}", start.elapsed());
}
