//! The TLS 1.3 AES-GCM record protection of every HBONE connection, done by aws-lc instead of
//! ring; everything else (key exchange, signatures, HKDF, ChaCha20) stays ring's.
//!
//! Why: on x86-64 with VAES and AVX-512 (AMD Zen 4, recent Intel), aws-lc seals and opens
//! records with 512-bit vectors, ring with 256-bit ones. In a bulk profile AES-GCM was 15 % of
//! both ztunnels' CPU with ring and takes ~40 % less time with aws-lc (upstream ztunnel's
//! crypto). Why not rustls' own aws-lc provider: enabling rustls' `aws_lc_rs` feature beside
//! `ring` (features unify across the workspace) leaves rustls without a process-wide default
//! provider, and the kube and gRPC clients, which rely on one, panic. This is only the record
//! layer, over aws-lc-rs' TLS record keys, which also refuse a nonce that does not advance.

use aws_lc_rs::aead;
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter,
    MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::CryptoProvider;
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};

/// ring's provider with its two AES-GCM suites' record protection replaced by aws-lc's. The
/// suites, their order and everything on the wire are unchanged.
pub(crate) fn provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = p
        .cipher_suites
        .into_iter()
        .map(|s| match s {
            SupportedCipherSuite::Tls13(t)
                if t.common.suite == CipherSuite::TLS13_AES_128_GCM_SHA256 =>
            {
                SupportedCipherSuite::Tls13(&AES_128_GCM)
            }
            SupportedCipherSuite::Tls13(t)
                if t.common.suite == CipherSuite::TLS13_AES_256_GCM_SHA384 =>
            {
                SupportedCipherSuite::Tls13(&AES_256_GCM)
            }
            other => other,
        })
        .collect();
    p
}

static AES_128_GCM: Tls13CipherSuite = with_aead(ring_tls13(0), &Gcm::Aes128);
static AES_256_GCM: Tls13CipherSuite = with_aead(ring_tls13(1), &Gcm::Aes256);

/// ring's TLS 1.3 suite (0: AES-128-GCM, 1: AES-256-GCM), as a constant to copy from.
const fn ring_tls13(which: usize) -> &'static Tls13CipherSuite {
    let s = match which {
        0 => rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        _ => rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    };
    match s {
        SupportedCipherSuite::Tls13(t) => t,
        SupportedCipherSuite::Tls12(_) => panic!("a TLS 1.3 suite"),
    }
}

/// `base` with its record protection replaced; no QUIC (HBONE is TCP).
const fn with_aead(
    base: &'static Tls13CipherSuite,
    aead_alg: &'static dyn Tls13AeadAlgorithm,
) -> Tls13CipherSuite {
    Tls13CipherSuite {
        common: rustls::crypto::CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider: base.hkdf_provider,
        aead_alg,
        quic: None,
    }
}

enum Gcm {
    Aes128,
    Aes256,
}

impl Gcm {
    fn algorithm(&self) -> &'static aead::Algorithm {
        match self {
            Gcm::Aes128 => &aead::AES_128_GCM,
            Gcm::Aes256 => &aead::AES_256_GCM,
        }
    }
}

impl Tls13AeadAlgorithm for Gcm {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        // rustls passes a key of `key_len()` bytes, which is all `new` checks.
        let key = aead::TlsRecordSealingKey::new(
            self.algorithm(),
            aead::TlsProtocolId::TLS13,
            key.as_ref(),
        )
        .expect("rustls passes an AES-GCM key of key_len() bytes");
        Box::new(Sealer { key, iv })
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        let key = aead::TlsRecordOpeningKey::new(
            self.algorithm(),
            aead::TlsProtocolId::TLS13,
            key.as_ref(),
        )
        .expect("rustls passes an AES-GCM key of key_len() bytes");
        Box::new(Opener { key, iv })
    }

    fn key_len(&self) -> usize {
        self.algorithm().key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(match self {
            Gcm::Aes128 => ConnectionTrafficSecrets::Aes128Gcm { key, iv },
            Gcm::Aes256 => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
        })
    }
}

struct Sealer {
    key: aead::TlsRecordSealingKey,
    iv: Iv,
}

impl MessageEncrypter for Sealer {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0);
        let aad = aead::Aad::from(make_tls13_aad(total_len));
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        self.key
            .seal_in_place_append_tag(nonce, aad, &mut payload)
            .map_err(|_| Error::EncryptError)?;
        // TLS 1.3 records all say TLS 1.2 and application data on the outside (RFC 8446 5.1).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + self.key.algorithm().tag_len()
    }
}

struct Opener {
    key: aead::TlsRecordOpeningKey,
    iv: Iv,
}

impl MessageDecrypter for Opener {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < self.key.algorithm().tag_len() {
            return Err(Error::DecryptError);
        }
        let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0);
        let aad = aead::Aad::from(make_tls13_aad(payload.len()));
        let plain_len = self
            .key
            .open_in_place(nonce, aad, payload)
            .map_err(|_| Error::DecryptError)?
            .len();
        payload.truncate(plain_len);
        msg.into_tls13_unpadded_message()
    }
}

#[cfg(test)]
#[path = "aead_tests.rs"]
mod tests;
