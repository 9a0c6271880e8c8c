use super::*;
use serde_json::json;

fn pod(labels: serde_json::Value, spec: serde_json::Value, extra: serde_json::Value) -> Pod {
    let mut v = json!({
        "metadata": {"name": "p", "namespace": "n", "labels": labels},
        "spec": {"containers": [], "nodeName": "node-a"},
        "status": {"phase": "Running", "podIP": "10.0.0.5"},
    });
    for (k, val) in spec.as_object().unwrap() {
        v["spec"][k] = val.clone();
    }
    for (k, val) in extra.as_object().unwrap() {
        match k.as_str() {
            "phase" => v["status"]["phase"] = val.clone(),
            _ => v["metadata"][k] = val.clone(),
        }
    }
    serde_json::from_value(v).unwrap()
}

type Labels = BTreeMap<String, String>;

fn labels(mode: Option<&str>) -> BTreeMap<String, String> {
    mode.map(|m| (DATAPLANE_MODE_LABEL.to_owned(), m.to_owned()))
        .into_iter()
        .collect()
}

#[test]
fn selection_table() {
    let amb = json!({DATAPLANE_MODE_LABEL: AMBIENT});
    let none = json!({DATAPLANE_MODE_LABEL: NONE});
    let nolabel = json!({});
    let ambient_ns = labels(Some(AMBIENT));
    let plain_ns = labels(None);
    let none_ns = labels(Some(NONE));
    let no_extra = json!({});
    let no_spec = json!({});
    #[rustfmt::skip]
    let cases: Vec<(&str, Pod, Option<&Labels>, bool)> = vec![
        ("ns ambient", pod(nolabel.clone(), no_spec.clone(), no_extra.clone()), Some(&ambient_ns), true),
        ("pod ambient, plain ns", pod(amb.clone(), no_spec.clone(), no_extra.clone()), Some(&plain_ns), true),
        ("pod ambient, ns unknown", pod(amb.clone(), no_spec.clone(), no_extra.clone()), None, true),
        ("pod ambient, ns none", pod(amb.clone(), no_spec.clone(), no_extra.clone()), Some(&none_ns), true),
        ("nothing labelled", pod(nolabel.clone(), no_spec.clone(), no_extra.clone()), Some(&plain_ns), false),
        ("ns unknown, pod unlabelled", pod(nolabel.clone(), no_spec.clone(), no_extra.clone()), None, false),
        ("pod none in ambient ns", pod(none.clone(), no_spec.clone(), no_extra.clone()), Some(&ambient_ns), false),
        ("other label value", pod(json!({DATAPLANE_MODE_LABEL: "sidecar"}), no_spec.clone(), no_extra.clone()), Some(&plain_ns), false),
        ("host network", pod(nolabel.clone(), json!({"hostNetwork": true}), no_extra.clone()), Some(&ambient_ns), false),
        ("hostNetwork false", pod(nolabel.clone(), json!({"hostNetwork": false}), no_extra.clone()), Some(&ambient_ns), true),
        ("other node", pod(nolabel.clone(), json!({"nodeName": "node-b"}), no_extra.clone()), Some(&ambient_ns), false),
        ("unscheduled", pod(nolabel.clone(), json!({"nodeName": null}), no_extra.clone()), Some(&ambient_ns), false),
        ("terminating", pod(nolabel.clone(), no_spec.clone(), json!({"deletionTimestamp": "2026-01-01T00:00:00Z"})), Some(&ambient_ns), false),
        ("succeeded", pod(nolabel.clone(), no_spec.clone(), json!({"phase": "Succeeded"})), Some(&ambient_ns), false),
        ("failed", pod(nolabel.clone(), no_spec.clone(), json!({"phase": "Failed"})), Some(&ambient_ns), false),
        ("pending (sandbox being built)", pod(nolabel.clone(), no_spec.clone(), json!({"phase": "Pending"})), Some(&ambient_ns), true),
        ("sidecar-injected", pod(nolabel.clone(), no_spec.clone(), json!({"annotations": {"sidecar.istio.io/status": "{}"}})), Some(&ambient_ns), false),
    ];
    for (name, p, ns, want) in cases {
        let got = select(&p, ns, "node-a");
        assert_eq!(got == Selection::Mesh, want, "{name}: {got:?}");
    }
}

#[test]
fn annotation_is_read() {
    let p = pod(
        json!({}),
        json!({}),
        json!({"annotations": {REDIRECTION_ANNOTATION: ENABLED}}),
    );
    assert_eq!(redirection_annotation(&p), Some(ENABLED));
    assert_eq!(
        redirection_annotation(&pod(json!({}), json!({}), json!({}))),
        None
    );
}
