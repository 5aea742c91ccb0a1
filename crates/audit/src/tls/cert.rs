//! The certificate checks of one endpoint, on the chain the server sent (leaf first):
//!
//! - `tls.cert_chain`: the chain verifies (rustls' WebPKI verifier) against the public roots
//!   (webpki-roots, Mozilla's list) and the extra roots given (`--ca-file`), judged at a time
//!   inside the leaf's validity so an expired certificate is reported once, by
//!   `tls.cert_expiry`, and a wrong name once, by `tls.cert_hostname`. Self-signed
//!   certificates and chains sent without their intermediates are named as such.
//! - `tls.cert_hostname`: the host name (the MX name) is among the DNS names of the subject
//!   alternative names (one `*.` wildcard label allowed); a certificate without SANs is judged
//!   on its CN and flagged. A server audited by address passes when the address is among the
//!   IP addresses of the SANs, and is otherwise only `info`: mail clients check the MX name.
//! - `tls.cert_key`: RSA under 2048 bits fails, DSA fails, EC and Ed25519 pass.
//! - `tls.cert_signature`: MD2, MD5 or SHA-1 signatures on the leaf or an intermediate fail
//!   (the self-signed root's own signature does not matter).
//! - `tls.cert_expiry`: failed when expired or not yet valid, fails under 30 days, warns
//!   under 60.
//!
//! Certificates are parsed with x509-parser; one that cannot be parsed gives `error` findings.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::*;

use crate::finding::{Finding, Severity, Status};

/// Days before expiry below which `tls.cert_expiry` warns and fails: those of the gateway's
/// own certificate log.
pub use ravelin_tls::{EXPIRY_FAIL_DAYS, EXPIRY_WARN_DAYS};
/// Smallest RSA key accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Signature algorithms that fail `tls.cert_signature` (OID, name).
const WEAK_SIGNATURES: &[(&str, &str)] = &[
    ("1.2.840.113549.1.1.2", "md2WithRSAEncryption"),
    ("1.2.840.113549.1.1.4", "md5WithRSAEncryption"),
    ("1.2.840.113549.1.1.5", "sha1WithRSAEncryption"),
    ("1.3.14.3.2.29", "sha1WithRSASignature"),
    ("1.2.840.10045.4.1", "ecdsa-with-SHA1"),
    ("1.2.840.10040.4.3", "dsa-with-sha1"),
];

/// Named curves (OID, name, bits).
const CURVES: &[(&str, &str, usize)] = &[
    ("1.2.840.10045.3.1.7", "P-256", 256),
    ("1.3.132.0.34", "P-384", 384),
    ("1.3.132.0.35", "P-521", 521),
];

/// Where trust comes from for `tls.cert_chain`.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Also trust Mozilla's root list (webpki-roots).
    pub public_roots: bool,
    /// Extra trust anchors (`--ca-file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// What the certificate checks learnt, for `tls.consistency`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertFacts {
    /// `RSA 2048`, `EC P-256`, `Ed25519`, ...
    pub key: String,
    /// SHA-256 of the leaf, hex.
    pub fingerprint: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rsa_bits(modulus: &[u8]) -> usize {
    let digits: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(first) => &modulus[first..],
        None => return 0,
    };
    digits.len() * 8 - digits[0].leading_zeros() as usize
}

/// (description, bits or 0, kind) of a certificate's public key.
fn key_of(cert: &X509Certificate<'_>) -> (String, usize, &'static str) {
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            let bits = rsa_bits(rsa.modulus);
            (format!("RSA {bits}"), bits, "RSA")
        }
        Ok(x509_parser::public_key::PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match CURVES
                .iter()
                .find(|(oid, _, _)| Some(*oid) == curve.as_deref())
            {
                Some((_, name, bits)) => (format!("EC {name}"), *bits, "EC"),
                None => {
                    let bits = point.key_size();
                    (format!("EC {bits}"), bits, "EC")
                }
            }
        }
        Ok(x509_parser::public_key::PublicKey::DSA(y)) => {
            (format!("DSA {}", y.len() * 8), y.len() * 8, "DSA")
        }
        _ if alg == "1.3.101.112" => ("Ed25519".into(), 256, "Ed25519"),
        _ if alg == "1.3.101.113" => ("Ed448".into(), 456, "Ed448"),
        _ => (format!("unknown key algorithm {alg}"), 0, "unknown"),
    }
}

