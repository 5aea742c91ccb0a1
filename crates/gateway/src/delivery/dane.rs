//! The DANE decision for one MX host (RFC 7672 §2.2): whether its TLSA records apply, and the
//! TLS configuration that enforces them.
//!
//! DANE applies only when the path to the host is DNSSEC-secure (the MX answer, or the
//! address answer of an implicit MX, and the host's address answer; "secure" is the
//! resolver's AD bit as far as `[dns] ad_trust` believes it) and the TLSA RRset at
//! `_PORT._tcp.HOST` is secure and not empty. Then STARTTLS is required and the certificate
//! must match a DANE-EE or DANE-TA record (`ravelin_tls::dane`); a mismatch fails the host,
//! and the caller tries the next one or defers — never plaintext. When the secure RRset has
//! only records SMTP cannot use (PKIX usages, unknown selectors), TLS is still required but
//! not authenticated (RFC 7672 §2.2).
//!
//! How it fails: a TLSA lookup that fails temporarily (SERVFAIL, which is also what a
//! validating resolver says for bogus data, or a timeout) makes the host unusable for now
//! ([`DaneDecision::Failed`]); an insecure or empty answer means DANE does not apply.

use std::sync::Arc;

use ravelin_dns::{LookupError, Resolver, Tlsa};
use ravelin_tls::dane::{self as tls_dane, TlsaRecord};
use rustls::ClientConfig;

/// What DANE says about one MX host.
pub(crate) enum DaneDecision {
    /// DANE does not apply (insecure path, no TLSA records): another policy decides.
    NotApplicable,
    /// Require STARTTLS and verify with this configuration; `records` are the TLSA records
    /// as text (for TLS-RPT).
    Dane {
        config: Arc<ClientConfig>,
        records: Vec<String>,
    },
    /// Secure TLSA records exist, none usable: require STARTTLS without authentication.
    Unusable { records: Vec<String> },
    /// The TLSA lookup failed: do not use this host now.
    Failed(String),
}

fn record(tlsa: &Tlsa) -> TlsaRecord {
    TlsaRecord {
        usage: tlsa.usage,
        selector: tlsa.selector,
        matching: tlsa.matching,
        data: tlsa.data.clone(),
    }
}

/// Looks up the TLSA records of `host` on `port` when `secure_path` and decides.
pub(crate) async fn decide(
    resolver: &Resolver,
    host: &str,
    port: u16,
    secure_path: bool,
) -> DaneDecision {
    if !secure_path {
        return DaneDecision::NotApplicable;
    }
    let answer = match resolver.tlsa(host, port).await {
        Ok(answer) => answer,
        Err(LookupError::Failed(failure)) => {
            return DaneDecision::Failed(format!(
                "TLSA lookup of _{port}._tcp.{host} failed ({failure}); DANE cannot be checked"
            ));
        }
        Err(_) => return DaneDecision::NotApplicable,
    };
    if !answer.secure || answer.records.is_empty() {
        return DaneDecision::NotApplicable;
    }
    let records: Vec<TlsaRecord> = answer.records.iter().map(record).collect();
    let texts: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    if tls_dane::usable(&records).is_empty() {
        return DaneDecision::Unusable { records: texts };
    }
    match tls_dane::client_config(&records, &[host.to_string()]) {
        Ok(config) => DaneDecision::Dane {
            config,
            records: texts,
        },
        Err(e) => DaneDecision::Failed(format!("DANE set-up for {host}: {e}")),
    }
}
