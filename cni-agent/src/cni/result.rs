use std::net::IpAddr;

use serde_json::{Map, Value};

use super::error::{CniError, Code};
use super::version::Version;

fn decoding(details: String) -> CniError {
    CniError::new(Code::Decoding, "failed to decode prevResult", details)
}

/// The pod's addresses: IPs on interfaces inside the sandbox (bridge also reports the host-side
/// bridge and veth, whose addresses are not the pod's), or unattached IPs.
pub fn pod_ips(prev: &Value) -> Result<Vec<IpAddr>, CniError> {
    if let Some(v) = prev.get("cniVersion") {
        let s = v
            .as_str()
            .ok_or_else(|| decoding("prevResult cniVersion is not a string".into()))?;
        if Version::parse(s).is_none() {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!("prevResult has cniVersion {s:?}"),
            ));
        }
    }
    let interfaces = match prev.get("interfaces") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(decoding("interfaces is not an array".into())),
    };
    let ips = match prev.get("ips") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(decoding("ips is not an array".into())),
    };
    let mut out = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let address = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| decoding(format!("ips[{i}] has no address string")))?;
        let addr_part = address.split_once('/').map_or(address, |(a, _)| a);
        let addr: IpAddr = addr_part
            .parse()
            .map_err(|e| decoding(format!("ips[{i}].address {address:?}: {e}")))?;
        let in_sandbox = match ip.get("interface").and_then(Value::as_u64) {
            None => true,
            Some(idx) => match interfaces.get(idx as usize) {
                // An index past the list is the earlier plugin's bug; keep the address rather
                // than hide the pod from the agent.
                None => true,
                Some(iface) => iface
                    .get("sandbox")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty()),
            },
        };
        if in_sandbox && !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// prevResult rewritten in the config's cniVersion. The runtime normally hands it to us in that
/// version already; converting anyway keeps a mis-versioned earlier plugin from breaking the chain.
/// Only the per-IP `version` field differs between the versions we support.
pub fn convert(prev: &Value, to: Version) -> Value {
    let mut out = prev.clone();
    let Value::Object(obj) = &mut out else {
        return out;
    };
    match obj.get_mut("cniVersion") {
        Some(v) => *v = Value::String(to.as_str().into()),
        None => {
            let mut with_version = Map::new();
            with_version.insert("cniVersion".into(), to.as_str().into());
            with_version.extend(std::mem::take(obj));
            *obj = with_version;
        }
    }
    if let Some(Value::Array(ips)) = obj.get_mut("ips") {
        for ip in ips.iter_mut() {
            let Value::Object(ip) = ip else { continue };
            if to.ips_carry_version() {
                if ip.contains_key("version") {
                    continue;
                }
                let family = ip.get("address").and_then(Value::as_str).map(|a| {
                    if a.contains(':') {
                        "6"
                    } else {
                        "4"
                    }
                });
                if let Some(family) = family {
                    let mut with_family = Map::new();
                    with_family.insert("version".into(), family.into());
                    with_family.extend(std::mem::take(ip));
                    *ip = with_family;
                }
            } else {
                ip.shift_remove("version");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bridge_like() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/p"}
            ],
            "ips": [
                {"interface": 2, "address": "10.199.3.2/24", "gateway": "10.199.3.1"},
                {"interface": 2, "address": "fd00::2/64", "gateway": "fd00::1"},
                {"interface": 0, "address": "10.199.3.1/24"}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }

    #[test]
    fn pod_ips_skip_host_side_interfaces() {
        let ips = pod_ips(&bridge_like()).unwrap();
        assert_eq!(
            ips,
            vec![
                "10.199.3.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn pod_ips_without_interfaces_or_ips() {
        assert!(pod_ips(&json!({"cniVersion": "0.3.1"})).unwrap().is_empty());
        let v = json!({"ips": [{"version": "4", "address": "10.0.0.9/32"}]});
        assert_eq!(
            pod_ips(&v).unwrap(),
            vec!["10.0.0.9".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn pod_ips_errors() {
        let code = |v: Value| pod_ips(&v).unwrap_err().code;
        assert_eq!(code(json!({"ips": {}})), Code::Decoding);
        assert_eq!(code(json!({"interfaces": 3, "ips": []})), Code::Decoding);
        assert_eq!(
            code(json!({"ips": [{"gateway": "10.0.0.1"}]})),
            Code::Decoding
        );
        assert_eq!(
            code(json!({"ips": [{"address": "banana/24"}]})),
            Code::Decoding
        );
        assert_eq!(code(json!({"cniVersion": 4})), Code::Decoding);
        assert_eq!(
            code(json!({"cniVersion": "0.1.0"})),
            Code::IncompatibleVersion
        );
    }

    #[test]
    fn same_version_passes_through_unchanged() {
        let v = bridge_like();
        assert_eq!(convert(&v, Version::V1_0_0).to_string(), v.to_string());
    }

    #[test]
    fn down_conversion_adds_ip_family_first() {
        let out = convert(&bridge_like(), Version::V0_4_0);
        assert_eq!(out["cniVersion"], "0.4.0");
        let first = out["ips"][0].as_object().unwrap();
        assert_eq!(first.keys().next().unwrap(), "version");
        assert_eq!(out["ips"][0]["version"], "4");
        assert_eq!(out["ips"][1]["version"], "6");
        assert_eq!(out["routes"], bridge_like()["routes"]);
    }

    #[test]
    fn up_conversion_drops_ip_family_and_keeps_order() {
        let old = json!({
            "cniVersion": "0.3.1",
            "ips": [{"version": "4", "interface": 0, "address": "10.0.0.2/24"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let out = convert(&old, Version::V1_0_0);
        assert_eq!(
            out.to_string(),
            r#"{"cniVersion":"1.0.0","ips":[{"interface":0,"address":"10.0.0.2/24"}],"dns":{"nameservers":["10.96.0.10"]}}"#
        );
    }

    #[test]
    fn missing_version_is_added_at_the_front() {
        let out = convert(&json!({"ips": []}), Version::V0_3_1);
        assert_eq!(out.to_string(), r#"{"cniVersion":"0.3.1","ips":[]}"#);
    }
}
