//! `dns.dnssec`: whether the domain's and its MX hosts' answers are DNSSEC-signed and
//! validate, as told by the AD bit of a validating resolver (see `ravelin_dns`: the AD bit is
//! believed only from a resolver on loopback, such as unbound next to the auditor).
//!
//! The domain's MX answer (or, without MX records, its TXT answer) and each MX host's address
//! answer are looked at. Fails on: SERVFAIL from the resolver (with a validating resolver,
//! what bogus signatures look like); warns on: answers that are not validated (unsigned zones:
//! no DANE possible, MX answers can be forged). Skipped when the resolver is not trusted to
//! validate (`--nameserver` elsewhere than loopback, or the system's remote resolvers).

use ravelin_dns::{Failure, LookupError};

use super::{DnsCtx, MxSet, verdict};
use crate::finding::{Finding, Severity, Status};

const ID: &str = "dns.dnssec";
const FIX: &str = "Sign the zones of the domain and of the MX host names (most DNS hosts and \
    registrars offer it: enable DNSSEC, then publish the DS record at the registrar); fix \
    expired or broken signatures at once, since validating resolvers refuse bogus answers.";

/// The `dns.dnssec` finding.
pub async fn check(ctx: &DnsCtx<'_>, mx: &MxSet) -> Finding {
    if !ctx.resolver.trusts_ad() {
        return ctx.finding(
            ID,
            Status::Skipped,
            Severity::Info,
            "not applicable: the resolver is not trusted to validate",
            "the AD bit is believed only from a validating resolver on loopback; run the \
             audit with --nameserver 127.0.0.1:53 against a local unbound",
        );
    }
    let mut problems: Vec<(Severity, String)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let domain_secure = match &mx.records {
        Ok(_) => Ok(mx.secure),
        Err(LookupError::Failed(Failure::ServerFailure)) => {
            Err(LookupError::Failed(Failure::ServerFailure))
        }
        Err(_) => match ctx.resolver.txt(ctx.domain).await {
            Ok(answer) => Ok(answer.secure),
            Err(e) if e.is_negative() => Ok(false),
            Err(e) => Err(e),
        },
    };
    match domain_secure {
        Ok(true) => seen.push(format!("{}: signed, validated", ctx.domain)),
        Ok(false) => problems.push((
            Severity::Low,
            format!("{}: answers are not validated (unsigned zone)", ctx.domain),
        )),
        Err(LookupError::Failed(Failure::ServerFailure)) => problems.push((
            Severity::High,
            format!(
                "{}: SERVFAIL from the validating resolver: the signatures are probably bogus, and validating senders cannot reach the domain",
                ctx.domain
            ),
        )),
        Err(e) => return ctx.lookup_error(ID, ctx.domain, &e),
    }
    for host in &mx.hosts {
        match &host.error {
            Some(LookupError::Failed(Failure::ServerFailure)) => problems.push((
                Severity::High,
                format!(
                    "MX {}: SERVFAIL from the validating resolver (bogus?)",
                    host.name
                ),
            )),
            Some(_) => {}
            None if host.secure => seen.push(format!("MX {}: signed, validated", host.name)),
            None => problems.push((
                Severity::Low,
                format!(
                    "MX {}: address answers are not validated (unsigned zone): no DANE possible",
                    host.name
                ),
            )),
        }
    }
    let base = ctx.finding(
        ID,
        Status::Pass,
        Severity::Info,
        "DNSSEC: the domain and its MX hosts validate",
        seen.join("\n"),
    );
    verdict(
        base,
        problems,
        Severity::High,
        "DNSSEC is missing or broken",
        FIX,
    )
}
