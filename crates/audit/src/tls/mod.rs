//! TLS checks per endpoint: `tls.starttls`, `tls.versions`, `tls.ciphers`, `tls.kex`, the
//! certificate checks `tls.cert_*` ([`cert`]), and `tls.consistency` across the endpoints of
//! one target.
//!
//! [`audit_endpoint`] makes a fixed series of handshakes, one connection each, one after the
//! other (never two at once to the same host), each after EHLO and STARTTLS unless the
//! endpoint speaks implicit TLS (port 465):
//!
//! 1. rustls offering only TLS 1.3, then only TLS 1.2: what a modern client negotiates
//!    (version, suite, key-exchange group) and the certificate chain.
//! 2. OpenSSL at security level 0 offering everything from TLS 1.0 to 1.3 (the server's own
//!    choice, and a chain even from servers rustls cannot talk to), then TLS 1.1 only and TLS
//!    1.0 only: 1.0 / 1.1 accepted fails `tls.versions`.
//!    SSL 3.0, which OpenSSL 3 cannot speak, is probed with a raw ClientHello ([`hello`]).
//! 3. OpenSSL offering one family of weak suites at a time (NULL, export, anonymous, RC4,
//!    single DES, 3DES) with TLS 1.0-1.2: any accepted fails `tls.ciphers`. Families the
//!    linked OpenSSL does not have (Debian's OpenSSL 3: RC4, DES, 3DES, export) are offered
//!    by number in a raw ClientHello instead.
//! 4. OpenSSL offering only RSA key exchange, then only finite-field DHE: RSA key exchange
//!    accepted, or a DHE group under 2048 bits, fails `tls.kex`.
//!
//! Settings: [`TlsOptions`] (time limit per connection and per read, EHLO name, trust
//! anchors). How it fails: a connection that cannot be made, or a STARTTLS dialogue that goes
//! wrong, gives an `error` finding and the remaining checks are not run; a probe that fails
//! that way later leaves its check with status `error`, never a pass or a fail.

pub mod cert;
pub mod hello;
pub mod probe;
pub mod starttls;
pub mod testing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use openssl::ssl::SslVersion;

use crate::finding::{Finding, Severity, Status};
use crate::smtp::CheckInfo;
pub use cert::{CertFacts, Trust};
pub use probe::{Negotiated, ProbeError, TlsMode, TlsTarget};

/// Every TLS check id (the certificate ones are judged in [`cert`]).
pub const CHECKS: &[CheckInfo] = &[
    CheckInfo {
        id: "tls.starttls",
        description: "STARTTLS is offered (or TLS is implicit) and a TLS handshake succeeds.",
    },
    CheckInfo {
        id: "tls.versions",
        description: "Only TLS 1.2 and TLS 1.3 are accepted; SSL 3.0, TLS 1.0 and 1.1 are refused.",
    },
    CheckInfo {
        id: "tls.ciphers",
        description: "No weak cipher suite (NULL, export, anonymous, RC4, DES, 3DES) is accepted.",
    },
    CheckInfo {
        id: "tls.kex",
        description: "Key exchange is forward-secret: no RSA key exchange, no Diffie-Hellman group under 2048 bits.",
    },
    CheckInfo {
        id: "tls.cert_chain",
        description: "The certificate chain verifies against trusted roots and is sent complete.",
    },
    CheckInfo {
        id: "tls.cert_hostname",
        description: "The certificate names the host (subject alternative names).",
    },
    CheckInfo {
        id: "tls.cert_key",
        description: "The certificate key is RSA of at least 2048 bits, EC or Ed25519.",
    },
    CheckInfo {
        id: "tls.cert_signature",
        description: "No certificate of the chain is signed with MD2, MD5 or SHA-1.",
    },
    CheckInfo {
        id: "tls.cert_expiry",
        description: "The certificate is valid now and for at least 60 more days.",
    },
    CheckInfo {
        id: "tls.consistency",
        description: "Every endpoint of the target has the same TLS set-up (and each host one certificate).",
    },
];

/// Settings of the TLS checks.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// Time limit of each connect, read and write.
    pub timeout: Duration,
    /// The name sent with EHLO.
    pub ehlo_name: String,
    /// Trust anchors of `tls.cert_chain`.
    pub trust: Trust,
}

