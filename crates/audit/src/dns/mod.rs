//! DNS checks of a mail domain and of its MX hosts' addresses, one family per file:
//!
//! | id | file | what it looks at |
//! |---|---|---|
//! | `dns.mx` | [`mx`] | MX present, null MX, every exchanger resolves, no CNAME or address as exchanger, no duplicates |
//! | `dns.spf` | [`spf`] | one valid SPF record, 10-lookup and void-lookup limits through include/redirect, `all`, `ptr`, size |
//! | `dns.dmarc` | [`dmarc`] | a valid DMARC record (or the organisational domain's), p/sp/np strength, `t=y`, `pct`, report addresses and their authorisation |
//! | `dns.dkim` | [`dkim`] | keys under common selectors and `--dkim-selector`: type, size, revoked, `t=y` |
//! | `dns.mta_sts` | [`mta_sts`] | the `_mta-sts` record, the policy fetched over HTTPS, mode, `max_age`, `mx` patterns against the real MX |
//! | `dns.tlsrpt` | [`tlsrpt`] | a valid `_smtp._tls` record with report addresses |
//! | `dns.dnssec` | [`dnssec`] | the domain's and the MX hosts' answers validated (AD bit of a trusted validating resolver) |
//! | `dns.caa` | [`caa`] | CAA records for the domain (or its closest parent) restrict certificate issuance |
//! | `dns.dane` | [`dane`] | per MX endpoint: TLSA records, DNSSEC-secure, matching the certificate presented, rollover-ready |
//! | `dns.ptr` | [`ptr`] | per MX address: PTR, forward-confirmed, matching the banner and EHLO names |
//! | `reputation.dnsbl` | [`dnsbl`] | per MX address: listings on the `--dnsbl` zones; list error codes are "query refused" |
//!
//! A domain with a null MX takes no mail: `dns.mta_sts` and `dns.tlsrpt` are skipped for it.
//! Domain-level findings name the domain as their endpoint; per-address findings name the
//! endpoint (`mx1.example.org[192.0.2.1]:25`). Every lookup goes through one
//! [`ravelin_dns::Resolver`] (`--nameserver`, or the system's resolvers).
//!
//! Settings read: [`DnsOptions`]. How it fails: a lookup that fails temporarily (timeout,
//! SERVFAIL) makes its check report status `error` with the resolver's words, never a pass
//! or a fail; every record is parsed by `ravelin_dns::records`, whose limits apply.

pub mod caa;
pub mod dane;
pub mod dkim;
pub mod dmarc;
pub mod dnsbl;
pub mod dnssec;
pub mod mta_sts;
pub mod mx;
pub mod ptr;
pub mod spf;
pub mod tlsrpt;

use std::path::PathBuf;
use std::time::Duration;

use ravelin_dns::{LookupError, Resolver};

use crate::finding::{Finding, Severity, Status};
use crate::smtp::CheckInfo;
pub use mx::{MxHost, MxSet};

/// How the DNS checks behave.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// DKIM selectors tried besides [`dkim::COMMON_SELECTORS`] (`--dkim-selector`).
    pub dkim_selectors: Vec<String>,
    /// DNSBL zones each MX address is looked up in (`--dnsbl`).
    pub dnsbl_zones: Vec<String>,
    /// How long all lists together may take for one address.
    pub dnsbl_deadline: Duration,
    /// HTTPS port of the MTA-STS policy host (443; tests use another).
    pub mta_sts_port: u16,
    /// Trust only these CA certificates for the MTA-STS policy host (default: the system's).
    pub mta_sts_ca_file: Option<PathBuf>,
    /// Time limit of one policy fetch.
    pub mta_sts_timeout: Duration,
    /// The policy fetch's TLS configurations, built once per CA file for the run (loading
    /// the trust anchors costs more than a handshake) and shared by clones.
    pub mta_sts_tls: mta_sts::TlsConfigs,
    /// The checks the run makes (`--check`, `--skip-check`): the DNS checks not selected
    /// are not run, and the run leaves every other unselected finding out of the report.
    pub checks: crate::select::Selection,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            dkim_selectors: Vec::new(),
            dnsbl_zones: dnsbl::DEFAULT_ZONES.iter().map(|z| z.to_string()).collect(),
            dnsbl_deadline: Duration::from_secs(10),
            mta_sts_port: 443,
            mta_sts_ca_file: None,
            mta_sts_timeout: Duration::from_secs(10),
            mta_sts_tls: mta_sts::TlsConfigs::default(),
            checks: crate::select::Selection::default(),
        }
    }
}

