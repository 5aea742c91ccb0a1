//! `ravelin audit --postfix-config DIR`: lints a Postfix configuration (main.cf and master.cf)
//! against the hardening baseline, from the inside.
//!
//! - [`parse`] reads both files as Postfix does (logical lines, comments, `-o` overrides).
//! - [`view`] gives each smtpd service its effective parameters: its `-o` overrides, else
//!   main.cf, else the Postfix 3.7 defaults listed there, with `$name` expansion.
//! - [`networks`] judges network lists (`mynetworks`, bare-newline exclusions).
//! - [`checks`] holds one function per check; they run once per smtpd service of master.cf
//!   (`inet` and postscreen's `pass` services whose command is `smtpd`), or on Postfix's
//!   default `smtp inet ... smtpd` service when DIR has no master.cf.
//!
//! Identical results for several services are reported once, with the services named in
//! the title (`[smtp, submission]`). Every finding's endpoint is `FILE:LINE` of the setting
//! that decides it, or the file (main.cf) when the setting is absent and Postfix's default
//! applies; the evidence quotes the line; the fix is the line to write, in main.cf or as a
//! `-o` override of one service in master.cf.
//!
//! Settings read: DIR/main.cf (required) and DIR/master.cf (optional), each at most
//! [`MAX_FILE_BYTES`]. How it fails: an unreadable or oversized main.cf gives one `error`
//! finding (`postfix.config`); lines Postfix would refuse give `postfix.syntax` findings and
//! the rest is still checked. Nothing is executed and nothing outside DIR is read (tables
//! such as `hash:/etc/postfix/...` are named as not inspected).

pub mod checks;
pub mod networks;
pub mod parse;
pub mod view;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::finding::{Finding, Severity, Status};
use parse::{MainCf, MasterCf, Origin, Service};
use view::View;

/// The linter's own check ids (settings without a remote counterpart); it also reports under
/// the remote ids `smtp.open_relay`, `smtp.smuggling`, `smtp.vrfy`, `smtp.auth_before_tls`,
/// `smtp.banner_disclosure`, `smtp.size_limit`, `smtp.pipelining_sync`, `tls.starttls`,
/// `tls.versions`, `tls.ciphers` and `tls.kex`.
pub const CHECKS: &[crate::smtp::CheckInfo] = &[
    crate::smtp::CheckInfo {
        id: "postfix.config",
        description: "The Postfix configuration directory (main.cf) can be read.",
    },
    crate::smtp::CheckInfo {
        id: "postfix.syntax",
        description: "Every line of main.cf and master.cf is one Postfix accepts.",
    },
    crate::smtp::CheckInfo {
        id: "postfix.services",
        description: "master.cf runs an smtpd service (information).",
    },
    crate::smtp::CheckInfo {
        id: "postfix.inet_interfaces",
        description: "The interfaces Postfix listens on (information).",
    },
    crate::smtp::CheckInfo {
        id: "postfix.mynetworks",
        description: "mynetworks trusts no network wider than a /24 (IPv4) or /64 (IPv6).",
    },
    crate::smtp::CheckInfo {
        id: "postfix.rate_limits",
        description: "Client connection, message and recipient rate limits are set, and anvil runs to enforce them.",
    },
    crate::smtp::CheckInfo {
        id: "postfix.helo_required",
        description: "Clients must say HELO or EHLO before a mail transaction (smtpd_helo_required).",
    },
];

/// Largest main.cf or master.cf read (4 MiB; real ones are a few kilobytes).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A Postfix configuration directory, parsed.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    pub main: MainCf,
    pub master: MasterCf,
    /// Whether DIR has a master.cf (otherwise `master` holds Postfix's default smtp service).
    pub master_found: bool,
}