impl Default for TlsOptions {
    fn default() -> TlsOptions {
        TlsOptions {
            timeout: Duration::from_secs(15),
            ehlo_name: "audit.ravelin.invalid".into(),
            trust: Trust {
                public_roots: true,
                extra_roots: Vec::new(),
            },
        }
    }
}

/// Reads PEM certificates (a `--ca-file`) as extra trust anchors; at most 1 MiB.
pub fn load_ca_file(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > 1024 * 1024 {
        return Err(format!("{}: larger than 1 MiB", path.display()));
    }
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// What one endpoint's TLS looks like, for `tls.consistency`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSummary {
    pub endpoint: String,
    pub host: String,
    /// Whether a TLS handshake succeeded at all.
    pub tls: bool,
    /// Protocol versions accepted (`TLSv1.3`, `TLSv1.2`, `TLSv1.1`, `TLSv1`).
    pub versions: Vec<String>,
    /// Weak suite families accepted.
    pub weak_suites: Vec<String>,
    /// Weak key exchanges accepted (`RSA`, `DHE 1024`).
    pub weak_kex: Vec<String>,
    pub cert: CertFacts,
}

/// The findings for one endpoint and its summary.
#[derive(Clone, Debug)]
pub struct EndpointReport {
    pub findings: Vec<Finding>,
    pub summary: TlsSummary,
}

/// Weak suite families probed: (name, OpenSSL cipher list, the same suites by number for a
/// raw ClientHello when the linked OpenSSL lacks them, severity when accepted).
pub const WEAK_SUITES: &[(&str, &str, &[u16], Severity)] = &[
    (
        "NULL (no encryption)",
        "eNULL",
        hello::NULL_SUITES,
        Severity::High,
    ),
    ("EXPORT", "EXP", hello::EXPORT_SUITES, Severity::High),
    ("RC4", "RC4", hello::RC4_SUITES, Severity::Medium),
    ("single DES", "DES", hello::DES_SUITES, Severity::Medium),
    (
        "3DES (Sweet32)",
        "3DES",
        hello::TRIPLE_DES_SUITES,
        Severity::Low,
    ),
    (
        "anonymous (no server authentication)",
        "aNULL:!eNULL",
        hello::ANONYMOUS_SUITES,
        Severity::Low,
    ),
];

/// Smallest finite-field Diffie-Hellman group accepted, in bits.
pub const MIN_DHE_BITS: u32 = 2048;

const LEGACY: (SslVersion, SslVersion) = (SslVersion::TLS1, SslVersion::TLS1_2);

fn outcome(result: &Result<Negotiated, ProbeError>) -> String {
    match result {
        Ok(n) => format!("accepted ({} {})", n.version, n.cipher),
        Err(e) => e.to_string(),
    }
}

