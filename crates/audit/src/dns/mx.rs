//! `dns.mx`: the MX set of a domain, resolved once for the whole audit (its hosts and their
//! addresses are the endpoints of a domain target), and the finding about it.
//!
//! [`resolve`] asks for the MX records; without any (NODATA), the domain itself is the
//! implicit MX (RFC 5321 §5.1); a null MX (RFC 7505, `0 .`) means the domain takes no mail
//! and has no endpoint. For each exchanger, its own CNAME record is asked (RFC 5321 §5.1 and
//! RFC 2181 §10.3: an MX must name a host, not an alias) and its IPv4 and IPv6 addresses.
//!
//! [`finding`] fails on: the domain does not exist, a null MX next to other MX records, an
//! exchanger that is an address literal or has no address; it warns on: no MX record (the
//! implicit MX works but is fragile), an exchanger that is a CNAME, the same exchanger twice.
//!
//! Limits: at most [`MAX_MX_HOSTS`] exchangers are resolved, each at most
//! [`crate::target::MAX_ADDRESSES_PER_HOST`] addresses. How it fails: a temporary lookup
//! failure of the MX records is an `error` finding and no endpoint; one of an exchanger's
//! addresses is a problem of that exchanger.

use std::net::IpAddr;

use ravelin_dns::{LookupError, Mx, Resolver};

use super::DnsCtx;
use crate::finding::{Finding, Severity, Status};
use crate::target::MAX_ADDRESSES_PER_HOST;

/// Most MX hosts resolved and audited per domain.
pub const MAX_MX_HOSTS: usize = 10;

/// One mail exchanger of the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    /// Lowercase, without the final dot.
    pub name: String,
    /// IPv4 then IPv6 addresses.
    pub addresses: Vec<IpAddr>,
    /// Whether the address answers were DNSSEC-secure.
    pub secure: bool,
    /// The name's CNAME target, when the exchanger is an alias.
    pub cname: Option<String>,
    /// Why the addresses are missing or incomplete.
    pub error: Option<LookupError>,
}

/// The MX records of a domain and what they resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxSet {
    pub domain: String,
    /// The MX records as published (sorted by preference), or why there are none.
    pub records: Result<Vec<Mx>, LookupError>,
    /// Whether the MX answer was DNSSEC-secure.
    pub secure: bool,
    /// The exchangers resolved, in preference order, without duplicates; the domain itself
    /// when there is no MX record.
    pub hosts: Vec<MxHost>,
}

impl MxSet {
    /// True when the domain publishes the null MX: it takes no mail.
    pub fn is_null(&self) -> bool {
        matches!(&self.records, Ok(r) if r.len() == 1 && r[0].is_null())
    }

    /// True when there are no MX records and the domain itself is the exchanger.
    pub fn is_implicit(&self) -> bool {
        matches!(self.records, Err(LookupError::NoRecords))
    }
}

/// Looks up the MX set of `domain` and every exchanger's addresses.
pub async fn resolve(resolver: &Resolver, domain: &str) -> MxSet {
    let (records, secure, names): (_, bool, Vec<(u16, String)>) = match resolver.mx(domain).await {
        Ok(answer) => {
            let mut names: Vec<(u16, String)> = Vec::new();
            for mx in &answer.records {
                if !mx.is_null() && !names.iter().any(|(_, n)| *n == mx.exchange) {
                    names.push((mx.preference, mx.exchange.clone()));
                }
            }
            (Ok(answer.records), answer.secure, names)
        }
        Err(LookupError::NoRecords) => (
            Err(LookupError::NoRecords),
            false,
            vec![(0, domain.to_string())],
        ),
        Err(e) => (Err(e), false, Vec::new()),
    };
    // Every exchanger at once: one round trip to the resolver, not one per exchanger.
    let mut lookups = tokio::task::JoinSet::new();
    for (index, (preference, name)) in names.into_iter().take(MAX_MX_HOSTS).enumerate() {
        let resolver = resolver.clone();
        lookups.spawn(async move { (index, resolve_host(&resolver, preference, name).await) });
    }
    let mut found: Vec<(usize, MxHost)> = Vec::new();
    while let Some(done) = lookups.join_next().await {
        match done {
            Ok(host) => found.push(host),
            Err(e) => tracing::error!(event = "mx_lookup_task_failed", reason = %e),
        }
    }
    found.sort_by_key(|(index, _)| *index);
    let hosts = found.into_iter().map(|(_, host)| host).collect();
    MxSet {
        domain: domain.to_string(),
        records,
        secure,
        hosts,
    }
}

