//! rustls configurations for HBONE: TLS 1.3 only, ALPN h2, both sides present a workload
//! certificate, and the peer is checked by its SPIFFE id rather than by a host name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use super::{identity_of, CertSlot, Identity};

pub const ALPN_H2: &[u8] = b"h2";

/// Trust anchors and crypto shared by every TLS config ztunnel builds.
#[derive(Clone)]
pub struct TlsContext {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: String,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    pub fn new(
        roots: &[CertificateDer<'static>],
        trust_domain: &str,
    ) -> Result<Self, rustls::Error> {
        let mut store = RootCertStore::empty();
        for r in roots {
            store.add(r.clone())?;
        }
        Ok(TlsContext {
            roots: Arc::new(store),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// Server side of 15008 for one pod: presents `cert`, requires a client cert from our
    /// roots whose SPIFFE id is in our trust domain.
    pub fn server_config(&self, cert: Arc<CertSlot>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier = Arc::new(TrustDomainClientVerifier {
            inner,
            trust_domain: self.trust_domain.clone(),
        });
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert);
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        // Session tickets would let a client resume without presenting its certificate again;
        // HBONE authorizes on the certificate, so every connection does a full handshake.
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// Client side of HBONE: presents `cert`; the server must chain to our roots and carry
    /// one of `expected` identities.
    pub fn client_config(
        &self,
        cert: Arc<CertSlot>,
        expected: Vec<Identity>,
    ) -> Result<Arc<ClientConfig>, rustls::Error> {
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: self.roots.clone(),
            provider: self.provider.clone(),
            expected,
        });
        let mut cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(cert);
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        cfg.enable_sni = false;
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: Vec<Identity>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = identity_of(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if self.expected.contains(&id) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(peer = %id, expected = ?self.expected.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "server presented an unexpected identity");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct TrustDomainClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match identity_of(end_entity) {
            Ok(id) if id.trust_domain == self.trust_domain => Ok(ClientCertVerified::assertion()),
            Ok(id) => {
                tracing::warn!(peer = %id, "client identity from a foreign trust domain");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
            Err(e) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(e)),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The verified SPIFFE id of the peer of an established TLS session.
pub fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Option<Identity> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| identity_of(leaf).ok())
}
