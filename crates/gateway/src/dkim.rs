//! DKIM signing of outbound mail (RFC 6376; Ed25519 per RFC 8463) with mail-auth.
//!
//! Keys: `[[dkim.keys]]` (domain, selector, key file). A key file is PEM: PKCS#8 for RSA or
//! Ed25519, or PKCS#1 for RSA; RSA keys under [`MIN_RSA_BITS`] are refused (RFC 8301 asks
//! for 2048 where it can be had). Several keys for one domain sign each message once per key
//! (dual RSA and Ed25519 signing, RFC 8463 5). [`generate`] makes new keys for
//! `ravelin dkim keygen`, with the TXT record to publish.
//!
//! What is signed ([`Signer::sign`]): the message after the header firewall, once, as it
//! enters the spool. The signing domain comes from the From field: every address in it must
//! have the same domain, and the key of that domain is used, or else of the closest parent
//! domain with a key (a parent's `d=` still aligns for DMARC in relaxed mode). Canonicalisation
//! is relaxed for the header and simple for the body: mail-auth 0.13.3 computes a wrong body
//! hash for relaxed bodies that end in empty lines, and simple is exact. Signed fields: those
//! of [`SIGNED_FIELDS`] present in the message; [`OVERSIGNED_FIELDS`] are listed once more
//! than they occur (absent ones once), so none can be added after signing without breaking the
//! signature (RFC 6376 8.15). No `l=` (it lets anyone append to the body), no `x=`.
//!
//! How it fails: [`load_key`] and [`Signer::new`] name the file and the problem; a message
//! that cannot be signed for a reason of its own (no From, no key for its domain) is reported
//! as [`Outcome::Unsigned`] with the reason, and goes out unsigned; a signing error or an I/O
//! error while the body is read back is an `io::Error`, and the message is not accepted.
//! Private keys are never logged or printed (only by `keygen`, into the file it writes).

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;
use ravelin_wire::headers::{HeaderBlock, HeaderLimits};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::DkimSection;

/// Smallest RSA key accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest key file read.
pub const MAX_KEY_FILE: u64 = 64 * 1024;
/// Longest character-string in a DNS TXT record (RFC 1035 3.3).
pub const TXT_STRING_MAX: usize = 255;

/// Header fields signed when present: the originator and destination fields, the subject and
/// date, the identity and threading fields, the MIME fields that decide how the body reads, and
/// the list fields (RFC 2369, RFC 8058).
pub const SIGNED_FIELDS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
];

/// Fields signed once more than they occur, so no instance can be added.
pub const OVERSIGNED_FIELDS: &[&str] = &["From", "To", "Subject", "Date"];

/// The kind of a signing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

impl KeyAlgorithm {
    /// The `k=` tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Rsa => "rsa",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }
}

/// A private key read from a file, ready to sign.
pub struct LoadedKey {
    pub algorithm: KeyAlgorithm,
    /// Modulus size for RSA, 256 for Ed25519.
    pub bits: usize,
    key: DkimKey,
    /// `p=`: the SubjectPublicKeyInfo for RSA, the raw 32-octet key for Ed25519.
    public_key: Vec<u8>,
}

