//! The local (dev/demo) certificate authority: a root whose key ztunnel reads from
//! `LOCAL_CA_DIR`, creating a fresh one when the directory holds none.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{Identity, WorkloadCert};

pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Leaves are back-dated so a peer whose clock runs slightly behind still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA directory {dir}: {msg}")]
    Dir { dir: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("signing certificate for {identity}: {source}")]
    Sign {
        identity: String,
        source: rcgen::Error,
    },
}

pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
}

impl LocalCa {
    /// Reads `root-cert.pem` + `ca-key.pem` from `dir`; when neither exists, creates both.
    /// One file without the other is refused rather than silently replaced: replacing a root
    /// would cut every running workload off from its peers.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<LocalCa, CaError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path),
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
            root: cert.der().clone(),
            issuer: Issuer::new(params, key),
            root_pem,
        })
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<LocalCa, CaError> {
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|e| CaError::File {
                path: p.to_owned(),
                msg: e.to_string(),
            })
        };
        let root_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::File {
            path: key_path.to_owned(),
            msg: format!("not a PEM private key: {e}"),
        })?;
        let root = rustls_pemfile::certs(&mut root_pem.as_bytes())
            .next()
            .and_then(|c| c.ok())
            .ok_or_else(|| CaError::File {
                path: cert_path.to_owned(),
                msg: "no PEM certificate found".into(),
            })?;
        let issuer = Issuer::from_ca_cert_der(&root, key).map_err(|e| CaError::File {
            path: cert_path.to_owned(),
            msg: format!("unusable CA certificate: {e}"),
        })?;
        Ok(LocalCa {
            issuer,
            root,
            root_pem,
        })
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
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
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
        })
    }
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
