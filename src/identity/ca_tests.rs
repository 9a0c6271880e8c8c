//! The local CA with keys and certificates made by the `openssl` CLI, in every key format an
//! operator may have, and in Istio's plug-in CA layout.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::tests::{handshake, id, side};
use super::*;

/// Runs `openssl args` in `dir`; panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `file` holding a fresh key in `format`; returns the PEM label it must carry.
fn make_key(dir: &Path, file: &str, format: &str) -> &'static str {
    match format {
        "pkcs8-p256" => {
            openssl(
                dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    file,
                ],
            );
            "BEGIN PRIVATE KEY"
        }
        // What `openssl ecparam -genkey` writes: EC PARAMETERS, then EC PRIVATE KEY.
        "sec1-p256" => {
            openssl(
                dir,
                &["ecparam", "-name", "prime256v1", "-genkey", "-out", file],
            );
            "BEGIN EC PRIVATE KEY"
        }
        "sec1-p384" => {
            openssl(
                dir,
                &[
                    "ecparam",
                    "-name",
                    "secp384r1",
                    "-genkey",
                    "-noout",
                    "-out",
                    file,
                ],
            );
            "BEGIN EC PRIVATE KEY"
        }
        "pkcs1-rsa" => {
            openssl(dir, &["genrsa", "-traditional", "-out", file, "2048"]);
            "BEGIN RSA PRIVATE KEY"
        }
        other => panic!("unknown key format {other}"),
    }
}

/// A self-signed CA certificate for `key` in `cert`.
fn self_signed(dir: &Path, key: &str, cert: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key,
            "-out",
            cert,
            "-days",
            "2",
            "-subj",
            &format!("/O=cluster.local/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// An intermediate CA certificate for `key`, signed by `ca_cert`/`ca_key`, in `cert`.
fn intermediate(dir: &Path, key: &str, cert: &str, ca_cert: &str, ca_key: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            key,
            "-out",
            "int.csr",
            "-subj",
            "/O=cluster.local/CN=intermediate",
        ],
    );
    std::fs::write(
        dir.join("int.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            ca_cert,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "int.ext",
            "-out",
            cert,
        ],
    );
}

/// Two sides sharing `ca` complete a mutual handshake and see each other's identities.
async fn handshake_works(ca: LocalCa) {
    let s = side(ca);
    let server = s
        .ctx
        .server_config(s.mgr.get(&id("server")).await.unwrap())
        .unwrap();
    let client = s
        .ctx
        .client_config(s.mgr.get(&id("client")).await.unwrap(), vec![id("server")])
        .unwrap();
    let (c, srv) = handshake(client, server).await;
    c.unwrap();
    assert_eq!(srv.unwrap(), Some(id("client")));
}

#[tokio::test]
async fn root_key_in_every_format_signs_leaves_peers_accept() {
    for format in ["pkcs8-p256", "sec1-p256", "sec1-p384", "pkcs1-rsa"] {
        let dir = tempfile::tempdir().unwrap();
        let label = make_key(dir.path(), CA_KEY_FILE, format);
        let pem = std::fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap();
        assert!(pem.contains(label), "{format}: openssl wrote\n{pem}");
        self_signed(dir.path(), CA_KEY_FILE, ROOT_CERT_FILE, "root");
        let ca = LocalCa::load_or_create(dir.path(), "cluster.local")
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        let leaf = ca.issue(&id("web"), Duration::from_secs(60)).unwrap();
        assert_eq!(leaf.chain.len(), 1, "{format}: a root presents no chain");
        assert_eq!(identity_of(&leaf.chain[0]), Ok(id("web")));
        handshake_works(ca).await;
    }
}

