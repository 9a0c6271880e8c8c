//! `ztunnel debug source`: where the config comes from (file and/or istiod), and per xDS type
//! the last push, its version, what is held and what was refused.

use serde_json::Value;

use super::table::Table;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) if x.is_empty() => "-".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

pub fn render(dump: &Value) -> String {
    let src = &dump["configSource"];
    let mut out = format!("file: {}\n", s(&src["file"]));
    let xds = &src["xds"];
    if xds.is_null() {
        out.push_str("xds: off\n");
    } else {
        out.push_str(&format!(
            "xds: {} connected={} synced={} connections={} last-connected={} last-error={}\n\n",
            s(&xds["address"]),
            s(&xds["connected"]),
            s(&xds["synced"]),
            s(&xds["connections"]),
            s(&xds["lastConnected"]),
            s(&xds["lastError"]),
        ));
        let mut t = Table::new(&[
            "TYPE",
            "LAST-PUSH",
            "VERSION",
            "RESOURCES",
            "ACKS",
            "NACKS",
            "LAST-NACK",
        ]);
        if let Some(types) = xds["types"].as_object() {
            for (name, ty) in types {
                t.row(vec![
                    name.clone(),
                    s(&ty["lastPush"]),
                    s(&ty["systemVersion"]),
                    s(&ty["resources"]),
                    s(&ty["acks"]),
                    s(&ty["nacks"]),
                    s(&ty["lastNack"]),
                ]);
            }
        }
        out.push_str(&t.render());
    }
    let conflicts = src["conflicts"].as_array().map_or(&[][..], Vec::as_slice);
    if !conflicts.is_empty() {
        out.push_str("\nconflicts (the first entry stays in force):\n");
        for c in conflicts {
            out.push_str(&format!("  {}\n", s(c)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shows_file_xds_types_and_conflicts() {
        let dump = json!({"configSource": {
            "file": "/etc/zt.yaml",
            "xds": {
                "address": "https://istiod:15012", "connected": true, "synced": true,
                "connections": 2, "lastConnected": "2026-11-30T21:00:00Z", "lastError": null,
                "types": {"Address": {
                    "lastPush": "2026-11-30T21:00:01Z", "systemVersion": "2026-11-30T21:00:00Z/7",
                    "nonce": "n", "resources": 3, "acks": 4, "nacks": 1,
                    "lastNack": "bad: addresses[0]: an IP is 4 or 16 bytes, got 3"}}
            },
            "conflicts": ["workloads[3]: duplicate uid \"x\" (also workloads[0])"]
        }});
        let out = render(&dump);
        assert!(out.starts_with("file: /etc/zt.yaml\n"), "{out}");
        assert!(
            out.contains("xds: https://istiod:15012 connected=true synced=true connections=2"),
            "{out}"
        );
        let row = out.lines().find(|l| l.starts_with("Address")).unwrap();
        for cell in [
            "2026-11-30T21:00:01Z",
            " 3 ",
            " 4 ",
            " 1 ",
            "an IP is 4 or 16 bytes",
        ] {
            assert!(row.contains(cell), "{cell} not in {row}");
        }
        assert!(out.contains("duplicate uid"), "{out}");
        let off = render(&json!({"configSource": {"file": null, "xds": null, "conflicts": []}}));
        assert_eq!(off, "file: -\nxds: off\n");
    }
}