impl LoadedKey {
    /// The TXT record that publishes this key.
    pub fn dns_record(&self) -> String {
        txt_record(self.algorithm, &self.public_key)
    }
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("algorithm", &self.algorithm)
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

fn library(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Reads a private key file (see the module documentation for the formats).
pub fn load_key(path: &Path) -> Result<LoadedKey, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut pem = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if pem.len() as u64 > MAX_KEY_FILE {
        return Err(format!(
            "{}: larger than {MAX_KEY_FILE} octets, not a key file",
            path.display()
        ));
    }
    parse_key(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a PEM private key.
pub fn parse_key(pem: &[u8]) -> Result<LoadedKey, String> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("no PEM private key found ({e})"))?;
    let too_small = || format!("an RSA key of fewer than {MIN_RSA_BITS} bits");
    let rsa = match &der {
        PrivateKeyDer::Pkcs1(k) => match RsaKeyPair::from_der(k.secret_pkcs1_der()) {
            Ok(pair) => Some(pair),
            Err(e) if e.description_() == "TooSmall" => return Err(too_small()),
            Err(e) => return Err(format!("not a usable RSA key ({e})")),
        },
        PrivateKeyDer::Pkcs8(k) => match RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()) {
            Ok(pair) => Some(pair),
            Err(e) if e.description_() == "TooSmall" => return Err(too_small()),
            // Not RSA: perhaps Ed25519.
            Err(_) => None,
        },
        _ => {
            return Err("an EC (SEC1) key: DKIM signs with RSA or Ed25519 only".to_string());
        }
    };
    if let Some(pair) = rsa {
        let bits = pair.public_modulus_len() * 8;
        if bits < MIN_RSA_BITS {
            return Err(too_small());
        }
        let public_key = pair
            .public_key()
            .as_der()
            .map(|d: PublicKeyX509Der<'_>| d.as_ref().to_vec())
            .map_err(library)?;
        let key = RsaKey::<Sha256>::from_key_der(der).map_err(library)?;
        return Ok(LoadedKey {
            algorithm: KeyAlgorithm::Rsa,
            bits,
            key: DkimKey::Rsa(key),
            public_key,
        });
    }
    let PrivateKeyDer::Pkcs8(pkcs8) = &der else {
        return Err("not a usable private key".to_string());
    };
    let pair =
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.secret_pkcs8_der()).map_err(|_| {
            "a PKCS#8 key that is not RSA or Ed25519: DKIM signs with RSA or Ed25519 only"
                .to_string()
        })?;
    let key =
        Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()).map_err(library)?;
    Ok(LoadedKey {
        algorithm: KeyAlgorithm::Ed25519,
        bits: 256,
        key: DkimKey::Ed25519(key),
        public_key: pair.public_key().as_ref().to_vec(),
    })
}

/// A new private key and the record that publishes it.
pub struct GeneratedKey {
    /// PEM PKCS#8: to be written to a file only the gateway can read.
    pub pem: String,
    /// `v=DKIM1; k=...; p=...`
    pub record: String,
}

/// Makes a new key: RSA of [`MIN_RSA_BITS`] bits, or Ed25519.
pub fn generate(algorithm: KeyAlgorithm) -> Result<GeneratedKey, String> {
    let der: Vec<u8> = match algorithm {
        KeyAlgorithm::Rsa => RsaKeyPair::generate(KeySize::Rsa2048)
            .map_err(library)?
            .as_der()
            .map(|d: Pkcs8V1Der<'_>| d.as_ref().to_vec())
            .map_err(library)?,
        KeyAlgorithm::Ed25519 => Ed25519KeyPair::generate()
            .map_err(library)?
            .to_pkcs8v1()
            .map_err(library)?
            .as_ref()
            .to_vec(),
    };
    let encoded = BASE64.encode(&der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).map_err(library)?);
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let record = parse_key(pem.as_bytes())?.dns_record();
    Ok(GeneratedKey { pem, record })
}

/// The DKIM key record (RFC 6376 3.6.1).
pub fn txt_record(algorithm: KeyAlgorithm, public_key: &[u8]) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        algorithm.as_str(),
        BASE64.encode(public_key)
    )
}

/// A TXT record's text cut into the character-strings DNS allows (at most 255 octets each;
/// the verifier joins them without separators).
pub fn txt_strings(record: &str) -> Vec<&str> {
    // The record is ASCII, so every byte offset is a character boundary.
    record
        .as_bytes()
        .chunks(TXT_STRING_MAX)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect()
}

/// Feeds a held-back body, in order, to the function it is given (see [`Signer::sign`]).
pub type Replay<'a> = dyn FnMut(&mut dyn FnMut(&[u8])) -> io::Result<()> + 'a;

/// Shares one loaded key between the signers of many messages.
struct SharedKey(Arc<DkimKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

struct DomainKey {
    selector: String,
    key: Arc<DkimKey>,
}

/// What [`Signer::sign`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The DKIM-Signature fields to put at the top of the header, one per key.
    Signed {
        fields: Vec<u8>,
        domain: String,
        selectors: Vec<String>,
    },
    /// Why the message goes out unsigned.
    Unsigned(String),
}

/// The signing keys by domain.
#[derive(Default)]
pub struct Signer {
    keys: HashMap<String, Vec<DomainKey>>,
}

impl Signer {
    /// Loads every key of `[dkim]`.
    pub fn new(section: &DkimSection) -> Result<Signer, String> {
        let mut signer = Signer::default();
        for k in &section.keys {
            let loaded = load_key(&k.key_file)?;
            signer.add(&k.domain, &k.selector, loaded);
        }
        Ok(signer)
    }

