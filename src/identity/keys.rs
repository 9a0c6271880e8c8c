//! CA private keys in the PEM formats operators have: PKCS#8 (`PRIVATE KEY`), SEC1
//! (`EC PRIVATE KEY`, what `openssl ecparam -genkey` writes) and PKCS#1 (`RSA PRIVATE KEY`).
//! rcgen on the ring backend reads PKCS#8 only, so the other two are re-wrapped as PKCS#8
//! first: the key bytes stay as they are, only the envelope naming the algorithm is added.

use rcgen::KeyPair;
use rustls::pki_types::PrivateKeyDer;

/// id-ecPublicKey (1.2.840.10045.2.1), DER.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (1.2.840.10045.3.1.7), DER.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 (1.3.132.0.34), DER.
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// rsaEncryption (1.2.840.113549.1.1.1) and its NULL parameters, DER.
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const DER_NULL: &[u8] = &[0x05, 0x00];

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_CONTEXT_0: u8 = 0xa0;

/// Reads the first private key of `pem` (other blocks, such as the `EC PARAMETERS` that
/// `openssl ecparam -genkey` writes first, are skipped).
pub(crate) fn key_pair_from_pem(pem: &str) -> Result<KeyPair, String> {
    let key = rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| format!("unreadable PEM: {e}"))?
        .ok_or_else(|| {
            "no PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block (encrypted keys are not \
             supported)"
                .to_owned()
        })?;
    let kind = match &key {
        PrivateKeyDer::Pkcs8(_) => "PKCS#8",
        PrivateKeyDer::Sec1(_) => "SEC1 EC",
        PrivateKeyDer::Pkcs1(_) => "PKCS#1 RSA",
        _ => "unknown",
    };
    let pkcs8 = to_pkcs8(&key)?;
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| {
        format!("{kind} key not usable for signing (P-256, P-384, Ed25519 or RSA): {e}")
    })
}

/// `key` as PKCS#8 DER.
pub(crate) fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, String> {
    match key {
        PrivateKeyDer::Pkcs8(k) => Ok(k.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(k) => {
            let curve = sec1_curve(k.secret_sec1_der())?;
            let alg = [OID_EC_PUBLIC_KEY, curve].concat();
            Ok(pkcs8(&alg, k.secret_sec1_der()))
        }
        PrivateKeyDer::Pkcs1(k) => {
            let alg = [OID_RSA, DER_NULL].concat();
            Ok(pkcs8(&alg, k.secret_pkcs1_der()))
        }
        _ => Err("unsupported private key format".into()),
    }
}

/// PrivateKeyInfo { version 0, AlgorithmIdentifier { alg }, OCTET STRING { key } }.
fn pkcs8(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = tlv(TAG_INTEGER, &[0]);
    body.extend(tlv(TAG_SEQUENCE, alg));
    body.extend(tlv(TAG_OCTET_STRING, key));
    tlv(TAG_SEQUENCE, &body)
}

/// The named curve of a SEC1 ECPrivateKey { version 1, privateKey, [0] parameters OPTIONAL,
/// [1] publicKey OPTIONAL }: its parameters, else guessed from the private key's length.
fn sec1_curve(der: &[u8]) -> Result<&'static [u8], String> {
    let bad = |what: &str| format!("malformed SEC1 EC key: {what}");
    let (tag, seq, _) = read_tlv(der).ok_or_else(|| bad("not DER"))?;
    if tag != TAG_SEQUENCE {
        return Err(bad("not a SEQUENCE"));
    }
    let (tag, _version, rest) = read_tlv(seq).ok_or_else(|| bad("no version"))?;
    if tag != TAG_INTEGER {
        return Err(bad("no version"));
    }
    let (tag, private, mut rest) = read_tlv(rest).ok_or_else(|| bad("no private key"))?;
    if tag != TAG_OCTET_STRING {
        return Err(bad("no private key"));
    }
    while let Some((tag, value, next)) = read_tlv(rest) {
        if tag == TAG_CONTEXT_0 {
            return [OID_P256, OID_P384]
                .into_iter()
                .find(|oid| *oid == value)
                .ok_or_else(|| "EC key on a curve other than P-256 or P-384".to_owned());
        }
        rest = next;
    }
    match private.len() {
        32 => Ok(OID_P256),
        48 => Ok(OID_P384),
        n => Err(format!(
            "EC key without curve parameters and a {n}-byte private key: curve unknown"
        )),
    }
}

/// DER tag-length-value with a definite length.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

/// Splits one DER element off `input`: (tag, value, rest). None when truncated or when the
/// length is indefinite or absurd.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_lengths_short_and_long_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let value = vec![7u8; len];
            let enc = tlv(TAG_OCTET_STRING, &value);
            let (tag, v, rest) = read_tlv(&enc).unwrap();
            assert_eq!((tag, v.len(), rest.len()), (TAG_OCTET_STRING, len, 0));
        }
        // Truncated and indefinite lengths are refused.
        assert!(read_tlv(&[0x04, 0x05, 1, 2]).is_none());
        assert!(read_tlv(&[0x30, 0x80, 0, 0]).is_none());
        assert!(read_tlv(&[0x04]).is_none());
    }

    #[test]
    fn sec1_curve_from_parameters_or_length() {
        let with_params = |oid: &[u8], key_len| {
            let mut body = tlv(TAG_INTEGER, &[1]);
            body.extend(tlv(TAG_OCTET_STRING, &vec![1; key_len]));
            body.extend(tlv(TAG_CONTEXT_0, oid));
            tlv(TAG_SEQUENCE, &body)
        };
        assert_eq!(sec1_curve(&with_params(OID_P384, 48)).unwrap(), OID_P384);
        assert_eq!(sec1_curve(&with_params(OID_P256, 32)).unwrap(), OID_P256);
        let secp256k1 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
        assert!(sec1_curve(&with_params(&secp256k1, 32))
            .unwrap_err()
            .contains("other than P-256"));
        let bare = |key_len| {
            let mut body = tlv(TAG_INTEGER, &[1]);
            body.extend(tlv(TAG_OCTET_STRING, &vec![1; key_len]));
            tlv(TAG_SEQUENCE, &body)
        };
        assert_eq!(sec1_curve(&bare(32)).unwrap(), OID_P256);
        assert_eq!(sec1_curve(&bare(48)).unwrap(), OID_P384);
        assert!(sec1_curve(&bare(20)).unwrap_err().contains("curve unknown"));
        for garbage in [&[][..], &[0x30, 0x03, 0x02, 0x01], &[0x04, 0x00]] {
            assert!(sec1_curve(garbage).unwrap_err().contains("malformed"));
        }
    }

    #[test]
    fn pem_without_a_key_is_a_clear_error() {
        let e = key_pair_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(e.contains("no PRIVATE KEY"), "{e}");
        assert!(key_pair_from_pem("").is_err());
    }
}
