//! `ravelin audit`: command-line glue around `ravelin_audit`.
//!
//! Reads the targets (arguments and `--targets-file`), runs the audit, adds the lint of each
//! `--postfix-config` directory as a target of its own, renders the report in
//! the chosen format to stdout or `--output`, and sets the exit code: 0 clean, 1 a failed or
//! warned finding at or above `--fail-on` (default high), 2 usage error (bad flag, bad target,
//! unreadable targets file, no target), 3 the audit could not run (a target that did not
//! resolve, could not be reached at all or whose every DNS lookup failed, a Postfix directory
//! without a readable main.cf, or the report could not be written) — 1 wins over 3.
//!
//! `--check` / `--skip-check` choose the checks (a pattern naming no check is a usage
//! error); `--list-checks` prints every check id and exits.
//!
//! `--dns-only` accepts domain targets only (a host target is a usage error): a host has no
//! DNS checks of its own.
//!
//! Text output is coloured when it goes to a terminal and `NO_COLOR` is not set. A progress
//! bar is drawn on stderr when stderr is a terminal and there is more than one target.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ravelin_audit::Severity;
use ravelin_audit::dns::DnsOptions;
use ravelin_audit::finding::{Report, TargetReport};
use ravelin_audit::local::lint_postfix_config;
use ravelin_audit::render::{self, Format};
use ravelin_audit::run::{self, AuditOptions, NameService};
use ravelin_audit::select::Selection;
use ravelin_audit::smtp::SmtpOptions;
use ravelin_audit::smtp::probe::ProbeSettings;
use ravelin_audit::target::{Target, TargetDefaults};
use ravelin_audit::tls::{TlsOptions, Trust};

/// Largest targets file read.
const MAX_TARGETS_FILE: u64 = 4 * 1024 * 1024;
/// Most targets in one run.
const MAX_TARGETS: usize = 100_000;

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// What to audit: a mail DOMAIN (its DNS records, and every address of every MX host), or
    /// a host: HOST:PORT, ADDRESS, [IPv6]:PORT or DOMAIN@HOST[:PORT] (the domain enables the
    /// recipient checks), optionally prefixed with smtp://, submission:// or submissions://.
    targets: Vec<String>,
    /// Report format.
    #[arg(long, default_value = "text", value_parser = ["text", "json", "sarif", "html"])]
    format: String,
    /// Write the report to FILE instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Resolve host names with this DNS server (IP:PORT) instead of the system's resolver.
    #[arg(long, value_name = "IP:PORT")]
    nameserver: Option<SocketAddr>,
    /// Port of targets given without a port, and of a domain's MX hosts.
    #[arg(long, default_value_t = 25, value_name = "N")]
    smtp_port: u16,
    /// Also look for DKIM keys under this selector (repeatable; common selectors are always
    /// tried).
    #[arg(long, value_name = "SELECTOR")]
    dkim_selector: Vec<String>,
    /// DNS blocklist zone to look MX addresses up in (repeatable; replaces the default list:
    /// zen.spamhaus.org, bl.spamcop.net, b.barracudacentral.org, psbl.surriel.com).
    #[arg(long, value_name = "ZONE")]
    dnsbl: Vec<String>,
    /// Extra CA certificates (PEM) trusted by the TLS checks, besides the public roots.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Trust only the CA certificates (PEM) of FILE, instead of the system roots, when
    /// fetching MTA-STS policies (for private test PKIs).
    #[arg(long, value_name = "FILE")]
    mta_sts_ca_file: Option<PathBuf>,
    /// HTTPS port of MTA-STS policy hosts (for tests; the standard is 443).
    #[arg(long, default_value_t = 443, value_name = "N")]
    mta_sts_port: u16,
    /// Also run the active checks: open relay up to DATA (dropped before the final dot) and
    /// SMTP smuggling (a vulnerable server receives short test messages). Only against
    /// servers you run or may test.
    #[arg(long)]
    active: bool,
    /// Run only the DNS checks of domain targets: their records (MX, SPF, DMARC, DKIM,
    /// MTA-STS, TLS-RPT, DNSSEC, CAA) and the PTR and blocklist lookups of their MX
    /// addresses. Nothing connects to a mail host (no SMTP, TLS or DANE checks). Domain
    /// targets only.
    #[arg(long, conflicts_with = "active")]
    dns_only: bool,
    /// Do not test the other mail ports (25, 465, 587, 2525, 110, 143, 993, 995) of each MX
    /// address and SMTP host target (the ports.exposed check).
    #[arg(long)]
    no_port_scan: bool,
    /// Make only this check, or the checks of this family (repeatable): a check id
    /// (dns.spf) or a family (dns, tls, smtp.smuggling). Checks not chosen are not run (no
    /// query, no connection, nothing sent with --active), except the passive SMTP session
    /// that tells whether a mail host answers; a domain none of whose chosen checks needs its
    /// mail hosts (smtp, tls, ports, dns.ptr, dns.dane, dns.mta_sts) is audited without
    /// connecting to them.
    #[arg(long = "check", value_name = "ID")]
    checks: Vec<String>,
    /// Leave out this check, or the checks of this family (repeatable; wins over --check).
    #[arg(long = "skip-check", value_name = "ID")]
    skip_checks: Vec<String>,
    /// Print every check id with what it verifies, and exit (as JSON with --format json).
    #[arg(long)]
    list_checks: bool,
    /// Exit with 1 when a failed or warned check has at least this severity.
    #[arg(long, default_value = "high", value_name = "SEVERITY",
          value_parser = ["info", "low", "medium", "high", "critical"])]
    fail_on: String,
    /// Targets audited at the same time. Each mail server address still gets one connection
    /// at a time, however many targets share it: this bounds the lookups in flight and the
    /// different servers tested at once.
    #[arg(long, default_value_t = run::DEFAULT_CONCURRENCY, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Read more targets from FILE, one per line ('#' starts a comment).
    #[arg(long, value_name = "FILE")]
    targets_file: Option<PathBuf>,
    /// Also lint the Postfix configuration in DIR (main.cf and master.cf, e.g. /etc/postfix),
    /// from the inside (repeatable; needs no other target).
    #[arg(long, value_name = "DIR")]
    postfix_config: Vec<PathBuf>,
    /// The name to give in EHLO.
    #[arg(long, default_value = "audit.ravelin.invalid", value_name = "NAME")]
    helo: String,
    /// The outside domain the open-relay check tries to relay to.
    #[arg(long, default_value = "example.com", value_name = "DOMAIN")]
    relay_domain: String,
    /// Seconds to wait for a reply after each fake end-of-data sequence (--active).
    #[arg(long, default_value_t = 5, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    smuggling_wait: u64,
    /// Seconds to wait for each reply after the greeting.
    #[arg(long, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
    /// Seconds to wait for a server's greeting (some servers delay it on purpose: postscreen
    /// 6 s by default; RFC 5321 lets a client wait 5 minutes).
    #[arg(long, default_value_t = 60, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    greeting_timeout: u64,
}

