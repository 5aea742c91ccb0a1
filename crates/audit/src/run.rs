//! Running an audit over many targets: resolution, concurrency, politeness, one report.
//!
//! [`audit`] resolves each target to its endpoints and runs the check families on each:
//! a host target gets the SMTP and TLS checks ([`crate::tls`]) on each address, then
//! `tls.consistency` across them; a domain target gets its DNS checks ([`crate::dns`]), and
//! every address of every MX host gets the same SMTP and TLS checks plus the per-address DNS
//! checks (`dns.ptr`, `reputation.dnsbl`, `dns.dane`). Every MX address, and every address
//! of a host target audited as an SMTP server (not submission) that answered, gets once per
//! run `ports.exposed` ([`crate::ports`]: which other mail ports answer, clear-text POP3 /
//! IMAP logins) unless [`AuditOptions::port_scan`] is off. With
//! [`AuditOptions::dns_only`], or when none of the checks the run makes needs a connection
//! ([`crate::select`]: `--check dns.spf`), a domain gets its DNS checks and the lookups of its MX addresses
//! that need no connection (`dns.ptr` without the banner comparison, `reputation.dnsbl`):
//! nothing connects to a mail host. One [`Resolver`] serves the whole run (on threads of its
//! own, [`audit_blocking`], one per thread with its own sockets over the same cache):
//! `--nameserver`, or the system's resolvers, with an answer cache of [`DNS_CACHE_ENTRIES`]
//! questions (answers
//! kept for their TTL, one query in flight per question): the domains of a batch share MX
//! hosts, SPF includes and report domains, and each is asked once. Targets run
//! with at most [`AuditOptions::concurrency`] targets in progress at once and never two
//! endpoint audits of the same mail host (IP address) at the same time, whatever the
//! concurrency: several targets naming the same server are audited one after the other.
//! An MX endpoint (host name, address, port) shared by several domains of the run — the
//! customers of one hosting provider — is audited once: its server checks
//! ([`smtp::audit_host`]), TLS checks, per-address DNS checks and `ports.exposed` are run by
//! the first domain that reaches it and copied into the report of every other; only the
//! checks that name the domain ([`smtp::audit_domain_checks`]: recipients, relay, smuggling)
//! run for each domain. The shared results are kept for the whole run (one entry per
//! distinct endpoint and per distinct address).
//! A report keeps the findings of the selected checks only ([`DnsOptions::checks`]). The
//! report lists the targets in the order given; `on_done` is called as each target
//! finishes (for a progress bar).
//!
//! Settings read: [`AuditOptions`]. How it fails: a host target that cannot be resolved gets a
//! single `smtp.connect` finding with status `error`; a domain whose MX lookup fails gets a
//! `dns.mx` error and its other DNS checks; nothing aborts the run.
//! [`could_not_run`] tells the targets that could not be audited at all (exit code 3).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use ravelin_dns::{Resolver, ResolverSettings};

use crate::dns::{self, DnsCtx, DnsOptions};
use crate::finding::{Finding, Report, Severity, Status, TargetReport};
use crate::ports;
use crate::select::Selection;
use crate::smtp::{self, SmtpOptions};
use crate::target::{self, Endpoint, Role, Target};
use crate::tls::{self, TlsMode, TlsOptions, TlsTarget};

/// How names are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NameService {
    /// The system's resolver (getaddrinfo: /etc/hosts, resolv.conf).
    #[default]
    System,
    /// One DNS server, e.g. `127.0.0.1:5353` (`--nameserver`).
    Server(SocketAddr),
}

/// Targets audited at once by default. Politeness towards each mail server does not depend
/// on it (one connection per server address at a time, [`HostLocks`]); it bounds the DNS
/// lookups in flight (about ten per domain target) and the servers tested at the same time.
/// Most of a domain's audit is waiting for DNS answers, so 32 keeps a batch moving where 8
/// left the resolver idle between round trips (bench/audit-batch.py: 3 to 4 times the
/// domains a minute at 20 ms a round trip).
pub const DEFAULT_CONCURRENCY: u16 = 32;

