//! Client of the Istio CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`, served by
//! istiod on :15012): a P-256 key and CSR per identity, the bearer token of ztunnel's projected
//! service-account token, and `ImpersonatedIdentity` naming the pod identity asked for, as
//! upstream ztunnel sends them. Building the request and reading the answer have no I/O under
//! them ([`csr`], [`request`], [`certificate`]); [`IstioCa::issue`] does the round trip.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::Semaphore;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::ca::verify_chain;
use super::{identity_of, CaError, Identity, WorkloadCert};

#[allow(clippy::all, missing_docs)]
mod proto {
    tonic::include_proto!("istio.v1.auth");
}

use proto::istio_certificate_service_client::IstioCertificateServiceClient;
pub use proto::{IstioCertificateRequest, IstioCertificateResponse};

/// Upstream's path of the projected token (audience `istio-ca`) in the ztunnel pod.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
/// The metadata key that asks the CA for another identity than the caller's own.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// Requests in flight at once: a node starting a hundred pods must not stampede istiod.
const MAX_IN_FLIGHT: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one CreateCertificate round trip.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the CA is and how ztunnel proves who it is.
#[derive(Clone, Debug)]
pub struct IstioCaSettings {
    /// CA_ADDRESS, e.g. `https://istiod.istio-system.svc:15012` (`https://` is assumed).
    pub address: String,
    /// CA_ROOT_CA: PEM roots that sign istiod's serving certificate.
    pub root_ca: PathBuf,
    /// ALT_CA_HOSTNAME: the name to send as SNI and to verify istiod's certificate against,
    /// when it is not the address's host.
    pub alt_hostname: Option<String>,
    /// The projected token file, re-read for every request (the kubelet rotates it).
    pub token_path: PathBuf,
    /// CLUSTER_ID, sent as the `clusterid` header when not empty.
    pub cluster_id: String,
    /// Ask for another identity than the caller's (`ImpersonatedIdentity`, ztunnel asking for
    /// its pods' certificates; istiod allows it only to CA_TRUSTED_NODE_ACCOUNTS). Off for a
    /// proxy asking for its own identity (the waypoint): istiod then issues the token's own
    /// service account identity, and refuses impersonation from anyone else.
    pub impersonate: bool,
}

pub struct IstioCa {
    client: IstioCertificateServiceClient<Channel>,
    settings: IstioCaSettings,
    /// CA_ROOT_CA's certificates: what the mesh trusts, so what every issued chain must lead to.
    roots: Vec<CertificateDer<'static>>,
    in_flight: Semaphore,
}

