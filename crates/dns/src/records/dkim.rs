//! DKIM public key records (RFC 6376 §3.6.1, RFC 8463 for Ed25519): the TXT record at
//! `SELECTOR._domainkey.DOMAIN`, `v=DKIM1; k=rsa; p=MIIBIjANBg...`.
//!
//! [`parse`] reads the tags `v` (optional; if present it must come first and be `DKIM1`),
//! `h` (hash algorithms), `k` (key type, default `rsa`), `n` (notes), `p` (the key, required;
//! empty means revoked), `s` (service types) and `t` (flags `y` testing, `s` strict). The key
//! is decoded from base64 (whitespace allowed) and inspected: for RSA, the modulus size in
//! bits is read from the SubjectPublicKeyInfo (or from a bare PKCS#1 RSAPublicKey, which
//! some signers publish, with a diagnostic); for Ed25519 the key must be 32 bytes. Broken
//! base64, a key that does not parse, and an unknown `v` are errors; unknown hash algorithms,
//! flags, service types and key types are diagnostics.
//!
//! Limits: records longer than [`MAX_KEY_RECORD_LEN`] are refused (an 8192-bit RSA key is
//! about 1.4 KiB of base64). The DER reader is bounded by its input and never recurses.

use base64::Engine;

use super::{Diagnostic, RecordError, check_length, shorten, tag_list};

/// The longest DKIM key record read: 16 KiB.
pub const MAX_KEY_RECORD_LEN: usize = 16 * 1024;

/// The key algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ed25519,
    /// A `k=` value this parser does not know.
    Other(String),
}

/// A parsed DKIM key record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKey {
    /// `k` (default rsa).
    pub key_type: KeyType,
    /// True when `p=` is empty: the key has been revoked.
    pub revoked: bool,
    /// The decoded key: a SubjectPublicKeyInfo (RSA) or the raw 32 bytes (Ed25519).
    pub public_key: Vec<u8>,
    /// For RSA keys, the modulus size in bits.
    pub rsa_bits: Option<usize>,
    /// `h`: acceptable hash algorithms; empty means all.
    pub hash_algorithms: Vec<String>,
    /// `s`: service types (default `*`).
    pub services: Vec<String>,
    /// `t=y`: the domain is testing DKIM.
    pub testing: bool,
    /// `t=s`: the `i=` domain must equal `d=` exactly.
    pub strict: bool,
    /// `n`: notes.
    pub notes: Option<String>,
    /// Problems that left the record usable.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses a DKIM key record.
pub fn parse(text: &str) -> Result<DkimKey, RecordError> {
    check_length(text, MAX_KEY_RECORD_LEN, "DKIM key record")?;
    let tags = tag_list(text)?;
    let mut key = DkimKey {
        key_type: KeyType::Rsa,
        revoked: false,
        public_key: Vec::new(),
        rsa_bits: None,
        hash_algorithms: Vec::new(),
        services: vec!["*".to_string()],
        testing: false,
        strict: false,
        notes: None,
        diagnostics: Vec::new(),
    };
    let mut p: Option<(&str, usize)> = None;
    for (index, tag) in tags.iter().enumerate() {
        let value = tag.value;
        match tag.name {
            "v" => {
                if index != 0 {
                    return Err(RecordError::at(
                        text,
                        tag.name_at,
                        "\"v\" must be the first tag when present",
                    ));
                }
                if value != "DKIM1" {
                    return Err(RecordError::at(
                        text,
                        tag.value_at,
                        format!("v: \"{}\" is not DKIM1", shorten(value)),
                    ));
                }
            }
            "h" => {
                key.hash_algorithms = colon_list(value);
                for algorithm in &key.hash_algorithms {
                    if algorithm != "sha256" && algorithm != "sha1" {
                        key.diagnostics.push(Diagnostic::at(
                            text,
                            tag.value_at,
                            format!("h: unknown hash algorithm \"{}\"", shorten(algorithm)),
                        ));
                    }
                }
            }
            "k" => {
                key.key_type = match value.to_ascii_lowercase().as_str() {
                    "rsa" => KeyType::Rsa,
                    "ed25519" => KeyType::Ed25519,
                    other => {
                        key.diagnostics.push(Diagnostic::at(
                            text,
                            tag.value_at,
                            format!(
                                "k: unknown key type \"{}\"; verifiers cannot use this key",
                                shorten(other)
                            ),
                        ));
                        KeyType::Other(other.to_string())
                    }
                }
            }
            "n" => key.notes = Some(value.to_string()),
            "p" => p = Some((value, tag.value_at)),
            "s" => {
                key.services = colon_list(value);
                if !key.services.iter().any(|s| s == "*" || s == "email") {
                    key.diagnostics.push(Diagnostic::at(
                        text,
                        tag.value_at,
                        "s: the key is not for email (service types neither * nor email)",
                    ));
                }
            }
            "t" => {
                for flag in colon_list(value) {
                    match flag.as_str() {
                        "y" => key.testing = true,
                        "s" => key.strict = true,
                        other => key.diagnostics.push(Diagnostic::at(
                            text,
                            tag.value_at,
                            format!("t: unknown flag \"{}\"", shorten(other)),
                        )),
                    }
                }
            }
            _ => {}
        }
    }
    let Some((p, p_at)) = p else {
        return Err(RecordError::at(
            text,
            0,
            "the required tag \"p\" (the public key) is missing",
        ));
    };
    let compact: String = p.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        key.revoked = true;
        return Ok(key);
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| RecordError::at(text, p_at, format!("p: not valid base64 ({e})")))?;
    match key.key_type {
        KeyType::Rsa => {
            let (bits, bare) = rsa_modulus_bits(&der).ok_or_else(|| {
                RecordError::at(
                    text,
                    p_at,
                    "p: not an RSA public key (expected a DER SubjectPublicKeyInfo)",
                )
            })?;
            if bare {
                key.diagnostics.push(Diagnostic::at(
                    text,
                    p_at,
                    "p: a bare PKCS#1 RSAPublicKey; RFC 6376 expects a SubjectPublicKeyInfo, which some verifiers require",
                ));
            }
            key.rsa_bits = Some(bits);
        }
        KeyType::Ed25519 => {
            if der.len() != 32 {
                return Err(RecordError::at(
                    text,
                    p_at,
                    format!(
                        "p: an Ed25519 key is 32 bytes (RFC 8463), this one is {}",
                        der.len()
                    ),
                ));
            }
        }
        KeyType::Other(_) => {}
    }
    key.public_key = der;
    Ok(key)
}