/// How an audit runs.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub smtp: SmtpOptions,
    /// The TLS checks of a domain's MX endpoints.
    pub tls: Arc<TlsOptions>,
    /// The DNS checks of domain targets.
    pub dns: DnsOptions,
    /// Targets audited at once (at least 1).
    pub concurrency: usize,
    pub names: NameService,
    /// Only the DNS checks of domain targets: no SMTP or TLS connection (`--dns-only`).
    pub dns_only: bool,
    /// `ports.exposed`: the other mail ports of each audited address (on by default;
    /// `--no-port-scan` turns it off).
    pub port_scan: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            smtp: SmtpOptions::default(),
            tls: Arc::new(TlsOptions::default()),
            dns: DnsOptions::default(),
            concurrency: usize::from(DEFAULT_CONCURRENCY),
            names: NameService::System,
            dns_only: false,
            port_scan: true,
        }
    }
}

/// The questions whose answers a run remembers (a few hundred bytes each): a batch of several
/// thousand domains at about 40 questions each. Beyond it, expired answers are dropped and,
/// when none has expired, new ones are asked without being remembered.
pub const DNS_CACHE_ENTRIES: usize = 200_000;

/// The resolver of a run: the one DNS server given, or the system's resolvers, with the run's
/// answer cache.
pub fn resolver(names: &NameService) -> Result<Resolver, String> {
    let settings = match names {
        NameService::System => ResolverSettings::default(),
        NameService::Server(server) => ResolverSettings::with_nameservers(vec![*server]),
    };
    Resolver::for_batch(&settings, DNS_CACHE_ENTRIES)
        .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
}

/// Locks `mutex`, also after a panic while it was held: what each mutex here guards (maps of
/// shared cells, the queue, the finished reports) is whole between statements.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One lock per mail host address: endpoint audits of one host never overlap.
#[derive(Default)]
struct HostLocks(Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>);

impl HostLocks {
    fn get(&self, ip: IpAddr) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.0).entry(ip).or_default().clone()
    }
}

/// What one MX endpoint showed, shared by every domain of the run whose MX it is.
struct SharedEndpoint {
    host: smtp::HostFindings,
    /// The TLS checks' report, when SMTP could connect.
    tls: Option<tls::EndpointReport>,
    /// `dns.ptr`, `reputation.dnsbl`, `dns.dane`.
    dns: Vec<Finding>,
}

/// The shared endpoint audits of a run, by host name, address and role (the findings name
/// the endpoint, never the domain).
type EndpointKey = (Option<String>, SocketAddr, Role);

/// Results made once per key for the whole run; whoever needs one meanwhile waits for it.
struct OncePer<K, V>(Mutex<HashMap<K, Arc<tokio::sync::OnceCell<V>>>>);

