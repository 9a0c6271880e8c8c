//! The local certificate authority, read from `LOCAL_CA_DIR` in one of two layouts:
//! * a self-signed root: `root-cert.pem` + `ca-key.pem` (created when the directory holds
//!   neither, for dev and demos);
//! * Istio's plug-in CA layout: `ca-cert.pem` (the signing, usually intermediate, certificate),
//!   `ca-key.pem` (its key), `root-cert.pem` (what peers trust) and `cert-chain.pem` (from
//!   `ca-cert.pem` up to the root). Leaves are signed with the intermediate and presented with
//!   the chain above them.
//!
//! Keys may be PKCS#8, SEC1 or PKCS#1 PEM (see [`super::keys`]).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;

use super::keys::key_pair_from_pem;
use super::{Identity, WorkloadCert};

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Plug-in layout: the signing certificate (`ca-key.pem` is its key).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// Plug-in layout: `ca-cert.pem` and the certificates above it, up to the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// Leaves are back-dated so a peer whose clock runs slightly behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA directory {dir}: {msg}")]
    Dir { dir: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("certificate for {identity} from the Istio CA: {msg}")]
    Remote { identity: String, msg: String },
    #[error("signing certificate for {identity}: {source}")]
    Sign {
        identity: String,
        source: rcgen::Error,
    },
}

pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    /// What peers trust: every certificate of `root-cert.pem` (more than one while a root
    /// rotates). Never empty.
    roots: Vec<CertificateDer<'static>>,
    root_pem: String,
    /// Presented after each leaf: the signing certificate and those above it, without the
    /// roots (peers have them). Empty when the root signs itself.
    chain: Vec<CertificateDer<'static>>,
}