/// Whether `pattern` (a SAN DNS name, perhaps `*.example.org`) covers `host`.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(label, rest)| {
            !label.is_empty() && rest == parent && parent.contains('.')
        }),
        None => pattern == host,
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Every certificate check on `chain` (DER, leaf first) for `host` at `now`.
pub fn check(
    endpoint: &str,
    host: &str,
    chain: &[Vec<u8>],
    trust: &Trust,
    now: SystemTime,
) -> (Vec<Finding>, CertFacts) {
    let parsed: Vec<Result<X509Certificate<'_>, String>> = chain
        .iter()
        .map(|der| {
            parse_x509_certificate(der)
                .map(|(_, c)| c)
                .map_err(|e| e.to_string())
        })
        .collect();
    let leaf = match parsed.first() {
        Some(Ok(leaf)) => leaf,
        other => {
            let why = match other {
                Some(Err(e)) => format!("the certificate cannot be parsed: {e}"),
                _ => "the server sent no certificate".to_string(),
            };
            let findings = [
                "tls.cert_chain",
                "tls.cert_hostname",
                "tls.cert_key",
                "tls.cert_signature",
                "tls.cert_expiry",
            ]
            .iter()
            .map(|id| {
                Finding::new(
                    *id,
                    Status::Error,
                    Severity::Medium,
                    endpoint,
                    "The certificate could not be examined",
                    why.clone(),
                )
            })
            .collect();
            return (findings, CertFacts::default());
        }
    };
    let facts = CertFacts {
        key: key_of(leaf).0,
        fingerprint: hex(&openssl::sha::sha256(&chain[0])),
    };
    let findings = vec![
        chain_finding(endpoint, host, chain, leaf, trust, now),
        hostname_finding(endpoint, host, leaf),
        key_finding(endpoint, leaf),
        signature_finding(endpoint, &parsed),
        expiry_finding(endpoint, leaf, now),
    ];
    (findings, facts)
}

fn describe(cert: &X509Certificate<'_>) -> String {
    format!("subject {}, issuer {}", cert.subject(), cert.issuer())
}

fn chain_finding(
    endpoint: &str,
    host: &str,
    chain: &[Vec<u8>],
    leaf: &X509Certificate<'_>,
    trust: &Trust,
    now: SystemTime,
) -> Finding {
    const ID: &str = "tls.cert_chain";
    let mut roots = RootCertStore::empty();
    if trust.public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let (added, _) = roots.add_parsable_certificates(trust.extra_roots.iter().cloned());
    let fail = |severity, title: &str, evidence: String| {
        Finding::new(ID, Status::Fail, severity, endpoint, title, evidence)
            .fix("Serve the full chain (leaf, then intermediates) of a certificate from a public CA, e.g. Let's Encrypt; Postfix: smtpd_tls_chain_files = key.pem, fullchain.pem")
    };
    let self_signed = leaf.subject().as_raw() == leaf.issuer().as_raw();
    if roots.is_empty() {
        return Finding::new(
            ID,
            Status::Skipped,
            Severity::Info,
            endpoint,
            "No trust anchors to verify the chain against",
            format!("{}; {added} extra roots", describe(leaf)),
        );
    }
    let cannot = |why: String| {
        Finding::new(
            ID,
            Status::Error,
            Severity::Medium,
            endpoint,
            "The chain could not be verified",
            why,
        )
    };
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        match WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
            .build()
        {
            Ok(v) => v,
            Err(e) => return cannot(e.to_string()),
        };
    // Judge the chain at a moment the leaf is valid: expiry is tls.cert_expiry's finding.
    let (not_before, not_after) = (
        leaf.validity().not_before.timestamp(),
        leaf.validity().not_after.timestamp(),
    );
    let at = unix(now)
        .clamp(not_before, not_after.max(not_before))
        .max(0) as u64;
    let when = UnixTime::since_unix_epoch(Duration::from_secs(at));
    let end_entity = CertificateDer::from(chain[0].as_slice());
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let name = match super::probe::server_name(host) {
        Ok(name) => name,
        Err(why) => return cannot(why),
    };
    let evidence = format!("{}; chain of {} sent", describe(leaf), chain.len());
    use rustls::CertificateError as E;
    match verifier.verify_server_cert(&end_entity, &intermediates, &name, &[], when) {
        // WebPKI checks the name after the chain: a wrong name means the chain verified (and
        // tls.cert_hostname reports the name).
        Ok(_)
        | Err(rustls::Error::InvalidCertificate(
            E::NotValidForName | E::NotValidForNameContext { .. },
        )) => Finding::new(
            ID,
            Status::Pass,
            Severity::Info,
            endpoint,
            "The chain verifies to a trusted root",
            evidence,
        ),
        Err(rustls::Error::InvalidCertificate(e)) => {
            match e {
                // Whatever WebPKI objects to first (unknown issuer, a CA used as a leaf).
                _ if self_signed => fail(
                    Severity::Medium,
                    "Self-signed certificate",
                    format!("{evidence}: {e:?}"),
                ),
                E::UnknownIssuer if chain.len() == 1 => fail(
                    Severity::Medium,
                    "The chain does not verify: no intermediate certificate was sent and the issuer is not a trusted root",
                    evidence,
                ),
                E::UnknownIssuer => fail(
                    Severity::Medium,
                    "The chain does not lead to a trusted root",
                    evidence,
                ),
                other => fail(
                    Severity::Medium,
                    "The chain does not verify",
                    format!("{evidence}: {other:?}"),
                ),
            }
        }
        Err(e) => fail(
            Severity::Medium,
            "The chain does not verify",
            format!("{evidence}: {e}"),
        ),
    }
}