/// Every DNS and reputation check id.
pub const CHECKS: &[CheckInfo] = &[
    CheckInfo {
        id: "dns.mx",
        description: "The domain has MX records (or a deliberate null MX) whose exchangers resolve to addresses, without CNAMEs or duplicates.",
    },
    CheckInfo {
        id: "dns.spf",
        description: "One valid SPF record ends in -all or ~all and stays within the 10 DNS lookups and 2 void lookups of RFC 7208.",
    },
    CheckInfo {
        id: "dns.dmarc",
        description: "A valid DMARC record asks receivers to quarantine or reject forged mail and sends reports to addresses that accept them.",
    },
    CheckInfo {
        id: "dns.dkim",
        description: "DKIM keys are published, at least 2048-bit RSA or Ed25519, not in test mode.",
    },
    CheckInfo {
        id: "dns.mta_sts",
        description: "An MTA-STS policy in enforce mode is served over valid HTTPS and names every MX host.",
    },
    CheckInfo {
        id: "dns.tlsrpt",
        description: "A TLS-RPT record tells senders where to report TLS failures.",
    },
    CheckInfo {
        id: "dns.dnssec",
        description: "The domain's and its MX hosts' DNS answers are DNSSEC-signed and validate.",
    },
    CheckInfo {
        id: "dns.caa",
        description: "CAA records name the certificate authorities that may issue for the domain.",
    },
    CheckInfo {
        id: "dns.dane",
        description: "TLSA records for each MX host are DNSSEC-secure, match the certificate it presents, and allow a key rollover.",
    },
    CheckInfo {
        id: "dns.ptr",
        description: "Each MX address has a PTR record that resolves back to it and matches the name in the banner and EHLO.",
    },
    CheckInfo {
        id: "reputation.dnsbl",
        description: "No MX address is listed on the DNS blocklists queried; list error answers are reported as refused queries, not listings.",
    },
];

/// What one DNS check is about (`None` for ids of other families).
pub fn describe(id: &str) -> Option<&'static str> {
    CHECKS.iter().find(|c| c.id == id).map(|c| c.description)
}

/// A check about a domain (or one endpoint) and the resolver it asks.
pub struct DnsCtx<'a> {
    pub resolver: &'a Resolver,
    pub options: &'a DnsOptions,
    /// The domain audited (lowercase, no final dot).
    pub domain: &'a str,
}

impl DnsCtx<'_> {
    /// A finding about the domain.
    pub fn finding(
        &self,
        id: &str,
        status: Status,
        severity: Severity,
        title: impl Into<String>,
        evidence: impl Into<String>,
    ) -> Finding {
        Finding::new(id, status, severity, self.domain, title, evidence)
    }

    /// A check that could not run because a lookup failed.
    pub fn lookup_error(&self, id: &str, name: &str, e: &LookupError) -> Finding {
        self.finding(
            id,
            Status::Error,
            Severity::Info,
            "check could not run: DNS lookup failed",
            format!("{name}: {e}"),
        )
        .fix("Check that the domain's name servers answer; run the audit again.")
    }
}

