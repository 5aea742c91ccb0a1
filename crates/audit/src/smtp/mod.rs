//! SMTP behaviour checks: what a mail server does when spoken to, from outside.
//!
//! [`audit_endpoint`] runs every check on one endpoint and returns their findings, in a
//! fixed order: first the checks of the server itself ([`audit_host`], the same whatever
//! mail domain it serves), then those that name the mail domain ([`audit_domain_checks`]:
//! recipients, relay, smuggling), so that a batch audit can run the first once per endpoint. Each check opens its own short session (connect, greeting, EHLO) so that one
//! check's errors never count against the next under the server's error limits; at most one
//! connection to the endpoint is open at a time. When the first session cannot be opened the
//! endpoint gets a single `smtp.connect` finding with status `error` and nothing else runs.
//!
//! | id | what it looks at |
//! |---|---|
//! | `smtp.connect` | the endpoint could be reached (only reported when it could not) |
//! | `smtp.banner_disclosure` | product, version, internal names, private addresses in greeting, EHLO, HELP |
//! | `smtp.ntlm_info` | AUTH NTLM challenge: domain, computer names, Windows build |
//! | `smtp.clock_skew` | the server's clock (greeting date, NTLM timestamp) against ours |
//! | `smtp.software` | known-vulnerable product versions |
//! | `smtp.vrfy`, `smtp.expn` | address verification and list expansion |
//! | `smtp.auth_before_tls` | AUTH offered or accepted before STARTTLS |
//! | `smtp.auth_mechanisms` | weak or anonymous mechanisms; AUTH on a mail exchanger |
//! | `smtp.plaintext_mail_accepted` | a submission port taking mail without TLS |
//! | `smtp.size_limit` | SIZE advertised and enforced |
//! | `smtp.greeting_delay` | how long the greeting took (info) |
//! | `smtp.pipelining_sync` | commands sent before EHLO was answered are refused |
//! | `smtp.open_relay` | outside recipients accepted, with every address trick |
//! | `smtp.catch_all`, `smtp.rcpt_enumeration` | postmaster exists, random addresses refused, unknown-recipient probing limited |
//! | `smtp.smuggling.<sequence>` | `--active` only: a fake end-of-data sequence ends the message |
//!
//! Active checks (`--active`) go further than reading replies: the open-relay check sends
//! DATA for an accepted outside recipient and drops the connection before the final dot (so
//! nothing is ever delivered), and the smuggling checks send each fake ending inside a real
//! message to a recipient of the server (a server that accepts a fake ending receives one
//! short test message). Use them only against servers you run or may test.
//!
//! Settings read: [`SmtpOptions`]. How it fails: a check that cannot run reports status
//! `error` (connection failure, time limit, throttling) or `skipped` (nothing to test, e.g.
//! no mail domain known), with the reason as evidence; it never aborts the others.

pub mod auth;
pub mod disclosure;
pub mod limits;
pub mod ntlm;
pub mod probe;
pub mod recipients;
pub mod relay;
pub mod session;
pub mod smuggling;
pub mod software;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ravelin_wire::Reply;

use crate::finding::{Finding, Severity, Status};
use crate::select::Selection;
use crate::target::Endpoint;
use probe::ProbeSettings;
use session::{Ehlo, OpenError};

/// How the SMTP checks behave.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    pub probe: Arc<ProbeSettings>,
    /// Run the active checks (open relay up to DATA, smuggling).
    pub active: bool,
    /// The outside domain the open-relay check tries to relay to.
    pub relay_domain: String,
    /// How long the smuggling check waits for a reply after a fake end-of-data sequence.
    pub smuggling_wait: Duration,
    /// Most unknown recipients `smtp.rcpt_enumeration` tries on one connection.
    pub enumeration_probes: usize,
    /// Retries of a throttled (4xx) greeting, and the first wait between them.
    pub throttle_retries: u32,
    pub throttle_backoff: Duration,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        SmtpOptions {
            probe: Arc::new(ProbeSettings::default()),
            active: false,
            relay_domain: "example.com".into(),
            smuggling_wait: Duration::from_secs(5),
            enumeration_probes: 20,
            throttle_retries: 2,
            throttle_backoff: Duration::from_secs(2),
        }
    }
}

/// One check's id and what it is about (for SARIF rules and the HTML report).
#[derive(Debug, Clone, Copy)]
pub struct CheckInfo {
    pub id: &'static str,
    pub description: &'static str,
}

