//! The Istio CA client against a real istiod (ignored by default: it needs one running, see
//! /work/notes/controlplane.md or e2e/controlplane). Run with
//! `ISTIO_CA_ADDRESS=127.0.0.1:PORT ISTIO_CA_ROOT=.../root-cert.pem ISTIO_CA_TOKEN=.../istio-token
//!  ISTIO_CA_POD_IDENTITY=spiffe://cluster.local/ns/demo/sa/web
//!  cargo test -p meshtunnel --test istio_ca_live -- --ignored`
//! where the identity is that of a pod on the token's node.

use std::time::Duration;

use meshtunnel::identity::{identity_of, Identity, IstioCa, IstioCaSettings};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set for this test"))
}

#[tokio::test]
#[ignore = "needs a running istiod (ISTIO_CA_* variables)"]
async fn real_istiod_issues_a_pod_identity_and_refuses_a_foreign_one() {
    let ca = IstioCa::new(IstioCaSettings {
        address: env("ISTIO_CA_ADDRESS"),
        root_ca: env("ISTIO_CA_ROOT").into(),
        alt_hostname: Some("istiod.istio-system.svc".into()),
        token_path: env("ISTIO_CA_TOKEN").into(),
        cluster_id: "Kubernetes".into(),
    })
    .unwrap();
    let id: Identity = env("ISTIO_CA_POD_IDENTITY").parse().unwrap();
    let cert = ca.issue(&id, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(identity_of(&cert.chain[0]), Ok(id.clone()));
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(life <= Duration::from_secs(3600 + 600), "{life:?}");
    // No pod of this identity runs on the token's node: istiod must refuse to impersonate it.
    let foreign = Identity::new("cluster.local", "nowhere", "nobody");
    let e = ca
        .issue(&foreign, Duration::from_secs(3600))
        .await
        .unwrap_err();
    eprintln!("foreign identity refused: {e}");
    assert!(e.to_string().contains("refused"), "{e}");
}