/// Runs every TLS check on one endpoint (blocking; see [`audit_endpoint_async`]).
pub fn audit_endpoint(target: &TlsTarget, opts: &TlsOptions) -> EndpointReport {
    let endpoint = target.endpoint();
    let mut summary = TlsSummary {
        endpoint: endpoint.clone(),
        host: target.host.clone(),
        ..TlsSummary::default()
    };
    let (timeout, ehlo) = (opts.timeout, opts.ehlo_name.as_str());
    let rustls_probe = |v| probe::rustls_probe(target, timeout, ehlo, v);
    let openssl = |min, max, ciphers| {
        probe::openssl_probe(target, timeout, ehlo, &probe::Offer { min, max, ciphers })
    };

    let tls13 = rustls_probe(&rustls::version::TLS13);
    if let Err(e @ (ProbeError::NotOffered(_) | ProbeError::Connect(_))) = &tls13 {
        let finding = match e {
            ProbeError::NotOffered(ehlo) => Finding::new(
                "tls.starttls",
                Status::Fail,
                Severity::High,
                &endpoint,
                "STARTTLS is not offered: mail to this host crosses the network in clear text",
                format!("EHLO keywords: {ehlo}"),
            )
            .fix("Postfix: `smtpd_tls_security_level = may` (port 25; `encrypt` on 587) with `smtpd_tls_chain_files = key.pem, fullchain.pem`; Exchange: bind a certificate to SMTP (Enable-ExchangeCertificate -Services SMTP)"),
            _ => Finding::new("tls.starttls", Status::Error, Severity::Medium, &endpoint, "The TLS checks could not run", e.to_string()),
        };
        return EndpointReport {
            findings: vec![finding],
            summary,
        };
    }
    let tls12 = rustls_probe(&rustls::version::TLS12);
    let any = openssl(SslVersion::TLS1, SslVersion::TLS1_3, probe::EVERYTHING);
    let mut findings = Vec::new();

    let handshakes = [&tls13, &tls12, &any];
    let Some(first) = handshakes.iter().find_map(|r| r.as_ref().ok()) else {
        findings.push(
            Finding::new(
                "tls.starttls",
                Status::Fail,
                Severity::High,
                &endpoint,
                "TLS is offered but no handshake succeeds",
                format!(
                    "TLS 1.3: {}; TLS 1.2: {}; OpenSSL, any version: {}",
                    outcome(&tls13),
                    outcome(&tls12),
                    outcome(&any)
                ),
            )
            .fix("Check the server's certificate and key files and its TLS log"),
        );
        return EndpointReport { findings, summary };
    };
    summary.tls = true;
    findings.push(Finding::new(
        "tls.starttls",
        Status::Pass,
        Severity::Info,
        &endpoint,
        match target.mode {
            TlsMode::StartTls => "STARTTLS is offered and the handshake succeeds",
            TlsMode::Implicit => "Implicit TLS: the handshake succeeds",
        },
        format!("{} {}", first.version, first.cipher),
    ));

    let raw = |version, suites| {
        hello::offer(target, timeout, ehlo, version, suites).map(Negotiated::from)
    };
    let tls11 = openssl(SslVersion::TLS1_1, SslVersion::TLS1_1, probe::EVERYTHING);
    let tls10 = openssl(SslVersion::TLS1, SslVersion::TLS1, probe::EVERYTHING);
    // OpenSSL 3 has no SSL 3.0 at all.
    let ssl3 = raw(hello::SSL3, hello::SSL3_SUITES);
    findings.push(versions_finding(
        &endpoint,
        [&tls13, &tls12, &tls11, &tls10, &ssl3],
        &any,
        &mut summary,
    ));

    let weak: Vec<(&str, Severity, Result<Negotiated, ProbeError>)> = WEAK_SUITES
        .iter()
        .map(|(name, list, numbers, severity)| {
            let result = match openssl(LEGACY.0, LEGACY.1, list) {
                Err(ProbeError::Local(_)) => raw(hello::TLS12, numbers),
                other => other,
            };
            (*name, *severity, result)
        })
        .collect();
    findings.push(ciphers_finding(&endpoint, &weak, &any, &mut summary));

    let rsa = openssl(LEGACY.0, LEGACY.1, "kRSA");
    let dhe = openssl(LEGACY.0, LEGACY.1, "kDHE");
    findings.push(kex_finding(
        &endpoint,
        [&tls13, &tls12],
        &rsa,
        &dhe,
        &mut summary,
    ));

    let chain = handshakes
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|n| &n.chain)
        .find(|c| !c.is_empty())
        .cloned()
        .unwrap_or_default();
    let (cert_findings, facts) = cert::check(
        &endpoint,
        &target.host,
        &chain,
        &opts.trust,
        SystemTime::now(),
    );
    findings.extend(cert_findings);
    summary.cert = facts;
    EndpointReport { findings, summary }
}

/// [`audit_endpoint`] on tokio's blocking pool.
pub async fn audit_endpoint_async(target: TlsTarget, opts: Arc<TlsOptions>) -> EndpointReport {
    let endpoint = target.endpoint();
    match tokio::task::spawn_blocking(move || audit_endpoint(&target, &opts)).await {
        Ok(report) => report,
        Err(e) => EndpointReport {
            findings: vec![Finding::new(
                "tls.starttls",
                Status::Error,
                Severity::Medium,
                &endpoint,
                "The TLS checks stopped",
                e.to_string(),
            )],
            summary: TlsSummary {
                endpoint,
                ..TlsSummary::default()
            },
        },
    }
}

