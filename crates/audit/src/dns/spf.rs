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
//! counted and named. The lookups one record's terms need (its includes' records, its `a`,
//! `mx` and `exists` names, its redirect) are asked all at once before the record is walked,
//! so a record costs one round trip to the resolver, not one per term; the walk then reads
//! the answers in order, as if it had asked then. Limits: at most [`MAX_RECORDS`] records and
//! [`MAX_QUERIES`] queries read per evaluation, and at most [`MAX_QUERIES`] more asked ahead
//! (an answer asked ahead is dropped unread when a limit stops the walk first). How it fails: a temporary failure of the domain's TXT lookup is an `error`
//! finding; one of a nested lookup is a problem line (never a pass).

use std::collections::{HashMap, VecDeque};

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
    interpret(txt(ctx.resolver, domain).await)
}

/// The SPF record among a name's TXT records (or the lookup's failure).
fn interpret(records: Result<Vec<String>, LookupError>) -> Lookup {
    let records = match records {
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
    /// Lookups asked ahead ([`ask_ahead`]), read or not.
    asked_ahead: usize,
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
        let mut ahead = ask_ahead(ctx, &domain, &record, walk).await;
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
                    if let Some(next) = follow(ctx, &domain, inc, "include", walk, &mut ahead).await
                    {
                        queue.push_back((inc.to_ascii_lowercase(), next, false));
                    }
                }
                Mechanism::A { domain: d, .. } => {
                    let name = target(d);
                    if !has_macro(&name)
                        && query_is_void(ctx, &name, Kind::Address, walk, &mut ahead).await
                    {
                        walk.voids += 1;
                    }
                }
                Mechanism::Mx { domain: d, .. } => {
                    let name = target(d);
                    if !has_macro(&name)
                        && query_is_void(ctx, &name, Kind::Mx, walk, &mut ahead).await
                    {
                        walk.voids += 1;
                    }
                }
                Mechanism::Exists { domain: d } => {
                    if !has_macro(d) && query_is_void(ctx, d, Kind::Address, walk, &mut ahead).await
                    {
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
            if let Some(next) = follow(ctx, &domain, redirect, "redirect", walk, &mut ahead).await {
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
    ahead: &mut Ahead,
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
    let found = match ahead.take(Kind::Txt, &to) {
        Some(Answer::Txt(records)) => interpret(records),
        _ => lookup(ctx, &to).await,
    };
    match found {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    /// The TXT records of an include or redirect target.
    Txt,
    Address,
    Mx,
}

/// What a lookup asked ahead found.
enum Answer {
    Txt(Result<Vec<String>, LookupError>),
    /// An address or MX lookup: only whether it found something matters.
    Found(Result<(), LookupError>),
}

/// The answers to one record's lookups, asked all at once before the record is walked.
#[derive(Default)]
struct Ahead(HashMap<(Kind, String), Answer>);

impl Ahead {
    fn take(&mut self, kind: Kind, name: &str) -> Option<Answer> {
        self.0.remove(&(kind, name.to_string()))
    }
}

/// One lookup of a term.
async fn ask(resolver: &ravelin_dns::Resolver, kind: Kind, name: &str) -> Answer {
    match kind {
        Kind::Txt => Answer::Txt(txt(resolver, name).await),
        Kind::Address => Answer::Found(resolver.ips(name, false).await.map(|_| ())),
        Kind::Mx => Answer::Found(resolver.mx(name).await.map(|_| ())),
    }
}

/// Asks at once every lookup `record`'s terms will need (`domain` is the record's owner, the
/// default name of `a` and `mx`): include and redirect targets not yet visited, `a`, `mx`
/// and `exists` names without macros, within what is left of [`MAX_QUERIES`] (for the walk
/// and for asking ahead). A single lookup is left to the walk. The walk still decides and
/// counts each lookup; an answer it never reads is dropped.
async fn ask_ahead(ctx: &DnsCtx<'_>, domain: &str, record: &SpfRecord, walk: &mut Walk) -> Ahead {
    let mut wanted: Vec<(Kind, String)> = Vec::new();
    let target = |d: &Option<String>| d.clone().unwrap_or_else(|| domain.to_string());
    for (_, mechanism) in record.mechanisms() {
        let query = match mechanism {
            Mechanism::Include { domain: d } => {
                (Kind::Txt, d.trim_end_matches('.').to_ascii_lowercase())
            }
            Mechanism::A { domain: d, .. } => (Kind::Address, target(d)),
            Mechanism::Mx { domain: d, .. } => (Kind::Mx, target(d)),
            Mechanism::Exists { domain: d } => (Kind::Address, d.clone()),
            _ => continue,
        };
        wanted.push(query);
    }
    if let Some(redirect) = record.redirect()
        && record.all().is_none()
    {
        wanted.push((
            Kind::Txt,
            redirect.trim_end_matches('.').to_ascii_lowercase(),
        ));
    }
    let budget = MAX_QUERIES
        .saturating_sub(walk.queries)
        .min(MAX_QUERIES.saturating_sub(walk.asked_ahead));
    let mut unique: Vec<(Kind, String)> = Vec::new();
    for (kind, name) in wanted {
        let followed = kind == Kind::Txt && walk.visited.contains(&name);
        if !has_macro(&name) && !followed && !unique.contains(&(kind, name.clone())) {
            unique.push((kind, name));
        }
    }
    unique.truncate(budget);
    if unique.len() < 2 {
        return Ahead::default();
    }
    walk.asked_ahead += unique.len();
    let mut lookups = tokio::task::JoinSet::new();
    for (kind, name) in unique {
        let resolver = ctx.resolver.clone();
        lookups.spawn(async move {
            let answer = ask(&resolver, kind, &name).await;
            ((kind, name), answer)
        });
    }
    let mut ahead = Ahead::default();
    while let Some(done) = lookups.join_next().await {
        if let Ok((key, answer)) = done {
            ahead.0.insert(key, answer);
        }
    }
    ahead
}

/// Whether a mechanism's lookup finds nothing (a void lookup, RFC 7208 §4.6.4).
async fn query_is_void(
    ctx: &DnsCtx<'_>,
    name: &str,
    kind: Kind,
    walk: &mut Walk,
    ahead: &mut Ahead,
) -> bool {
    if walk.queries >= MAX_QUERIES {
        return false;
    }
    walk.queries += 1;
    let result = match ahead.take(kind, name) {
        Some(Answer::Found(found)) => found,
        _ => match ask(ctx.resolver, kind, name).await {
            Answer::Found(found) => found,
            Answer::Txt(found) => found.map(|_| ()),
        },
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
