//! Workload identities: SPIFFE ids, the local CA, per-workload certificates and the TLS
//! configurations HBONE uses.

mod ca;
mod cert;
mod manager;
mod san;
mod spiffe;
mod tls;

pub use ca::{CaError, LocalCa, CA_KEY_FILE, ROOT_CERT_FILE};
pub use cert::WorkloadCert;
pub use manager::{CertInfo, CertManager, CertSlot};
pub use san::{identity_of, SanError};
pub use spiffe::{Identity, IdentityParseError};
pub use tls::{peer_identity, TlsContext, ALPN_H2};

#[cfg(test)]
mod tests;
