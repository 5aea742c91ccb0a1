//! # ravelin-audit: the mail-security auditor
//!
//! `ravelin audit` tests a domain or a mail host from outside, and a Postfix configuration from
//! inside, against the hardening baseline (PRODUCT.md), and reports every gap as a [`Finding`]
//! with evidence and the exact fix.
//!
//! - [`dns`]: the DNS checks of a domain (MX, SPF, DMARC, DKIM, MTA-STS, TLS-RPT, DNSSEC,
//!   CAA) and of its MX addresses (PTR, DNSBL, DANE).
//! - [`finding`]: the finding model shared by every check and every renderer (the JSON schema
//!   of DESIGN.md: `{"tool","version","targets":[{"target","endpoints","findings"}]}`).
//! - [`local`]: configuration linters (`--postfix-config DIR`: main.cf and master.cf).
//! - [`ports`]: which mail ports answer, and clear-text logins on POP3 and IMAP.
//! - [`tls`]: TLS per endpoint (STARTTLS, versions, suites, key exchange, certificate) and
//!   consistency across endpoints.
//!
//! - [`target`]: targets as written on the command line and the endpoints they resolve to.
//! - [`render`]: the text, JSON, SARIF 2.1.0 and HTML renderers.
//! - [`run`]: an audit over many targets (concurrency, one connection per host at a time).
//! - [`select`]: which checks a run makes (`--check`, `--skip-check`).
//! - [`smtp`]: the SMTP behaviour checks and the probe they speak through.
//!
//! Check families live in their own modules (dns, tls, smtp, reputation, ports, local config)
//! and only produce findings; renderers only read them. How it fails: a check that cannot run
//! (network error, timeout) reports a finding with status `error` or `skipped` and the reason
//! as evidence; it never aborts the run.

pub mod dns;
pub mod finding;
pub mod local;
pub mod ports;
pub mod render;
pub mod run;
pub mod select;
pub mod smtp;
pub mod target;
pub mod tls;

pub use finding::{Finding, Report, Severity, Status, TargetReport};
pub use smtp::CheckInfo;

/// Every registered check: the DNS and reputation, SMTP, TLS, ports and Postfix-linter
/// registries in that order. The per-sequence smuggling ids are [`smtp::smuggling_ids`];
/// [`check_ids`] lists them too.
pub fn registry() -> impl Iterator<Item = &'static CheckInfo> {
    dns::CHECKS
        .iter()
        .chain(smtp::CHECKS)
        .chain(tls::CHECKS)
        .chain(ports::CHECKS)
        .chain(local::postfix::CHECKS)
}

/// Every check id a finding can carry: [`registry`] and the smuggling sequence ids.
pub fn check_ids() -> Vec<String> {
    registry()
        .map(|c| c.id.to_string())
        .chain(smtp::smuggling_ids())
        .collect()
}
