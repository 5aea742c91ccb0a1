//! `dns.spf`: the domain's SPF record (RFC 7208), parsed by `ravelin_dns::records::spf` and
//! evaluated for its DNS cost by following every `include` and `redirect`.
//!
//! Fails on: no SPF record, more than one (a permerror), a syntax error in the record or in a
//! record it includes, an include or redirect to a domain without SPF, an include loop, more
//! than 10 DNS-querying terms or more than 2 void lookups in the whole evaluation (RFC 7208
//! §4.6.4, a permerror either way), `+all`; warns on: `?all` or no `all` at all (the result for
//! everyone else is neutral), `ptr`, a record over 450 bytes and the parser's other warnings.
//!
//! Terms whose domain holds a macro (`%{i}`) cannot be followed without a message; they are
//! counted and named. Limits: at most [`MAX_RECORDS`] records and [`MAX_QUERIES`] queries per
//! evaluation. How it fails: a temporary failure of the domain's TXT lookup is an `error`
//! finding; one of a nested lookup is a problem line (never a pass).

use std::collections::VecDeque;

use ravelin_dns::LookupError;
use ravelin_dns::records::spf::{self, MAX_DNS_LOOKUPS, Mechanism, Qualifier, SpfRecord};

use super::{DnsCtx, txt, verdict};
use crate::finding::{Finding, Severity, Status};

/// Most SPF records fetched while following include and redirect.
pub const MAX_RECORDS: usize = 40;
/// Most DNS queries made for one evaluation.
pub const MAX_QUERIES: usize = 100;

const ID: &str = "dns.spf";
const FIX: &str = "Publish exactly one TXT record `v=spf1 … -all` at the domain: list the \
    hosts that send its mail with ip4:/ip6:/a/mx, keep the whole evaluation within 10 \
    DNS-querying terms (include, a, mx, ptr, exists, redirect; replace deep includes by \
    ip4:/ip6: ranges), never use ptr, and end with -all (or ~all while DMARC reports are \
    reviewed). Example: `v=spf1 mx ip4:192.0.2.0/28 -all`.";

/// The SPF record of a domain, if it has exactly one that parses.
enum Lookup {
    Record(String, SpfRecord),
    None,
    Several(usize),
    Invalid(String, String),
    Failed(LookupError),
}

async fn lookup(ctx: &DnsCtx<'_>, domain: &str) -> Lookup {
    let records = match txt(ctx.resolver, domain).await {
        Ok(r) => r,
        Err(LookupError::NxDomain | LookupError::NoRecords) => Vec::new(),
        Err(e) => return Lookup::Failed(e),
    };
    let spf: Vec<String> = records
        .into_iter()
        .filter(|r| spf::is_spf_record(r))
        .collect();
    match spf.as_slice() {
        [] => Lookup::None,
        [one] => match spf::parse(one) {
            Ok(record) => Lookup::Record(one.clone(), record),
            Err(e) => Lookup::Invalid(one.clone(), e.to_string()),
        },
        more => Lookup::Several(more.len()),
    }
}

/// What following the records found.
#[derive(Default)]
struct Walk {
    lookups: usize,
    voids: usize,
    queries: usize,
    records: usize,
    problems: Vec<(Severity, String)>,
    /// The `all` of the first record on the top-level redirect chain that has one.
    all: Option<Qualifier>,
    visited: Vec<String>,
    notes: Vec<String>,
}

fn has_macro(domain: &str) -> bool {
    domain.contains('%')
}

