//! `dns.dane`: DANE for SMTP (RFC 7672) on one MX endpoint: the TLSA records at
//! `_PORT._tcp.HOST` must be DNSSEC-secure and match the certificate chain the host presents
//! after STARTTLS, and there should be a second record ready for the next key (RFC 7671 §8).
//!
//! Matching ([`matches`]): usage 3 (DANE-EE) against the leaf, usage 2 (DANE-TA) against the
//! other certificates sent; selector 0 (whole certificate) or 1 (SubjectPublicKeyInfo);
//! matching type 0 (exact), 1 (SHA-256) or 2 (SHA-512). Usages 0 and 1 (PKIX) are unusable
//! for SMTP (RFC 7672 §3.1.3).
//!
//! Info when there is no TLSA record (DANE not used). Fails on: TLSA records that are not
//! DNSSEC-secure (senders ignore them), no STARTTLS or no handshake while TLSA is published,
//! no usable record matching the chain (DANE senders defer all mail); warns on: a single
//! usable record (no rollover), PKIX usages. Skipped when the resolver is not trusted to
//! validate. How it fails: a temporary TLSA lookup failure is an `error` finding.

use std::sync::Arc;

use ravelin_dns::{Resolver, Tlsa};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::finding::{Finding, Severity, Status};
use crate::target::Endpoint;
use crate::tls::{ProbeError, TlsMode, TlsOptions, TlsTarget, probe};

const ID: &str = "dns.dane";
const FIX: &str = "Publish TLSA records at _25._tcp.MXHOST in a DNSSEC-signed zone that match \
    the certificate the MX presents: `3 1 1 <SHA-256 of the public key>` for the current key \
    and a second record for the next key (or `2 1 1` for the issuing CA) before any \
    rollover; update them before the certificate's key changes.";

/// Whether one TLSA record matches the chain (leaf first, DER).
pub fn matches(tlsa: &Tlsa, chain: &[Vec<u8>]) -> bool {
    let candidates: Vec<&Vec<u8>> = match tlsa.usage {
        3 => chain.iter().take(1).collect(),
        2 => chain.iter().skip(1).collect(),
        _ => return false,
    };
    candidates.into_iter().any(|der| {
        let selected: Vec<u8> = match tlsa.selector {
            0 => der.clone(),
            1 => match X509Certificate::from_der(der) {
                Ok((_, cert)) => cert.public_key().raw.to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        match tlsa.matching {
            0 => selected == tlsa.data,
            1 => openssl::sha::sha256(&selected).as_slice() == tlsa.data.as_slice(),
            2 => openssl::sha::sha512(&selected).as_slice() == tlsa.data.as_slice(),
            _ => false,
        }
    })
}

fn show(t: &Tlsa) -> String {
    let hex: String = t.data.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} {} {} {hex}", t.usage, t.selector, t.matching)
}

/// The certificate chain the endpoint presents (TLS 1.3, else 1.2).
async fn presented_chain(
    endpoint: &Endpoint,
    tls: &Arc<TlsOptions>,
) -> Result<Vec<Vec<u8>>, ProbeError> {
    let target = TlsTarget {
        host: endpoint.host(),
        addr: endpoint.addr,
        mode: TlsMode::StartTls,
    };
    let tls = tls.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let first = probe::rustls_probe(
            &target,
            tls.timeout,
            &tls.ehlo_name,
            &rustls::version::TLS13,
        );
        match first {
            Ok(n) => Ok(n.chain),
            Err(ProbeError::NotOffered(e)) => Err(ProbeError::NotOffered(e)),
            Err(_) => probe::rustls_probe(
                &target,
                tls.timeout,
                &tls.ehlo_name,
                &rustls::version::TLS12,
            )
            .map(|n| n.chain),
        }
    })
    .await;
    joined.unwrap_or_else(|e| Err(ProbeError::Connect(e.to_string())))
}