/// Every SMTP check id. The remote smuggling checks report `smtp.smuggling.<sequence>` per
/// sequence of [`smuggling::SEQUENCES`] (see [`smuggling_ids`]); `smtp.smuggling` alone is
/// their "skipped" finding and the Postfix linter's verdict on `smtpd_forbid_bare_newline`.
pub const CHECKS: &[CheckInfo] = &[
    CheckInfo {
        id: "smtp.connect",
        description: "The mail server could be reached and gave a usable greeting.",
    },
    CheckInfo {
        id: "smtp.banner_disclosure",
        description: "The greeting, EHLO reply and HELP text reveal no product, version, internal host name or private address.",
    },
    CheckInfo {
        id: "smtp.ntlm_info",
        description: "AUTH NTLM does not hand internal domain and host names and the Windows build to anyone who asks.",
    },
    CheckInfo {
        id: "smtp.clock_skew",
        description: "The server's clock, where it shows one, agrees with ours.",
    },
    CheckInfo {
        id: "smtp.software",
        description: "The product version the server reveals has no known vulnerability.",
    },
    CheckInfo {
        id: "smtp.vrfy",
        description: "VRFY does not tell existing mailboxes from unknown ones.",
    },
    CheckInfo {
        id: "smtp.expn",
        description: "EXPN does not reveal the members of mailing lists or aliases.",
    },
    CheckInfo {
        id: "smtp.auth_before_tls",
        description: "AUTH is neither offered nor accepted before STARTTLS, so passwords never cross the network in clear text.",
    },
    CheckInfo {
        id: "smtp.auth_mechanisms",
        description: "Only strong AUTH mechanisms are offered, and only where users submit mail.",
    },
    CheckInfo {
        id: "smtp.plaintext_mail_accepted",
        description: "A submission port refuses mail transactions before STARTTLS.",
    },
    CheckInfo {
        id: "smtp.size_limit",
        description: "A message size limit is advertised (SIZE) and enforced.",
    },
    CheckInfo {
        id: "smtp.greeting_delay",
        description: "How long the server waits before its greeting (a delay slows down spam bots).",
    },
    CheckInfo {
        id: "smtp.pipelining_sync",
        description: "Commands sent before the server answered EHLO are refused (RFC 2920 synchronisation).",
    },
    CheckInfo {
        id: "smtp.open_relay",
        description: "Mail for outside domains is refused from unauthenticated clients, whatever the address trick.",
    },
    CheckInfo {
        id: "smtp.catch_all",
        description: "postmaster exists and random addresses are refused at RCPT.",
    },
    CheckInfo {
        id: "smtp.rcpt_enumeration",
        description: "Probing for valid addresses with many RCPT commands is slowed down or cut off.",
    },
    CheckInfo {
        id: "smtp.smuggling",
        description: smuggling::DESCRIPTION,
    },
];

/// The ids of the remote smuggling checks, one per sequence.
pub fn smuggling_ids() -> impl Iterator<Item = String> {
    smuggling::SEQUENCES.iter().map(smuggling::Sequence::id)
}

/// What one check is about, for renderers (`None` for unknown ids).
pub fn describe(id: &str) -> Option<&'static str> {
    if id.starts_with("smtp.smuggling.") {
        return Some(smuggling::DESCRIPTION);
    }
    CHECKS.iter().find(|c| c.id == id).map(|c| c.description)
}

/// The context every check gets: the endpoint and the options.
pub struct Ctx<'a> {
    pub endpoint: &'a Endpoint,
    pub options: &'a SmtpOptions,
    name: String,
}

impl<'a> Ctx<'a> {
    pub fn new(endpoint: &'a Endpoint, options: &'a SmtpOptions) -> Ctx<'a> {
        Ctx {
            endpoint,
            options,
            name: endpoint.to_string(),
        }
    }

    /// A finding about this endpoint.
    pub fn finding(
        &self,
        id: impl Into<String>,
        status: Status,
        severity: Severity,
        title: impl Into<String>,
        evidence: impl Into<String>,
    ) -> Finding {
        Finding::new(
            id,
            status,
            severity,
            self.name.clone(),
            title,
            clip(&evidence.into()),
        )
    }

    /// A check that could not run.
    pub fn error(&self, id: impl Into<String>, why: impl Into<String>) -> Finding {
        let why = why.into();
        self.finding(
            id,
            Status::Error,
            Severity::Info,
            "check could not run",
            why,
        )
    }

    /// A check that could not run because no session could be opened.
    pub fn open_error(&self, id: impl Into<String>, e: &OpenError) -> Finding {
        let title = match e {
            OpenError::Throttled(_) => "error: throttled",
            _ => "check could not run",
        };
        self.finding(id, Status::Error, Severity::Info, title, e.evidence())
    }

    /// The finding for a list of problems, `None` when there is none: failed when the worst
    /// severity is at least `fail_at`, else warned, at the worst severity; the evidence is
    /// `head` and then one line per problem.
    pub fn problems(
        &self,
        id: &str,
        problems: Vec<(Severity, String)>,
        fail_at: Severity,
        title: impl Into<String>,
        head: &str,
    ) -> Option<Finding> {
        let worst = problems.iter().map(|(s, _)| *s).max()?;
        let status = if worst >= fail_at {
            Status::Fail
        } else {
            Status::Warn
        };
        let mut evidence = head.to_string();
        for (_, line) in problems {
            evidence.push('\n');
            evidence.push_str(&line);
        }
        Some(self.finding(id, status, worst, title, evidence))
    }

    pub fn skipped(&self, id: impl Into<String>, why: impl Into<String>) -> Finding {
        let why = why.into();
        self.finding(id, Status::Skipped, Severity::Info, "not applicable", why)
    }

    /// The recipient domain of the server, when the target named it.
    pub fn domain(&self) -> Option<&str> {
        self.endpoint.domain.as_deref()
    }
}