async fn resolve_host(resolver: &Resolver, preference: u16, name: String) -> MxHost {
    let (cname, ips) = tokio::join!(resolver.cname(&name), resolver.ips(&name, false));
    let cname = cname.ok().and_then(|a| a.records.into_iter().next());
    let (addresses, secure, error) = match ips {
        Ok(answer) => {
            let mut addresses = answer.records;
            addresses.dedup();
            addresses.truncate(MAX_ADDRESSES_PER_HOST);
            (addresses, answer.secure, None)
        }
        Err(e) => (Vec::new(), false, Some(e)),
    };
    MxHost {
        preference,
        name,
        addresses,
        secure,
        cname,
        error,
    }
}

/// The `dns.mx` finding.
pub fn finding(ctx: &DnsCtx<'_>, set: &MxSet) -> Finding {
    const ID: &str = "dns.mx";
    let records = match &set.records {
        Ok(records) => records,
        Err(LookupError::NoRecords) => {
            let host = set.hosts.first();
            return match host.filter(|h| !h.addresses.is_empty()) {
                Some(h) => ctx
                    .finding(
                        ID,
                        Status::Warn,
                        Severity::Low,
                        "no MX record: mail goes to the domain's own address (implicit MX)",
                        format!("MX {}: NODATA; A/AAAA: {}", set.domain, list(&h.addresses)),
                    )
                    .fix(format!(
                        "Publish an MX record: `{}. IN MX 10 mx1.{}.` naming the mail server; \
                         if the domain sends no mail and takes none, publish the null MX `0 .`",
                        set.domain, set.domain
                    )),
                None => ctx
                    .finding(
                        ID,
                        Status::Fail,
                        Severity::High,
                        "no MX record and no address: the domain cannot receive mail",
                        format!("MX {}: NODATA; A/AAAA: none", set.domain),
                    )
                    .fix(format!(
                        "Publish `{}. IN MX 10 mx1.{}.` with an A (and AAAA) record for the \
                         mail server, or the null MX `0 .` if the domain takes no mail",
                        set.domain, set.domain
                    )),
            };
        }
        Err(LookupError::NxDomain) => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::High,
                    "the domain does not exist",
                    format!("MX {}: NXDOMAIN", set.domain),
                )
                .fix("Check the spelling of the domain and its delegation at the registrar");
        }
        Err(e) => return ctx.lookup_error(ID, &format!("MX {}", set.domain), e),
    };
    let shown: Vec<String> = records
        .iter()
        .map(|mx| {
            let name = if mx.is_null() { "." } else { &mx.exchange };
            let addrs = set
                .hosts
                .iter()
                .find(|h| h.name == mx.exchange)
                .map(|h| format!(" → {}", list(&h.addresses)))
                .unwrap_or_default();
            format!("MX {} {name}{addrs}", mx.preference)
        })
        .collect();
    let seen = shown.join("\n");
    if set.is_null() {
        return ctx.finding(
            ID,
            Status::Pass,
            Severity::Info,
            "null MX: the domain declares that it accepts no mail (RFC 7505)",
            seen,
        );
    }
    let mut problems: Vec<(Severity, String)> = Vec::new();
    if records.iter().any(Mx::is_null) {
        problems.push((
            Severity::High,
            "a null MX (`0 .`) next to other MX records: senders may treat the domain as taking no mail (RFC 7505 §3)".into(),
        ));
    }
    let mut names: Vec<&str> = Vec::new();
    for mx in records.iter().filter(|mx| !mx.is_null()) {
        if names.contains(&mx.exchange.as_str()) {
            problems.push((
                Severity::Low,
                format!("{} is listed more than once", mx.exchange),
            ));
        } else {
            names.push(&mx.exchange);
        }
    }
    for host in &set.hosts {
        if host.name.parse::<IpAddr>().is_ok() {
            problems.push((
                Severity::High,
                format!(
                    "{} is an address, not a host name (RFC 7505 §4 / RFC 5321 §5.1)",
                    host.name
                ),
            ));
            continue;
        }
        if let Some(target) = &host.cname {
            problems.push((
                Severity::Medium,
                format!(
                    "{} is a CNAME to {target}; an MX must name a host (RFC 2181 §10.3)",
                    host.name
                ),
            ));
        }
        match &host.error {
            Some(e) if e.is_temporary() => problems.push((
                Severity::Medium,
                format!("{}: the address lookup failed: {e}", host.name),
            )),
            Some(e) => {
                problems.push((Severity::High, format!("{} has no address: {e}", host.name)))
            }
            None => {}
        }
    }
    if set.hosts.len() < names.len() {
        problems.push((
            Severity::Low,
            format!(
                "{} MX hosts; only the first {MAX_MX_HOSTS} were audited",
                names.len()
            ),
        ));
    }
    let base = ctx.finding(
        ID,
        Status::Pass,
        Severity::Info,
        "MX records are sound",
        seen,
    );
    super::verdict(
        base,
        problems,
        Severity::High,
        "MX records have problems",
        "Point every MX record at a host name (not an alias, not an address) that has A/AAAA \
         records, each name once; remove a null MX from a domain that takes mail",
    )
}

fn list(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        return "no address".into();
    }
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