/// The `dns.spf` finding.
pub async fn check(ctx: &DnsCtx<'_>) -> Finding {
    let (text, record) = match lookup(ctx, ctx.domain).await {
        Lookup::Record(text, record) => (text, record),
        Lookup::None => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::Medium,
                    "no SPF record: any host can send mail as the domain",
                    format!("TXT {}: no record starting with v=spf1", ctx.domain),
                )
                .fix(FIX);
        }
        Lookup::Several(n) => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::High,
                    "several SPF records: every receiver's SPF check fails (permerror)",
                    format!("TXT {}: {n} records start with v=spf1", ctx.domain),
                )
                .fix(format!("Merge them into one record. {FIX}"));
        }
        Lookup::Invalid(text, why) => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::High,
                    "the SPF record has a syntax error: receivers' SPF checks fail (permerror)",
                    format!("{text}\n{why}"),
                )
                .fix(FIX);
        }
        Lookup::Failed(e) => return ctx.lookup_error(ID, &format!("TXT {}", ctx.domain), &e),
    };
    let mut walk = Walk::default();
    walk_records(ctx, ctx.domain.to_string(), record, &mut walk).await;
    let mut problems = std::mem::take(&mut walk.problems);
    if walk.lookups > MAX_DNS_LOOKUPS {
        problems.push((
            Severity::High,
            format!(
                "{} DNS-querying terms in the evaluation, more than the limit of {MAX_DNS_LOOKUPS} (RFC 7208 §4.6.4): receivers return permerror",
                walk.lookups
            ),
        ));
    }
    if walk.voids > 2 {
        problems.push((
            Severity::High,
            format!(
                "{} void lookups (names without records), more than the 2 RFC 7208 §4.6.4 allows: receivers return permerror",
                walk.voids
            ),
        ));
    }
    match walk.all {
        Some(Qualifier::Pass) => problems.push((
            Severity::High,
            "+all: every host on the internet passes SPF for the domain".into(),
        )),
        Some(Qualifier::Neutral) => problems.push((
            Severity::Medium,
            "?all: hosts not listed get \"neutral\", which protects nothing".into(),
        )),
        None => problems.push((
            Severity::Medium,
            "no \"all\" mechanism (nor a redirect that has one): hosts not listed get \"neutral\""
                .into(),
        )),
        Some(Qualifier::Fail | Qualifier::SoftFail) => {}
    }
    let mut evidence = format!(
        "{text}\n{} DNS-querying terms (limit {MAX_DNS_LOOKUPS}), {} void lookups (limit 2)",
        walk.lookups, walk.voids
    );
    for note in &walk.notes {
        evidence.push('\n');
        evidence.push_str(note);
    }
    let title = match walk.all {
        Some(Qualifier::Fail) => "SPF record is sound and ends in -all",
        _ => "SPF record is sound and ends in ~all",
    };
    let base = ctx.finding(ID, Status::Pass, Severity::Info, title, evidence);
    verdict(
        base,
        problems,
        Severity::High,
        "the SPF record has problems",
        FIX,
    )
}

/// Follows the record of `domain` and everything it includes or redirects to.
async fn walk_records(ctx: &DnsCtx<'_>, domain: String, record: SpfRecord, walk: &mut Walk) {
    // (domain, record, on the top-level redirect chain)
    let mut queue: VecDeque<(String, SpfRecord, bool)> = VecDeque::new();
    walk.visited.push(domain.clone());
    queue.push_back((domain, record, true));
    while let Some((domain, record, top)) = queue.pop_front() {
        walk.records += 1;
        for w in &record.warnings {
            walk.problems
                .push((Severity::Low, format!("{domain}: {w}")));
        }
        if top && walk.all.is_none() {
            walk.all = record.all();
        }
        for (_, mechanism) in record.mechanisms() {
            if !mechanism.queries_dns() {
                continue;
            }
            walk.lookups += 1;
            let target = |d: &Option<String>| d.clone().unwrap_or_else(|| domain.clone());
            match mechanism {
                Mechanism::Include { domain: inc } => {
                    if let Some(next) = follow(ctx, &domain, inc, "include", walk).await {
                        queue.push_back((inc.to_ascii_lowercase(), next, false));
                    }
                }
                Mechanism::A { domain: d, .. } => {
                    let name = target(d);
                    if !has_macro(&name) && query_is_void(ctx, &name, Kind::Address, walk).await {
                        walk.voids += 1;
                    }
                }
                Mechanism::Mx { domain: d, .. } => {
                    let name = target(d);
                    if !has_macro(&name) && query_is_void(ctx, &name, Kind::Mx, walk).await {
                        walk.voids += 1;
                    }
                }
                Mechanism::Exists { domain: d } => {
                    if !has_macro(d) && query_is_void(ctx, d, Kind::Address, walk).await {
                        walk.voids += 1;
                    }
                }
                Mechanism::Ptr { .. } => {}
                Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => {}
            }
            for name in [mechanism_domain(mechanism)].into_iter().flatten() {
                if has_macro(name) {
                    walk.notes.push(format!(
                        "{domain}: {} uses a macro and was counted but not followed",
                        mechanism.name()
                    ));
                }
            }
        }
        if let Some(redirect) = record.redirect()
            && record.all().is_none()
        {
            walk.lookups += 1;
            if let Some(next) = follow(ctx, &domain, redirect, "redirect", walk).await {
                queue.push_back((redirect.to_ascii_lowercase(), next, top));
            }
        }
    }
}