/// The `dns.dane` finding for one endpoint; `reachable` says whether SMTP answered there.
pub async fn check(
    resolver: &Resolver,
    endpoint: &Endpoint,
    reachable: bool,
    tls: &Arc<TlsOptions>,
) -> Finding {
    let at = endpoint.to_string();
    let f = |status, severity, title: &str, evidence: String| {
        Finding::new(ID, status, severity, at.as_str(), title, evidence)
    };
    let host = endpoint.host();
    let port = endpoint.addr.port();
    let name = format!("_{port}._tcp.{host}");
    let answer = match resolver.tlsa(&host, port).await {
        Ok(answer) => answer,
        Err(e) if e.is_negative() => {
            return f(
                Status::Info,
                Severity::Info,
                "no TLSA records: DANE is not used",
                format!("TLSA {name}: none"),
            )
            .fix(FIX);
        }
        Err(e) => {
            return f(
                Status::Error,
                Severity::Info,
                "check could not run: DNS lookup failed",
                format!("TLSA {name}: {e}"),
            );
        }
    };
    let shown: Vec<String> = answer.records.iter().map(show).collect();
    let mut evidence = format!("TLSA {name}: {}", shown.join("; "));
    if !resolver.trusts_ad() {
        return f(
            Status::Skipped,
            Severity::Info,
            "not applicable: the resolver is not trusted to validate",
            format!("{evidence}\nrun with --nameserver pointing at a local validating resolver"),
        );
    }
    if !answer.secure {
        return f(
            Status::Fail,
            Severity::High,
            "TLSA records are not DNSSEC-secure: senders ignore them",
            evidence,
        )
        .fix(FIX);
    }
    if !reachable {
        return f(
            Status::Error,
            Severity::Info,
            "check could not run: the host could not be reached",
            evidence,
        );
    }
    let chain = match presented_chain(endpoint, tls).await {
        Ok(chain) => chain,
        Err(e @ (ProbeError::NotOffered(_) | ProbeError::Refused(_))) => {
            return f(
                Status::Fail,
                Severity::High,
                "TLSA records are published but TLS does not work: DANE senders defer all mail",
                format!("{evidence}\n{e}"),
            )
            .fix(FIX);
        }
        Err(e) => {
            return f(
                Status::Error,
                Severity::Info,
                "check could not run: no TLS handshake",
                format!("{evidence}\n{e}"),
            );
        }
    };
    let usable: Vec<&Tlsa> = answer
        .records
        .iter()
        .filter(|t| t.usage == 2 || t.usage == 3)
        .collect();
    let matched: Vec<String> = usable
        .iter()
        .filter(|t| matches(t, &chain))
        .map(|t| show(t))
        .collect();
    if let Some(leaf) = chain.first() {
        let spki = X509Certificate::from_der(leaf)
            .map(|(_, c)| c.public_key().raw.to_vec())
            .unwrap_or_default();
        let digest: String = openssl::sha::sha256(&spki)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        evidence.push_str(&format!(
            "\npresented: chain of {}, leaf key 3 1 1 {digest}",
            chain.len()
        ));
    }
    if matched.is_empty() {
        return f(
            Status::Fail,
            Severity::High,
            "no TLSA record matches the certificate presented: DANE senders defer all mail",
            evidence,
        )
        .fix(FIX);
    }
    evidence.push_str(&format!("\nmatching: {}", matched.join("; ")));
    if answer.records.iter().any(|t| t.usage < 2) {
        return f(
            Status::Warn,
            Severity::Low,
            "TLSA records with PKIX usages (0, 1) are unusable for SMTP (RFC 7672 §3.1.3)",
            evidence,
        )
        .fix(FIX);
    }
    if usable.len() < 2 {
        return f(
            Status::Warn,
            Severity::Low,
            "DANE works, but a single TLSA record leaves no room for a key rollover",
            evidence,
        )
        .fix(FIX);
    }
    f(
        Status::Pass,
        Severity::Info,
        "DANE: secure TLSA records match the certificate, rollover-ready",
        evidence,
    )
}