fn versions_finding(
    endpoint: &str,
    [tls13, tls12, tls11, tls10, ssl3]: [&Result<Negotiated, ProbeError>; 5],
    any: &Result<Negotiated, ProbeError>,
    summary: &mut TlsSummary,
) -> Finding {
    const ID: &str = "tls.versions";
    // rustls offers only AEAD suites with ECDHE; a TLS 1.2 server without them still speaks
    // TLS 1.2 to OpenSSL.
    let tls12_legacy_only = tls12.is_err() && any.as_ref().is_ok_and(|n| n.version == "TLSv1.2");
    let rows = [
        ("TLSv1.3", tls13),
        ("TLSv1.2", tls12),
        ("TLSv1.1", tls11),
        ("TLSv1", tls10),
        ("SSLv3", ssl3),
    ];
    for (name, result) in rows {
        if result.is_ok() || (name == "TLSv1.2" && tls12_legacy_only) {
            summary.versions.push(name.to_string());
        }
    }
    let mut evidence: Vec<String> = rows
        .iter()
        .map(|(name, r)| format!("{name}: {}", outcome(r)))
        .collect();
    if tls12_legacy_only {
        evidence[1].push_str(&format!(
            "; OpenSSL got {} {}",
            "TLSv1.2",
            any.as_ref().map(|n| n.cipher.as_str()).unwrap_or_default()
        ));
    }
    let evidence = evidence.join("; ");
    let legacy: Vec<&str> = [("TLS 1.1", tls11), ("TLS 1.0", tls10), ("SSL 3.0", ssl3)]
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| *n)
        .collect();
    let fix = "Postfix: `smtpd_tls_protocols = >=TLSv1.2` and `smtpd_tls_mandatory_protocols = >=TLSv1.2`, and no @SECLEVEL=0 in the cipher lists; Exchange: disable TLS 1.0 and 1.1 in SCHANNEL";
    if !legacy.is_empty() {
        return Finding::new(
            ID,
            Status::Fail,
            Severity::Medium,
            endpoint,
            format!("{} accepted", legacy.join(" and ")),
            evidence,
        )
        .fix(fix);
    }
    if !summary
        .versions
        .iter()
        .any(|v| v == "TLSv1.2" || v == "TLSv1.3")
    {
        return Finding::new(
            ID,
            Status::Fail,
            Severity::High,
            endpoint,
            "Neither TLS 1.2 nor TLS 1.3 is accepted",
            evidence,
        )
        .fix(fix);
    }
    let unknown = [tls11, tls10, ssl3]
        .iter()
        .any(|r| matches!(r, Err(ProbeError::Connect(_) | ProbeError::Local(_))));
    if unknown {
        return Finding::new(
            ID,
            Status::Error,
            Severity::Low,
            endpoint,
            "Whether SSL 3.0 / TLS 1.0 / 1.1 are accepted could not be tested",
            evidence,
        );
    }
    if tls13.is_err() {
        return Finding::new(
            ID,
            Status::Warn,
            Severity::Low,
            endpoint,
            "TLS 1.3 is not offered",
            evidence,
        )
        .fix("Upgrade the TLS library (OpenSSL 1.1.1 or later) or enable TLS 1.3");
    }
    Finding::new(
        ID,
        Status::Pass,
        Severity::Info,
        endpoint,
        "TLS 1.3 and 1.2 only",
        evidence,
    )
}