/// `base` (a pass) when there is no problem; otherwise `base` failed when the worst severity
/// is at least `fail_at`, else warned, at the worst severity, titled `bad_title`, with one
/// evidence line per problem after `base`'s evidence, and `fix` as the fix.
pub fn verdict(
    base: Finding,
    problems: Vec<(Severity, String)>,
    fail_at: Severity,
    bad_title: &str,
    fix: &str,
) -> Finding {
    let Some(worst) = problems.iter().map(|(s, _)| *s).max() else {
        return base;
    };
    let mut f = base;
    f.status = if worst >= fail_at {
        Status::Fail
    } else {
        Status::Warn
    };
    f.severity = worst;
    f.title = bad_title.to_string();
    f.fix = fix.to_string();
    for (_, line) in problems {
        f.evidence.push('\n');
        f.evidence.push_str(&line);
    }
    f
}

/// Runs the domain-level DNS checks (everything but the per-address ones) for a domain
/// whose MX set has been resolved.
pub async fn audit_domain(ctx: &DnsCtx<'_>, mx: &MxSet) -> Vec<Finding> {
    let (alone, with_mx) = tokio::join!(without_mx(ctx), needing_mx(ctx, mx));
    assemble(ctx, mx, alone, with_mx)
}

/// Resolves the domain's MX set and runs its domain-level DNS checks, the checks that do not
/// need the MX set (SPF, DMARC, DKIM, TLS-RPT, CAA) alongside the MX lookup rather than after
/// it; `then` runs as soon as the MX set is known, alongside the rest (`--dns-only` starts
/// the MX addresses' lookups there). Returns the MX set, the findings in the order of
/// [`audit_domain`], and `then`'s output.
pub async fn resolve_and_audit<T, F>(
    ctx: &DnsCtx<'_>,
    then: impl FnOnce(MxSet) -> F,
) -> (MxSet, Vec<Finding>, T)
where
    F: std::future::Future<Output = T>,
{
    let after_mx = async {
        let mx = mx::resolve(ctx.resolver, ctx.domain).await;
        let (with_mx, out) = tokio::join!(needing_mx(ctx, &mx), then(mx.clone()));
        (mx, with_mx, out)
    };
    let (alone, (mx, with_mx, out)) = tokio::join!(without_mx(ctx), after_mx);
    let findings = assemble(ctx, &mx, alone, with_mx);
    (mx, findings, out)
}

/// The findings of the checks that do not look at the MX set: SPF, DMARC, DKIM, TLS-RPT, CAA
/// (none for a check the run does not make).
struct WithoutMx([Option<Finding>; 5]);

/// The finding of the check `check` starts when the run makes the check `id`; otherwise
/// nothing, and no query is sent. (A closure rather than the future itself: a future passed
/// in would be held twice in this one's state, as the argument and as the awaited future.)
async fn selected<F: std::future::Future<Output = Finding>>(
    ctx: &DnsCtx<'_>,
    id: &str,
    check: impl FnOnce() -> F,
) -> Option<Finding> {
    if ctx.options.checks.wants(id) {
        Some(check().await)
    } else {
        None
    }
}

async fn without_mx(ctx: &DnsCtx<'_>) -> WithoutMx {
    let (spf, dmarc, dkim, tlsrpt, caa) = tokio::join!(
        selected(ctx, "dns.spf", || spf::check(ctx)),
        selected(ctx, "dns.dmarc", || dmarc::check(ctx)),
        selected(ctx, "dns.dkim", || dkim::check(ctx)),
        selected(ctx, "dns.tlsrpt", || tlsrpt::check(ctx)),
        selected(ctx, "dns.caa", || caa::check(ctx)),
    );
    WithoutMx([spf, dmarc, dkim, tlsrpt, caa])
}

