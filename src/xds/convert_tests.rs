use super::*;

fn d() -> Defaults {
    Defaults {
        trust_domain: "mesh.example".into(),
    }
}

fn v4(s: &str) -> Vec<u8> {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets().to_vec()
}

fn pod() -> pw::Workload {
    pw::Workload {
        uid: "Kubernetes//Pod/demo/web-0".into(),
        name: "web-0".into(),
        namespace: "demo".into(),
        addresses: vec![v4("10.244.1.2")],
        tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
        node: "node-a".into(),
        cluster_id: "Kubernetes".into(),
        workload_type: pw::WorkloadType::Pod as i32,
        services: [(
            "demo/web.demo.svc.cluster.local".to_string(),
            pw::PortList {
                ports: vec![pw::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: 0,
                }],
            },
        )]
        .into(),
        authorization_policies: vec!["demo/allow-web".into()],
        ..Default::default()
    }
}

#[test]
fn a_pod_becomes_a_workload_with_upstream_defaults() {
    let w = workload(pod(), &d()).unwrap();
    assert_eq!(w.uid, "Kubernetes//Pod/demo/web-0");
    assert_eq!(
        w.workload_ips,
        vec!["10.244.1.2".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(w.protocol, Protocol::Hbone);
    assert_eq!(
        w.identity().to_string(),
        "spiffe://mesh.example/ns/demo/sa/default"
    );
    assert_eq!(w.services["demo/web.demo.svc.cluster.local"][&80], 8080);
    assert_eq!(w.workload_type, "pod");
    assert_eq!(w.status, HealthStatus::Healthy);
    assert_eq!(w.authorization_policies, vec!["demo/allow-web".to_string()]);

    let mut p = pod();
    p.trust_domain = "other.td".into();
    p.service_account = "web".into();
    p.tunnel_protocol = pw::TunnelProtocol::None as i32;
    p.status = pw::WorkloadStatus::Unhealthy as i32;
    p.network_mode = pw::NetworkMode::HostNetwork as i32;
    p.addresses.push(vec![0xfd; 16]);
    p.waypoint = Some(pw::GatewayAddress {
        destination: Some(pw::gateway_address::Destination::Hostname(
            pw::NamespacedHostname {
                namespace: "demo".into(),
                hostname: "waypoint.demo.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    });
    let w = workload(p, &d()).unwrap();
    assert_eq!(w.identity().to_string(), "spiffe://other.td/ns/demo/sa/web");
    assert_eq!(w.protocol, Protocol::Tcp);
    assert_eq!(w.status, HealthStatus::Unhealthy);
    assert_eq!(w.network_mode, NetworkMode::HostNetwork);
    assert!(w.workload_ips[1].is_ipv6());
    let wp = w.waypoint.unwrap();
    assert_eq!(wp.hbone_mtls_port, 15008);
    assert_eq!(
        wp.destination.to_string(),
        "demo/waypoint.demo.svc.cluster.local"
    );
}

#[test]
fn malformed_workloads_name_the_field() {
    type Edit = fn(&mut pw::Workload);
    let cases: &[(Edit, &str)] = &[
        (|w| w.uid.clear(), "uid: must not be empty"),
        (
            |w| w.addresses = vec![vec![10, 0, 0]],
            "addresses[0]: an IP is 4 or 16 bytes, got 3",
        ),
        (
            |w| w.tunnel_protocol = 7,
            "tunnelProtocol: unknown enum value 7",
        ),
        (|w| w.status = -1, "status: unknown enum value -1"),
        (
            |w| {
                w.services.insert("nohost".into(), pw::PortList::default());
            },
            "services[\"nohost\"]: key is not `namespace/hostname`",
        ),
        (
            |w| {
                w.services
                    .get_mut("demo/web.demo.svc.cluster.local")
                    .unwrap()
                    .ports[0]
                    .target_port = 70000;
            },
            "services[\"demo/web.demo.svc.cluster.local\"]: port 70000 is above 65535",
        ),
        (
            |w| {
                w.waypoint = Some(pw::GatewayAddress {
                    destination: None,
                    hbone_mtls_port: 15008,
                })
            },
            "waypoint: no destination",
        ),
    ];
    for (edit, want) in cases {
        let mut p = pod();
        edit(&mut p);
        let e = workload(p, &d()).unwrap_err();
        assert_eq!(e.to_string(), *want);
    }
}

fn svc() -> pw::Service {
    pw::Service {
        name: "web".into(),
        namespace: "demo".into(),
        hostname: "web.demo.svc.cluster.local".into(),
        addresses: vec![pw::NetworkAddress {
            network: String::new(),
            address: v4("10.96.0.10"),
            length: None,
        }],
        ports: vec![pw::Port {
            service_port: 80,
            target_port: 0,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

#[test]
fn services_convert_and_refuse_garbage() {
    let s = service(svc()).unwrap();
    assert_eq!(s.key(), "demo/web.demo.svc.cluster.local");
    assert_eq!(s.vips[0].to_string(), "/10.96.0.10");
    assert_eq!(s.ports[&80], 0);

    let mut bad = svc();
    bad.hostname.clear();
    assert_eq!(
        service(bad).unwrap_err().to_string(),
        "hostname: must not be empty"
    );
    let mut bad = svc();
    bad.addresses[0].address = vec![1; 5];
    assert_eq!(
        service(bad).unwrap_err().to_string(),
        "addresses[0]: an IP is 4 or 16 bytes, got 5"
    );
    let mut bad = svc();
    bad.ports[0].service_port = 1 << 16;
    assert_eq!(
        service(bad).unwrap_err().to_string(),
        "ports[0]: port 65536 is above 65535"
    );
}

#[test]
fn address_dispatches_and_refuses_an_empty_one() {
    let a = pw::Address {
        r#type: Some(pw::address::Type::Service(svc())),
    };
    assert!(matches!(address(a, &d()).unwrap(), Address::Service(_)));
    let a = pw::Address {
        r#type: Some(pw::address::Type::Workload(pod())),
    };
    assert!(matches!(address(a, &d()).unwrap(), Address::Workload(_)));
    let e = address(pw::Address { r#type: None }, &d()).unwrap_err();
    assert_eq!(e.to_string(), "type: neither a workload nor a service");
}

fn exact(s: &str) -> security::StringMatch {
    security::StringMatch {
        match_type: Some(security::string_match::MatchType::Exact(s.into())),
    }
}

fn authz(m: security::Match) -> security::Authorization {
    security::Authorization {
        name: "allow-web".into(),
        namespace: "demo".into(),
        scope: security::Scope::WorkloadSelector as i32,
        action: security::Action::Deny as i32,
        rules: vec![security::Rule {
            clauses: vec![security::Clause { matches: vec![m] }],
        }],
        dry_run: true,
        extensions: vec![],
    }
}

#[test]
fn policies_keep_rules_clauses_and_matches() {
    let m = security::Match {
        principals: vec![exact("cluster.local/ns/demo/sa/client")],
        not_namespaces: vec![security::StringMatch {
            match_type: Some(security::string_match::MatchType::Presence(())),
        }],
        service_accounts: vec![security::ServiceAccountMatch {
            namespace: "demo".into(),
            service_account: "client".into(),
        }],
        source_ips: vec![security::Address {
            address: v4("10.244.0.0"),
            length: 16,
        }],
        destination_ports: vec![8080],
        ..Default::default()
    };
    let p = policy(authz(m)).unwrap();
    assert_eq!(p.key(), "demo/allow-web");
    assert_eq!(p.scope, Scope::WorkloadSelector);
    assert_eq!(p.action, Action::Deny);
    assert!(p.dry_run);
    let m = &p.rules[0][0][0];
    assert_eq!(
        m.principals,
        vec![StringMatch::Exact("cluster.local/ns/demo/sa/client".into())]
    );
    assert_eq!(m.not_namespaces, vec![StringMatch::Presence]);
    assert_eq!(m.service_accounts[0].service_account, "client");
    assert_eq!(m.source_ips[0].to_string(), "10.244.0.0/16");
    assert_eq!(m.destination_ports, vec![8080]);
}

#[test]
fn malformed_policies_name_the_match() {
    let at = "rules[0].clauses[0].matches[0]";
    let cases = [
        (
            security::Match {
                principals: vec![security::StringMatch { match_type: None }],
                ..Default::default()
            },
            format!("{at}.principals: string match of no kind"),
        ),
        (
            security::Match {
                source_ips: vec![security::Address {
                    address: v4("10.0.0.0"),
                    length: 33,
                }],
                ..Default::default()
            },
            format!("{at}.sourceIps: prefix length 33 is above 32"),
        ),
        (
            security::Match {
                not_destination_ports: vec![65536],
                ..Default::default()
            },
            format!("{at}.notDestinationPorts: port 65536 is above 65535"),
        ),
    ];
    for (m, want) in cases {
        assert_eq!(policy(authz(m)).unwrap_err().to_string(), want);
    }
    let mut a = authz(security::Match::default());
    a.action = 9;
    assert_eq!(
        policy(a).unwrap_err().to_string(),
        "action: unknown enum value 9"
    );
    let mut a = authz(security::Match::default());
    a.namespace.clear();
    assert_eq!(
        policy(a).unwrap_err().to_string(),
        "namespace: must not be empty"
    );
}
