//! DANE for SMTP (RFC 7672, RFC 7671): TLSA record matching and the rustls verifier that
//! authenticates a mail exchanger by its TLSA records instead of (or besides) WebPKI.
//!
//! Only the two usages RFC 7672 §3.1 lets SMTP use are honoured:
//!
//! - **DANE-EE (3)**: the server's own certificate (selector 0) or public key (selector 1)
//!   matches the record. Names, expiry and issuer are not checked (RFC 7672 §3.1.1), because
//!   the DNSSEC-signed record is the authentication.
//! - **DANE-TA (2)**: a certificate of the presented chain (selector 0: the whole certificate;
//!   selector 1: its public key) matches the record and is the trust anchor of an ordinary
//!   chain check (signatures, validity period, server-auth usage) of the leaf, whose name must
//!   be one of the reference names (the MX host name; RFC 7672 §3.2.2).
//!
//! Matching types: 0 (exact bytes), 1 (SHA-256), 2 (SHA-512). Records with another usage
//! (PKIX-TA 0, PKIX-EE 1), selector or matching type are "unusable" (RFC 7672 §2.2): when a
//! host publishes only unusable records, TLS is still required but not authenticated; the
//! caller decides that with [`usable`] before building the verifier.
//!
//! How it fails: [`client_config`] refuses an empty usable set and names and returns
//! [`TlsError`]; a certificate that matches no record makes the handshake fail with a rustls
//! error whose text starts with "DANE:" and says why (no match, or the DANE-TA chain check's
//! complaint). Nothing here panics on what a server presents; certificates that do not parse
//! simply do not match. At most [`MAX_TLSA_RECORDS`] records are considered.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{PROTOCOL_VERSIONS, TlsError, provider};

/// The most TLSA records of one host that are considered.
pub const MAX_TLSA_RECORDS: usize = 64;

/// A TLSA record (RFC 6698) as numbers and bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsaRecord {
    /// 2 DANE-TA, 3 DANE-EE (0 and 1 are unusable for SMTP).
    pub usage: u8,
    /// 0 full certificate, 1 SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    pub data: Vec<u8>,
}

impl fmt::Debug for TlsaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for TlsaRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        write!(
            f,
            "{} {} {} {}",
            self.usage, self.selector, self.matching, hex
        )
    }
}

