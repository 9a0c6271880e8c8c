use rcgen::{BasicConstraints, CertificateSigningRequestParams, IsCa, Issuer, KeyUsagePurpose};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::*;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa)
}

/// A CA standing in for istiod: signs CSRs as they come, for whatever SAN they carry.
struct FakeCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl FakeCa {
    fn new() -> FakeCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let root = params.self_signed(&key).unwrap();
        FakeCa {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, csr_pem: &str) -> String {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        csr.signed_by(&self.issuer).unwrap().pem()
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut self.root_pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    fn answer(&self, csr_pem: &str) -> IstioCertificateResponse {
        IstioCertificateResponse {
            cert_chain: vec![self.sign(csr_pem), self.root_pem.clone()],
        }
    }
}

#[test]
fn csr_is_p256_with_the_spiffe_id_as_its_only_san() {
    let (pem, key) = csr(&id("web")).unwrap();
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{pem}"
    );
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    let der = rustls_pemfile::csr(&mut pem.as_bytes()).unwrap().unwrap();
    let (_, req) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
    req.verify_signature().expect("self-signed CSR");
    assert_eq!(
        req.certification_request_info.subject_pki.raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    let sans: Vec<String> = req
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .map(|n| match n {
            GeneralName::URI(u) => format!("URI:{u}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sans, ["URI:spiffe://cluster.local/ns/demo/sa/web"]);
    assert_eq!(req.certification_request_info.subject.to_string(), "");
}

#[test]
fn request_carries_ttl_and_impersonated_identity_with_upstream_field_numbers() {
    let own = request(&id("web"), "CSR".into(), Duration::from_secs(60), false);
    assert_eq!(
        own.metadata, None,
        "asking for one's own identity names none"
    );
    let r = request(
        &id("web"),
        "CSR".into(),
        Duration::from_secs(24 * 3600),
        true,
    );
    assert_eq!(r.validity_duration, 86_400);
    let fields = &r.metadata.as_ref().unwrap().fields;
    assert_eq!(fields.len(), 1);
    assert_eq!(
        fields[IMPERSONATED_IDENTITY].kind,
        Some(prost_types::value::Kind::StringValue(
            "spiffe://cluster.local/ns/demo/sa/web".into()
        ))
    );
    // csr is field 1 (tag 0x0a), validity_duration field 3 (varint, tag 0x18), metadata
    // field 4 (tag 0x22).
    let bytes = prost::Message::encode_to_vec(&r);
    assert_eq!(&bytes[..5], b"\x0a\x03CSR");
    assert_eq!(&bytes[5..9], [0x18, 0x80, 0xa3, 0x05]);
    assert_eq!(bytes[9], 0x22);
    // The response's cert_chain is field 1.
    let resp = IstioCertificateResponse {
        cert_chain: vec!["a".into()],
    };
    assert_eq!(prost::Message::encode_to_vec(&resp), b"\x0a\x01a");
}

#[test]
fn answer_becomes_a_certificate_presenting_all_but_the_root() {
    let ca = FakeCa::new();
    let (pem, key) = csr(&id("web")).unwrap();
    let cert = certificate(&id("web"), &key, &ca.answer(&pem), &ca.roots()).unwrap();
    assert_eq!(cert.identity, id("web"));
    assert_eq!(cert.chain.len(), 1, "the root is not presented");
    assert_eq!(identity_of(&cert.chain[0]), Ok(id("web")));
    assert!(cert.not_after > cert.not_before);
    // The key is usable by the TLS stack.
    rustls::crypto::ring::sign::any_supported_type(&cert.key).unwrap();

    // With an intermediate: leaf + intermediate presented.
    let mut with_int = ca.answer(&pem);
    with_int.cert_chain.insert(1, ca.root_pem.clone());
    let cert = certificate(&id("web"), &key, &with_int, &ca.roots()).unwrap();
    assert_eq!(cert.chain.len(), 2);
    // Several certificates in one PEM string are read too.
    let joined = IstioCertificateResponse {
        cert_chain: vec![ca.answer(&pem).cert_chain.concat()],
    };
    assert_eq!(
        certificate(&id("web"), &key, &joined, &ca.roots())
            .unwrap()
            .chain
            .len(),
        1
    );
}

#[test]
fn bad_answers_are_refused_with_the_reason() {
    let ca = FakeCa::new();
    let (pem, key) = csr(&id("web")).unwrap();
    let err = |resp: &IstioCertificateResponse| {
        certificate(&id("web"), &key, resp, &ca.roots()).unwrap_err()
    };

    let empty = IstioCertificateResponse { cert_chain: vec![] };
    assert!(err(&empty).contains("empty certificate chain"));
    let garbage = IstioCertificateResponse {
        cert_chain: vec!["not a certificate".into()],
    };
    assert!(err(&garbage).contains("cert_chain[0]: no PEM certificate"));
    // A certificate for another identity (a CA overriding the SAN, or a mix-up).
    let (other_pem, _) = csr(&id("db")).unwrap();
    let e = err(&ca.answer(&other_pem));
    assert!(
        e.contains("for spiffe://cluster.local/ns/demo/sa/db, not"),
        "{e}"
    );
    // Our identity, but not our key.
    let (_, other_key) = csr(&id("web")).unwrap();
    let e = certificate(&id("web"), &other_key, &ca.answer(&pem), &ca.roots()).unwrap_err();
    assert!(e.contains("not carry the key of our CSR"), "{e}");
    // Signed under a root the mesh does not trust.
    let stranger = FakeCa::new();
    let e = certificate(&id("web"), &key, &ca.answer(&pem), &stranger.roots()).unwrap_err();
    assert!(e.contains("does not lead to a CA_ROOT_CA root"), "{e}");
}

#[tokio::test]
async fn unreachable_ca_and_missing_token_are_errors_not_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = FakeCa::new();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, &ca.root_pem).unwrap();
    let settings = IstioCaSettings {
        // Nothing listens there.
        address: "127.0.0.1:9".into(),
        root_ca: root,
        alt_hostname: Some("istiod.istio-system.svc".into()),
        token_path: dir.path().join("token"),
        cluster_id: "Kubernetes".into(),
        impersonate: true,
    };
    let client = IstioCa::new(settings).unwrap();
    let e = client
        .issue(&id("web"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reading the token"), "{e}");
    std::fs::write(dir.path().join("token"), "").unwrap();
    let e = client
        .issue(&id("web"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    std::fs::write(dir.path().join("token"), "tok\n").unwrap();
    let t = std::time::Instant::now();
    let e = client
        .issue(&id("web"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:9 refused"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());

    let bad = IstioCaSettings {
        address: "https://istiod:15012".into(),
        root_ca: dir.path().join("missing.pem"),
        alt_hostname: None,
        token_path: dir.path().join("token"),
        cluster_id: String::new(),
        impersonate: true,
    };
    assert!(IstioCa::new(bad)
        .unwrap_err()
        .to_string()
        .contains("CA_ROOT_CA"));
}
