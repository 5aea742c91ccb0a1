//! Running an audit over many targets: resolution, concurrency, politeness, one report.
//!
//! [`audit`] resolves each target to its endpoints and runs the check families on each,
//! with at most [`AuditOptions::concurrency`] targets in progress at once and never two
//! endpoint audits of the same mail host (IP address) at the same time, whatever the
//! concurrency: several targets naming the same server are audited one after the other.
//! The report lists the targets in the order given; `on_done` is called as each target
//! finishes (for a progress bar).
//!
//! Settings read: [`AuditOptions`]. How it fails: a target that cannot be resolved gets a
//! single `smtp.connect` finding with status `error`; nothing aborts the run.
//! [`could_not_run`] tells the targets that could not be audited at all (exit code 3).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::finding::{Finding, Report, Severity, Status, TargetReport};
use crate::smtp::{self, SmtpOptions};
use crate::target::{self, Endpoint, Target};

/// How names are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NameService {
    /// The system's resolver (getaddrinfo: /etc/hosts, resolv.conf).
    #[default]
    System,
    /// One DNS server, e.g. `127.0.0.1:5353` (`--nameserver`).
    Server(SocketAddr),
}

/// How an audit runs.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub smtp: SmtpOptions,
    /// Targets audited at once (at least 1).
    pub concurrency: usize,
    pub names: NameService,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            smtp: SmtpOptions::default(),
            concurrency: 8,
            names: NameService::System,
        }
    }
}

/// One lock per mail host address: endpoint audits of one host never overlap.
#[derive(Default)]
struct HostLocks(Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>);

impl HostLocks {
    fn get(&self, ip: IpAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.0.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(ip).or_default().clone()
    }
}

/// Audits every target and returns the report; `on_done` is called once per finished target.
pub async fn audit(
    targets: Vec<Target>,
    options: AuditOptions,
    on_done: impl Fn(&TargetReport) + Send + Sync + 'static,
) -> Report {
    let options = Arc::new(options);
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let locks = Arc::new(HostLocks::default());
    let on_done = Arc::new(on_done);
    let mut tasks = tokio::task::JoinSet::new();
    let count = targets.len();
    for (index, target) in targets.into_iter().enumerate() {
        let (options, permits, locks, on_done) = (
            options.clone(),
            permits.clone(),
            locks.clone(),
            on_done.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let report = audit_target(&target, &options, &locks).await;
            on_done(&report);
            (index, report)
        });
    }
    let mut reports: Vec<Option<TargetReport>> = vec![None; count];
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((index, report)) => reports[index] = Some(report),
            Err(e) => tracing::error!(event = "audit_task_failed", reason = %e),
        }
    }
    let mut report = Report::new();
    report.targets = reports.into_iter().flatten().collect();
    report
}

async fn audit_target(target: &Target, options: &AuditOptions, locks: &HostLocks) -> TargetReport {
    let name = target.to_string();
    let endpoints = match resolve(target, &options.names).await {
        Ok(e) if !e.is_empty() => e,
        Ok(_) => return unresolved(name, "the name has no address".into()),
        Err(why) => return unresolved(name, why),
    };
    let mut report = TargetReport {
        target: name,
        endpoints: endpoints.iter().map(Endpoint::to_string).collect(),
        findings: Vec::new(),
    };
    for endpoint in &endpoints {
        let lock = locks.get(endpoint.addr.ip());
        let _held = lock.lock().await;
        report
            .findings
            .extend(smtp::audit_endpoint(endpoint, &options.smtp).await);
    }
    report
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

/// The endpoints of a target.
pub async fn resolve(target: &Target, names: &NameService) -> Result<Vec<Endpoint>, String> {
    match target {
        Target::Host(h) => match (&h.host, names) {
            (target::Host::Name(name), NameService::Server(server)) => {
                let addrs = lookup_ip(name, *server).await?;
                Ok(target::endpoints_of(h, addrs))
            }
            _ => target::resolve_with_system(h).await,
        },
    }
}

/// Every A and AAAA address of `name`, asked of one DNS server.
async fn lookup_ip(name: &str, server: SocketAddr) -> Result<Vec<IpAddr>, String> {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut ns.connections {
        connection.port = server.port();
    }
    let mut opts = ResolverOpts::default();
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    let mut builder = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![ns]),
        TokioRuntimeProvider::default(),
    );
    *builder.options_mut() = opts;
    let resolver = builder
        .build()
        .map_err(|e| format!("cannot set up the resolver for {server}: {e}"))?;
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let lookup = resolver
        .lookup_ip(fqdn.as_str())
        .await
        .map_err(|e| format!("cannot resolve {name} at {server}: {e}"))?;
    Ok(lookup.iter().collect())
}

/// Whether a target could not be audited at all: it did not resolve, or no endpoint could be
/// reached (its only findings are `smtp.connect` errors).
pub fn could_not_run(t: &TargetReport) -> bool {
    t.findings
        .iter()
        .all(|f| f.id == "smtp.connect" && f.status == Status::Error)
}