impl TlsaRecord {
    /// Whether RFC 7672 lets SMTP use this record: usage 2 or 3, selector 0 or 1, matching
    /// type 0, 1 or 2, and data of the length the matching type implies.
    pub fn is_usable(&self) -> bool {
        let length_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, 2 | 3) && matches!(self.selector, 0 | 1) && length_ok
    }

    /// Whether the certificate `der` matches this record's selector, matching type and data.
    pub fn matches(&self, der: &[u8]) -> bool {
        let selected = match self.selector {
            0 => der,
            1 => match spki(der) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => digest::digest(&digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => digest::digest(&digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// The DER SubjectPublicKeyInfo of a certificate, or `None` when it does not parse.
fn spki(der: &[u8]) -> Option<&[u8]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.tbs_certificate.subject_pki.raw)
}

/// The records of `records` that SMTP may use ([`TlsaRecord::is_usable`]), at most
/// [`MAX_TLSA_RECORDS`].
pub fn usable(records: &[TlsaRecord]) -> Vec<TlsaRecord> {
    records
        .iter()
        .filter(|r| r.is_usable())
        .take(MAX_TLSA_RECORDS)
        .cloned()
        .collect()
}

/// How a presented chain relates to a set of TLSA records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneMatch {
    /// The leaf matches a DANE-EE record.
    EndEntity(TlsaRecord),
    /// A certificate of the chain (index 0 is the leaf) matches a DANE-TA record and the
    /// chain up to it checks out for the reference name.
    TrustAnchor { record: TlsaRecord, depth: usize },
}

/// Checks `end_entity` and `intermediates` against `records` for the reference names
/// `names` at `now`. The reason for a failure is returned as text.
pub fn verify_chain(
    records: &[TlsaRecord],
    names: &[String],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<DaneMatch, String> {
    for record in records.iter().filter(|r| r.usage == 3 && r.is_usable()) {
        if record.matches(end_entity) {
            return Ok(DaneMatch::EndEntity(record.clone()));
        }
    }
    let mut last_problem = None;
    let chain = std::iter::once(end_entity).chain(intermediates.iter());
    for (depth, cert) in chain.enumerate() {
        for record in records.iter().filter(|r| r.usage == 2 && r.is_usable()) {
            if !record.matches(cert) {
                continue;
            }
            match chain_to_anchor(cert, names, end_entity, intermediates, now) {
                Ok(()) => {
                    return Ok(DaneMatch::TrustAnchor {
                        record: record.clone(),
                        depth,
                    });
                }
                Err(why) => last_problem = Some(why),
            }
        }
    }
    Err(match last_problem {
        Some(why) => format!("a DANE-TA record matches, but the chain does not verify: {why}"),
        None => "no TLSA record matches the presented certificate chain".to_string(),
    })
}

/// The WebPKI chain check of the leaf with `anchor` as the only root, for any of `names`.
fn chain_to_anchor(
    anchor: &CertificateDer<'_>,
    names: &[String],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(anchor.clone().into_owned())
        .map_err(|e| format!("the matching certificate is not usable as a trust anchor: {e}"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| e.to_string())?;
    // The anchor itself may be the leaf's issuer or any intermediate; leaving it in the
    // intermediates is harmless.
    let mut problem = String::from("no reference name");
    for name in names {
        let Ok(server_name) = ServerName::try_from(name.clone()) else {
            continue;
        };
        match verifier.verify_server_cert(end_entity, intermediates, &server_name, &[], now) {
            Ok(_) => return Ok(()),
            Err(e) => problem = e.to_string(),
        }
    }
    Err(problem)
}

/// The verifier of [`client_config`].
#[derive(Debug)]
struct DaneVerifier {
    records: Vec<TlsaRecord>,
    names: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_chain(&self.records, &self.names, end_entity, intermediates, now)
            .map(|_| ServerCertVerified::assertion())
            .map_err(|why| rustls::Error::General(format!("DANE: {why}")))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client configuration that accepts a server only when its chain matches one of the
/// usable `records` (see the module documentation); `names` are the reference names for
/// DANE-TA (the MX host name first). TLS 1.2 and 1.3 only.
pub fn client_config(
    records: &[TlsaRecord],
    names: &[String],
) -> Result<Arc<ClientConfig>, TlsError> {
    let records = usable(records);
    if records.is_empty() {
        return Err(TlsError::NoRoots(
            "no usable TLSA record (DANE-TA or DANE-EE with selector 0/1 and matching 0/1/2)"
                .to_string(),
        ));
    }
    let provider = provider();
    let verifier = DaneVerifier {
        records,
        names: names.to_vec(),
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use std::time::Duration;

    struct Chain {
        ca: CertificateDer<'static>,
        ca_spki: Vec<u8>,
        leaf: CertificateDer<'static>,
        leaf_spki: Vec<u8>,
    }

    /// A CA and a leaf for `name`, valid from `not_before` for `days` days.
    fn chain(name: &str, not_before: (i32, u8, u8), days: i64) -> Chain {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "DANE test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_spki = spki_der(&ca_key);
        let ca = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = params.not_before + time_days(days);
        let leaf = params.signed_by(&key, &ca).unwrap();
        Chain {
            ca: ca.der().clone(),
            ca_spki,
            leaf: leaf.der().clone(),
            leaf_spki: spki_der(&key),
        }
    }

    /// The SubjectPublicKeyInfo as rcgen writes it (independent of our x509-parser path).
    fn spki_der(key: &KeyPair) -> Vec<u8> {
        use rustls::pki_types::SubjectPublicKeyInfoDer;
        use rustls::pki_types::pem::PemObject;
        SubjectPublicKeyInfoDer::from_pem_slice(key.public_key_pem().as_bytes())
            .unwrap()
            .to_vec()
    }

    fn time_days(days: i64) -> Duration {
        Duration::from_secs(days as u64 * 86_400)
    }

    fn sha256(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, data).as_ref().to_vec()
    }

    fn sha512(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA512, data).as_ref().to_vec()
    }

    fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> TlsaRecord {
        TlsaRecord {
            usage,
            selector,
            matching,
            data,
        }
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    fn names(n: &str) -> Vec<String> {
        vec![n.to_string()]
    }

    #[test]
    fn dane_ee_matches_every_selector_and_matching_type() {
        let c = chain("mx.example.test", (2020, 1, 1), 36_500);
        let cases = [
            rec(3, 0, 0, c.leaf.to_vec()),
            rec(3, 0, 1, sha256(&c.leaf)),
            rec(3, 0, 2, sha512(&c.leaf)),
            rec(3, 1, 0, c.leaf_spki.clone()),
            rec(3, 1, 1, sha256(&c.leaf_spki)),
            rec(3, 1, 2, sha512(&c.leaf_spki)),
        ];
        for r in cases {
            let got = verify_chain(std::slice::from_ref(&r), &names("x"), &c.leaf, &[], now());
            assert_eq!(got, Ok(DaneMatch::EndEntity(r.clone())), "{r}");
        }
    }

    #[test]
    fn dane_ee_ignores_the_name_and_the_expiry() {
        // Expired in 2001, issued for another name: DANE-EE still authenticates it.
        let c = chain("other.example", (2000, 1, 1), 365);
        let r = rec(3, 1, 1, sha256(&c.leaf_spki));
        assert!(verify_chain(&[r], &names("mx.example.test"), &c.leaf, &[], now()).is_ok());
    }

    #[test]
    fn a_wrong_digest_or_another_key_does_not_match() {
        let c = chain("mx.example.test", (2020, 1, 1), 36_500);
        let other = chain("mx.example.test", (2020, 1, 1), 36_500);
        let mut flipped = sha256(&c.leaf_spki);
        flipped[0] ^= 1;
        for r in [
            rec(3, 1, 1, flipped),
            rec(3, 1, 1, sha256(&other.leaf_spki)),
            rec(3, 0, 2, sha512(&other.leaf)),
        ] {
            let got = verify_chain(&[r], &names("mx.example.test"), &c.leaf, &[], now());
            assert_eq!(
                got,
                Err("no TLSA record matches the presented certificate chain".to_string())
            );
        }
    }

    #[test]
    fn dane_ta_checks_the_chain_and_the_name() {
        let c = chain("mx.example.test", (2020, 1, 1), 36_500);
        let ta = rec(2, 1, 1, sha256(&c.ca_spki));
        let chain_sent = [c.ca.clone()];
        let ok = verify_chain(
            std::slice::from_ref(&ta),
            &names("mx.example.test"),
            &c.leaf,
            &chain_sent,
            now(),
        );
        assert_eq!(
            ok,
            Ok(DaneMatch::TrustAnchor {
                record: ta.clone(),
                depth: 1
            })
        );
        let full = rec(2, 0, 1, sha256(&c.ca));
        assert!(
            verify_chain(
                &[full],
                &names("mx.example.test"),
                &c.leaf,
                &chain_sent,
                now()
            )
            .is_ok()
        );
        // The right anchor, but the certificate is for another name.
        let wrong_name = verify_chain(
            std::slice::from_ref(&ta),
            &names("mx2.example.test"),
            &c.leaf,
            &chain_sent,
            now(),
        )
        .unwrap_err();
        assert!(wrong_name.contains("chain does not verify"), "{wrong_name}");
        // The anchor is not in the chain the server sent: nothing to match.
        assert!(
            verify_chain(
                std::slice::from_ref(&ta),
                &names("mx.example.test"),
                &c.leaf,
                &[],
                now()
            )
            .is_err()
        );
        // An expired leaf under DANE-TA fails (only DANE-EE ignores expiry).
        let old = chain("mx.example.test", (2000, 1, 1), 365);
        let old_ta = rec(2, 1, 1, sha256(&old.ca_spki));
        assert!(
            verify_chain(
                &[old_ta],
                &names("mx.example.test"),
                &old.leaf,
                std::slice::from_ref(&old.ca),
                now()
            )
            .is_err()
        );
    }

    #[test]
    fn pkix_usages_and_bad_parameters_are_unusable() {
        let c = chain("mx.example.test", (2020, 1, 1), 36_500);
        let digest = sha256(&c.leaf_spki);
        for r in [
            rec(0, 1, 1, digest.clone()),
            rec(1, 1, 1, digest.clone()),
            rec(3, 2, 1, digest.clone()),
            rec(3, 1, 3, digest.clone()),
            rec(3, 1, 1, digest[..31].to_vec()),
            rec(3, 1, 2, digest.clone()),
        ] {
            assert!(!r.is_usable(), "{r}");
            assert!(
                verify_chain(
                    std::slice::from_ref(&r),
                    &names("mx.example.test"),
                    &c.leaf,
                    &[],
                    now()
                )
                .is_err(),
                "{r}"
            );
        }
        assert!(client_config(&[rec(1, 1, 1, digest)], &names("x")).is_err());
    }

    #[test]
    fn garbage_certificates_do_not_match_and_do_not_panic() {
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let r = rec(3, 1, 1, vec![0; 32]);
        assert!(
            verify_chain(&[r], &names("x"), &junk, std::slice::from_ref(&junk), now()).is_err()
        );
    }
}
