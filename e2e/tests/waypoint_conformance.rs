//! The Gateway API conformance suite's mesh profile through the waypoint, in file mode: every
//! test of upstream's `conformance/tests/mesh/` (manifests read from the suite, cases from
//! `meshtunnel_e2e::conformance`) against the waypoint between real ztunnels. Needs root, the
//! built binaries, and the suite (`MESHTUNNEL_GATEWAY_API_DIR`, exported by scripts/test.sh).

use std::collections::BTreeSet;

use meshtunnel_e2e::conformance::{upstream, FileDir, Harness, ALL};

#[test]
fn gateway_api_mesh_conformance_file_mode() {
    let suite = upstream::suite_dir().unwrap();
    let ported: BTreeSet<String> = ALL.iter().map(|t| t.name.to_owned()).collect();
    let upstream = upstream::short_names(&suite).unwrap();
    assert_eq!(
        upstream.difference(&ported).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "upstream mesh tests not ported"
    );

    let h = Harness::start(suite).unwrap();
    let src = FileDir { harness: &h };
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for t in ALL {
        let failed = h.run(&src, t).unwrap_or_else(|e| {
            panic!("{}: {e:#}\n--- waypoint ---\n{}", t.name, h.waypoint.logs())
        });
        report.push(t.report_line(failed.is_empty()));
        failures.extend(failed);
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
