//! Workload identities: SPIFFE ids, the local CA, per-workload certificates and the TLS
//! configurations HBONE uses.

mod ca;
mod cert;
mod istio_ca;
mod keys;
mod manager;
mod san;
mod spiffe;
mod tls;

pub use ca::{CaError, LocalCa, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
pub use cert::WorkloadCert;
pub use istio_ca::{IstioCa, IstioCaSettings, DEFAULT_TOKEN_PATH};
pub use manager::{CertInfo, CertManager, CertSlot, CertSource};
pub use san::{identity_of, SanError};
pub use spiffe::{Identity, IdentityParseError};
pub use tls::{peer_identity, TlsContext, ALPN_H2};

#[cfg(test)]
mod ca_tests;
#[cfg(test)]
mod tests;
