//! `dns.dmarc`: the DMARC record at `_dmarc.DOMAIN` (RFC 7489), parsed by
//! `ravelin_dns::records::dmarc`.
//!
//! Without a record at the domain, the parent domains are tried up to the last two labels
//! (the organisational-domain fallback of RFC 7489 §6.6.3, walked as DMARCbis's DNS tree
//! walk: at most [`MAX_WALK`] names, skipping to the seven rightmost labels of a longer name)
//! and their `sp` policy is what applies. Whether a report address is in another organisation
//! is decided by the DMARCbis tree walk too ([`organisational_domain`]), so no Public Suffix
//! List file is needed and `example.co.uk` and `other.co.uk` are two organisations.
//!
//! Fails on: no record, several records, a syntax error, `p=none` (monitoring only);
//! warns on: a weaker `sp` or `np`, `pct` under 100, `t=y`, no `rua`, a report address in
//! another organisation that has not authorised the reports with
//! `DOMAIN._report._dmarc.DEST` (RFC 7489 §7.1: receivers then send nothing), and the
//! parser's diagnostics. How it fails: temporary lookup failures are an `error` finding (or a
//! problem line for an authorisation record).

use ravelin_dns::LookupError;
use ravelin_dns::records::ReportUri;
use ravelin_dns::records::dmarc::{self, DmarcRecord, Policy};

use super::{DnsCtx, txt, verdict};
use crate::finding::{Finding, Severity, Status};

const ID: &str = "dns.dmarc";
const FIX: &str = "Publish one TXT record at _dmarc.DOMAIN such as \
    `v=DMARC1; p=reject; rua=mailto:dmarc-reports@DOMAIN` (start with p=quarantine if you \
    must, after SPF and DKIM pass for all your mail); keep sp and np at least as strict as p, \
    drop pct and t=y once in force, and have every outside report address publish \
    `DOMAIN._report._dmarc.THEIR-DOMAIN TXT \"v=DMARC1\"`.";

enum Found {
    Record {
        at: String,
        text: String,
        record: DmarcRecord,
    },
    Several(String, usize),
    Invalid(String, String, String),
    None,
    Failed(String, LookupError),
}

/// Most names one DMARC tree walk asks about (DMARCbis section 4.10).
pub const MAX_WALK: usize = 8;

/// The names a DMARC tree walk asks about for `domain`, closest first: the domain itself,
/// then (from its seven rightmost labels when it has more than [`MAX_WALK`]) one label less
/// each time, down to two labels. At most [`MAX_WALK`] names.
pub fn walk(domain: &str) -> Vec<String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let first = labels.len().saturating_sub(MAX_WALK - 1).max(1);
    std::iter::once(domain.to_string())
        .chain((first..labels.len().saturating_sub(1)).map(|start| labels[start..].join(".")))
        .collect()
}

/// The DMARC record for `domain`, walking up to the organisational domain.
async fn find(ctx: &DnsCtx<'_>) -> Found {
    for at in walk(ctx.domain) {
        let name = format!("_dmarc.{at}");
        let records = match txt(ctx.resolver, &name).await {
            Ok(r) => r,
            Err(e) if e.is_negative() => continue,
            Err(e) => return Found::Failed(name, e),
        };
        let dmarc: Vec<String> = records
            .into_iter()
            .filter(|r| dmarc::is_dmarc_record(r))
            .collect();
        return match dmarc.as_slice() {
            [] => continue,
            [one] => match dmarc::parse(one) {
                Ok(record) => Found::Record {
                    at,
                    text: one.clone(),
                    record,
                },
                Err(e) => Found::Invalid(name, one.clone(), e.to_string()),
            },
            more => Found::Several(name, more.len()),
        };
    }
    Found::None
}

/// The `dns.dmarc` finding.
pub async fn check(ctx: &DnsCtx<'_>) -> Finding {
    let (at, text, record) = match find(ctx).await {
        Found::Record { at, text, record } => (at, text, record),
        Found::None => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::High,
                    "no DMARC record: receivers have no policy against forged From addresses",
                    format!(
                        "TXT _dmarc.{}: no record starting with v=DMARC1 (nor at a parent domain)",
                        ctx.domain
                    ),
                )
                .fix(FIX);
        }
        Found::Several(name, n) => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::High,
                    "several DMARC records: receivers apply none of them",
                    format!("TXT {name}: {n} records start with v=DMARC1"),
                )
                .fix(format!("Keep exactly one. {FIX}"));
        }
        Found::Invalid(name, text, why) => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::High,
                    "the DMARC record has a syntax error: receivers ignore it",
                    format!("TXT {name}: {text}\n{why}"),
                )
                .fix(FIX);
        }
        Found::Failed(name, e) => return ctx.lookup_error(ID, &format!("TXT {name}"), &e),
    };
    let inherited = at != ctx.domain;
    let mut problems: Vec<(Severity, String)> = Vec::new();
    let applied = if inherited {
        record.effective_subdomain_policy()
    } else {
        record.policy
    };
    match applied {
        Policy::None => problems.push((
            Severity::Medium,
            format!(
                "{}p=none: forged mail is only reported, never stopped",
                if inherited { "s" } else { "" }
            ),
        )),
        Policy::Quarantine | Policy::Reject => {}
    }
    if !inherited {
        if let Some(sp) = record.subdomain_policy
            && sp < record.policy
        {
            problems.push((
                Severity::Medium,
                format!(
                    "sp={sp} is weaker than p={}: subdomains can be forged",
                    record.policy
                ),
            ));
        }
        if let Some(np) = record.nonexistent_policy
            && np < record.effective_subdomain_policy()
        {
            problems.push((
                Severity::Low,
                format!(
                    "np={np} is weaker than the subdomain policy: invented subdomains can be forged"
                ),
            ));
        }
    }
    if record.pct < 100 {
        problems.push((
            Severity::Low,
            format!(
                "pct={}: the policy applies to only part of the failing mail",
                record.pct
            ),
        ));
    }
    if record.testing {
        problems.push((
            Severity::Low,
            "t=y: the policy is in test mode; receivers apply one level less".into(),
        ));
    }
    if record.rua.is_empty() {
        problems.push((
            Severity::Low,
            "no rua: you receive no aggregate reports, so you cannot see who sends as the domain"
                .into(),
        ));
    }
    for d in &record.diagnostics {
        problems.push((Severity::Low, d.to_string()));
    }
    let organisation = organisational_domain(ctx, &at).await;
    for (tag, uris) in [("rua", &record.rua), ("ruf", &record.ruf)] {
        for uri in uris {
            if let Some(problem) = authorisation(ctx, &at, &organisation, tag, uri).await {
                problems.push(problem);
            }
        }
    }
    let evidence = if inherited {
        format!(
            "no record at _dmarc.{}; the organisational domain's applies (sp):\n_dmarc.{at}: {text}",
            ctx.domain
        )
    } else {
        format!("_dmarc.{at}: {text}")
    };
    let base = ctx.finding(
        ID,
        Status::Pass,
        Severity::Info,
        format!("DMARC policy {applied} is in force"),
        evidence,
    );
    verdict(
        base,
        problems,
        Severity::Medium,
        "the DMARC policy is weak or incomplete",
        FIX,
    )
}

