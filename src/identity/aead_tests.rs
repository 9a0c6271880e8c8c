//! Records sealed by aws-lc open with ring's suite and the other way round, for both AES-GCM
//! suites and record sizes up to TLS's largest; tampered or truncated records are refused.

use super::*;
use rustls::crypto::cipher::OutboundChunks;

fn ring(suite: CipherSuite) -> &'static Tls13CipherSuite {
    ring_tls13(usize::from(suite == CipherSuite::TLS13_AES_256_GCM_SHA384))
}

fn ours(suite: CipherSuite) -> &'static Tls13CipherSuite {
    match provider()
        .cipher_suites
        .into_iter()
        .find(|s| s.suite() == suite)
    {
        Some(SupportedCipherSuite::Tls13(t)) => t,
        _ => panic!("{suite:?} missing"),
    }
}

/// A 256-bit key and an IV from `seed` (rustls hands a 128-bit key only to its own key
/// schedule, so AES-128 is checked through real handshakes below).
fn key_iv(seed: u8) -> (AeadKey, Iv) {
    let key: [u8; 32] = std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8));
    (AeadKey::from(key), Iv::new([seed; 12]))
}

/// Seals `plain` as record `seq` with `by` and returns its payload (ciphertext and tag).
fn seal(by: &Tls13CipherSuite, seed: u8, seq: u64, plain: &[u8]) -> Vec<u8> {
    let (key, iv) = key_iv(seed);
    let mut enc = by.aead_alg.encrypter(key, iv);
    // The sequence only moves forward under one key: seal the records before `seq` too.
    let mut last = Vec::new();
    for s in 0..=seq {
        let msg = OutboundPlainMessage {
            typ: ContentType::ApplicationData,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(plain),
        };
        last = enc.encrypt(msg, s).unwrap().payload.as_ref().to_vec();
    }
    last
}

fn open(by: &Tls13CipherSuite, seed: u8, seq: u64, mut record: Vec<u8>) -> Result<Vec<u8>, Error> {
    let (key, iv) = key_iv(seed);
    let mut dec = by.aead_alg.decrypter(key, iv);
    let msg = InboundOpaqueMessage::new(
        ContentType::ApplicationData,
        ProtocolVersion::TLSv1_2,
        &mut record,
    );
    let plain = dec.decrypt(msg, seq)?;
    assert_eq!(plain.typ, ContentType::ApplicationData);
    Ok(plain.payload.to_vec())
}

#[test]
fn aes_256_records_match_ring_s_byte_for_byte_and_open_both_ways() {
    {
        let suite = CipherSuite::TLS13_AES_256_GCM_SHA384;
        for len in [0usize, 1, 15, 16, 1_000, 16_383, 16_384] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            for seq in [0u64, 3] {
                let sealed = seal(ours(suite), 9, seq, &plain);
                assert_eq!(sealed.len(), len + 1 + 16, "{suite:?} {len}");
                assert_eq!(sealed, seal(ring(suite), 9, seq, &plain), "{suite:?} {len}");
                assert_eq!(open(ring(suite), 9, seq, sealed.clone()).unwrap(), plain);
                assert_eq!(open(ours(suite), 9, seq, sealed).unwrap(), plain);
            }
        }
    }
}

#[test]
fn tampered_truncated_or_misnumbered_records_are_refused() {
    let suite = ours(CipherSuite::TLS13_AES_256_GCM_SHA384);
    let sealed = seal(suite, 1, 0, b"hello, mesh");
    for i in [0, 5, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[i] ^= 1;
        assert_eq!(open(suite, 1, 0, bad), Err(Error::DecryptError), "bit {i}");
    }
    assert_eq!(open(suite, 1, 1, sealed.clone()), Err(Error::DecryptError));
    assert_eq!(open(suite, 2, 0, sealed.clone()), Err(Error::DecryptError));
    assert_eq!(
        open(suite, 1, 0, sealed[..15].to_vec()),
        Err(Error::DecryptError)
    );
    assert_eq!(open(suite, 1, 0, Vec::new()), Err(Error::DecryptError));
}

#[test]
fn the_provider_offers_ring_s_suites_in_ring_s_order() {
    let ours: Vec<CipherSuite> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
    let ring: Vec<CipherSuite> = rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    assert_eq!(ours, ring);
    assert!(provider().fips() == rustls::crypto::ring::default_provider().fips());
}

/// A full mTLS handshake and a message for each AES-GCM suite, with ours on one side and plain
/// ring on the other, both ways round: every handshake record after the ServerHello and the
/// data are sealed by one implementation and opened by the other.
#[tokio::test]
async fn handshakes_with_a_ring_peer_for_each_suite() {
    use crate::identity::tests::{handshake, id};
    use crate::identity::{CertManager, LocalCa};
    let ca = LocalCa::generate("cluster.local").unwrap();
    let roots = [ca.root().clone()];
    let mgr = CertManager::new(
        std::sync::Arc::new(ca),
        std::time::Duration::from_secs(3600),
    );
    let only = |mut p: CryptoProvider, suite: CipherSuite| {
        p.cipher_suites.retain(|s| s.suite() == suite);
        crate::identity::TlsContext::with_provider(&roots, "cluster.local", p).unwrap()
    };
    for suite in [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ] {
        let ring_side = only(rustls::crypto::ring::default_provider(), suite);
        let our_side = only(provider(), suite);
        for (client, server) in [(&our_side, &ring_side), (&ring_side, &our_side)] {
            let srv = server
                .server_config(mgr.get(&id("server")).await.unwrap())
                .unwrap();
            let cli = client
                .client_config(mgr.get(&id("client")).await.unwrap(), vec![id("server")])
                .unwrap();
            let (c, s) = handshake(cli, srv).await;
            assert_eq!(c, Ok(()), "{suite:?}");
            assert_eq!(s, Ok(Some(id("client"))), "{suite:?}");
        }
    }
}