/// A colon-separated list, trimmed, lowercase, empty items left out.
fn colon_list(value: &str) -> Vec<String> {
    value
        .split(':')
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_NULL: u8 = 0x05;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// The DER encoding of the rsaEncryption OID, 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Reads one DER element: `(tag, contents, rest)`. Only definite lengths of up to 4 bytes.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let mut length = 0usize;
        for &b in &rest[..count] {
            length = (length << 8) | usize::from(b);
        }
        (length, &rest[count..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

/// The bit length of an RSA modulus, from a SubjectPublicKeyInfo, or from a bare PKCS#1
/// RSAPublicKey (then the flag is true).
fn rsa_modulus_bits(der: &[u8]) -> Option<(usize, bool)> {
    let (tag, outer, trailing) = der_element(der)?;
    if tag != TAG_SEQUENCE || !trailing.is_empty() {
        return None;
    }
    let (first_tag, first, after_first) = der_element(outer)?;
    if first_tag == TAG_INTEGER {
        // PKCS#1: SEQUENCE { modulus INTEGER, publicExponent INTEGER }
        let (exp_tag, _, end) = der_element(after_first)?;
        if exp_tag != TAG_INTEGER || !end.is_empty() {
            return None;
        }
        return integer_bits(first).map(|bits| (bits, true));
    }
    // SPKI: SEQUENCE { AlgorithmIdentifier, BIT STRING }
    if first_tag != TAG_SEQUENCE {
        return None;
    }
    let (oid_tag, oid, params) = der_element(first)?;
    if oid_tag != TAG_OID || oid != RSA_ENCRYPTION {
        return None;
    }
    if !params.is_empty() {
        let (null_tag, null, end) = der_element(params)?;
        if null_tag != TAG_NULL || !null.is_empty() || !end.is_empty() {
            return None;
        }
    }
    let (bits_tag, bit_string, end) = der_element(after_first)?;
    if bits_tag != TAG_BIT_STRING || !end.is_empty() {
        return None;
    }
    let (&unused, key) = bit_string.split_first()?;
    if unused != 0 {
        return None;
    }
    let (seq_tag, rsa_key, end) = der_element(key)?;
    if seq_tag != TAG_SEQUENCE || !end.is_empty() {
        return None;
    }
    let (mod_tag, modulus, rest) = der_element(rsa_key)?;
    let (exp_tag, _, end) = der_element(rest)?;
    if mod_tag != TAG_INTEGER || exp_tag != TAG_INTEGER || !end.is_empty() {
        return None;
    }
    integer_bits(modulus).map(|bits| (bits, false))
}

/// The bit length of a positive DER INTEGER.
fn integer_bits(contents: &[u8]) -> Option<usize> {
    let first_nonzero = contents.iter().position(|b| *b != 0)?;
    let significant = &contents[first_nonzero..];
    let leading = significant[0].leading_zeros() as usize;
    Some(significant.len() * 8 - leading)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a DER element with a definite length.
    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend([0x81, len as u8]);
        } else {
            out.extend([0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(contents);
        out
    }

    /// An RSA SubjectPublicKeyInfo with a modulus of `bits` bits (value irrelevant).
    fn rsa_spki(bits: usize) -> Vec<u8> {
        let pkcs1 = rsa_pkcs1(bits);
        let mut algorithm = der(TAG_OID, RSA_ENCRYPTION);
        algorithm.extend(der(TAG_NULL, &[]));
        let mut bit_string = vec![0u8];
        bit_string.extend(pkcs1);
        let mut spki = der(TAG_SEQUENCE, &algorithm);
        spki.extend(der(TAG_BIT_STRING, &bit_string));
        der(TAG_SEQUENCE, &spki)
    }

    fn rsa_pkcs1(bits: usize) -> Vec<u8> {
        let mut modulus = vec![0u8];
        modulus.push(0x80);
        modulus.extend(std::iter::repeat_n(0xab, bits / 8 - 1));
        let mut body = der(TAG_INTEGER, &modulus);
        body.extend(der(TAG_INTEGER, &[0x01, 0x00, 0x01]));
        der(TAG_SEQUENCE, &body)
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn rsa_key_sizes() {
        for bits in [512, 1024, 2048, 4096] {
            let record = format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki(bits)));
            let key = parse(&record).unwrap();
            assert_eq!(key.rsa_bits, Some(bits));
            assert_eq!(key.key_type, KeyType::Rsa);
            assert!(!key.revoked);
            assert!(key.diagnostics.is_empty(), "{:?}", key.diagnostics);
        }
        // Base64 split by whitespace, no v, no k.
        let encoded = b64(&rsa_spki(2048));
        let split = format!("p={} {}", &encoded[..100], &encoded[100..]);
        assert_eq!(parse(&split).unwrap().rsa_bits, Some(2048));
    }

    #[test]
    fn a_real_openssl_key() {
        // `openssl genrsa 1024 | openssl rsa -pubout`
        let p = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC3+8NQlmZmBHqIM/A5qVc7lXGJ9CcL9klYoGNw7BEgGBOgjG4v0ZW81C5bfR1H7bLH72HlrMl3hkPJlHluSIYK+rceHPESOh+Mjo2I55Sha1DHVzbdOh3SgMCVWTUxOzHRMUKaSUg4n50mpS/iF+533HqwU+ZNBR7ZWaH80qGzmwIDAQAB";
        let key = parse(&format!("v=DKIM1; k=rsa; p={p}")).unwrap();
        assert_eq!(key.rsa_bits, Some(1024));
    }

    #[test]
    fn bare_pkcs1_is_read_with_a_diagnostic() {
        let key = parse(&format!("k=rsa; p={}", b64(&rsa_pkcs1(1024)))).unwrap();
        assert_eq!(key.rsa_bits, Some(1024));
        assert!(key.diagnostics[0].message.contains("PKCS#1"));
    }

    #[test]
    fn ed25519_and_revoked_keys() {
        let key = parse(&format!("v=DKIM1; k=ed25519; p={}", b64(&[7u8; 32]))).unwrap();
        assert_eq!(key.key_type, KeyType::Ed25519);
        assert_eq!(key.public_key.len(), 32);
        assert_eq!(key.rsa_bits, None);
        let err = parse(&format!("v=DKIM1; k=ed25519; p={}", b64(&[7u8; 31]))).unwrap_err();
        assert!(err.message().contains("32 bytes"));
        let revoked = parse("v=DKIM1; k=rsa; p=").unwrap();
        assert!(revoked.revoked);
        assert!(parse("v=DKIM1; p= ").unwrap().revoked);
    }

    #[test]
    fn flags_and_lists() {
        let key = parse(&format!(
            "v=DKIM1; h=sha256:sha512; s=email; t=y:s:x; n=rotated 2024; p={}",
            b64(&rsa_spki(2048))
        ))
        .unwrap();
        assert!(key.testing);
        assert!(key.strict);
        assert_eq!(key.hash_algorithms, vec!["sha256", "sha512"]);
        assert_eq!(key.notes.as_deref(), Some("rotated 2024"));
        let messages: Vec<&str> = key.diagnostics.iter().map(|d| d.message.as_str()).collect();
        assert!(messages.iter().any(|m| m.contains("sha512")));
        assert!(messages.iter().any(|m| m.contains("flag \"x\"")));
        let key = parse(&format!("s=web; k=dsa; p={}", b64(b"anything"))).unwrap();
        assert_eq!(key.key_type, KeyType::Other("dsa".to_string()));
        assert_eq!(key.diagnostics.len(), 2);
    }

    #[test]
    fn errors() {
        for (text, words) in [
            ("v=DKIM1; k=rsa", "missing"),
            ("k=rsa; v=DKIM1; p=", "first"),
            ("v=DKIM2; p=", "not DKIM1"),
            ("v=DKIM1; p=!!!", "base64"),
            ("v=DKIM1; p=AAAA", "not an RSA public key"),
            ("v=DKIM1; k=rsa; p=MAA=", "not an RSA public key"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.message().contains(words), "{text}: {err}");
        }
    }

    #[test]
    fn der_reader_is_bounded() {
        assert_eq!(der_element(&[]), None);
        assert_eq!(der_element(&[0x30]), None);
        assert_eq!(der_element(&[0x30, 0x05, 0x00]), None);
        assert_eq!(der_element(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(der_element(&[0x30, 0x80]), None);
        assert_eq!(integer_bits(&[0x00, 0x01]), Some(1));
        assert_eq!(integer_bits(&[0x00]), None);
    }
}