fn hostname_finding(endpoint: &str, host: &str, leaf: &X509Certificate<'_>) -> Finding {
    const ID: &str = "tls.cert_hostname";
    let ip: Option<IpAddr> = host.trim_matches(['[', ']']).parse().ok();
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    let san = leaf.subject_alternative_name().ok().flatten();
    if let Some(san) = &san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => ips.push(IpAddr::from(
                        <[u8; 4]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    16 => ips.push(IpAddr::from(
                        <[u8; 16]>::try_from(*bytes).unwrap_or_default(),
                    )),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let cns: Vec<String> = leaf
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    let mut listed: Vec<String> = dns.clone();
    listed.extend(ips.iter().map(IpAddr::to_string));
    let evidence = if san.is_some() {
        format!("subject alternative names: {}", listed.join(", "))
    } else {
        format!("no subject alternative names; CN: {}", cns.join(", "))
    };
    let matched = match ip {
        Some(ip) => ips.contains(&ip),
        None if san.is_some() => dns.iter().any(|d| name_matches(d, host)),
        None => cns.iter().any(|cn| name_matches(cn, host)),
    };
    if let (Some(ip), false) = (ip, matched) {
        // Mail clients check the certificate against the MX name, never against an address.
        return Finding::new(
            ID,
            Status::Info,
            Severity::Info,
            endpoint,
            format!("Audited by address: no host name to check the certificate against ({ip})"),
            evidence,
        )
        .fix("Audit the server by its MX name (HOST:PORT) to check the certificate's names");
    }
    let fix = format!("Use a certificate whose subject alternative names include {host}");
    match (matched, san.is_some()) {
        (true, true) => Finding::new(
            ID,
            Status::Pass,
            Severity::Info,
            endpoint,
            format!("The certificate is valid for {host}"),
            evidence,
        ),
        (true, false) => Finding::new(
            ID,
            Status::Warn,
            Severity::Low,
            endpoint,
            format!("{host} is only in the CN: clients that follow RFC 6125 ignore it"),
            evidence,
        )
        .fix(fix),
        (false, _) => Finding::new(
            ID,
            Status::Fail,
            Severity::Medium,
            endpoint,
            format!("The certificate is not valid for {host}"),
            evidence,
        )
        .fix(fix),
    }
}

fn key_finding(endpoint: &str, leaf: &X509Certificate<'_>) -> Finding {
    const ID: &str = "tls.cert_key";
    let (description, bits, kind) = key_of(leaf);
    let evidence = format!("{description} ({})", describe(leaf));
    let fix = "Issue the certificate for an EC P-256 key or an RSA key of 2048 bits or more";
    match kind {
        "RSA" if bits < MIN_RSA_BITS => {
            let severity = if bits < 1024 {
                Severity::Critical
            } else {
                Severity::High
            };
            Finding::new(
                ID,
                Status::Fail,
                severity,
                endpoint,
                format!("RSA key of {bits} bits (under {MIN_RSA_BITS})"),
                evidence,
            )
            .fix(fix)
        }
        "DSA" => Finding::new(
            ID,
            Status::Fail,
            Severity::High,
            endpoint,
            "DSA key",
            evidence,
        )
        .fix(fix),
        "unknown" => Finding::new(
            ID,
            Status::Info,
            Severity::Info,
            endpoint,
            "Key type not recognised",
            evidence,
        ),
        _ => Finding::new(
            ID,
            Status::Pass,
            Severity::Info,
            endpoint,
            format!("{description} key"),
            evidence,
        ),
    }
}

fn signature_finding(endpoint: &str, chain: &[Result<X509Certificate<'_>, String>]) -> Finding {
    const ID: &str = "tls.cert_signature";
    let mut weak = Vec::new();
    let mut seen = Vec::new();
    for cert in chain.iter().flatten() {
        // A self-signed root's signature protects nothing: trust in it is configured.
        if chain.len() > 1 && cert.subject().as_raw() == cert.issuer().as_raw() {
            continue;
        }
        let oid = cert.signature_algorithm.algorithm.to_id_string();
        let name = WEAK_SIGNATURES
            .iter()
            .find(|(o, _)| *o == oid)
            .map(|(_, n)| n.to_string());
        match name {
            Some(name) => weak.push(format!("{name} on {}", cert.subject())),
            None => seen.push(signature_name(&oid)),
        }
    }
    if weak.is_empty() {
        seen.dedup();
        return Finding::new(
            ID,
            Status::Pass,
            Severity::Info,
            endpoint,
            "No MD5 or SHA-1 signature in the chain",
            seen.join(", "),
        );
    }
    Finding::new(
        ID,
        Status::Fail,
        Severity::Medium,
        endpoint,
        "A certificate in the chain is signed with MD5 or SHA-1",
        weak.join("; "),
    )
    .fix("Reissue the certificate (and any intermediate) with a SHA-256 signature")
}

fn signature_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption".into(),
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption".into(),
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption".into(),
        "1.2.840.113549.1.1.10" => "RSASSA-PSS".into(),
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256".into(),
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384".into(),
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512".into(),
        "1.3.101.112" => "Ed25519".into(),
        other => other.to_string(),
    }
}

fn expiry_finding(endpoint: &str, leaf: &X509Certificate<'_>, now: SystemTime) -> Finding {
    const ID: &str = "tls.cert_expiry";
    let validity = leaf.validity();
    let now = unix(now);
    let left = validity.not_after.timestamp() - now;
    let days = left.div_euclid(86_400);
    let evidence = format!(
        "valid from {} until {}",
        validity.not_before, validity.not_after
    );
    let verdict = if validity.not_before.timestamp() > now {
        Some((
            Status::Fail,
            Severity::High,
            "The certificate is not valid yet".to_string(),
        ))
    } else if left < 0 {
        Some((
            Status::Fail,
            Severity::High,
            format!("The certificate expired {} days ago", -days),
        ))
    } else if days < EXPIRY_FAIL_DAYS {
        Some((
            Status::Fail,
            Severity::Medium,
            format!("The certificate expires in {days} days"),
        ))
    } else if days < EXPIRY_WARN_DAYS {
        Some((
            Status::Warn,
            Severity::Low,
            format!("The certificate expires in {days} days"),
        ))
    } else {
        None
    };
    match verdict {
        Some((status, severity, title)) => Finding::new(ID, status, severity, endpoint, title, evidence)
            .fix("Renew the certificate (automate it: ACME, e.g. certbot or Ravelin's own) and reload the server"),
        None => Finding::new(
            ID,
            Status::Pass,
            Severity::Info,
            endpoint,
            format!("The certificate is valid for {days} more days"),
            evidence,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("mx.example.org", "MX.example.org."));
        assert!(name_matches("*.example.org", "mx.example.org"));
        assert!(!name_matches("*.example.org", "a.mx.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.org", "example.org"));
        assert!(!name_matches("mx.example.org", "mx.example.com"));
    }

    #[test]
    fn rsa_modulus_bits() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(rsa_bits(&[0x7f, 0, 0]), 23);
        assert_eq!(rsa_bits(&[0, 0]), 0);
    }
}
