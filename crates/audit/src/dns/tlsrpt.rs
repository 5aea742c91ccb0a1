//! `dns.tlsrpt`: SMTP TLS reporting (RFC 8460), the TXT record at `_smtp._tls.DOMAIN`,
//! parsed by `ravelin_dns::records::tlsrpt`.
//!
//! Fails on: several records, an invalid record, no usable report address; warns on: no
//! record (senders applying MTA-STS or DANE cannot tell you about failures) and the parser's
//! diagnostics. How it fails: a temporary lookup failure is an `error` finding.

use ravelin_dns::records::tlsrpt::{self, is_tlsrpt_record};

use super::{DnsCtx, txt, verdict};
use crate::finding::{Finding, Severity, Status};

const ID: &str = "dns.tlsrpt";
const FIX: &str = "Publish one TXT record `_smtp._tls.DOMAIN \"v=TLSRPTv1; \
    rua=mailto:tls-reports@DOMAIN\"` so that senders report TLS failures to you.";

/// The `dns.tlsrpt` finding.
pub async fn check(ctx: &DnsCtx<'_>) -> Finding {
    let name = format!("_smtp._tls.{}", ctx.domain);
    let records = match txt(ctx.resolver, &name).await {
        Ok(records) => records,
        Err(e) if e.is_negative() => Vec::new(),
        Err(e) => return ctx.lookup_error(ID, &format!("TXT {name}"), &e),
    };
    let found: Vec<&String> = records.iter().filter(|r| is_tlsrpt_record(r)).collect();
    let text = match found.as_slice() {
        [] => {
            return ctx
                .finding(
                    ID,
                    Status::Warn,
                    Severity::Low,
                    "no TLS-RPT record: nobody tells you when senders fail TLS to your MX",
                    format!("TXT {name}: no record starting with v=TLSRPTv1"),
                )
                .fix(FIX);
        }
        [one] => one.as_str(),
        more => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::Medium,
                    "several TLS-RPT records: senders use none",
                    format!("TXT {name}: {} records start with v=TLSRPTv1", more.len()),
                )
                .fix(FIX);
        }
    };
    let record = match tlsrpt::parse(text) {
        Ok(record) => record,
        Err(e) => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::Medium,
                    "the TLS-RPT record is invalid: senders ignore it",
                    format!("TXT {name}: {text}\n{e}"),
                )
                .fix(FIX);
        }
    };
    let mut problems: Vec<(Severity, String)> = record
        .diagnostics
        .iter()
        .map(|d| (Severity::Low, d.to_string()))
        .collect();
    if record.rua.is_empty() {
        problems.push((
            Severity::Medium,
            "no usable rua address: reports have nowhere to go".into(),
        ));
    }
    let base = ctx.finding(
        ID,
        Status::Pass,
        Severity::Info,
        "TLS-RPT reports are requested",
        format!("TXT {name}: {text}"),
    );
    verdict(
        base,
        problems,
        Severity::Medium,
        "the TLS-RPT record has problems",
        FIX,
    )
}