fn mechanism_domain(m: &Mechanism) -> Option<&str> {
    match m {
        Mechanism::Include { domain } | Mechanism::Exists { domain } => Some(domain),
        Mechanism::A { domain, .. } | Mechanism::Mx { domain, .. } | Mechanism::Ptr { domain } => {
            domain.as_deref()
        }
        _ => None,
    }
}

/// Fetches the record an include or redirect points at; `None` when there is nothing to
/// follow (the problem is recorded).
async fn follow(
    ctx: &DnsCtx<'_>,
    from: &str,
    to: &str,
    what: &str,
    walk: &mut Walk,
) -> Option<SpfRecord> {
    if has_macro(to) {
        return None;
    }
    let to = to.trim_end_matches('.').to_ascii_lowercase();
    if walk.visited.contains(&to) {
        walk.problems.push((
            Severity::High,
            format!("{from}: {what}:{to} loops back to a record already evaluated (permerror)"),
        ));
        return None;
    }
    walk.visited.push(to.clone());
    if walk.records >= MAX_RECORDS || walk.queries >= MAX_QUERIES {
        walk.notes.push(format!(
            "{from}: {what}:{to} not followed (evaluation limit reached)"
        ));
        return None;
    }
    walk.queries += 1;
    match lookup(ctx, &to).await {
        Lookup::Record(_, record) => Some(record),
        Lookup::None => {
            walk.voids += 1;
            walk.problems.push((
                Severity::High,
                format!("{from}: {what}:{to} has no SPF record (permerror)"),
            ));
            None
        }
        Lookup::Several(n) => {
            walk.problems.push((
                Severity::High,
                format!("{from}: {what}:{to} has {n} SPF records (permerror)"),
            ));
            None
        }
        Lookup::Invalid(text, why) => {
            walk.problems.push((
                Severity::High,
                format!("{from}: {what}:{to} has an invalid record ({why}): {text}"),
            ));
            None
        }
        Lookup::Failed(e) => {
            walk.problems.push((
                Severity::Medium,
                format!("{from}: {what}:{to} could not be looked up: {e}"),
            ));
            None
        }
    }
}

enum Kind {
    Address,
    Mx,
}

/// Whether a mechanism's lookup finds nothing (a void lookup, RFC 7208 §4.6.4).
async fn query_is_void(ctx: &DnsCtx<'_>, name: &str, kind: Kind, walk: &mut Walk) -> bool {
    if walk.queries >= MAX_QUERIES {
        return false;
    }
    walk.queries += 1;
    let result = match kind {
        Kind::Address => ctx.resolver.ips(name, false).await.map(|_| ()),
        Kind::Mx => ctx.resolver.mx(name).await.map(|_| ()),
    };
    match result {
        Ok(()) => false,
        Err(e) if e.is_negative() => true,
        Err(e) => {
            walk.problems
                .push((Severity::Medium, format!("{name}: lookup failed: {e}")));
            false
        }
    }
}
