use super::*;
use prost_types::Any;

fn session() -> Session {
    Session::new(
        Node {
            id: "ztunnel~10.0.0.5~zt-1.istio-system~istio-system.svc.cluster.local".into(),
            ..Default::default()
        },
        Defaults {
            trust_domain: "cluster.local".into(),
        },
    )
}

fn wl(uid: &str, ip: [u8; 4]) -> pw::Address {
    pw::Address {
        r#type: Some(pw::address::Type::Workload(pw::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "demo".into(),
            addresses: vec![ip.to_vec()],
            ..Default::default()
        })),
    }
}

fn res(name: &str, version: &str, msg: &impl Message, type_url: &str) -> discovery::Resource {
    discovery::Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(Any {
            type_url: type_url.into(),
            value: msg.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn addr_res(name: &str, version: &str, a: &pw::Address) -> discovery::Resource {
    res(name, version, a, ADDRESS_TYPE)
}

fn resp(
    type_url: &str,
    nonce: &str,
    resources: Vec<discovery::Resource>,
    removed: &[&str],
) -> discovery::DeltaDiscoveryResponse {
    discovery::DeltaDiscoveryResponse {
        system_version_info: format!("v-{nonce}"),
        resources,
        type_url: type_url.into(),
        nonce: nonce.into(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
    }
}

fn policy(name: &str) -> security::Authorization {
    security::Authorization {
        name: name.into(),
        namespace: "demo".into(),
        ..Default::default()
    }
}

#[test]
fn first_requests_subscribe_to_both_types_with_the_node() {
    let s = session();
    let reqs = s.initial_requests();
    let urls: Vec<_> = reqs.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(urls, [ADDRESS_TYPE, AUTHORIZATION_TYPE]);
    for r in &reqs {
        assert!(r.node.as_ref().unwrap().id.starts_with("ztunnel~"));
        // Wildcard: no names, and nothing held yet.
        assert!(r.resource_names_subscribe.is_empty());
        assert!(r.initial_resource_versions.is_empty());
        assert!(r.response_nonce.is_empty());
    }
}

#[test]
fn a_good_push_is_acked_with_its_nonce_and_applied() {
    let mut s = session();
    let h = s.on_response(resp(
        ADDRESS_TYPE,
        "n1",
        vec![
            addr_res(
                "Kubernetes//Pod/demo/a",
                "1",
                &wl("Kubernetes//Pod/demo/a", [10, 0, 0, 1]),
            ),
            addr_res(
                "Kubernetes//Pod/demo/b",
                "1",
                &wl("Kubernetes//Pod/demo/b", [10, 0, 0, 2]),
            ),
        ],
        &[],
    ));
    assert_eq!(h.kind, Some(Kind::Address));
    assert_eq!(h.reply.type_url, ADDRESS_TYPE);
    assert_eq!(h.reply.response_nonce, "n1");
    assert!(h.reply.error_detail.is_none(), "ACK carries no error");
    assert!(h.reply.node.is_none());
    assert_eq!(h.change.upserts.len(), 2);
    assert!(h.rejected.is_empty());
    assert_eq!(h.system_version, "v-n1");
    assert_eq!(s.held(Kind::Address), 2);
}

#[test]
fn a_malformed_resource_is_nacked_and_the_rest_applied() {
    let mut s = session();
    let bad_ip = wl("Kubernetes//Pod/demo/bad", [10, 0, 0, 3]);
    let mut bad_ip_bytes = bad_ip.clone();
    if let Some(pw::address::Type::Workload(w)) = &mut bad_ip_bytes.r#type {
        w.addresses = vec![vec![1, 2, 3]];
    }
    let garbage = discovery::Resource {
        name: "garbage".into(),
        version: "1".into(),
        resource: Some(Any {
            type_url: ADDRESS_TYPE.into(),
            value: vec![0xff, 0xff, 0xff],
        }),
        ..Default::default()
    };
    let h = s.on_response(resp(
        ADDRESS_TYPE,
        "n1",
        vec![
            addr_res("good", "1", &wl("good", [10, 0, 0, 1])),
            addr_res("Kubernetes//Pod/demo/bad", "1", &bad_ip_bytes),
            garbage,
            res("wrong-type", "1", &policy("p"), AUTHORIZATION_TYPE),
            discovery::Resource {
                name: "empty".into(),
                ..Default::default()
            },
        ],
        &[],
    ));
    assert_eq!(h.change.upserts.len(), 1);
    assert_eq!(h.change.upserts[0].0, "good");
    let names: Vec<_> = h.rejected.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["Kubernetes//Pod/demo/bad", "garbage", "wrong-type", "empty"]
    );
    let err = h.reply.error_detail.expect("a NACK");
    assert_eq!(h.reply.response_nonce, "n1");
    assert!(
        err.message
            .contains("Kubernetes//Pod/demo/bad: addresses[0]: an IP is 4 or 16 bytes"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("garbage: undecodable Address"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("empty: resource has no body"),
        "{}",
        err.message
    );
    // Only what was accepted counts as held, so istiod resends the rest after a reconnect.
    assert_eq!(s.held(Kind::Address), 1);
}

#[test]
fn a_refused_update_keeps_the_version_of_what_is_still_held() {
    let mut s = session();
    s.on_response(resp(
        ADDRESS_TYPE,
        "n1",
        vec![addr_res("a", "1", &wl("a", [10, 0, 0, 1]))],
        &[],
    ));
    let mut broken = wl("a", [10, 0, 0, 1]);
    if let Some(pw::address::Type::Workload(w)) = &mut broken.r#type {
        w.uid.clear();
    }
    let h = s.on_response(resp(
        ADDRESS_TYPE,
        "n2",
        vec![addr_res("a", "2", &broken)],
        &[],
    ));
    assert!(h.change.upserts.is_empty());
    assert!(h.reply.error_detail.is_some());
    let init = &s.initial_requests()[0];
    assert_eq!(init.initial_resource_versions["a"], "1");
}

#[test]
fn removals_are_passed_on_and_forgotten() {
    let mut s = session();
    s.on_response(resp(
        ADDRESS_TYPE,
        "n1",
        vec![
            addr_res("a", "1", &wl("a", [10, 0, 0, 1])),
            addr_res("b", "1", &wl("b", [10, 0, 0, 2])),
        ],
        &[],
    ));
    let h = s.on_response(resp(ADDRESS_TYPE, "n2", vec![], &["a", "never-seen"]));
    assert_eq!(h.change.removals, ["a", "never-seen"]);
    assert!(h.reply.error_detail.is_none());
    assert_eq!(s.held(Kind::Address), 1);
}

#[test]
fn reconnect_sends_what_is_held_per_type() {
    let mut s = session();
    s.on_response(resp(
        ADDRESS_TYPE,
        "n1",
        vec![addr_res("a", "7", &wl("a", [10, 0, 0, 1]))],
        &[],
    ));
    s.on_response(resp(
        AUTHORIZATION_TYPE,
        "n2",
        vec![res("demo/p", "3", &policy("p"), AUTHORIZATION_TYPE)],
        &[],
    ));
    let reqs = s.initial_requests();
    assert_eq!(
        reqs[0].initial_resource_versions,
        [("a".to_string(), "7".to_string())].into()
    );
    assert_eq!(
        reqs[1].initial_resource_versions,
        [("demo/p".to_string(), "3".to_string())].into()
    );
    assert!(reqs.iter().all(|r| r.node.is_some()));
}

#[test]
fn synced_after_the_first_push_of_both_types_even_if_empty_or_nacked() {
    let mut s = session();
    assert!(!s.synced());
    let h = s.on_response(resp(
        ADDRESS_TYPE,
        "n1",
        vec![discovery::Resource {
            name: "bad".into(),
            ..Default::default()
        }],
        &[],
    ));
    assert!(h.reply.error_detail.is_some());
    assert!(!h.became_synced);
    assert!(!s.synced());
    let h = s.on_response(resp(AUTHORIZATION_TYPE, "n2", vec![], &[]));
    assert!(h.became_synced);
    assert!(s.synced());
    let h = s.on_response(resp(AUTHORIZATION_TYPE, "n3", vec![], &[]));
    assert!(!h.became_synced, "only once");
}

#[test]
fn an_unsubscribed_type_is_nacked_and_changes_nothing() {
    let mut s = session();
    let h = s.on_response(resp(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "n9",
        vec![],
        &["x"],
    ));
    assert_eq!(h.kind, None);
    assert_eq!(h.change, Change::default());
    assert_eq!(h.reply.response_nonce, "n9");
    assert!(h
        .reply
        .error_detail
        .unwrap()
        .message
        .contains("was not subscribed"));
    assert!(!s.synced());
}

#[test]
fn policies_decode_into_the_model() {
    let mut s = session();
    let h = s.on_response(resp(
        AUTHORIZATION_TYPE,
        "n1",
        vec![res("demo/p", "1", &policy("p"), AUTHORIZATION_TYPE)],
        &[],
    ));
    let (name, r) = &h.change.upserts[0];
    assert_eq!(name, "demo/p");
    let Resource::Policy(p) = r else {
        panic!("{r:?}")
    };
    assert_eq!(p.key(), "demo/p");
}
