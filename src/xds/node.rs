//! Who this proxy says it is to istiod: the node id and metadata upstream ztunnel sends.
//! istiod parses the id (`<type>~<ip>~<id>~<dns domain>`; `ztunnel` for ztunnel, `waypoint`
//! for a waypoint, as istio-agent's `proxy waypoint`) and checks the metadata NAMESPACE (and
//! SERVICE_ACCOUNT when sent) against the token's identity.

use std::collections::BTreeMap;

use prost_types::{value::Kind, Struct, Value};

use super::proto::core::Node;
use super::settings::XdsSettings;

/// Environment variables with this prefix become node metadata (prefix removed), as upstream's
/// proxy metadata does.
const META_PREFIX: &str = "ISTIO_META_";

pub fn build(
    proxy_type: &str,
    s: &XdsSettings,
    node_name: &str,
    cluster_id: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Node {
    let (ip, pod, ns) = (s.instance_ip, &s.pod_name, &s.pod_namespace);
    let mut meta: BTreeMap<String, String> = env
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(META_PREFIX)?.to_owned(), v)))
        .collect();
    for (k, v) in [
        ("NAME", pod.as_str()),
        ("NAMESPACE", ns.as_str()),
        ("INSTANCE_IPS", &ip.to_string()),
        ("NODE_NAME", node_name),
        ("CLUSTER_ID", cluster_id),
    ] {
        meta.insert(k.to_owned(), v.to_owned());
    }
    Node {
        id: format!("{proxy_type}~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
        metadata: Some(Struct {
            fields: meta
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        Value {
                            kind: Some(Kind::StringValue(v)),
                        },
                    )
                })
                .collect(),
        }),
        user_agent_name: format!("meshtunnel-{proxy_type}"),
        user_agent_version_type: Some(
            super::proto::core::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            ),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        xds: XdsSettings,
    }

    fn meta(n: &Node, k: &str) -> Option<String> {
        match n.metadata.as_ref()?.fields.get(k)?.kind.as_ref()? {
            Kind::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn id_and_metadata_as_upstream_sends_them() {
        let s = Cli::try_parse_from([
            "zt",
            "--pod-name",
            "ztunnel-abcde",
            "--pod-namespace",
            "istio-system",
            "--instance-ip",
            "10.0.0.5",
        ])
        .unwrap()
        .xds;
        let env = [
            ("ISTIO_META_DNS_CAPTURE".to_string(), "true".to_string()),
            ("ISTIO_META_NAMESPACE".to_string(), "spoofed".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let n = build("ztunnel", &s, "node-a", "Kubernetes", env.clone());
        assert_eq!(
            n.id,
            "ztunnel~10.0.0.5~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(meta(&n, "NAME").unwrap(), "ztunnel-abcde");
        assert_eq!(meta(&n, "NAMESPACE").unwrap(), "istio-system");
        assert_eq!(meta(&n, "INSTANCE_IPS").unwrap(), "10.0.0.5");
        assert_eq!(meta(&n, "NODE_NAME").unwrap(), "node-a");
        assert_eq!(meta(&n, "CLUSTER_ID").unwrap(), "Kubernetes");
        assert_eq!(meta(&n, "DNS_CAPTURE").unwrap(), "true");
        assert_eq!(meta(&n, "HOME"), None);
        let w = build("waypoint", &s, "node-a", "Kubernetes", env);
        assert!(w.id.starts_with("waypoint~10.0.0.5~"), "{}", w.id);
        assert_eq!(w.user_agent_name, "meshtunnel-waypoint");
    }
}
