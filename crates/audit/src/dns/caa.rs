//! `dns.caa`: Certification Authority Authorization (RFC 8659). The CAA set of the domain or,
//! when it has none, of its closest parent (the RFC's tree climb, stopping before the
//! top-level domain) says which certificate authorities may issue certificates for the mail
//! hosts' names under the domain and for `mta-sts.DOMAIN`.
//!
//! Fails on: a record flagged critical with a property tag no CA knows (every CA must then
//! refuse to issue); warns on: no CAA at all (any CA may issue), a set without an `issue`
//! property. How it fails: a temporary lookup failure is an `error` finding.

use super::{DnsCtx, verdict};
use crate::finding::{Finding, Severity, Status};

const ID: &str = "dns.caa";
const FIX: &str = "Publish CAA records naming the CAs you use, e.g. \
    `DOMAIN. CAA 0 issue \"letsencrypt.org\"` and `DOMAIN. CAA 0 iodef \
    \"mailto:security@DOMAIN\"`; never set the critical flag (128) on a tag CAs do not know.";

/// Property tags defined by RFC 8659 and later RFCs (RFC 8657, RFC 9495).
const KNOWN_TAGS: &[&str] = &[
    "issue",
    "issuewild",
    "iodef",
    "issuemail",
    "issuevmc",
    "contactemail",
    "contactphone",
];

/// The `dns.caa` finding.
pub async fn check(ctx: &DnsCtx<'_>) -> Finding {
    let labels: Vec<&str> = ctx.domain.split('.').collect();
    for start in 0..labels.len().saturating_sub(1) {
        let name = labels[start..].join(".");
        let answer = match ctx.resolver.caa(&name).await {
            Ok(answer) => answer,
            Err(e) if e.is_negative() => continue,
            Err(e) => return ctx.lookup_error(ID, &format!("CAA {name}"), &e),
        };
        let shown: Vec<String> = answer
            .records
            .iter()
            .map(|r| {
                format!(
                    "{name}. CAA {} {} \"{}\"",
                    if r.critical { 128 } else { 0 },
                    r.tag,
                    r.value
                )
            })
            .collect();
        let mut problems: Vec<(Severity, String)> = Vec::new();
        for r in &answer.records {
            let tag = r.tag.to_ascii_lowercase();
            if r.critical && !KNOWN_TAGS.contains(&tag.as_str()) {
                problems.push((
                    Severity::Medium,
                    format!(
                        "the unknown tag {:?} is flagged critical: every CA must refuse to issue",
                        r.tag
                    ),
                ));
            }
        }
        if !answer
            .records
            .iter()
            .any(|r| r.tag.eq_ignore_ascii_case("issue"))
        {
            problems.push((
                Severity::Low,
                "no issue property: any CA may issue non-wildcard certificates".into(),
            ));
        }
        let base = ctx.finding(
            ID,
            Status::Pass,
            Severity::Info,
            "CAA records restrict who may issue certificates",
            shown.join("\n"),
        );
        return verdict(
            base,
            problems,
            Severity::Medium,
            "the CAA records have problems",
            FIX,
        );
    }
    ctx.finding(
        ID,
        Status::Warn,
        Severity::Low,
        "no CAA records: any certificate authority may issue for the domain",
        format!("CAA {} and its parents: none", ctx.domain),
    )
    .fix(FIX)
}