/// `dns.mta_sts` (skipped for a null MX) and `dns.dnssec`, which look at the MX set.
async fn needing_mx(ctx: &DnsCtx<'_>, mx: &MxSet) -> [Option<Finding>; 2] {
    let mta_sts = || async {
        if mx.is_null() {
            not_receiving(ctx, "dns.mta_sts")
        } else {
            mta_sts::check(ctx, mx).await
        }
    };
    let (mta_sts, dnssec) = tokio::join!(
        selected(ctx, "dns.mta_sts", mta_sts),
        selected(ctx, "dns.dnssec", || dnssec::check(ctx, mx)),
    );
    [mta_sts, dnssec]
}

/// Every domain-level finding of the run's checks in a fixed order; `dns.tlsrpt` is skipped
/// for a null MX.
fn assemble(
    ctx: &DnsCtx<'_>,
    mx: &MxSet,
    WithoutMx([spf, dmarc, dkim, tlsrpt, caa]): WithoutMx,
    [mta_sts, dnssec]: [Option<Finding>; 2],
) -> Vec<Finding> {
    let tlsrpt = match tlsrpt {
        Some(_) if mx.is_null() => Some(not_receiving(ctx, "dns.tlsrpt")),
        other => other,
    };
    let mx = ctx
        .options
        .checks
        .wants("dns.mx")
        .then(|| mx::finding(ctx, mx));
    [mx, spf, dmarc, dkim, mta_sts, tlsrpt, dnssec, caa]
        .into_iter()
        .flatten()
        .collect()
}

/// A check about receiving mail over TLS, skipped for a domain with a null MX (it takes no
/// mail, so MTA-STS and TLS reports have nothing to protect).
fn not_receiving(ctx: &DnsCtx<'_>, id: &str) -> Finding {
    ctx.finding(
        id,
        Status::Skipped,
        Severity::Info,
        "not applicable: the domain takes no mail (null MX)",
        format!("MX {}: 0 .", ctx.domain),
    )
}

/// TXT records of `name`, or the lookup error.
pub(crate) async fn txt(resolver: &Resolver, name: &str) -> Result<Vec<String>, LookupError> {
    resolver.txt(name).await.map(|a| a.records)
}

/// Runs the per-address checks on one MX endpoint: `dns.ptr`, `reputation.dnsbl`,
/// `dns.dane`; `reachable` says whether the SMTP checks could connect.
pub async fn audit_endpoint(
    ctx: &DnsCtx<'_>,
    endpoint: &crate::target::Endpoint,
    reachable: bool,
    smtp: &crate::smtp::SmtpOptions,
    tls: &std::sync::Arc<crate::tls::TlsOptions>,
) -> Vec<Finding> {
    let mut findings = address_checks(ctx, endpoint, reachable, smtp).await;
    let dane = || dane::check(ctx.resolver, endpoint, reachable, tls);
    findings.extend(selected(ctx, "dns.dane", dane).await);
    findings
}

/// The per-address checks that need no connection to the endpoint (`--dns-only`):
/// `dns.ptr` without the banner and EHLO comparison, and `reputation.dnsbl`. `dns.dane`
/// needs the certificate the host presents and is left out.
pub async fn lookup_endpoint(
    ctx: &DnsCtx<'_>,
    endpoint: &crate::target::Endpoint,
    smtp: &crate::smtp::SmtpOptions,
) -> Vec<Finding> {
    address_checks(ctx, endpoint, false, smtp).await
}

/// `dns.ptr` (reading the banner and EHLO names when `reachable`) and `reputation.dnsbl`.
async fn address_checks(
    ctx: &DnsCtx<'_>,
    endpoint: &crate::target::Endpoint,
    reachable: bool,
    smtp: &crate::smtp::SmtpOptions,
) -> Vec<Finding> {
    let (ptr, dnsbl) = tokio::join!(
        selected(ctx, "dns.ptr", || ptr::check(
            ctx.resolver,
            endpoint,
            reachable,
            smtp
        )),
        selected(ctx, "reputation.dnsbl", || dnsbl::check(
            ctx.resolver,
            endpoint,
            ctx.options
        )),
    );
    [ptr, dnsbl].into_iter().flatten().collect()
}