/// Reads a file of at most [`MAX_FILE_BYTES`]; `Ok(None)` when it does not exist.
fn read_limited(path: &Path) -> Result<Option<String>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        ));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The one service of a configuration without master.cf.
fn default_smtp_service(path: &str) -> Service {
    Service {
        name: "smtp".into(),
        kind: "inet".into(),
        command: "smtpd".into(),
        overrides: BTreeMap::new(),
        origin: Origin {
            file: path.to_string(),
            line: 0,
            text: "smtp inet n - y - - smtpd (Postfix's default master.cf)".into(),
        },
    }
}

impl PostfixConfig {
    /// Reads DIR/main.cf and DIR/master.cf.
    pub fn load(dir: &Path) -> Result<PostfixConfig, String> {
        let main_path = dir.join("main.cf");
        let master_path = dir.join("master.cf");
        let main_name = main_path.display().to_string();
        let master_name = master_path.display().to_string();
        let Some(main) = read_limited(&main_path)? else {
            return Err(format!("{main_name} does not exist"));
        };
        let master = read_limited(&master_path)?;
        Ok(PostfixConfig::parse(
            &main,
            &main_name,
            master.as_deref(),
            &master_name,
        ))
    }

    /// Parses main.cf text and, when there is one, master.cf text; the paths name the files
    /// in findings.
    pub fn parse(
        main: &str,
        main_path: &str,
        master: Option<&str>,
        master_path: &str,
    ) -> PostfixConfig {
        let main = parse::parse_main_cf(main, main_path);
        match master {
            Some(text) => PostfixConfig {
                main,
                master: parse::parse_master_cf(text, master_path),
                master_found: true,
            },
            None => PostfixConfig {
                main,
                master: MasterCf {
                    services: vec![default_smtp_service(master_path)],
                    path: master_path.to_string(),
                    problems: Vec::new(),
                },
                master_found: false,
            },
        }
    }

    /// The smtpd services (`inet` or postscreen's `pass`, command `smtpd`).
    pub fn smtpd_services(&self) -> Vec<&Service> {
        self.master
            .services
            .iter()
            .filter(|s| s.command == "smtpd" && matches!(s.kind.as_str(), "inet" | "pass"))
            .collect()
    }
}

/// Lints the Postfix configuration in `dir`; the findings are those of [`lint`], or one
/// `postfix.config` error when main.cf cannot be read.
pub fn lint_postfix_config(dir: &Path) -> Vec<Finding> {
    match PostfixConfig::load(dir) {
        Ok(config) => lint(&config),
        Err(why) => vec![
            Finding::new(
                "postfix.config",
                Status::Error,
                Severity::High,
                dir.join("main.cf").display().to_string(),
                "The Postfix configuration cannot be read",
                why,
            )
            .fix("Point --postfix-config at the directory holding main.cf (postconf config_directory)"),
        ],
    }
}

/// Every check on every smtpd service of `config`, grouped across services.
pub fn lint(config: &PostfixConfig) -> Vec<Finding> {
    let mut global = Vec::new();
    for (path, problems) in [
        (&config.main.path, &config.main.problems),
        (&config.master.path, &config.master.problems),
    ] {
        for (line, problem) in problems {
            global.push(
                Finding::new(
                    "postfix.syntax",
                    Status::Fail,
                    Severity::Low,
                    format!("{path}:{line}"),
                    "A line Postfix does not accept",
                    problem.clone(),
                )
                .fix("Correct or remove the line (`postconf -n` shows what Postfix reads)"),
            );
        }
    }
    let services = config.smtpd_services();
    let anvil_missing =
        config.master_found && !config.master.services.iter().any(|s| s.command == "anvil");

    // Global settings, seen through a service without overrides.
    let plain = default_smtp_service(&config.master.path);
    let global_view = View::new(&config.main, &plain);
    global.push(inet_interfaces(&global_view));
    if services.is_empty() {
        global.push(Finding::new(
            "postfix.services",
            Status::Info,
            Severity::Info,
            config.master.path.clone(),
            "No smtpd service in master.cf: this instance accepts no SMTP connections",
            format!(
                "{} services, none an inet or pass service running smtpd",
                config.master.services.len()
            ),
        ));
    }

    let mut grouped: Vec<(Finding, Vec<String>)> = Vec::new();
    for service in &services {
        let view = View::new(&config.main, service);
        let role = checks::role(&view);
        let drafts = [
            Some(checks::open_relay(&view)),
            Some(checks::mynetworks_breadth(&view)),
            Some(checks::smuggling(&view)),
            Some(checks::starttls(&view, role)),
            checks::versions(&view),
            checks::ciphers(&view),
            checks::kex(&view),
            Some(checks::auth_before_tls(&view)),
            Some(checks::vrfy(&view)),
            Some(checks::banner(&view)),
            Some(checks::rate_limits(&view, anvil_missing)),
            Some(checks::size_limit(&view)),
            Some(checks::helo_required(&view)),
            Some(checks::pipelining(&view)),
        ];
        for finding in drafts.into_iter().flatten() {
            match grouped.iter_mut().find(|(f, _)| *f == finding) {
                Some((_, names)) => names.push(service.name.clone()),
                None => grouped.push((finding, vec![service.name.clone()])),
            }
        }
    }
    let name_services = services.len() > 1;
    global.extend(grouped.into_iter().map(|(mut finding, names)| {
        if name_services {
            finding.title = format!("{} [{}]", finding.title, names.join(", "));
        }
        finding
    }));
    global
}

