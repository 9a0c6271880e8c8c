//! Reading the SPIFFE identity out of a peer's certificate.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::Identity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SanError {
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate has no URI SAN")]
    Missing,
    #[error("certificate has {0} URI SANs; exactly one SPIFFE id is expected")]
    Several(usize),
    #[error(transparent)]
    NotSpiffe(#[from] super::IdentityParseError),
}

/// The single SPIFFE id carried as a URI SAN in `cert`.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, SanError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| SanError::Parse(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| SanError::Parse(e.to_string()))?
        .ok_or(SanError::Missing)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(SanError::Missing),
        [one] => Ok(one.parse()?),
        many => Err(SanError::Several(many.len())),
    }
}