impl LocalCa {
    /// Reads `root-cert.pem` + `ca-key.pem` from `dir`; when neither exists, creates both.
    /// One file without the other is refused rather than silently replaced: replacing a root
    /// would cut every running workload off from its peers.
    ///
    /// A directory with `ca-cert.pem` is read as Istio's plug-in layout instead, and nothing
    /// is ever created in it.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<LocalCa, CaError> {
        if dir.join(CA_CERT_FILE).exists() {
            return Self::load_plugged(dir, trust_domain);
        }
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path, trust_domain),
            (false, false) => {
                fs::create_dir_all(dir).map_err(|e| CaError::Dir {
                    dir: dir.to_owned(),
                    msg: e.to_string(),
                })?;
                let ca = Self::generate(trust_domain)?;
                write_private(&key_path, ca.issuer.key().serialize_pem().as_bytes())?;
                write_private(&cert_path, ca.root_pem.as_bytes())?;
                tracing::info!(dir = %dir.display(), "created a new local CA root");
                Ok(ca)
            }
            (true, false) => Err(CaError::Dir {
                dir: dir.to_owned(),
                msg: format!("{ROOT_CERT_FILE} present but {CA_KEY_FILE} missing"),
            }),
            (false, true) => Err(CaError::Dir {
                dir: dir.to_owned(),
                msg: format!("{CA_KEY_FILE} present but {ROOT_CERT_FILE} missing"),
            }),
        }
    }

    /// A CA that lives only in memory (tests, and the "foreign CA" of hostile-peer tests).
    pub fn generate(trust_domain: &str) -> Result<LocalCa, CaError> {
        let sign_err = |source| CaError::Sign {
            identity: format!("root of {trust_domain}"),
            source,
        };
        let key = KeyPair::generate().map_err(sign_err)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params
            .distinguished_name
            .push(DnType::CommonName, "meshtunnel local root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + Duration::from_secs(10 * 365 * 24 * 3600);
        let cert = params.self_signed(&key).map_err(sign_err)?;
        let root_pem = cert.pem();
        Ok(LocalCa {
            roots: vec![cert.der().clone()],
            issuer: Issuer::new(params, key),
            root_pem,
            chain: Vec::new(),
        })
    }

    /// A self-signed root and its key.
    fn load(cert_path: &Path, key_path: &Path, trust_domain: &str) -> Result<LocalCa, CaError> {
        let (root_pem, roots) = read_certs(cert_path)?;
        let key = read_key(key_path)?;
        let ca = Self::assemble(&roots[0], cert_path, key, key_path, roots.clone(), root_pem)?;
        ca.check_chain(trust_domain, cert_path)?;
        Ok(ca)
    }

    /// Istio's plug-in layout: sign with `ca-cert.pem`, present `cert-chain.pem` (or
    /// `ca-cert.pem` alone when there is no chain file), trust `root-cert.pem`.
    fn load_plugged(dir: &Path, trust_domain: &str) -> Result<LocalCa, CaError> {
        let missing = |f: &str| CaError::Dir {
            dir: dir.to_owned(),
            msg: format!("{CA_CERT_FILE} present (Istio plug-in CA layout) but {f} missing"),
        };
        let (cert_path, key_path, root_path, chain_path) = (
            dir.join(CA_CERT_FILE),
            dir.join(CA_KEY_FILE),
            dir.join(ROOT_CERT_FILE),
            dir.join(CERT_CHAIN_FILE),
        );
        for (p, f) in [(&key_path, CA_KEY_FILE), (&root_path, ROOT_CERT_FILE)] {
            if !p.exists() {
                return Err(missing(f));
            }
        }
        let (_, signing) = read_certs(&cert_path)?;
        let signing = signing[0].clone();
        let key = read_key(&key_path)?;
        let (root_pem, roots) = read_certs(&root_path)?;
        let mut chain = if chain_path.exists() {
            let (_, chain) = read_certs(&chain_path)?;
            if chain[0] != signing {
                return Err(CaError::File {
                    path: chain_path,
                    msg: format!("does not start with {CA_CERT_FILE}"),
                });
            }
            chain
        } else {
            vec![signing.clone()]
        };
        chain.retain(|c| !roots.contains(c));
        let mut ca = Self::assemble(&signing, &cert_path, key, &key_path, roots, root_pem)?;
        ca.chain = chain;
        ca.check_chain(trust_domain, &chain_path)?;
        tracing::info!(dir = %dir.display(), intermediates = ca.chain.len(), "using the plugged-in CA (Istio layout)");
        Ok(ca)
    }

    /// The CA signing with `key` under certificate `signing`, after checking they belong
    /// together (a mismatch would issue leaves no peer can verify).
    fn assemble(
        signing: &CertificateDer<'static>,
        cert_path: &Path,
        key: KeyPair,
        key_path: &Path,
        roots: Vec<CertificateDer<'static>>,
        root_pem: String,
    ) -> Result<LocalCa, CaError> {
        let file_err = |path: &Path, msg: String| CaError::File {
            path: path.to_owned(),
            msg,
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(signing)
            .map_err(|e| file_err(cert_path, format!("unparsable certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(file_err(cert_path, "not a CA certificate".into()));
        }
        use rcgen::PublicKeyData;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(file_err(
                key_path,
                format!("is not the key of {}", cert_path.display()),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(signing, key)
            .map_err(|e| file_err(cert_path, format!("unusable CA certificate: {e}")))?;
        Ok(LocalCa {
            issuer,
            roots,
            root_pem,
            chain: Vec::new(),
        })
    }

    /// Issues a throw-away leaf and verifies it the way peers will: the chain presented must
    /// lead to one of the roots.
    fn check_chain(&self, trust_domain: &str, blame: &Path) -> Result<(), CaError> {
        let err = |msg: String| CaError::File {
            path: blame.to_owned(),
            msg,
        };
        let probe = Identity::new(trust_domain, "meshtunnel-self-check", "ca");
        let leaf = self.issue(&probe, Duration::from_secs(60))?;
        let mut store = RootCertStore::empty();
        for r in &self.roots {
            store
                .add(r.clone())
                .map_err(|e| err(format!("unusable root: {e}")))?;
        }
        let parsed = ParsedCertificate::try_from(&leaf.chain[0])
            .map_err(|e| err(format!("issued leaf unreadable: {e}")))?;
        let algs = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &store,
            &leaf.chain[1..],
            UnixTime::now(),
            algs,
        )
        .map_err(|e| {
            err(format!(
                "leaves signed by this CA do not verify against {ROOT_CERT_FILE}: {e}"
            ))
        })
    }

    /// The first trusted root.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.roots[0]
    }

    /// Every trusted root (`root-cert.pem` may hold several while a root rotates).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a leaf for `identity` valid for `ttl`, with a fresh P-256 key.
    pub fn issue(&self, identity: &Identity, ttl: Duration) -> Result<WorkloadCert, CaError> {
        self.issue_window(identity, SystemTime::now() - CLOCK_SKEW, ttl + CLOCK_SKEW)
    }

    /// Like [`issue`](Self::issue) with an explicit validity window (expired-cert tests).
    pub fn issue_window(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        lifetime: Duration,
    ) -> Result<WorkloadCert, CaError> {
        let sign_err = |source| CaError::Sign {
            identity: identity.to_string(),
            source,
        };
        let key = KeyPair::generate().map_err(sign_err)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().try_into().map_err(sign_err)?,
        )];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // One cert serves both ends of HBONE: the 15008 server and the client side of 15001.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        let not_after = not_before + lifetime;
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        Ok(WorkloadCert {
            identity: identity.clone(),
            chain: std::iter::once(cert.der().clone())
                .chain(self.chain.iter().cloned())
                .collect(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
        })
    }
}

/// Every certificate of a PEM file (at least one).
fn read_certs(path: &Path) -> Result<(String, Vec<CertificateDer<'static>>), CaError> {
    let err = |msg: String| CaError::File {
        path: path.to_owned(),
        msg,
    };
    let pem = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("unreadable PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok((pem, certs))
}

fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    let err = |msg: String| CaError::File {
        path: path.to_owned(),
        msg,
    };
    let pem = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    key_pair_from_pem(&pem).map_err(err)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), CaError> {
    let err = |e: std::io::Error| CaError::File {
        path: path.to_owned(),
        msg: e.to_string(),
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)
}