fn usage(message: &str) -> ExitCode {
    eprintln!("ravelin audit: {message}");
    ExitCode::from(2)
}

/// The lines of a targets file, without comments and blank lines.
fn read_targets_file(path: &Path) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_TARGETS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_TARGETS_FILE {
        return Err(format!(
            "{}: larger than {MAX_TARGETS_FILE} bytes",
            path.display()
        ));
    }
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// `--list-checks`: every check id (the smuggling sequences too) and its description, one
/// per line or as a JSON array.
fn list_checks(json: bool) -> ExitCode {
    let checks: Vec<(String, &str)> = ravelin_audit::check_ids()
        .into_iter()
        .map(|id| {
            let description = render::describe(&id).unwrap_or_default();
            (id, description)
        })
        .collect();
    let text = if json {
        let list: Vec<serde_json::Value> = checks
            .iter()
            .map(|(id, description)| serde_json::json!({"id": id, "description": description}))
            .collect();
        serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
    } else {
        checks
            .iter()
            .map(|(id, description)| format!("{id:<32} {description}\n"))
            .collect()
    };
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ravelin audit: cannot write the list: {e}");
            ExitCode::from(3)
        }
    }
}

pub fn run(args: AuditArgs) -> ExitCode {
    if args.list_checks {
        return list_checks(args.format == "json");
    }
    let checks = match Selection::new(&args.checks, &args.skip_checks) {
        Ok(checks) => checks,
        Err(e) => return usage(&format!("--check / --skip-check {e}")),
    };
    if args.dns_only && !checks.wants_a_lookup() {
        return usage(
            "--dns-only makes no connection, and the checks chosen all need one (smtp, tls, \
             ports, dns.dane): drop --dns-only",
        );
    }
    let mut specs = args.targets.clone();
    if let Some(path) = &args.targets_file {
        match read_targets_file(path) {
            Ok(more) => specs.extend(more),
            Err(e) => return usage(&e),
        }
    }
    if specs.is_empty() && args.postfix_config.is_empty() {
        return usage("no target given (arguments, --targets-file or --postfix-config)");
    }
    if specs.len() > MAX_TARGETS {
        return usage(&format!("more than {MAX_TARGETS} targets"));
    }
    let defaults = TargetDefaults {
        smtp_port: args.smtp_port,
    };
    let mut targets = Vec::with_capacity(specs.len());
    for spec in &specs {
        match Target::parse(spec, defaults) {
            Ok(Target::Host(_)) if args.dns_only => {
                return usage(&format!(
                    "--dns-only audits mail domains, and {spec:?} is a host: give the domain \
                     (example.org), or drop --dns-only"
                ));
            }
            Ok(t) => targets.push(t),
            Err(e) => return usage(&e),
        }
    }
    if !ravelin_audit::target::is_domain_name(&args.helo) {
        return usage(&format!("--helo {:?} is not a host name", args.helo));
    }
    if !ravelin_audit::target::is_domain_name(&args.relay_domain) {
        return usage(&format!(
            "--relay-domain {:?} is not a domain name",
            args.relay_domain
        ));
    }
    for name in args.dkim_selector.iter().chain(&args.dnsbl) {
        if !ravelin_audit::target::is_domain_name(name) {
            return usage(&format!(
                "{name:?} is not a DKIM selector or DNS zone (--dkim-selector, --dnsbl)"
            ));
        }
    }
    let extra_roots = match &args.ca_file {
        Some(path) => match ravelin_audit::tls::load_ca_file(path) {
            Ok(certs) => certs,
            Err(e) => return usage(&format!("--ca-file {e}")),
        },
        None => Vec::new(),
    };
    if let Some(path) = &args.mta_sts_ca_file
        && let Err(e) = ravelin_audit::tls::load_ca_file(path)
    {
        return usage(&format!("--mta-sts-ca-file {e}"));
    }
    let (Some(format), Some(fail_on)) =
        (Format::parse(&args.format), Severity::parse(&args.fail_on))
    else {
        return usage("bad --format or --fail-on");
    };
    let timeout = Duration::from_secs(args.timeout);
    let options = AuditOptions {
        smtp: SmtpOptions {
            probe: Arc::new(ProbeSettings {
                helo_name: args.helo.clone(),
                command_timeout: timeout,
                greeting_timeout: Duration::from_secs(args.greeting_timeout),
                connect_timeout: timeout.min(Duration::from_secs(10)),
                ..ProbeSettings::default()
            }),
            active: args.active,
            relay_domain: args.relay_domain.clone(),
            smuggling_wait: Duration::from_secs(args.smuggling_wait),
            ..SmtpOptions::default()
        },
        tls: Arc::new(TlsOptions {
            timeout: timeout.min(Duration::from_secs(15)),
            ehlo_name: args.helo.clone(),
            trust: Trust {
                public_roots: true,
                extra_roots,
            },
        }),
        dns: DnsOptions {
            dkim_selectors: args.dkim_selector.clone(),
            dnsbl_zones: if args.dnsbl.is_empty() {
                DnsOptions::default().dnsbl_zones
            } else {
                args.dnsbl.clone()
            },
            mta_sts_port: args.mta_sts_port,
            mta_sts_ca_file: args.mta_sts_ca_file.clone(),
            checks: checks.clone(),
            ..DnsOptions::default()
        },
        concurrency: usize::from(args.concurrency),
        dns_only: args.dns_only,
        port_scan: !args.no_port_scan,
        names: match args.nameserver {
            Some(server) => NameService::Server(server),
            None => NameService::System,
        },
    };

    let bar = (targets.len() > 1 && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(targets.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        ) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let progress = bar.clone();
    let audited = run::audit_blocking(targets, options, move |t| {
        if let Some(bar) = &progress {
            bar.set_message(t.target.clone());
            bar.inc(1);
        }
    });
    let mut report = match audited {
        Ok(report) => report,
        Err(e) => {
            eprintln!("ravelin audit: cannot start the audit: {e}");
            return ExitCode::from(3);
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for dir in &args.postfix_config {
        let mut lint = TargetReport {
            target: format!("postfix:{}", dir.display()),
            endpoints: vec![dir.join("main.cf").display().to_string()],
            findings: lint_postfix_config(dir),
        };
        run::select_findings(&mut lint, &checks);
        report.targets.push(lint);
    }

    let color = format == Format::Text
        && args.output.is_none()
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let written = match &args.output {
        Some(path) => std::fs::File::create(path)
            .and_then(|file| write_report(&report, format, color, file))
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => write_report(&report, format, color, std::io::stdout().lock())
            .map_err(|e| format!("cannot write the report: {e}")),
    };
    if let Err(e) = written {
        eprintln!("ravelin audit: {e}");
        return ExitCode::from(3);
    }
    let code = if report.fails_at(fail_on) {
        ExitCode::from(1)
    } else if report.targets.iter().any(run::could_not_run) {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    };
    // The process ends next: handing a batch's findings back to the allocator one by one
    // (which then returns their pages to the kernel) took longer than the exit itself.
    std::mem::forget(report);
    code
}

/// Writes the rendered report to `out` through a buffer, and flushes it.
fn write_report(
    report: &Report,
    format: Format,
    color: bool,
    out: impl std::io::Write,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    render::write(report, format, color, &mut out)?;
    out.flush()
}