fn ciphers_finding(
    endpoint: &str,
    weak: &[(&str, Severity, Result<Negotiated, ProbeError>)],
    any: &Result<Negotiated, ProbeError>,
    summary: &mut TlsSummary,
) -> Finding {
    const ID: &str = "tls.ciphers";
    let mut evidence: Vec<String> = weak
        .iter()
        .map(|(name, _, r)| format!("{name}: {}", outcome(r)))
        .collect();
    if let Ok(n) = any {
        evidence.insert(
            0,
            format!(
                "offered everything, the server chose {} {}",
                n.version, n.cipher
            ),
        );
    }
    let evidence = evidence.join("; ");
    let accepted: Vec<(&str, Severity)> = weak
        .iter()
        .filter(|(_, _, r)| r.is_ok())
        .map(|(n, s, _)| (*n, *s))
        .collect();
    summary.weak_suites = accepted.iter().map(|(n, _)| n.to_string()).collect();
    if let Some(severity) = accepted.iter().map(|(_, s)| *s).max() {
        let names: Vec<&str> = accepted.iter().map(|(n, _)| *n).collect();
        return Finding::new(ID, Status::Fail, severity, endpoint, format!("Weak cipher suites accepted: {}", names.join(", ")), evidence)
            .fix("Postfix: `smtpd_tls_ciphers = medium`, `smtpd_tls_mandatory_ciphers = high`, `smtpd_tls_exclude_ciphers = aNULL, eNULL, EXPORT, DES, 3DES, RC4, MD5`, and no @SECLEVEL=0");
    }
    if weak
        .iter()
        .all(|(_, _, r)| matches!(r, Err(ProbeError::Connect(_))))
    {
        return Finding::new(
            ID,
            Status::Error,
            Severity::Low,
            endpoint,
            "The weak cipher suites could not be tested",
            evidence,
        );
    }
    Finding::new(
        ID,
        Status::Pass,
        Severity::Info,
        endpoint,
        "No weak cipher suite accepted",
        evidence,
    )
}

fn kex_finding(
    endpoint: &str,
    modern: [&Result<Negotiated, ProbeError>; 2],
    rsa: &Result<Negotiated, ProbeError>,
    dhe: &Result<Negotiated, ProbeError>,
    summary: &mut TlsSummary,
) -> Finding {
    const ID: &str = "tls.kex";
    let mut evidence: Vec<String> = modern
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|n| {
            format!(
                "{}: {}",
                n.version,
                n.group.as_deref().unwrap_or("no group")
            )
        })
        .collect();
    evidence.push(format!("RSA key exchange: {}", outcome(rsa)));
    let dhe_bits = dhe
        .as_ref()
        .ok()
        .and_then(|n| n.ephemeral.as_ref())
        .filter(|(k, _)| k == "DH")
        .map(|(_, b)| *b);
    evidence.push(match (dhe, dhe_bits) {
        (Ok(_), Some(bits)) => format!("DHE: accepted, {bits}-bit group"),
        (r, _) => format!("DHE: {}", outcome(r)),
    });
    let evidence = evidence.join("; ");
    let mut problems = Vec::new();
    let mut severity = Severity::Info;
    if rsa.is_ok() {
        problems.push("RSA key exchange accepted (no forward secrecy)".to_string());
        summary.weak_kex.push("RSA".into());
        severity = Severity::Medium;
    }
    if let Some(bits) = dhe_bits.filter(|b| *b < MIN_DHE_BITS) {
        problems.push(format!("DHE with a {bits}-bit group"));
        summary.weak_kex.push(format!("DHE {bits}"));
        severity = severity.max(if bits < 1024 {
            Severity::High
        } else {
            Severity::Medium
        });
    }
    if !problems.is_empty() {
        return Finding::new(ID, Status::Fail, severity, endpoint, problems.join("; "), evidence).fix(
            "Postfix: `smtpd_tls_exclude_ciphers = kRSA` (or `tls_medium_cipherlist` without them) and no `smtpd_tls_dh1024_param_file` smaller than 2048 bits (Postfix 3.7 uses a built-in 2048-bit group when none is set)",
        );
    }
    Finding::new(
        ID,
        Status::Pass,
        Severity::Info,
        endpoint,
        "Forward-secret key exchange only",
        evidence,
    )
}