    /// Adds a key for `domain` under `selector`.
    pub fn add(&mut self, domain: &str, selector: &str, key: LoadedKey) {
        self.keys
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .push(DomainKey {
                selector: selector.to_string(),
                key: Arc::new(key.key),
            });
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The domain with keys for mail from `domain`: itself or its closest parent.
    fn key_domain<'d>(&self, domain: &'d str) -> Option<&'d str> {
        let mut d = domain;
        loop {
            if self.keys.contains_key(d) {
                return Some(d);
            }
            d = d.split_once('.')?.1;
        }
    }

    /// The domain whose keys sign a message with this header, or why none does.
    fn domain_for(&self, block: &HeaderBlock<'_>) -> Result<String, String> {
        let from_domain = from_domain(block)?;
        match self.key_domain(&from_domain) {
            Some(d) => Ok(d.to_string()),
            None => Err(format!("no key for {from_domain}")),
        }
    }

    /// The domain whose keys will sign a message with this header section (as for
    /// [`Signer::sign`]), or why it will go unsigned.
    pub fn signing_domain(&self, header: &[u8]) -> Result<String, String> {
        self.domain_for(&parse_stored(header)?)
    }

    /// Signs a message: `header` is its header section as it will be stored (after the
    /// firewall, with the empty line when there is a body), `replay` feeds the body to the
    /// function it is given, in order, as often as it is called.
    pub fn sign(&self, header: &[u8], replay: &mut Replay<'_>) -> io::Result<Outcome> {
        let block = match parse_stored(header) {
            Ok(b) => b,
            Err(why) => return Ok(Outcome::Unsigned(why)),
        };
        let domain = match self.domain_for(&block) {
            Ok(d) => d,
            Err(why) => return Ok(Outcome::Unsigned(why)),
        };
        let domain = domain.as_str();
        let keys = self.keys.get(domain).map(Vec::as_slice).unwrap_or_default();
        let names = field_list(&block);
        let signers: Vec<_> = keys
            .iter()
            .map(|k| {
                DkimSigner::from_key(SharedKey(k.key.clone()))
                    .domain(domain)
                    .selector(k.selector.as_str())
                    .headers(names.iter().copied())
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Simple)
            })
            .collect();
        let mut streams: Vec<_> = signers.iter().map(|s| s.sign_streaming()).collect();
        for s in &mut streams {
            s.write(header);
        }
        replay(&mut |chunk: &[u8]| {
            for s in &mut streams {
                s.write(chunk);
            }
        })?;
        let mut fields = Vec::new();
        for s in streams {
            let signature = s
                .finish()
                .map_err(|e| io::Error::other(format!("DKIM signing failed: {e}")))?;
            fields.extend_from_slice(signature.to_header().as_bytes());
        }
        Ok(Outcome::Signed {
            fields,
            domain: domain.to_string(),
            selectors: keys.iter().map(|k| k.selector.clone()).collect(),
        })
    }
}

/// A header section that passed the gateway's limits already.
fn parse_stored(header: &[u8]) -> Result<HeaderBlock<'_>, String> {
    let limits = HeaderLimits {
        max_bytes: header.len(),
        max_fields: usize::MAX,
        max_line: usize::MAX,
    };
    HeaderBlock::parse(header, &limits).map_err(|e| e.to_string())
}

/// The `h=` list for this message (see the module documentation).
fn field_list<'a>(block: &HeaderBlock<'_>) -> Vec<&'a str> {
    let mut names = Vec::new();
    for &name in SIGNED_FIELDS {
        let present = block.get(name).is_some();
        let oversigned = OVERSIGNED_FIELDS.contains(&name);
        if present {
            names.push(name);
        }
        if oversigned {
            names.push(name);
        }
    }
    names
}

/// The one domain of the From field's addresses, lower case.
fn from_domain(block: &HeaderBlock<'_>) -> Result<String, String> {
    let mut froms = block.all("From");
    let (Some(from), None) = (froms.next(), froms.next()) else {
        return Err("not exactly one From field".to_string());
    };
    let raw = from.raw();
    let value = &raw[raw.len() - from.value().len() - 2..];
    let HeaderValue::Address(address) = MessageStream::new(value).parse_address() else {
        return Err("no address in From".to_string());
    };
    let mut domain: Option<String> = None;
    for addr in address.iter() {
        let d = addr
            .address()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| crate::config::is_domain(d, true))
            .ok_or_else(|| "an address in From without a domain".to_string())?;
        match &domain {
            Some(first) if *first != d => {
                return Err("From names addresses in different domains".to_string());
            }
            _ => domain = Some(d),
        }
    }
    domain.ok_or_else(|| "no address in From".to_string())
}

#[cfg(test)]
mod tests;
