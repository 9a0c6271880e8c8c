//! Workload identities: SPIFFE ids, the local CA, per-workload certificates and TLS configs.

mod spiffe;

pub use spiffe::{Identity, IdentityParseError};