/// `postfix.inet_interfaces`: which addresses Postfix listens on (information).
fn inet_interfaces(view: &View<'_>) -> Finding {
    let param = view.param("inet_interfaces");
    let value = view.expand(&param.raw);
    let endpoint = match param.source {
        view::Source::Main(s) | view::Source::Override(s) => s.origin.endpoint(),
        view::Source::Default => view.main.path.clone(),
    };
    let title = match value.trim() {
        "all" => "Postfix listens on every interface".to_string(),
        "loopback-only" | "localhost" => "Postfix listens only on loopback".to_string(),
        other => format!("Postfix listens on {other}"),
    };
    let evidence = match param.source {
        view::Source::Main(s) | view::Source::Override(s) => s.origin.text.clone(),
        view::Source::Default => "inet_interfaces is not set (Postfix 3.7 default: all)".into(),
    };
    Finding::new(
        "postfix.inet_interfaces",
        Status::Info,
        Severity::Info,
        endpoint,
        title,
        evidence,
    )
    .fix("Only the interfaces that must receive mail; an internal backend behind a gateway: `inet_interfaces = 10.0.0.25, loopback-only`")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lints main.cf text with Postfix's default master.cf, or with `master`.
    fn lint_text(main: &str, master: Option<&str>) -> Vec<Finding> {
        lint(&PostfixConfig::parse(main, "main.cf", master, "master.cf"))
    }

    fn find<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
        findings
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no {id} finding in {findings:#?}"))
    }

    fn all<'a>(findings: &'a [Finding], id: &str) -> Vec<&'a Finding> {
        findings.iter().filter(|f| f.id == id).collect()
    }

    #[test]
    fn relay_restrictions_in_order() {
        let cases: &[(&str, Status)] = &[
            // Postfix 3.7 defaults at compatibility level 3.6: closed (defer_unauth_destination).
            ("compatibility_level = 3.6\n", Status::Pass),
            // Level 0 without any list: nothing rejects.
            ("", Status::Fail),
            // The classic pre-2.10 layout in smtpd_recipient_restrictions.
            (
                "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n",
                Status::Pass,
            ),
            // A permit before the reject.
            (
                "compatibility_level = 3.6\nsmtpd_relay_restrictions = permit_mynetworks, permit, reject_unauth_destination\n",
                Status::Fail,
            ),
            // ... but the recipient list still rejects.
            (
                "smtpd_relay_restrictions = permit\nsmtpd_recipient_restrictions = reject_unauth_destination\n",
                Status::Pass,
            ),
            // permit_mynetworks with mynetworks admitting everyone.
            (
                "compatibility_level = 3.6\nmynetworks = 0.0.0.0/0\n",
                Status::Fail,
            ),
            // warn_if_reject makes the only reject a warning.
            (
                "smtpd_relay_restrictions = permit_mynetworks, warn_if_reject reject_unauth_destination\n",
                Status::Fail,
            ),
            // A whitelist and any client certificate before the reject.
            (
                "smtpd_relay_restrictions = permit_dnswl_client list.dnswl.org, permit_tls_all_clientcerts, reject_unauth_destination\n",
                Status::Warn,
            ),
            // A restriction class that permits, via $name expansion.
            (
                "smtpd_restriction_classes = trusted\ntrusted = permit\nrelay_list = trusted, reject_unauth_destination\nsmtpd_relay_restrictions = $relay_list\n",
                Status::Fail,
            ),
            // A class that rejects.
            (
                "smtpd_restriction_classes = closed\nclosed = reject_unauth_destination\nsmtpd_relay_restrictions = closed\n",
                Status::Pass,
            ),
            // Client restrictions that reject unknown clients close the relay too.
            (
                "smtpd_client_restrictions = permit_sasl_authenticated, reject\n",
                Status::Pass,
            ),
            // defer_if_permit turns a later permit into a deferral.
            (
                "smtpd_relay_restrictions = defer_if_permit, permit\n",
                Status::Pass,
            ),
        ];
        for (main, want) in cases {
            let findings = lint_text(main, None);
            let relay = find(&findings, "smtp.open_relay");
            assert_eq!(relay.status, *want, "{main:?}: {relay:#?}");
            if *want == Status::Fail {
                assert_eq!(relay.severity, Severity::Critical);
                assert!(
                    relay.fix.contains("reject_unauth_destination"),
                    "{relay:#?}"
                );
            }
        }
    }

    #[test]
    fn a_lookup_table_before_the_reject_is_a_low_warning() {
        let findings = lint_text(
            "smtpd_relay_restrictions = permit_mynetworks,\n  check_client_access hash:/etc/postfix/relay_clients,\n  reject_unauth_destination\n",
            None,
        );
        let relay = find(&findings, "smtp.open_relay");
        assert_eq!(
            (relay.status, relay.severity),
            (Status::Warn, Severity::Low)
        );
        assert_eq!(relay.endpoint, "main.cf:1");
        assert!(
            relay
                .evidence
                .contains("check_client_access hash:/etc/postfix/relay_clients")
        );
    }

    #[test]
    fn endpoints_point_at_the_line_or_the_file() {
        let findings = lint_text(
            "myhostname = mx.example.org\n\ndisable_vrfy_command = no\n",
            None,
        );
        let vrfy = find(&findings, "smtp.vrfy");
        assert_eq!(vrfy.endpoint, "main.cf:3");
        assert_eq!(vrfy.evidence, "main.cf:3: disable_vrfy_command = no");
        assert_eq!(vrfy.fix, "In main.cf: `disable_vrfy_command = yes`");
        let banner = find(&findings, "smtp.banner_disclosure");
        assert_eq!(
            (banner.status, banner.endpoint.as_str()),
            (Status::Fail, "main.cf")
        );
        assert!(
            banner.evidence.contains("220 mx.example.org ESMTP Postfix"),
            "{banner:#?}"
        );
        assert_eq!(banner.fix, "In main.cf: `smtpd_banner = $myhostname ESMTP`");
    }

    #[test]
    fn mynetworks_breadth_and_style() {
        let status = |main: &str| {
            let findings = lint_text(main, None);
            let f = find(&findings, "postfix.mynetworks");
            (f.status, f.severity)
        };
        assert_eq!(
            status("mynetworks = 127.0.0.0/8 192.0.2.0/24\n"),
            (Status::Pass, Severity::Info)
        );
        assert_eq!(
            status("mynetworks = 127.0.0.0/8 10.0.0.0/8\n"),
            (Status::Fail, Severity::Medium)
        );
        assert_eq!(
            status("mynetworks = 0.0.0.0/0\n"),
            (Status::Fail, Severity::Critical)
        );
        assert_eq!(
            status("compatibility_level = 3.6\n"),
            (Status::Pass, Severity::Info)
        );
        assert_eq!(status(""), (Status::Warn, Severity::Medium));
        assert_eq!(
            status("mynetworks_style = class\n"),
            (Status::Fail, Severity::High)
        );
        let findings = lint_text("mynetworks = 127.0.0.0/8, 198.51.0.0/16\n", None);
        let f = find(&findings, "postfix.mynetworks");
        assert_eq!(f.severity, Severity::High);
        assert!(
            f.fix.starts_with("In main.cf: `mynetworks = 127.0.0.0/8`"),
            "{f:#?}"
        );
    }

    #[test]
    fn smuggling_settings_and_exclusions() {
        let status = |main: &str| {
            let findings = lint_text(main, None);
            let f = find(&findings, "smtp.smuggling");
            (f.status, f.endpoint.clone())
        };
        assert_eq!(status(""), (Status::Fail, "main.cf".into()));
        assert_eq!(
            status("smtpd_forbid_bare_newline = no\n"),
            (Status::Fail, "main.cf:1".into())
        );
        assert_eq!(
            status("compatibility_level = 3.6\nsmtpd_forbid_bare_newline = normalize\n"),
            (Status::Pass, "main.cf:2".into())
        );
        assert_eq!(
            status("smtpd_forbid_bare_newline = reject\nsmtpd_forbid_bare_newline_exclusions =\n"),
            (Status::Pass, "main.cf:1".into())
        );
        // The default exclusion is $mynetworks, here a /8.
        assert_eq!(
            status("mynetworks = 10.0.0.0/8\nsmtpd_forbid_bare_newline = yes\n"),
            (Status::Warn, "main.cf".into())
        );
        assert_eq!(
            status("smtpd_forbid_bare_newline = maybe\n").0,
            Status::Error
        );
    }

    const MASTER: &str = "\
smtp       inet  n  -  y  -  1  postscreen
smtpd      pass  -  -  y  -  -  smtpd
submission inet  n  -  y  -  -  smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
submissions inet n  -  y  -  -  smtpd
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
anvil      unix  -  -  y  -  1  anvil
";

    #[test]
    fn per_service_tls_and_auth() {
        let main = "smtpd_tls_chain_files = /etc/postfix/key.pem, /etc/postfix/fullchain.pem\n\
                    smtpd_tls_security_level = may\n";
        let findings = lint_text(main, Some(MASTER));
        let starttls = all(&findings, "tls.starttls");
        assert!(
            starttls.iter().all(|f| f.status == Status::Pass),
            "{starttls:#?}"
        );
        assert_eq!(starttls.len(), 3, "{starttls:#?}");
        assert!(starttls.iter().any(|f| f.title.ends_with("[smtpd]")));
        // AUTH: not offered on port 25, behind required TLS on 587 and 465.
        let auth = all(&findings, "smtp.auth_before_tls");
        assert!(auth.iter().all(|f| f.status == Status::Pass), "{auth:#?}");

        // Submission that only offers TLS fails, with the fix on the service.
        let weak = MASTER.replace(
            "smtpd_tls_security_level=encrypt",
            "smtpd_tls_security_level=may",
        );
        let findings = lint_text(main, Some(&weak));
        let sub = all(&findings, "tls.starttls")
            .into_iter()
            .find(|f| f.status == Status::Fail)
            .expect("a failing tls.starttls");
        assert_eq!(sub.endpoint, "master.cf:5");
        assert!(sub.title.ends_with("[submission]"), "{sub:#?}");
        assert_eq!(
            sub.fix,
            "In master.cf, on the `submission` service: `-o smtpd_tls_security_level=encrypt`"
        );
        let auth = all(&findings, "smtp.auth_before_tls")
            .into_iter()
            .find(|f| f.status == Status::Fail)
            .expect("AUTH before TLS on submission");
        assert_eq!(auth.fix, "In main.cf: `smtpd_tls_auth_only = yes`");

        // No certificate: TLS cannot be offered at all.
        let findings = lint_text("smtpd_tls_security_level = may\n", None);
        let f = find(&findings, "tls.starttls");
        assert_eq!(f.status, Status::Fail);
        assert!(f.title.contains("no certificate"), "{f:#?}");
        assert!(all(&findings, "tls.versions").is_empty());
    }

    #[test]
    fn tls_versions_follow_the_level_and_the_security_level() {
        let base = "smtpd_tls_cert_file = /etc/ssl/cert.pem\nsmtpd_tls_security_level = may\n";
        let versions = |extra: &str| {
            let findings = lint_text(&format!("{base}{extra}"), None);
            let f = find(&findings, "tls.versions");
            (f.status, f.endpoint.clone())
        };
        // Postfix 3.7's default >=TLSv1 allows 1.0, and OpenSSL 3 servers do accept it.
        assert_eq!(versions(""), (Status::Fail, "main.cf".into()));
        assert_eq!(
            versions("smtpd_tls_protocols = >=TLSv1.2\n"),
            (Status::Pass, "main.cf:3".into())
        );
        assert_eq!(
            versions(
                "smtpd_tls_protocols = !SSLv2, !SSLv3\ntls_medium_cipherlist = DEFAULT:@SECLEVEL=0\n"
            ),
            (Status::Fail, "main.cf:3".into())
        );
        // Mandatory protocols matter only when TLS is required.
        assert_eq!(
            versions("smtpd_tls_protocols = >=TLSv1.2\nsmtpd_tls_security_level = encrypt\n").0,
            Status::Fail
        );
        let ciphers = |extra: &str| {
            let findings = lint_text(&format!("{base}{extra}"), None);
            let f = find(&findings, "tls.ciphers");
            let kex = find(&findings, "tls.kex").status;
            (f.status, f.severity, kex)
        };
        // Postfix enables anonymous suites on the server side unless excluded.
        assert_eq!(ciphers(""), (Status::Fail, Severity::Low, Status::Warn));
        assert_eq!(
            ciphers("smtpd_tls_exclude_ciphers = aNULL, kRSA\n"),
            (Status::Pass, Severity::Info, Status::Pass)
        );
        assert_eq!(
            ciphers(
                "smtpd_tls_exclude_ciphers = aNULL\ntls_medium_cipherlist = DEFAULT:@SECLEVEL=0\n"
            ),
            (Status::Fail, Severity::Medium, Status::Warn)
        );
        assert_eq!(ciphers("smtpd_tls_ask_ccert = yes\n").0, Status::Pass);
        let findings = lint_text(&format!("{base}smtpd_tls_ciphers = export\n"), None);
        assert_eq!(find(&findings, "tls.ciphers").status, Status::Fail);
    }

    #[test]
    fn limits_and_missing_anvil() {
        let findings = lint_text("message_size_limit = 0\n", None);
        assert_eq!(find(&findings, "smtp.size_limit").status, Status::Fail);
        let rates = find(&findings, "postfix.rate_limits");
        assert_eq!(rates.status, Status::Warn);
        assert!(
            rates
                .fix
                .contains("smtpd_client_connection_rate_limit = 60"),
            "{rates:#?}"
        );
        let no_anvil = "smtp inet n - y - - smtpd\n";
        let findings = lint_text("smtpd_client_connection_rate_limit = 30\n", Some(no_anvil));
        let rates = find(&findings, "postfix.rate_limits");
        assert_eq!(
            (rates.status, rates.endpoint.as_str()),
            (Status::Fail, "master.cf")
        );
    }

    #[test]
    fn syntax_problems_and_no_smtpd() {
        let findings = lint_text("just words\n", Some("pickup unix n - y 60 1 pickup\n"));
        assert_eq!(find(&findings, "postfix.syntax").endpoint, "main.cf:1");
        assert_eq!(find(&findings, "postfix.services").status, Status::Info);
        assert!(all(&findings, "smtp.vrfy").is_empty());
    }
}