/// `tls.consistency`: whether the endpoints of `target` are configured alike (STARTTLS,
/// versions, weak suites, key exchange, key type; the same certificate on every address of
/// one host).
pub fn consistency(target: &str, summaries: &[TlsSummary]) -> Finding {
    const ID: &str = "tls.consistency";
    if summaries.len() < 2 {
        return Finding::new(
            ID,
            Status::Skipped,
            Severity::Info,
            target,
            "Fewer than two endpoints to compare",
            format!("{} endpoint(s)", summaries.len()),
        );
    }
    let mut differences = Vec::new();
    let mut compare = |what: &str, value: &dyn Fn(&TlsSummary) -> String, group: &[&TlsSummary]| {
        let mut by_value: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for s in group {
            by_value.entry(value(s)).or_default().push(&s.endpoint);
        }
        if by_value.len() > 1 {
            let parts: Vec<String> = by_value
                .iter()
                .map(|(v, eps)| {
                    format!(
                        "{} on {}",
                        if v.is_empty() { "none" } else { v },
                        eps.join(", ")
                    )
                })
                .collect();
            differences.push(format!("{what}: {}", parts.join(" / ")));
        }
    };
    let all: Vec<&TlsSummary> = summaries.iter().collect();
    compare(
        "TLS",
        &|s| if s.tls { "yes".into() } else { "no".into() },
        &all,
    );
    let with_tls: Vec<&TlsSummary> = summaries.iter().filter(|s| s.tls).collect();
    compare("versions", &|s| s.versions.join(" "), &with_tls);
    compare("weak suites", &|s| s.weak_suites.join(", "), &with_tls);
    compare("weak key exchange", &|s| s.weak_kex.join(", "), &with_tls);
    compare("certificate key", &|s| s.cert.key.clone(), &with_tls);
    let mut hosts: BTreeMap<&str, Vec<&TlsSummary>> = BTreeMap::new();
    for s in &with_tls {
        hosts.entry(s.host.as_str()).or_default().push(s);
    }
    for (host, group) in hosts {
        compare(
            &format!("certificate of {host} (SHA-256)"),
            &|s| s.cert.fingerprint.clone(),
            &group,
        );
    }
    let evidence = format!(
        "{} endpoints: {}",
        summaries.len(),
        summaries
            .iter()
            .map(|s| s.endpoint.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if differences.is_empty() {
        return Finding::new(
            ID,
            Status::Pass,
            Severity::Info,
            target,
            "All endpoints have the same TLS set-up",
            evidence,
        );
    }
    Finding::new(ID, Status::Warn, Severity::Low, target, "The endpoints differ in their TLS set-up", format!("{}; {evidence}", differences.join("; ")))
        .fix("Configure every MX host and address alike (same TLS settings and software); the weakest endpoint is what an attacker picks")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(endpoint: &str, host: &str, versions: &[&str], fingerprint: &str) -> TlsSummary {
        TlsSummary {
            endpoint: endpoint.into(),
            host: host.into(),
            tls: true,
            versions: versions.iter().map(|v| v.to_string()).collect(),
            weak_suites: Vec::new(),
            weak_kex: Vec::new(),
            cert: CertFacts {
                key: "EC P-256".into(),
                fingerprint: fingerprint.into(),
            },
        }
    }

    #[test]
    fn consistency_compares_settings_and_certificates_per_host() {
        let a = summary("mx1[192.0.2.1]:25", "mx1", &["TLSv1.3", "TLSv1.2"], "aa");
        let b = summary("mx1[2001:db8::1]:25", "mx1", &["TLSv1.3", "TLSv1.2"], "aa");
        // Another host has its own certificate: that is no difference.
        let c = summary("mx2[192.0.2.2]:25", "mx2", &["TLSv1.3", "TLSv1.2"], "cc");
        let f = consistency("example.org", &[a.clone(), b.clone(), c.clone()]);
        assert_eq!(f.status, Status::Pass, "{f:#?}");

        let old = summary("mx2[192.0.2.2]:25", "mx2", &["TLSv1.2", "TLSv1"], "cc");
        let other_cert = summary("mx1[2001:db8::1]:25", "mx1", &["TLSv1.3", "TLSv1.2"], "bb");
        let f = consistency("example.org", &[a.clone(), other_cert, old]);
        assert_eq!(
            (f.status, f.endpoint.as_str()),
            (Status::Warn, "example.org")
        );
        assert!(f.evidence.contains("versions: TLSv1.2 TLSv1 on mx2[192.0.2.2]:25 / TLSv1.3 TLSv1.2 on mx1[192.0.2.1]:25, mx1[2001:db8::1]:25"), "{f:#?}");
        assert!(
            f.evidence.contains("certificate of mx1 (SHA-256)"),
            "{f:#?}"
        );
        assert!(!f.evidence.contains("certificate of mx2"), "{f:#?}");

        assert_eq!(consistency("example.org", &[a]).status, Status::Skipped);
    }
}