/// Longest evidence kept in a finding.
pub const MAX_EVIDENCE: usize = 4000;

/// Evidence capped at [`MAX_EVIDENCE`] characters.
fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_EVIDENCE {
        return s.to_string();
    }
    let mut t: String = s.chars().take(MAX_EVIDENCE).collect();
    t.push_str(" …(cut)");
    t
}

/// `COMMAND → reply` for evidence.
pub fn said(command: &str, reply: &Reply) -> String {
    format!("{command} → {}", reply.one_line())
}

/// What the first session learnt: the basis of the passive checks.
pub struct Discovery {
    pub greeting: Reply,
    pub greeting_delay: Duration,
    /// When the greeting arrived, in seconds since the Unix epoch (our clock).
    pub greeting_at: i64,
    pub ehlo: Ehlo,
    /// The EHLO reply inside TLS: `None` when STARTTLS is not offered, `Err` when it failed.
    pub tls_ehlo: Option<Result<Ehlo, String>>,
    pub help: Option<Reply>,
    /// Our own address on the connection.
    pub local: Option<IpAddr>,
    /// The transcript of the discovery session.
    pub transcript: String,
}

impl Discovery {
    /// The server's own names: the first word of the greeting and of the EHLO reply when
    /// they are domain names, the endpoint's host name and the mail domain.
    pub fn server_names(&self, endpoint: &Endpoint) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let words = [
            self.greeting.lines.first().map(String::as_str),
            Some(self.ehlo.first_line()),
        ];
        let candidates = words
            .into_iter()
            .flatten()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .chain(endpoint.name.clone())
            .chain(endpoint.domain.clone());
        for n in candidates {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            if n.contains('.')
                && crate::target::is_domain_name(&n)
                && n.parse::<IpAddr>().is_err()
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
        names
    }