/// The organisational domain of `domain` by the DMARCbis tree walk, without the Public Suffix
/// List: walking up from `domain`, a record with `psd=n` names its domain, a record with
/// `psd=y` (a public suffix operator's) makes the name one label below it the organisational
/// domain; otherwise it is the name with the fewest labels that has a DMARC record, and
/// `domain` itself when none has. A lookup that fails counts as no record.
pub async fn organisational_domain(ctx: &DnsCtx<'_>, domain: &str) -> String {
    let mut fewest = None;
    for name in walk(domain) {
        let Ok(records) = txt(ctx.resolver, &format!("_dmarc.{name}")).await else {
            continue;
        };
        let Some(record) = records
            .iter()
            .filter(|r| dmarc::is_dmarc_record(r))
            .find_map(|r| dmarc::parse(r).ok())
        else {
            continue;
        };
        let psd = record
            .unknown
            .iter()
            .find(|(tag, _)| tag == "psd")
            .map(|(_, v)| v.to_ascii_lowercase());
        match psd.as_deref() {
            Some("n") => return name,
            Some("y") => return one_label_below(domain, &name),
            _ => fewest = Some(name),
        }
    }
    fewest.unwrap_or_else(|| domain.to_string())
}

/// The name of `domain`'s tree one label longer than its parent `suffix` (`domain` itself
/// when it is `suffix`).
fn one_label_below(domain: &str, suffix: &str) -> String {
    let labels: Vec<&str> = domain.split('.').collect();
    let keep = (suffix.split('.').count() + 1).min(labels.len());
    labels[labels.len() - keep..].join(".")
}

/// A problem when a report address outside `organisation` (the policy domain's organisational
/// domain) has not authorised reports for `policy_domain` (RFC 7489 §7.1).
async fn authorisation(
    ctx: &DnsCtx<'_>,
    policy_domain: &str,
    organisation: &str,
    tag: &str,
    uri: &ReportUri,
) -> Option<(Severity, String)> {
    let dest = uri.mailto_domain()?;
    if dest == policy_domain || organisational_domain(ctx, &dest).await == organisation {
        return None;
    }
    let name = format!("{policy_domain}._report._dmarc.{dest}");
    match txt(ctx.resolver, &name).await {
        Ok(records) if records.iter().any(|r| dmarc::is_dmarc_record(r)) => None,
        Ok(_) | Err(LookupError::NxDomain | LookupError::NoRecords) => Some((
            Severity::Low,
            format!(
                "{tag}: {} is in another domain that has not authorised the reports \
                 (no \"v=DMARC1\" at {name}): receivers send it nothing",
                uri.uri
            ),
        )),
        Err(e) => Some((
            Severity::Low,
            format!("{tag}: the authorisation record {name} could not be read: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_walk_is_bounded_and_stops_at_two_labels() {
        assert_eq!(
            walk("a.b.example.org"),
            ["a.b.example.org", "b.example.org", "example.org"]
        );
        assert_eq!(walk("example.org"), ["example.org"]);
        assert_eq!(walk("org"), ["org"]);
        let long = "l1.l2.l3.l4.l5.l6.l7.l8.l9.example.org";
        let names = walk(long);
        assert_eq!(names.len(), 7, "{names:?}");
        assert_eq!(names[0], long);
        assert_eq!(names[1], "l5.l6.l7.l8.l9.example.org");
        assert_eq!(names[6], "example.org");
        let labels: Vec<String> = (0..127).map(|i| format!("l{i}")).collect();
        assert!(walk(&labels.join(".")).len() <= MAX_WALK);
    }

    #[test]
    fn one_label_below_a_public_suffix() {
        assert_eq!(
            one_label_below("a.shop.example.co.uk", "co.uk"),
            "example.co.uk"
        );
        assert_eq!(one_label_below("co.uk", "co.uk"), "co.uk");
    }
}