#[tokio::test]
async fn plugged_in_ca_signs_with_the_intermediate_and_presents_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_key(d, "root-key.pem", "pkcs1-rsa");
    self_signed(d, "root-key.pem", ROOT_CERT_FILE, "root");
    make_key(d, CA_KEY_FILE, "sec1-p256");
    intermediate(d, CA_KEY_FILE, CA_CERT_FILE, ROOT_CERT_FILE, "root-key.pem");
    let chain = [
        std::fs::read_to_string(d.join(CA_CERT_FILE)).unwrap(),
        std::fs::read_to_string(d.join(ROOT_CERT_FILE)).unwrap(),
    ]
    .concat();
    std::fs::write(d.join(CERT_CHAIN_FILE), chain).unwrap();

    let ca = LocalCa::load_or_create(d, "cluster.local").unwrap();
    let ca_cert =
        rustls_pemfile::certs(&mut std::fs::read(d.join(CA_CERT_FILE)).unwrap().as_slice())
            .next()
            .unwrap()
            .unwrap();
    assert_ne!(
        ca.root(),
        &ca_cert,
        "peers trust the root, not the intermediate"
    );
    let leaf = ca.issue(&id("web"), Duration::from_secs(60)).unwrap();
    // Leaf, then the intermediate; the root itself is not sent.
    assert_eq!(leaf.chain.len(), 2);
    assert_eq!(leaf.chain[1], ca_cert);
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
    assert!(
        parsed.issuer().to_string().contains("intermediate"),
        "{}",
        parsed.issuer()
    );
    handshake_works(ca).await;
    // Nothing was created or rewritten in an operator's directory.
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pem"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            CA_CERT_FILE,
            CA_KEY_FILE,
            CERT_CHAIN_FILE,
            ROOT_CERT_FILE,
            "root-key.pem"
        ]
    );

    // Without cert-chain.pem the intermediate alone is presented.
    std::fs::remove_file(d.join(CERT_CHAIN_FILE)).unwrap();
    let ca = LocalCa::load_or_create(d, "cluster.local").unwrap();
    assert_eq!(
        ca.issue(&id("web"), Duration::from_secs(60))
            .unwrap()
            .chain
            .len(),
        2
    );
}

#[test]
fn plugged_in_ca_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_key(d, "root-key.pem", "pkcs8-p256");
    self_signed(d, "root-key.pem", ROOT_CERT_FILE, "root");
    make_key(d, CA_KEY_FILE, "pkcs8-p256");
    intermediate(d, CA_KEY_FILE, CA_CERT_FILE, ROOT_CERT_FILE, "root-key.pem");
    let load_err = || {
        LocalCa::load_or_create(d, "cluster.local")
            .err()
            .expect("loaded a broken CA")
            .to_string()
    };

    // A key that is not the intermediate's.
    std::fs::rename(d.join(CA_KEY_FILE), d.join("good-key.pem")).unwrap();
    make_key(d, CA_KEY_FILE, "sec1-p256");
    let e = load_err();
    assert!(
        e.contains("ca-key.pem") && e.contains("is not the key of"),
        "{e}"
    );
    std::fs::rename(d.join("good-key.pem"), d.join(CA_KEY_FILE)).unwrap();

    // A chain file that does not start with ca-cert.pem.
    std::fs::copy(d.join(ROOT_CERT_FILE), d.join(CERT_CHAIN_FILE)).unwrap();
    let e = load_err();
    assert!(
        e.contains("cert-chain.pem") && e.contains("does not start with ca-cert.pem"),
        "{e}"
    );
    std::fs::remove_file(d.join(CERT_CHAIN_FILE)).unwrap();

    // An intermediate from another root.
    std::fs::rename(d.join(ROOT_CERT_FILE), d.join("real-root.pem")).unwrap();
    make_key(d, "other-key.pem", "pkcs8-p256");
    self_signed(d, "other-key.pem", ROOT_CERT_FILE, "other root");
    let e = load_err();
    assert!(e.contains("do not verify against root-cert.pem"), "{e}");

    // Missing root.
    std::fs::remove_file(d.join(ROOT_CERT_FILE)).unwrap();
    let e = load_err();
    assert!(e.contains("root-cert.pem missing"), "{e}");
}

#[test]
fn unusable_keys_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_key(d, CA_KEY_FILE, "pkcs8-p256");
    self_signed(d, CA_KEY_FILE, ROOT_CERT_FILE, "root");
    // An encrypted key.
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            CA_KEY_FILE,
            "-out",
            "enc.pem",
            "-passout",
            "pass:x",
        ],
    );
    std::fs::rename(d.join("enc.pem"), d.join(CA_KEY_FILE)).unwrap();
    let e = LocalCa::load_or_create(d, "cluster.local")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("encrypted keys are not supported"), "{e}");
    // A root certificate that is not a CA.
    make_key(
        d,
        CA_KEY_FILE.replace(".pem", "2.pem").as_str(),
        "pkcs8-p256",
    );
    std::fs::rename(d.join("ca-key2.pem"), d.join(CA_KEY_FILE)).unwrap();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            CA_KEY_FILE,
            "-out",
            ROOT_CERT_FILE,
            "-days",
            "1",
            "-subj",
            "/CN=leaf",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let e = LocalCa::load_or_create(d, "cluster.local")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a CA certificate"), "{e}");
}