    /// EHLO inside TLS when it worked, else the plaintext one.
    pub fn best_ehlo(&self) -> &Ehlo {
        match &self.tls_ehlo {
            Some(Ok(e)) => e,
            _ => &self.ehlo,
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The first session: greeting, EHLO, HELP; then a second one for EHLO inside TLS.
async fn discover(ctx: &Ctx<'_>) -> Result<Discovery, OpenError> {
    let mut s = session::open(ctx.endpoint, ctx.options).await?;
    let greeting_at = unix_now();
    let help = s.conn.command("HELP").await.ok();
    let local = s.conn.local_addr().map(|a| a.ip());
    let transcript = s.conn.transcript().render();
    s.conn.quit().await;
    let tls_ehlo = if ctx.endpoint.role == crate::target::Role::Submissions {
        Some(Ok(s.ehlo.clone()))
    } else if s.ehlo.has("STARTTLS") {
        Some(tls_ehlo(ctx).await)
    } else {
        None
    };
    Ok(Discovery {
        greeting: s.greeting,
        greeting_delay: s.greeting_delay,
        greeting_at,
        ehlo: s.ehlo,
        tls_ehlo,
        help,
        local,
        transcript,
    })
}

/// A session upgraded with STARTTLS, and EHLO again.
pub async fn tls_session(ctx: &Ctx<'_>) -> Result<session::Session, String> {
    let mut s = session::open(ctx.endpoint, ctx.options)
        .await
        .map_err(|e| e.evidence())?;
    match s.conn.starttls().await {
        Ok(probe::StartTls::Established) => {}
        Ok(probe::StartTls::Refused(r)) => return Err(said("STARTTLS", &r)),
        Err(e) => return Err(e.to_string()),
    }
    s.ehlo = session::ehlo(&mut s.conn)
        .await
        .map_err(|e| format!("EHLO after STARTTLS: {}", e.evidence()))?;
    Ok(s)
}

async fn tls_ehlo(ctx: &Ctx<'_>) -> Result<Ehlo, String> {
    let s = tls_session(ctx).await?;
    let ehlo = s.ehlo.clone();
    s.conn.quit().await;
    Ok(ehlo)
}

/// What an endpoint showed whatever mail domain it is asked about: the discovery session
/// and the findings of the checks that do not name a domain. In a batch audit every domain
/// whose MX this endpoint is shares one (see [`crate::run`]).
#[derive(Clone)]
pub struct HostFindings {
    /// `None` when the first session could not be opened (`findings` is then the single
    /// `smtp.connect` error).
    pub discovery: Option<Arc<Discovery>>,
    pub findings: Vec<Finding>,
}

impl HostFindings {
    /// Whether the SMTP checks could connect.
    pub fn reachable(&self) -> bool {
        self.discovery.is_some()
    }
}

/// Runs the SMTP checks of `checks` on one endpoint: [`audit_host`], then
/// [`audit_domain_checks`].
pub async fn audit_endpoint(
    endpoint: &Endpoint,
    options: &SmtpOptions,
    checks: &Selection,
) -> Vec<Finding> {
    let host = audit_host(endpoint, options).await;
    let mut findings = host.findings.clone();
    findings.extend(audit_domain_checks(endpoint, options, &host, checks).await);
    findings
}

/// The checks of the server itself, which never name the mail domain: banner, NTLM, clock,
/// software, AUTH, SIZE, greeting delay, pipelining. Their findings are the same for every
/// domain the server receives mail for.
pub async fn audit_host(endpoint: &Endpoint, options: &SmtpOptions) -> HostFindings {
    let ctx = Ctx::new(endpoint, options);
    tracing::debug!(event = "audit_endpoint", endpoint = %endpoint, active = options.active);
    let d = match discover(&ctx).await {
        Ok(d) => d,
        Err(e) => {
            let mut f = ctx.open_error("smtp.connect", &e);
            f.title = "the mail server could not be audited".into();
            return HostFindings {
                discovery: None,
                findings: vec![f],
            };
        }
    };
    let mut findings = Vec::new();
    let ntlm = auth::ntlm(&ctx, &d).await;
    findings.push(disclosure::banner_finding(&ctx, &d));
    findings.push(ntlm.finding.clone());
    findings.push(disclosure::clock_finding(&ctx, &d, ntlm.challenge.as_ref()));
    findings.push(disclosure::software_finding(
        &ctx,
        &d,
        ntlm.challenge.as_ref(),
    ));
    findings.push(auth::auth_before_tls(&ctx, &d).await);
    findings.push(auth::mechanisms(&ctx, &d));
    findings.push(limits::size_limit(&ctx, &d).await);
    findings.push(limits::greeting_delay(&ctx, &d));
    findings.push(limits::pipelining_sync(&ctx).await);
    HostFindings {
        discovery: Some(Arc::new(d)),
        findings,
    }
}

/// The checks that name the endpoint's mail domain (`endpoint.domain`): VRFY and EXPN of its
/// postmaster, mail before TLS to it, open relay (its tricks go through the domain), catch-all
/// and enumeration of its addresses, and smuggling (`--active`): those `checks` selects
/// (the others open no session, and send nothing with `--active`). Nothing when `host`
/// could not connect.
pub async fn audit_domain_checks(
    endpoint: &Endpoint,
    options: &SmtpOptions,
    host: &HostFindings,
    checks: &Selection,
) -> Vec<Finding> {
    let Some(d) = &host.discovery else {
        return Vec::new();
    };
    let ctx = Ctx::new(endpoint, options);
    let mut findings = Vec::new();
    if checks.wants("smtp.vrfy") {
        findings.push(recipients::vrfy(&ctx).await);
    }
    if checks.wants("smtp.expn") {
        findings.push(recipients::expn(&ctx).await);
    }
    if checks.wants("smtp.plaintext_mail_accepted") {
        findings.push(auth::plaintext_mail(&ctx, d).await);
    }
    if checks.wants("smtp.open_relay") {
        findings.push(relay::open_relay(&ctx, d).await);
    }
    if checks.wants("smtp.catch_all") || checks.wants("smtp.rcpt_enumeration") {
        findings.extend(recipients::catch_all_and_enumeration(&ctx).await);
    }
    if checks.wants("smtp.smuggling") {
        findings.extend(smuggling::run(&ctx, checks).await);
    }
    findings
}

#[cfg(test)]
mod tests;