impl<K, V> Default for OncePer<K, V> {
    fn default() -> Self {
        OncePer(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + std::hash::Hash, V> OncePer<K, V> {
    fn get(&self, key: K) -> Arc<tokio::sync::OnceCell<V>> {
        lock(&self.0).entry(key).or_default().clone()
    }
}

/// The state the targets of one run share.
#[derive(Default)]
struct Shared {
    locks: HostLocks,
    /// The audit of each MX endpoint.
    endpoints: OncePer<EndpointKey, SharedEndpoint>,
    /// `ports.exposed` of each audited address, once per name it is reached by (an MX host
    /// name, or none for a host target given by address): the findings carry that name.
    ports: OncePer<(Option<String>, IpAddr), Vec<Finding>>,
    /// The lookups of each MX endpoint that need no connection (`--dns-only`).
    lookups: OncePer<EndpointKey, Vec<Finding>>,
}

/// Audits every target on the current runtime and returns the report; `on_done` is called
/// once per finished target. [`audit_blocking`] runs it on threads of its own.
pub async fn audit(
    targets: Vec<Target>,
    options: AuditOptions,
    on_done: impl Fn(&TargetReport) + Send + Sync + 'static,
) -> Report {
    let resolver = resolver(&options.names);
    let turns = options.concurrency.min(targets.len());
    let run = Arc::new(Run::new(targets, options));
    run.clone()
        .take_turns(resolver, turns, Arc::new(on_done))
        .await;
    run.report()
}

/// Audits every target on threads of its own and returns the report, for a caller without a
/// runtime (the command line); `on_done` is called once per finished target, from those
/// threads.
///
/// A run that connects to no mail host (`--dns-only`, or only checks that need no
/// connection) is thousands of short DNS exchanges, bound by CPU: it runs on a thread per
/// CPU, each with a single-threaded runtime and DNS sockets of its own over the run's one
/// answer cache ([`Resolver::with_own_transport`]), the threads taking the targets in order
/// from one queue and sharing out the [`AuditOptions::concurrency`] targets in progress. In
/// one runtime whose threads share their tasks, an answer read on one thread tends to wake
/// its query's task on the other, and those wake-ups cost such a run on two CPUs about a
/// tenth of its time (docs/BENCHMARKS.md). A run that connects waits mostly for each mail
/// host's turn (one session at a time per host): it runs on one multi-threaded runtime, whose
/// idle threads take up whichever task is ready and so keep those turns moving (on threads
/// of their own such runs took a tenth longer). Either way everything else of the run is
/// shared as with [`audit`].
///
/// How it fails: when a runtime or a thread's resolver cannot be made, or no thread can be
/// started, with that error and nothing audited (threads that did start take every target).
pub fn audit_blocking(
    targets: Vec<Target>,
    options: AuditOptions,
    on_done: impl Fn(&TargetReport) + Send + Sync + 'static,
) -> std::io::Result<Report> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if options.dns_only || !options.dns.checks.needs_connection() {
        return audit_in_threads(targets, options, threads, on_done);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(audit(targets, options, on_done)))
}

/// [`audit_blocking`] on `threads` threads with a runtime each (at most one per target in
/// progress).
fn audit_in_threads(
    targets: Vec<Target>,
    options: AuditOptions,
    threads: usize,
    on_done: impl Fn(&TargetReport) + Send + Sync + 'static,
) -> std::io::Result<Report> {
    let concurrency = options.concurrency.max(1);
    let threads = threads.clamp(1, concurrency.min(targets.len()).max(1));
    // Everything a thread needs is made before the first starts, so that a failure leaves no
    // thread behind auditing for a run that reports an error.
    let first = resolver(&options.names);
    let mut shards = Vec::with_capacity(threads);
    for index in 0..threads {
        let resolver = match &first {
            Ok(shared) if index > 0 => Ok(shared
                .with_own_transport()
                .map_err(|e| std::io::Error::other(format!("the DNS resolver: {e}")))?),
            first => first.clone(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let turns = concurrency / threads + usize::from(index < concurrency % threads);
        shards.push((resolver, runtime, turns));
    }
    let run = Arc::new(Run::new(targets, options));
    let on_done: OnDone = Arc::new(on_done);
    let mut started = Vec::with_capacity(threads);
    for (index, (resolver, runtime, turns)) in shards.into_iter().enumerate() {
        let (run, on_done) = (run.clone(), on_done.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("audit-{index}"))
            .spawn(move || runtime.block_on(run.take_turns(resolver, turns, on_done)));
        match spawned {
            Ok(thread) => started.push(thread),
            // The threads started take every target from the queue between them.
            Err(e) if !started.is_empty() => {
                tracing::warn!(event = "audit_thread_not_started", reason = %e);
            }
            Err(e) => return Err(e),
        }
    }
    for thread in started {
        if thread.join().is_err() {
            // Each target's audit is caught (take_turns): this is a thread's driver itself.
            // The targets it finished are in the report already.
            tracing::error!(
                event = "audit_task_failed",
                reason = "an audit thread panicked"
            );
        }
    }
    Ok(run.report())
}

/// What every target of a run shares: its options, the targets not yet started and the
/// shared results.
struct Run {
    options: AuditOptions,
    /// The targets not yet taken, with their place in the report.
    queue: Mutex<std::iter::Enumerate<std::vec::IntoIter<Target>>>,
    /// Each target's report, in its place, as soon as it is finished.
    reports: Mutex<Vec<Option<TargetReport>>>,
    shared: Shared,
}

/// What is called as each target finishes.
type OnDone = Arc<dyn Fn(&TargetReport) + Send + Sync>;

impl Run {
    fn new(targets: Vec<Target>, options: AuditOptions) -> Run {
        Run {
            options,
            reports: Mutex::new(vec![None; targets.len()]),
            queue: Mutex::new(targets.into_iter().enumerate()),
            shared: Shared::default(),
        }
    }

    /// Audits targets from the queue on the current runtime, `turns` at a time (a task each),
    /// until none is left. A target is taken only when a turn is free: a domain's audit is a
    /// large future (tens of KiB), which a task per target would allocate and copy for every
    /// target of the run before its turn. Each finished report goes into its place in
    /// [`Run::reports`] at once. A target whose audit panics (a bug; the panic message is on
    /// stderr) is left out of the report and logged; its turn goes on with the next target.
    async fn take_turns(
        self: Arc<Self>,
        resolver: Result<Resolver, String>,
        turns: usize,
        on_done: OnDone,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..turns.max(1) {
            let (run, resolver, on_done) = (self.clone(), resolver.clone(), on_done.clone());
            tasks.spawn(async move {
                loop {
                    let next = lock(&run.queue).next();
                    let Some((index, target)) = next else {
                        return;
                    };
                    let audited = AssertUnwindSafe(Box::pin(run.target(&target, &resolver)))
                        .catch_unwind()
                        .await;
                    match audited {
                        Ok(report) => {
                            on_done(&report);
                            let mut reports = lock(&run.reports);
                            if let Some(place) = reports.get_mut(index) {
                                *place = Some(report);
                            }
                        }
                        Err(_) => tracing::error!(
                            event = "audit_task_failed",
                            target = %target,
                            reason = "the audit of the target panicked"
                        ),
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(event = "audit_task_failed", reason = %e);
            }
        }
    }

    /// One target's report, with the findings of the run's checks only.
    async fn target(&self, target: &Target, resolver: &Result<Resolver, String>) -> TargetReport {
        let (options, shared) = (&self.options, &self.shared);
        let mut report = match target {
            Target::Domain { domain, port } => {
                audit_domain(domain, *port, options, shared, resolver).await
            }
            Target::Host(_) => audit_target(target, options, shared, resolver).await,
        };
        select_findings(&mut report, &options.dns.checks);
        report
    }

    /// The report: the finished targets in the order given.
    fn report(&self) -> Report {
        let reports = std::mem::take(&mut *lock(&self.reports));
        let mut report = Report::new();
        report.targets = reports.into_iter().flatten().collect();
        report
    }
}

async fn audit_target(
    target: &Target,
    options: &AuditOptions,
    shared: &Shared,
    resolver: &Result<Resolver, String>,
) -> TargetReport {
    let name = target.to_string();
    let checks = &options.dns.checks;
    if !checks.wants_a_host_check() {
        // A host has no other checks: nothing to connect for.
        return TargetReport {
            target: name,
            endpoints: Vec::new(),
            findings: Vec::new(),
        };
    }
    let endpoints = match resolve(target, &options.names, resolver).await {
        Ok(e) if !e.is_empty() => e,
        Ok(_) => return unresolved(name, "the name has no address".into()),
        Err(why) => return unresolved(name, why),
    };
    let mut report = TargetReport {
        target: name,
        endpoints: endpoints.iter().map(Endpoint::to_string).collect(),
        findings: Vec::new(),
    };
    let mut summaries = Vec::new();
    let mut answered = Vec::new();
    for endpoint in &endpoints {
        let lock = shared.locks.get(endpoint.addr.ip());
        let _held = lock.lock().await;
        let findings = smtp::audit_endpoint(endpoint, &options.smtp, checks).await;
        let tls_report = if reachable(&findings) {
            if endpoint.role == Role::Mx {
                answered.push(endpoint.clone());
            }
            if checks.wants_any_under("tls") {
                Some(tls_checks(endpoint, options).await)
            } else {
                None
            }
        } else {
            None
        };
        report.findings.extend(findings);
        if let Some(tls_report) = tls_report {
            report.findings.extend(tls_report.findings);
            summaries.push(tls_report.summary);
        }
    }
    // Only the SMTP servers (the role of an MX: a submission server is also the users'
    // mailbox server, where IMAP and POP3 are expected), and only the addresses that
    // answered: a host that could not be audited stays a target whose every check is an
    // error (exit code 3), not one with a port list.
    report
        .findings
        .extend(exposed_ports(&answered, options, shared).await);
    if !summaries.is_empty() {
        report
            .findings
            .push(tls::consistency(&report.target, &summaries));
    }
    report
}

/// The TLS checks of an endpoint that answered SMTP (STARTTLS on port 25 and submission,
/// implicit TLS on submissions). The summary feeds `tls.consistency`.
async fn tls_checks(endpoint: &Endpoint, options: &AuditOptions) -> tls::EndpointReport {
    let tls_target = TlsTarget {
        host: endpoint.host(),
        addr: endpoint.addr,
        mode: match endpoint.role {
            Role::Submissions => TlsMode::Implicit,
            Role::Mx | Role::Submission => TlsMode::StartTls,
        },
    };
    tls::audit_endpoint_async(tls_target, options.tls.clone()).await
}

/// Keeps the findings of the checks `checks` selects, and those telling why a target could
/// not be audited, so that it still counts as not audited ([`could_not_run`]): a server that
/// could not be reached (`smtp.connect`), a configuration that could not be read
/// (`postfix.config`), a domain without mail hosts to check (`dns.mx`, when it has no
/// endpoint).
pub fn select_findings(report: &mut TargetReport, checks: &Selection) {
    if checks.is_everything() {
        return;
    }
    let no_endpoint = report.endpoints.is_empty();
    report.findings.retain(|f| {
        checks.wants(&f.id)
            || (f.status == Status::Error && (f.id == "smtp.connect" || f.id == "postfix.config"))
            || (f.id == "dns.mx" && no_endpoint)
    });
}

/// Whether the SMTP checks reached the endpoint at all.
fn reachable(findings: &[Finding]) -> bool {
    !findings
        .iter()
        .any(|f| f.id == "smtp.connect" && f.status == Status::Error)
}

/// A domain: its DNS checks, then every address of every MX host.
async fn audit_domain(
    domain: &str,
    port: u16,
    options: &AuditOptions,
    shared: &Shared,
    resolver: &Result<Resolver, String>,
) -> TargetReport {
    let resolver = match resolver {
        Ok(r) => r,
        Err(why) => return unresolved(domain.to_string(), why.clone()),
    };
    let ctx = DnsCtx {
        resolver,
        options: &options.dns,
        domain,
    };
    let checks = &options.dns.checks;
    if options.dns_only || !checks.needs_connection() {
        return dns_only(&ctx, port, options, shared).await;
    }
    let (mx, findings, ()) = dns::resolve_and_audit(&ctx, |_| async {}).await;
    let endpoints = mx_endpoints(&mx, port);
    let mut report = TargetReport {
        target: domain.to_string(),
        endpoints: endpoints.iter().map(Endpoint::to_string).collect(),
        findings,
    };
    let mut summaries = Vec::new();
    for endpoint in &endpoints {
        let cell = shared
            .endpoints
            .get((endpoint.name.clone(), endpoint.addr, endpoint.role));
        let seen = cell
            .get_or_init(|| audit_mx_endpoint(&ctx, endpoint, options, &shared.locks))
            .await;
        report.findings.extend(seen.host.findings.iter().cloned());
        if seen.host.reachable() {
            let lock = shared.locks.get(endpoint.addr.ip());
            let _held = lock.lock().await;
            report.findings.extend(
                smtp::audit_domain_checks(endpoint, &options.smtp, &seen.host, checks).await,
            );
        }
        if let Some(tls_report) = &seen.tls {
            report.findings.extend(tls_report.findings.iter().cloned());
            summaries.push(tls_report.summary.clone());
        }
        report.findings.extend(seen.dns.iter().cloned());
    }
    report
        .findings
        .extend(exposed_ports(&endpoints, options, shared).await);
    if !summaries.is_empty() {
        report.findings.push(tls::consistency(domain, &summaries));
    }
    let tls_findings: Vec<Finding> = report
        .findings
        .iter()
        .filter(|f| f.id.starts_with("tls."))
        .cloned()
        .collect();
    for f in &mut report.findings {
        dns::mta_sts::certificates(f, &tls_findings);
    }
    report
}

/// `--dns-only`: the domain's DNS checks, and the lookups of its MX addresses alongside
/// them as soon as the MX set is known, all addresses at once (nothing connects to a host, so
/// no per-host turn is taken). An MX endpoint shared by several domains is looked up once per
/// run, as its audit is in a full run, and its findings copied into each domain's report;
/// lookups that failed (an `error` finding) are not kept, and the next domain asks again.
async fn dns_only(
    ctx: &DnsCtx<'_>,
    port: u16,
    options: &AuditOptions,
    shared: &Shared,
) -> TargetReport {
    let addresses = |mx: dns::MxSet| async move {
        let endpoints = mx_endpoints(&mx, port);
        let found = futures_util::future::join_all(endpoints.iter().map(|endpoint| async move {
            let cell = shared
                .lookups
                .get((endpoint.name.clone(), endpoint.addr, endpoint.role));
            if let Some(found) = cell.get() {
                return found.clone();
            }
            // Kept only when no lookup failed: a timeout is asked again by the next domain, as
            // the answer cache asks again (the domains audited meanwhile ask at once, and
            // their questions are shared there).
            let found = dns::lookup_endpoint(ctx, endpoint, &options.smtp).await;
            if found.iter().all(|f| f.status != Status::Error) {
                let _ = cell.set(found.clone());
            }
            found
        }))
        .await;
        (endpoints, found)
    };
    let (_, mut findings, (endpoints, per_address)) = dns::resolve_and_audit(ctx, addresses).await;
    findings.extend(per_address.into_iter().flatten());
    TargetReport {
        target: ctx.domain.to_string(),
        endpoints: endpoints.iter().map(Endpoint::to_string).collect(),
        findings,
    }
}

/// The checks of an MX endpoint that do not depend on the domain: the server's SMTP checks,
/// its TLS checks when it answers, and its per-address DNS checks.
async fn audit_mx_endpoint(
    ctx: &DnsCtx<'_>,
    endpoint: &Endpoint,
    options: &AuditOptions,
    locks: &HostLocks,
) -> SharedEndpoint {
    let lock = locks.get(endpoint.addr.ip());
    let _held = lock.lock().await;
    let host = smtp::audit_host(endpoint, &options.smtp).await;
    let reachable = host.reachable();
    // `dns.mta_sts` reads the TLS findings of the MX hosts an enforced policy names.
    let checks = &options.dns.checks;
    let tls = if reachable && (checks.wants_any_under("tls") || checks.wants("dns.mta_sts")) {
        Some(tls_checks(endpoint, options).await)
    } else {
        None
    };
    let dns = dns::audit_endpoint(ctx, endpoint, reachable, &options.smtp, &options.tls).await;
    SharedEndpoint { host, tls, dns }
}

/// `ports.exposed` for every address of the endpoints, once each per run: which of the mail
/// ports ([`ports::MAIL_PORTS`]) answer, and whether POP3 / IMAP take clear-text logins.
/// Nothing when [`AuditOptions::port_scan`] is off.
async fn exposed_ports(
    endpoints: &[Endpoint],
    options: &AuditOptions,
    shared: &Shared,
) -> Vec<Finding> {
    if !options.port_scan || !options.dns.checks.wants("ports.exposed") {
        return Vec::new();
    }
    let mut done: Vec<IpAddr> = Vec::new();
    let mut findings = Vec::new();
    for endpoint in endpoints {
        let ip = endpoint.addr.ip();
        if done.contains(&ip) {
            continue;
        }
        done.push(ip);
        let name = endpoint.name.as_deref();
        let cell = shared.ports.get((endpoint.name.clone(), ip));
        let found = cell
            .get_or_init(|| async {
                let lock = shared.locks.get(ip);
                let _held = lock.lock().await;
                ports::scan_ports(name, ip, ports::MAIL_PORTS, &ports::PortOptions::default()).await
            })
            .await;
        findings.extend(found.iter().cloned());
    }
    findings
}

fn unresolved(target: String, why: String) -> TargetReport {
    TargetReport {
        endpoints: Vec::new(),
        findings: vec![
            Finding::new(
                "smtp.connect",
                Status::Error,
                Severity::Info,
                target.clone(),
                "the mail server could not be audited",
                why,
            )
            .fix("Check the target's spelling, and that its name resolves from here."),
        ],
        target,
    }
}

/// The endpoints of a host target: with `--nameserver`, the host name's addresses from that
/// server; otherwise from the system (getaddrinfo, so /etc/hosts counts). A domain target's
/// endpoints are its MX hosts' ([`dns::mx::resolve`]).
pub async fn resolve(
    target: &Target,
    names: &NameService,
    resolver: &Result<Resolver, String>,
) -> Result<Vec<Endpoint>, String> {
    match target {
        Target::Host(h) => match (&h.host, names) {
            (target::Host::Name(name), NameService::Server(server)) => {
                let resolver = resolver.as_ref().map_err(Clone::clone)?;
                let addrs: Vec<IpAddr> = resolver
                    .ips(name, false)
                    .await
                    .map_err(|e| format!("cannot resolve {name} at {server}: {e}"))?
                    .records;
                Ok(target::endpoints_of(h, addrs))
            }
            _ => target::resolve_with_system(h).await,
        },
        Target::Domain { domain, port } => {
            let resolver = resolver.as_ref().map_err(Clone::clone)?;
            let mx = dns::mx::resolve(resolver, domain).await;
            Ok(mx_endpoints(&mx, *port))
        }
    }
}

/// Every address of every MX host, as endpoints on `port` (`--smtp-port`, 25 by default).
pub fn mx_endpoints(mx: &dns::MxSet, port: u16) -> Vec<Endpoint> {
    mx.hosts
        .iter()
        .flat_map(|host| {
            host.addresses.iter().map(|ip| Endpoint {
                name: Some(host.name.clone()),
                addr: SocketAddr::new(*ip, port),
                role: Role::Mx,
                domain: Some(mx.domain.clone()),
            })
        })
        .collect()
}

/// Whether a target could not be audited at all: every check it has is an `error` (it did
/// not resolve, no endpoint could be reached, or every DNS lookup of a domain failed).
pub fn could_not_run(t: &TargetReport) -> bool {
    !t.findings.is_empty() && t.findings.iter().all(|f| f.status == Status::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_whose_every_check_errored_could_not_run() {
        let error = |id: &str| {
            Finding::new(
                id,
                Status::Error,
                Severity::Info,
                "example.org",
                "t",
                "timed out",
            )
        };
        let mut t = TargetReport {
            target: "example.org".into(),
            endpoints: Vec::new(),
            findings: vec![error("dns.mx"), error("dns.spf")],
        };
        assert!(could_not_run(&t));
        t.findings.push(Finding::new(
            "dns.dmarc",
            Status::Fail,
            Severity::High,
            "example.org",
            "no DMARC record",
            "",
        ));
        assert!(!could_not_run(&t));
    }
}
