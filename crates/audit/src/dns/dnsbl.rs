//! `reputation.dnsbl`: each MX address looked up in DNS blocklists (`--dnsbl`, default
//! [`DEFAULT_ZONES`]) with `ravelin_dns::query_lists`, all lists at once under one deadline.
//!
//! A list's error answers (Spamhaus 127.255.255.x: "query refused", typically because it came
//! through a public resolver; anything outside 127.0.0.0/8) are never a listing: they make
//! the check `error` with the list's meaning. Fails on: a listing (with the list's TXT
//! reason). Zones in [`RETIRED_ZONES`] are not queried (a dead list may answer "listed" for
//! everything), nor are the lists of [`IPV4_ONLY_ZONES`] for IPv6 addresses (their NXDOMAIN
//! would read as "not listed"); both are named in the evidence.

use ravelin_dns::{ListOutcome, Resolver, query_lists};

use super::DnsOptions;
use crate::finding::{Finding, Severity, Status};
use crate::target::Endpoint;

const ID: &str = "reputation.dnsbl";

pub use ravelin_dns::dnsbl::{
    DEFAULT_ZONES, IPV4_ONLY_ZONES, RETIRED_ZONES, is_ipv4_only, is_retired,
};

/// The `reputation.dnsbl` finding for one endpoint.
pub async fn check(resolver: &Resolver, endpoint: &Endpoint, options: &DnsOptions) -> Finding {
    let ip = endpoint.addr.ip();
    let at = endpoint.to_string();
    let f = |status, severity, title: &str, evidence: String| {
        Finding::new(ID, status, severity, at.as_str(), title, evidence)
    };
    let mut lines: Vec<String> = Vec::new();
    let mut zones: Vec<String> = Vec::new();
    for zone in &options.dnsbl_zones {
        if is_retired(zone) {
            lines.push(format!("{zone}: not queried (retired list)"));
        } else if ip.is_ipv6() && is_ipv4_only(zone) {
            lines.push(format!("{zone}: not queried (lists IPv4 addresses only)"));
        } else {
            zones.push(zone.clone());
        }
    }
    if zones.is_empty() {
        return f(
            Status::Skipped,
            Severity::Info,
            "not applicable: no list to query",
            lines.join("\n"),
        );
    }
    let outcomes = query_lists(resolver, &zones, ip, options.dnsbl_deadline, true).await;
    let mut listed = Vec::new();
    let mut refused = Vec::new();
    for o in &outcomes {
        lines.push(format!("{}: {}", o.zone, o.outcome));
        match &o.outcome {
            ListOutcome::Listed { .. } => listed.push(o.zone.clone()),
            ListOutcome::ListError { .. } | ListOutcome::Failed(_) => refused.push(o.zone.clone()),
            ListOutcome::NotListed => {}
        }
    }
    let evidence = format!("{ip}\n{}", lines.join("\n"));
    if !listed.is_empty() {
        return f(
            Status::Fail,
            Severity::High,
            &format!("the address is listed on {}", listed.join(", ")),
            evidence,
        )
        .fix(format!(
            "Find and stop what sent spam from {ip} (a compromised account, an open relay, a \
             misconfigured form), then request removal on each list's web site."
        ));
    }
    if !refused.is_empty() {
        return f(
            Status::Error,
            Severity::Info,
            &format!(
                "query refused or unanswered by {} (not a listing)",
                refused.join(", ")
            ),
            evidence,
        )
        .fix(
            "Run the audit through a resolver of your own (--nameserver): lists such as \
             Spamhaus refuse queries from public resolvers (answer 127.255.255.254).",
        );
    }
    f(
        Status::Pass,
        Severity::Info,
        &format!("not listed on {} lists", zones.len()),
        evidence,
    )
}