impl IstioCa {
    /// Prepares the channel; nothing is dialled until the first request.
    pub fn new(settings: IstioCaSettings) -> Result<IstioCa, CaError> {
        let cfg_err = |msg: String| CaError::Dir {
            dir: settings.root_ca.clone(),
            msg,
        };
        let roots = std::fs::read_to_string(&settings.root_ca)
            .map_err(|e| cfg_err(format!("CA_ROOT_CA: {e}")))?;
        let trust = rustls_pemfile::certs(&mut roots.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cfg_err(format!("CA_ROOT_CA: unreadable PEM: {e}")))?;
        if trust.is_empty() {
            return Err(cfg_err("CA_ROOT_CA holds no PEM certificate".into()));
        }
        let address = if settings.address.contains("://") {
            settings.address.clone()
        } else {
            format!("https://{}", settings.address)
        };
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|e| cfg_err(format!("CA_ADDRESS {address:?}: {e}")))?;
        let host = settings
            .alt_hostname
            .clone()
            .or_else(|| endpoint.uri().host().map(str::to_owned))
            .ok_or_else(|| cfg_err(format!("CA_ADDRESS {address:?} has no host")))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots))
            .domain_name(host);
        let channel = endpoint
            .tls_config(tls)
            .map_err(|e| cfg_err(format!("TLS to {address}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_lazy();
        Ok(IstioCa {
            client: IstioCertificateServiceClient::new(channel),
            settings,
            roots: trust,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    pub fn address(&self) -> &str {
        &self.settings.address
    }

    /// Asks the CA for a certificate of `id` valid for `ttl`.
    pub async fn issue(&self, id: &Identity, ttl: Duration) -> Result<WorkloadCert, CaError> {
        let err = |msg: String| CaError::Remote {
            identity: id.to_string(),
            msg,
        };
        let (csr, key) = csr(id).map_err(|e| err(format!("making the CSR: {e}")))?;
        let token = std::fs::read_to_string(&self.settings.token_path).map_err(|e| {
            err(format!(
                "reading the token {}: {e}",
                self.settings.token_path.display()
            ))
        })?;
        if token.trim().is_empty() {
            return Err(err(format!(
                "the token file {} is empty",
                self.settings.token_path.display()
            )));
        }
        let bearer = AsciiMetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| err("the token file holds characters a header cannot carry".into()))?;
        let mut req = tonic::Request::new(request(id, csr, ttl, self.settings.impersonate));
        req.metadata_mut().insert("authorization", bearer);
        if !self.settings.cluster_id.is_empty() {
            if let Ok(v) = AsciiMetadataValue::try_from(self.settings.cluster_id.as_str()) {
                req.metadata_mut().insert("clusterid", v);
            }
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| err("CA client closed".into()))?;
        let resp = self
            .client
            .clone()
            .create_certificate(req)
            .await
            .map_err(|s| {
                err(format!(
                    "{} refused: {} ({:?})",
                    self.settings.address,
                    s.message(),
                    s.code()
                ))
            })?
            .into_inner();
        certificate(id, &key, &resp, &self.roots).map_err(err)
    }

    /// What the mesh trusts in this mode (CA_ROOT_CA).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

/// A fresh P-256 key and a PEM PKCS#10 request for `id`: its SPIFFE id as the only (URI) SAN,
/// an empty subject, as istio-agent and upstream ztunnel send.
pub fn csr(id: &Identity) -> Result<(String, KeyPair), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    let pem = params.serialize_request(&key)?.pem()?;
    Ok((pem, key))
}

/// The CreateCertificate request for `id`; with `impersonate`, `id` is named in the metadata
/// (else istiod issues the caller's own identity, which must then be `id`).
pub fn request(
    id: &Identity,
    csr: String,
    ttl: Duration,
    impersonate: bool,
) -> IstioCertificateRequest {
    let metadata = impersonate.then(|| {
        let impersonated = prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
        };
        prost_types::Struct {
            fields: BTreeMap::from([(IMPERSONATED_IDENTITY.to_owned(), impersonated)]),
        }
    });
    IstioCertificateRequest {
        csr,
        validity_duration: ttl.as_secs().try_into().unwrap_or(i64::MAX),
        metadata,
    }
}

/// Reads the CA's answer for `id` (whose CSR was made with `key`): the chain must start with a
/// leaf for exactly `id` and lead to one of `roots` (what peers trust). What is presented is
/// the leaf and the certificates above it except the last (the root, which peers have).
pub fn certificate(
    id: &Identity,
    key: &KeyPair,
    resp: &IstioCertificateResponse,
    roots: &[CertificateDer<'static>],
) -> Result<WorkloadCert, String> {
    let mut chain: Vec<CertificateDer<'static>> = Vec::new();
    for (i, pem) in resp.cert_chain.iter().enumerate() {
        let certs = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cert_chain[{i}]: unreadable PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!("cert_chain[{i}]: no PEM certificate"));
        }
        chain.extend(certs);
    }
    let Some(leaf) = chain.first() else {
        return Err("the CA answered with an empty certificate chain".into());
    };
    let got = identity_of(leaf).map_err(|e| format!("leaf: {e}"))?;
    if &got != id {
        return Err(format!("the CA issued a certificate for {got}, not {id}"));
    }
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("leaf: {e}"))?;
    let public_key = rcgen::PublicKeyData::subject_public_key_info(key);
    if parsed.public_key().raw != public_key.as_slice() {
        return Err("the leaf does not carry the key of our CSR".into());
    }
    let validity = parsed.validity();
    let not_before = to_system_time(validity.not_before.timestamp());
    let not_after = to_system_time(validity.not_after.timestamp());
    if chain.len() > 1 {
        chain.pop();
    }
    verify_chain(&chain, roots).map_err(|e| {
        format!("the chain does not lead to a CA_ROOT_CA root, so peers would refuse it: {e}")
    })?;
    Ok(WorkloadCert {
        identity: id.clone(),
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        not_before,
        not_after,
    })
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

impl std::fmt::Debug for IstioCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioCa")
            .field("address", &self.settings.address)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[path = "istio_ca_tests.rs"]
mod tests;
