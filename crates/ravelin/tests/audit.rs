//! `ravelin audit` against real mail servers on loopback, asserting the status of every SMTP
//! check id:
//!
//! - a deliberately weak Postfix (version in the banner, VRFY on, open relay for the
//!   auditor's network, `smtpd_forbid_bare_newline = no`, no error limits, no size limit, no
//!   pipelining enforcement): the checks fail where they should, the active open-relay test
//!   reaches DATA and delivers nothing, and each smuggling sequence judged vulnerable
//!   delivered exactly its one test message;
//! - a hardened Postfix (STARTTLS, VRFY off, strict bare-newline and pipelining handling,
//!   low error limits): every check passes and nothing is delivered;
//! - Ravelin's own gateway with its default settings, on an MX listener and on a listener
//!   that requires TLS, audited as a submission port;
//! - the command line itself: exit codes, formats, output file, targets file.
//! - the reports: SARIF of real audits validated against the official SARIF 2.1.0 schema
//!   (Python's jsonschema), and the HTML report opened in headless Chromium (DOM and
//!   screenshot).
//!
//! AUTH before TLS is not set up on the weak Postfix: it needs SASL plumbing (Dovecot or
//! Cyrus) that the test peers do not install, so `smtp.auth_before_tls` is asserted here on
//! passing targets only.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Each Postfix of the audit world listens on its own loopback address, as separate
/// servers do (the auditor keys its per-server politeness and sharing on the address).
const WEAK_POSTFIX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
const HARDENED_POSTFIX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);
const SASL_POSTFIX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 23);

/// Time limit of one audit run (the active checks wait for each smuggling sequence).
const AUDIT_TIMEOUT: Duration = Duration::from_secs(240);
const WAIT: Duration = Duration::from_secs(30);

/// One `ravelin audit --format json` run.
struct Audit {
    exit: i32,
    report: Value,
    stderr: String,
}

impl Audit {
    fn run(args: &[&str]) -> Audit {
        let mut all = vec!["audit", "--format", "json"];
        all.extend_from_slice(args);
        let out = ravelin_cli(&all, AUDIT_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let report: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("audit output is not JSON ({e}): {}", describe(&out)));
        Audit {
            exit: out.status.code().unwrap_or(-1),
            report,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn findings(&self, target: usize) -> &Vec<Value> {
        self.report["targets"][target]["findings"]
            .as_array()
            .unwrap_or_else(|| panic!("no target {target} in {:#}", self.report))
    }

    fn finding(&self, target: usize, id: &str) -> &Value {
        let found: Vec<&Value> = self
            .findings(target)
            .iter()
            .filter(|f| f["id"] == id)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one {id} finding expected in {:#}",
            self.report
        );
        found[0]
    }

    /// Asserts the status of each `(id, status)` on target `target`.
    fn expect(&self, target: usize, expected: &[(&str, &str)]) {
        for (id, status) in expected {
            let f = self.finding(target, id);
            assert_eq!(
                f["status"], *status,
                "{id}: expected {status}, got {} — {}\nevidence: {}",
                f["status"], f["title"], f["evidence"]
            );
        }
    }

    fn evidence(&self, target: usize, id: &str) -> String {
        self.finding(target, id)["evidence"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The smuggling sequence names with the given status.
    fn smuggling(&self, target: usize, status: &str) -> Vec<String> {
        self.findings(target)
            .iter()
            .filter(|f| f["status"] == status)
            .filter_map(|f| f["id"].as_str()?.strip_prefix("smtp.smuggling."))
            .map(str::to_string)
            .collect()
    }
}

/// The status of every check but smuggling on a well-kept mail exchanger without AUTH and
/// without a clock in its greeting.
const HARDENED_MX: &[(&str, &str)] = &[
    ("smtp.banner_disclosure", "pass"),
    ("smtp.ntlm_info", "pass"),
    ("smtp.clock_skew", "skipped"),
    ("smtp.software", "pass"),
    ("smtp.vrfy", "pass"),
    ("smtp.expn", "pass"),
    ("smtp.auth_before_tls", "pass"),
    ("smtp.auth_mechanisms", "pass"),
    ("smtp.plaintext_mail_accepted", "skipped"),
    ("smtp.size_limit", "pass"),
    ("smtp.greeting_delay", "info"),
    ("smtp.pipelining_sync", "pass"),
    ("smtp.open_relay", "pass"),
    ("smtp.catch_all", "pass"),
    ("smtp.rcpt_enumeration", "pass"),
];

/// How many end-of-data sequences the smuggling checks try (one `smtp.smuggling.<sequence>`
/// finding each).
fn sequences() -> usize {
    ravelin_audit::smtp::smuggling_ids().count()
}

/// The worlds of this file assert every SMTP check of the registry: a check added to
/// `ravelin_audit::smtp::CHECKS` must be added to [`HARDENED_MX`] (and so to the weak,
/// gateway and domain expectations built from it). `smtp.connect` is only reported when an
/// endpoint cannot be reached, and `smtp.smuggling` stands for the per-sequence ids, each of
/// which the tests expect a verdict for ([`sequences`]).
#[test]
fn hardened_mx_expectations_name_every_registered_smtp_check() {
    let mut registered: Vec<&str> = ravelin_audit::smtp::CHECKS
        .iter()
        .map(|c| c.id)
        .filter(|id| !["smtp.connect", "smtp.smuggling"].contains(id))
        .collect();
    let mut expected: Vec<&str> = HARDENED_MX.iter().map(|(id, _)| *id).collect();
    registered.sort();
    expected.sort();
    assert_eq!(expected, registered);
}

/// `base` with the statuses in `changes` replaced (each change must name a check of `base`).
fn with<'a>(
    base: &[(&'a str, &'a str)],
    changes: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    for (id, _) in changes {
        assert!(
            base.iter().any(|(b, _)| b == id),
            "{id} is not in the base list"
        );
    }
    base.iter()
        .map(|(id, status)| {
            let changed = changes.iter().find(|(c, _)| c == id).map(|(_, s)| *s);
            (*id, changed.unwrap_or(status))
        })
        .collect()
}

/// The installed Postfix version, e.g. (3, 7, 11).
fn postfix_version() -> (u32, u32, u32) {
    let mut cmd = std::process::Command::new(program("postconf"));
    cmd.args(["-d", "-h", "mail_version"]);
    let out = run(cmd, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<u32> = text.split('.').filter_map(|p| p.parse().ok()).collect();
    assert!(parts.len() >= 2, "postconf mail_version: {text:?}");
    (parts[0], parts[1], parts.get(2).copied().unwrap_or(0))
}

/// Whether a Postfix version lacks the SMTP smuggling fix of 2023-12-22 (3.5.23, 3.6.13,
/// 3.7.9, 3.8.4; 3.9 and later have it), as postfix.org/smtp-smuggling.html lists.
fn lacks_smuggling_fix((major, minor, patch): (u32, u32, u32)) -> bool {
    match (major, minor) {
        (3, 5) => patch < 23,
        (3, 6) => patch < 13,
        (3, 7) => patch < 9,
        (3, 8) => patch < 4,
        (m, n) => (m, n) < (3, 5),
    }
}

/// A weak Postfix for example.org: open relay for loopback clients (mynetworks) towards
/// `relay_sink`, banner with name and version, VRFY on, bare LF accepted, no pipelining
/// enforcement, no error limits, no size limit.
fn weak_postfix(relay_sink: SocketAddr) -> Postfix {
    Postfix::start(
        PostfixOptions::backend(&["postmaster", "alice"])
            .address(WEAK_POSTFIX)
            .set("smtpd_banner", "$myhostname ESMTP $mail_name $mail_version")
            .set("disable_vrfy_command", "no")
            .set(
                "smtpd_relay_restrictions",
                "permit_mynetworks, reject_unauth_destination",
            )
            .set("smtpd_forbid_bare_newline", "no")
            .set("smtpd_forbid_unauth_pipelining", "no")
            .set("smtpd_soft_error_limit", "100")
            .set("smtpd_hard_error_limit", "100")
            .set("message_size_limit", "0")
            .set("virtual_mailbox_limit", "0")
            .set(
                "relayhost",
                &format!("[{}]:{}", relay_sink.ip(), relay_sink.port()),
            )
            .set("default_transport", "smtp")
            .set("relay_transport", "smtp"),
    )
}

#[test]
fn weak_postfix_fails_where_it_should_and_active_tests_deliver_nothing_unintended() {
    let sink = SmtpSink::start();
    let postfix = weak_postfix(sink.addr);
    let target = format!("example.org@{}", postfix.addr);
    let a = Audit::run(&["--active", "--smuggling-wait", "3", &target]);
    assert_eq!(a.exit, 1, "a critical finding fails the run: {}", a.stderr);
    assert_eq!(a.report["targets"][0]["target"], target.as_str());

    let version = postfix_version();
    let software = if lacks_smuggling_fix(version) {
        "fail"
    } else {
        "pass"
    };
    a.expect(
        0,
        &with(
            HARDENED_MX,
            &[
                ("smtp.banner_disclosure", "fail"),
                ("smtp.software", software),
                ("smtp.vrfy", "fail"),
                ("smtp.size_limit", "warn"),
                ("smtp.pipelining_sync", "warn"),
                ("smtp.open_relay", "fail"),
                ("smtp.rcpt_enumeration", "warn"),
            ],
        ),
    );
    let shown = format!("Postfix {}.{}.{}", version.0, version.1, version.2);
    assert!(
        a.evidence(0, "smtp.banner_disclosure").contains(&shown),
        "{}",
        a.evidence(0, "smtp.banner_disclosure")
    );
    assert!(a.evidence(0, "smtp.software").contains(&shown));
    let relay = a.finding(0, "smtp.open_relay");
    assert_eq!(
        relay["severity"], "critical",
        "confirmed at DATA: {relay:#}"
    );
    assert!(
        a.evidence(0, "smtp.open_relay")
            .contains("RCPT TO:<relaytest@example.com> → 250")
    );
    assert!(
        a.evidence(0, "smtp.open_relay")
            .contains("dropped before the final dot")
    );
    assert!(a.evidence(0, "smtp.vrfy").contains("550 5.1.1"));

    // Postfix ends lines at a bare LF (when not told otherwise) but never at a bare CR.
    let vulnerable = a.smuggling(0, "fail");
    for name in ["lf-dot-lf", "lf-dot-crlf", "crlf-dot-lf"] {
        assert!(
            vulnerable.contains(&name.to_string()),
            "{name}: {vulnerable:?}"
        );
    }
    let safe = a.smuggling(0, "pass");
    for name in ["cr-dot-cr", "crlf-dot-cr", "cr-dot-lf", "cr-dot-crlf"] {
        assert!(safe.contains(&name.to_string()), "{name}: {safe:?}");
    }
    assert_eq!(
        vulnerable.len() + safe.len(),
        sequences(),
        "every sequence has a verdict"
    );

    // Each vulnerable sequence delivered exactly its one short test message to postmaster,
    // and nothing else arrived: the relay tests were dropped before the final dot.
    let delivered = postfix.wait_for_messages(vulnerable.len(), WAIT);
    wait_until("Postfix's queue to drain", WAIT, || {
        postfix.queue().is_empty().then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let delivered_after = postfix.messages();
    assert_eq!(delivered_after.len(), delivered.len(), "late deliveries");
    let mut subjects: Vec<String> = delivered_after
        .iter()
        .map(|m| {
            assert_eq!(m.user, "postmaster");
            let text = String::from_utf8_lossy(&m.message).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: Ravelin SMTP smuggling test ("))
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("not a smuggling test message:\n{text}"))
                .to_string()
        })
        .collect();
    subjects.sort();
    let mut expected = vulnerable.clone();
    expected.sort();
    assert_eq!(subjects, expected);
    assert!(
        sink.messages().is_empty(),
        "a relay test reached the relay's next hop: {:?}",
        sink.messages()
    );
    assert!(postfix.maillog().contains("lost connection after DATA"));
    let queued: Vec<String> = postfix
        .maillog()
        .lines()
        .filter(|l| l.contains("to=<relaytest") && l.contains(" status="))
        .map(str::to_string)
        .collect();
    assert!(queued.is_empty(), "a relay test was queued: {queued:#?}");

    // With --active but only smtp.vrfy chosen, neither the relay tests nor the smuggling
    // sequences run: no DATA, no relay recipient, no message.
    let log_before = postfix.maillog();
    let count = |log: &str, what: &str| log.matches(what).count();
    let chosen = Audit::run(&["--active", "--check", "smtp.vrfy", &target]);
    let ids: Vec<&str> = chosen
        .findings(0)
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(ids, ["smtp.vrfy"], "{:#}", chosen.report);
    chosen.expect(0, &[("smtp.vrfy", "fail")]);
    std::thread::sleep(Duration::from_millis(500));
    let log_after = postfix.maillog();
    for what in ["after DATA", "relaytest", "smuggling"] {
        assert_eq!(
            count(&log_before, what),
            count(&log_after, what),
            "{what:?} in Postfix's log after the run of smtp.vrfy alone"
        );
    }
    assert_eq!(postfix.messages().len(), delivered_after.len());
}

/// A Postfix whose SASL server (Dovecot) offers AUTH before TLS, on the mail exchanger too,
/// with ANONYMOUS and CRAM-MD5 among the mechanisms (`smtpd_sasl_security_options` empty),
/// and whose greeting shows a clock an hour behind ours (as Exchange and Sendmail greetings
/// carry the date): audited as a mail exchanger and as a submission port, the AUTH checks,
/// the clock check and the plaintext-submission check fail on a real server.
#[test]
fn postfix_with_sasl_before_tls_and_a_slow_clock_fails_the_auth_checks() {
    let sasl = DovecotSasl::start("plain login cram-md5 anonymous");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let hour_ago = ravelin_wire::date::rfc5322(now - 3600);
    let postfix = Postfix::start(
        PostfixOptions::backend(&["postmaster", "alice"])
            .address(SASL_POSTFIX)
            .set(
                "smtpd_banner",
                &format!("$myhostname ESMTP ready at {hour_ago}"),
            )
            .set("smtpd_sasl_auth_enable", "yes")
            .set("smtpd_sasl_type", "dovecot")
            .set("smtpd_sasl_path", &sasl.socket.display().to_string())
            .set("smtpd_sasl_security_options", "")
            .set("smtpd_tls_auth_only", "no"),
    );
    let mx = format!("example.org@{}", postfix.addr);
    let submission = format!("submission://example.org@{}", postfix.addr);
    let a = Audit::run(&["--concurrency", "2", &mx, &submission]);
    assert_eq!(a.exit, 1, "{:#}\n{}\n{}", a.report, a.stderr, sasl.log());
    for target in 0..2 {
        let before_tls = a.finding(target, "smtp.auth_before_tls");
        assert_eq!(
            (&before_tls["status"], &before_tls["severity"]),
            (&Value::from("fail"), &Value::from("high")),
            "{before_tls:#}"
        );
        let offered = a.evidence(target, "smtp.auth_before_tls");
        for mechanism in ["PLAIN", "LOGIN", "CRAM-MD5", "ANONYMOUS"] {
            assert!(offered.contains(mechanism), "{mechanism}: {offered}");
        }
        let mechanisms = a.finding(target, "smtp.auth_mechanisms");
        assert_eq!(
            (&mechanisms["status"], &mechanisms["severity"]),
            (&Value::from("fail"), &Value::from("high")),
            "ANONYMOUS lets anyone in: {mechanisms:#}"
        );
        let clock = a.finding(target, "smtp.clock_skew");
        assert_eq!(clock["status"], "fail", "{clock:#}");
        let skew = a.evidence(target, "smtp.clock_skew");
        assert!(
            skew.contains("greeting date") && skew.contains(&hour_ago),
            "{skew}"
        );
        a.expect(target, &[("smtp.ntlm_info", "pass")]);
    }
    // The submission port takes a mail transaction in clear text.
    a.expect(1, &[("smtp.plaintext_mail_accepted", "fail")]);
    assert!(
        a.evidence(1, "smtp.plaintext_mail_accepted")
            .contains("RCPT TO:<postmaster@example.org> → 250"),
        "{}",
        a.evidence(1, "smtp.plaintext_mail_accepted")
    );
    assert!(postfix.messages().is_empty());
}

/// A hardened Postfix for example.org: STARTTLS with `files`, VRFY off, unauthorised
/// pipelining refused, low error limits.
fn hardened_options(files: &ravelin_tls::testing::TestPkiFiles) -> PostfixOptions {
    PostfixOptions::backend(&["postmaster", "alice"])
        .address(HARDENED_POSTFIX)
        .set("smtpd_tls_security_level", "may")
        .set("smtpd_tls_cert_file", &files.cert.display().to_string())
        .set("smtpd_tls_key_file", &files.key.display().to_string())
        .set("disable_vrfy_command", "yes")
        .set("smtpd_forbid_unauth_pipelining", "yes")
        .set("smtpd_soft_error_limit", "3")
        .set("smtpd_hard_error_limit", "5")
}

#[test]
fn hardened_postfix_passes_every_check() {
    let dir = daemon_tempdir();
    let pki = ravelin_tls::testing::TestPki::new("backend.test.example").expect("test PKI");
    let files = pki.write_to(dir.path()).expect("write the test PKI");
    let postfix = Postfix::start(hardened_options(&files));
    let target = format!("example.org@{}", postfix.addr);
    let a = Audit::run(&["--active", "--smuggling-wait", "2", &target]);
    assert_eq!(a.exit, 0, "{:#}\n{}", a.report, a.stderr);
    a.expect(0, HARDENED_MX);
    assert_eq!(a.smuggling(0, "pass").len(), sequences(), "{:#}", a.report);
    // STARTTLS worked through the probe (the EHLO inside TLS was read).
    assert!(
        a.evidence(0, "smtp.auth_mechanisms")
            .contains("inside TLS: no AUTH"),
        "{}",
        a.evidence(0, "smtp.auth_mechanisms")
    );
    assert!(a.evidence(0, "smtp.vrfy").contains("502 5.5.1"));
    assert!(a.evidence(0, "smtp.pipelining_sync").contains("554 5.5.0"));
    assert!(a.evidence(0, "smtp.size_limit").contains("552 5.3.4"));
    // The smuggling tests were dropped before the final dot: nothing was delivered.
    std::thread::sleep(Duration::from_millis(500));
    assert!(postfix.messages().is_empty(), "{:?}", postfix.messages());
    assert!(postfix.queue().is_empty());
}

/// The gateway with a certificate for STARTTLS, relaying to `sink`, with two listeners:
/// "mx" (STARTTLS offered) and "secure" (`tls = "require"`: no mail before STARTTLS), which
/// the tests audit as a submission port; and the test CA's file for `--ca-file`.
fn gateway(sink: SocketAddr, dir: &std::path::Path) -> (Ravelin, String) {
    let pki = ravelin_tls::testing::TestPki::new("mx.test.example").expect("test PKI");
    let files = pki.write_to(dir).expect("write the test PKI");
    let ca = files.ca.to_string_lossy().into_owned();
    let ravelin = Ravelin::start(
        RavelinConfig::inbound(sink)
            .listener("secure", "inbound", "require")
            .extra(&format!(
                "[tls]\ncertificate = {}\nprivate_key = {}",
                toml_string(&files.cert.to_string_lossy()),
                toml_string(&files.key.to_string_lossy())
            )),
    );
    (ravelin, ca)
}

/// The gateway with its default settings audits clean, TLS included (its certificate from the
/// test CA, which the audit is told to trust). The one finding above info is
/// `smtp.catch_all`: without a recipient list (static, LDAP or callout, none of which is
/// configured by default) the gateway accepts every local part of its accepted domains, and
/// the auditor rightly warns about it.
#[test]
fn ravelin_gateway_audits_clean() {
    let sink = SmtpSink::start();
    let dir = daemon_tempdir();
    let (ravelin, ca) = gateway(sink.addr, dir.path());
    let mx = format!("example.org@{}", ravelin.listener("mx"));
    let submission = format!("submission://example.org@{}", ravelin.listener("secure"));
    let a = Audit::run(&[
        "--ca-file",
        &ca,
        "--active",
        "--smuggling-wait",
        "2",
        "--concurrency",
        "2",
        &mx,
        &submission,
    ]);
    assert_eq!(a.exit, 0, "{:#}\n{}", a.report, a.stderr);
    a.expect(0, &with(HARDENED_MX, &[("smtp.catch_all", "warn")]));
    assert_eq!(a.smuggling(0, "pass").len(), sequences(), "{:#}", a.report);
    for ending in ["lf-dot-lf", "cr-dot-cr"] {
        assert!(
            a.evidence(0, &format!("smtp.smuggling.{ending}"))
                .contains("550 5.5.2"),
            "the gateway refuses bare CR and LF at once"
        );
    }
    assert!(a.evidence(0, "smtp.size_limit").contains("SIZE 26214400"));
    // The TLS checks of a host target, with the test CA trusted (--ca-file). Audited by
    // address, the certificate's name cannot be checked: info, not a failure.
    let tls = [
        ("tls.starttls", "pass"),
        ("tls.versions", "pass"),
        ("tls.ciphers", "pass"),
        ("tls.kex", "pass"),
        ("tls.cert_chain", "pass"),
        ("tls.cert_hostname", "info"),
        ("tls.cert_key", "pass"),
        ("tls.cert_signature", "pass"),
        ("tls.cert_expiry", "pass"),
    ];
    a.expect(0, &tls);
    a.expect(1, &tls);
    a.expect(
        1,
        &[
            ("smtp.plaintext_mail_accepted", "pass"),
            ("smtp.auth_before_tls", "pass"),
            ("smtp.open_relay", "pass"),
            ("smtp.size_limit", "pass"),
            ("smtp.banner_disclosure", "pass"),
            ("smtp.vrfy", "pass"),
            ("smtp.catch_all", "skipped"),
            ("smtp.rcpt_enumeration", "skipped"),
            ("smtp.smuggling", "skipped"),
        ],
    );
    assert!(
        a.evidence(1, "smtp.plaintext_mail_accepted")
            .contains("530 5.7.0")
    );
    // Only the catch-all warning is above info, on either listener.
    for target in 0..2 {
        for f in a.findings(target) {
            let problem = f["status"] == "fail" || f["status"] == "warn";
            assert!(
                !problem || f["id"] == "smtp.catch_all",
                "unexpected problem on target {target}: {f:#}"
            );
        }
    }
    // The catch-all warning is medium: --fail-on medium fails the run.
    let strict = Audit::run(&["--fail-on", "medium", &mx]);
    assert_eq!(strict.exit, 1);
    // Nothing was queued or delivered by any of it.
    assert!(
        ravelin.events("queued").is_empty(),
        "{}",
        ravelin.log_text()
    );
    assert!(sink.messages().is_empty());
}

/// Runs `ravelin audit --format FORMAT --output FILE TARGET` (expecting exit 0 and nothing on
/// stdout) and returns the file's contents.
fn audit_to_file(dir: &std::path::Path, format: &str, target: &str) -> String {
    let path = dir.join(format!("report.{format}"));
    let file = path.to_string_lossy().into_owned();
    let out = ravelin_cli(
        &["audit", "--format", format, "--output", &file, target],
        AUDIT_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "--output leaves stdout empty");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"))
}

#[test]
fn command_line_exit_codes_formats_and_targets_file() {
    // Usage errors: exit 2.
    for args in [
        vec!["audit"],
        vec!["audit", "not a host!"],
        vec!["audit", "--fail-on", "severe", "127.0.0.1:25"],
        vec!["audit", "--format", "xml", "127.0.0.1:25"],
        vec!["audit", "--targets-file", "/nonexistent/targets.txt"],
    ] {
        let out = ravelin_cli(&args, AUDIT_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }

    // Nothing listens: the target could not be audited, exit 3.
    let closed = free_addr();
    let a = Audit::run(&[&closed.to_string()]);
    assert_eq!(a.exit, 3, "{:#}", a.report);
    a.expect(0, &[("smtp.connect", "error")]);
    assert!(a.evidence(0, "smtp.connect").contains("cannot connect"));

    let sink = SmtpSink::start();
    let dir = daemon_tempdir();
    let (ravelin, _) = gateway(sink.addr, dir.path());
    let mx = ravelin.listener("mx").to_string();

    // A targets file with comments; the order of the report is the order given.
    let list = dir.path().join("targets.txt");
    std::fs::write(
        &list,
        format!("# mail hosts\n\nexample.org@{mx}   # the gateway\n{closed}\n"),
    )
    .expect("write targets file");
    let a = Audit::run(&["--targets-file", &list.to_string_lossy()]);
    assert_eq!(a.exit, 3, "one target could not be reached");
    assert_eq!(
        a.report["targets"][0]["target"],
        format!("example.org@{mx}")
    );
    assert_eq!(a.report["targets"][1]["target"], closed.to_string());
    a.expect(0, &[("smtp.open_relay", "pass")]);
    assert_eq!(
        a.report["targets"][0]["endpoints"][0],
        format!("{mx}"),
        "an address target's endpoint is address:port"
    );

    // SARIF to a file: rules from check ids, results with levels, endpoint URIs.
    let sarif = audit_to_file(dir.path(), "sarif", &mx);
    let sarif: Value = serde_json::from_str(&sarif).expect("SARIF is JSON");
    assert_eq!(sarif["version"], "2.1.0");
    let run0 = &sarif["runs"][0];
    let rules: Vec<&str> = run0["tool"]["driver"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(rules.contains(&"smtp.open_relay") && rules.contains(&"smtp.vrfy"));
    for result in run0["results"].as_array().expect("results") {
        let id = result["ruleId"].as_str().expect("ruleId");
        let index = result["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rules[index], id);
        let uri = &result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"];
        if id == "ports.exposed" {
            // The scan of the address's other mail ports names the address, or a port of it.
            let ip = ravelin.listener("mx").ip();
            let uri = uri.as_str().unwrap_or_default();
            assert!(
                uri == format!("smtp://{ip}") || uri.starts_with(&format!("smtp://{ip}:")),
                "{result:#}"
            );
        } else {
            assert_eq!(*uri, format!("smtp://{mx}"));
        }
        let kind = result["kind"].as_str().expect("kind");
        assert!(kind == "fail" || result["level"] == "none", "{result:#}");
    }

    // HTML to a file: one document naming the target.
    let html = audit_to_file(dir.path(), "html", &mx);
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains(&mx));

    // Text to a pipe: no colour, grouped by family, a summary line.
    let out = ravelin_cli(&["audit", &mx], AUDIT_TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}'), "colour on a pipe: {text}");
    assert!(text.contains("  smtp\n") && text.contains("smtp.open_relay"));
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .contains(" findings: ")
    );
}

/// `--nameserver`: a host name is resolved by the given DNS server to every address it has,
/// and each address is an endpoint audited on its own (here one answers and one does not).
#[test]
fn nameserver_resolves_a_host_to_every_address() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(RavelinConfig::inbound(sink.addr));
    let port = ravelin.addr().port();
    let dns = Unbound::start(
        "audit.test.",
        &["mx.audit.test. A 127.0.0.1", "mx.audit.test. A 127.0.0.2"],
    );
    let target = format!("example.org@mx.audit.test:{port}");
    let a = Audit::run(&["--nameserver", &dns.addr.to_string(), &target]);
    assert_eq!(a.exit, 0, "{:#}\n{}", a.report, a.stderr);
    let mut endpoints: Vec<String> = a.report["targets"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    endpoints.sort();
    let live = format!("mx.audit.test[127.0.0.1]:{port}");
    let dead = format!("mx.audit.test[127.0.0.2]:{port}");
    assert_eq!(endpoints, vec![live.clone(), dead.clone()]);
    let of = |endpoint: &str, id: &str| -> Vec<String> {
        a.findings(0)
            .iter()
            .filter(|f| f["endpoint"] == endpoint && f["id"] == id)
            .map(|f| f["status"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(of(&live, "smtp.open_relay"), vec!["pass"]);
    assert_eq!(of(&live, "smtp.connect"), Vec::<String>::new());
    assert_eq!(of(&dead, "smtp.connect"), vec!["error"]);
    assert_eq!(of(&dead, "smtp.open_relay"), Vec::<String>::new());
}

/// `ports.exposed` for host targets: an SMTP server audited as `host:port` gets the other
/// mail ports of its address tested once, as an MX does (here smtp-sink answers on 2525, the
/// target, and as root on 25 too); a submission target is not scanned (it is the users'
/// mailbox server, where IMAP and POP3 are expected); `--no-port-scan` turns the scan off.
#[test]
fn an_smtp_host_target_gets_its_mail_ports_tested() {
    let host = Ipv4Addr::new(127, 0, 0, 25);
    let sink = SmtpSink::start_on(SocketAddr::from((host, 2525)), &[]);
    let also_25 = is_root().then(|| SmtpSink::start_on(SocketAddr::from((host, 25)), &[]));
    let smtp = format!("example.org@{}", sink.addr);
    let submission = format!("submission://example.org@{}", sink.addr);
    let ports = |a: &Audit, target: usize| -> Vec<(String, String)> {
        a.findings(target)
            .iter()
            .filter(|f| f["id"] == "ports.exposed")
            .map(|f| {
                let on = f["endpoint"].as_str().unwrap_or_default().to_string();
                (on, f["status"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    };
    let a = Audit::run(&["--concurrency", "1", &smtp, &submission]);
    assert!(matches!(a.exit, 0 | 1), "{:#}\n{}", a.report, a.stderr);
    // A host given by its address is named by it, as its other findings are.
    let scanned = ports(&a, 0);
    let mut expected = vec![format!("{host}:2525")];
    if also_25.is_some() {
        expected.push(format!("{host}:25"));
    }
    for endpoint in &expected {
        assert!(
            scanned.contains(&(endpoint.clone(), "info".to_string())),
            "{endpoint} info expected in {scanned:?}"
        );
    }
    // The ports that did not answer are listed in one finding on the address.
    let silent: Vec<&Value> = a
        .findings(0)
        .iter()
        .filter(|f| f["id"] == "ports.exposed" && f["status"] == "pass")
        .collect();
    assert_eq!(silent.len(), 1, "{scanned:?}");
    assert_eq!(silent[0]["endpoint"], host.to_string());
    let listed = silent[0]["evidence"]
        .as_str()
        .unwrap_or_default()
        .split(", ")
        .count();
    assert_eq!(
        listed + expected.len(),
        ravelin_audit::ports::MAIL_PORTS.len(),
        "every mail port has one verdict: {scanned:?}"
    );
    assert_eq!(
        ports(&a, 1),
        Vec::new(),
        "a submission target is not scanned"
    );
    let off = Audit::run(&["--no-port-scan", &smtp]);
    assert!(
        matches!(off.exit, 0 | 1),
        "{:#}\n{}",
        off.report,
        off.stderr
    );
    assert_eq!(ports(&off, 0), Vec::new(), "--no-port-scan");
    assert!(
        off.findings(0)
            .iter()
            .any(|f| f["id"] == "smtp.banner_disclosure")
    );
}

/// A domain target: `ravelin audit example.org` looks up the MX through `--nameserver`,
/// audits the MX (a hardened Postfix with TLS) on `--smtp-port` with the SMTP, TLS and
/// per-address DNS checks, and reports the domain's DNS checks; a null-MX domain (from a
/// targets file) gets its DNS checks and no endpoint.
#[test]
fn a_domain_is_audited_through_its_mx_host() {
    let dir = daemon_tempdir();
    let pki = ravelin_tls::testing::TestPki::new("mx.example.org").expect("test PKI");
    let files = pki.write_to(dir.path()).expect("write the test PKI");
    let postfix = Postfix::start(
        hardened_options(&files)
            .set("myhostname", "mx.example.org")
            .set("smtpd_tls_protocols", ">=TLSv1.2")
            .set("smtpd_tls_mandatory_protocols", ">=TLSv1.2"),
    );
    let ip = postfix.addr.ip();
    let zone = format!(
        "@ MX 10 mx\nmx A {ip}\n@ TXT \"v=spf1 mx -all\"\n\
         _dmarc TXT \"v=DMARC1; p=reject; rua=mailto:dmarc@example.org\"\n\
         nullmx MX 0 .\nnullmx TXT \"v=spf1 -all\"\n"
    );
    let std::net::IpAddr::V4(v4) = ip else {
        panic!("Postfix test instances listen on IPv4 loopback, not {ip}");
    };
    let [_, b, c, d] = v4.octets();
    let reverse = format!("{d}.{c}.{b} PTR mx.example.org.\n");
    let dns = ravelin_dns::testing::TestDnsServer::start(&[
        ("example.org", &zone),
        ("127.in-addr.arpa", &reverse),
    ])
    .expect("in-process DNS server");
    let port = postfix.addr.port().to_string();
    // Domains come from a targets file as well as from the arguments.
    let targets = dir.path().join("domains.txt");
    std::fs::write(
        &targets,
        "# parked domains\nnullmx.example.org  # takes no mail\n",
    )
    .expect("write the targets file");
    let a = Audit::run(&[
        "--nameserver",
        &dns.addr().to_string(),
        "--smtp-port",
        &port,
        "--ca-file",
        &files.ca.display().to_string(),
        "--dnsbl",
        "bl.example.org",
        "--fail-on",
        "critical",
        "example.org",
        "--targets-file",
        &targets.display().to_string(),
    ]);
    assert_eq!(a.exit, 0, "{:#}\n{}", a.report, a.stderr);
    assert_eq!(a.report["targets"][0]["target"], "example.org");
    let endpoint = format!("mx.example.org[{ip}]:{port}");
    assert_eq!(
        a.report["targets"][0]["endpoints"],
        serde_json::json!([endpoint])
    );
    a.expect(0, HARDENED_MX);
    a.expect(
        0,
        &[
            ("dns.mx", "pass"),
            ("dns.spf", "pass"),
            ("dns.dmarc", "pass"),
            ("dns.dkim", "warn"),
            ("dns.mta_sts", "warn"),
            ("dns.tlsrpt", "warn"),
            ("dns.caa", "warn"),
            ("dns.dane", "info"),
            ("reputation.dnsbl", "pass"),
            ("tls.starttls", "pass"),
            ("tls.versions", "pass"),
            ("tls.cert_chain", "pass"),
            ("tls.cert_hostname", "pass"),
            ("tls.consistency", "skipped"),
        ],
    );
    // Per-address findings name the MX endpoint; domain findings name the domain.
    assert_eq!(a.finding(0, "dns.ptr")["endpoint"], endpoint.as_str());
    // The MX address's other mail ports were scanned once: each answered port is a finding
    // of its own, the others are listed in one finding; none of them failed to be tested.
    let scanned: Vec<&Value> = a
        .findings(0)
        .iter()
        .filter(|f| f["id"] == "ports.exposed")
        .collect();
    let host = format!("mx.example.org[{ip}]");
    assert!(!scanned.is_empty(), "{:#}", a.report);
    for f in &scanned {
        let on = f["endpoint"].as_str().unwrap_or_default();
        assert!(on.starts_with(&host), "{f:#}");
        assert_ne!(f["status"], "error", "{f:#}");
        if on == host {
            assert_eq!(f["status"], "pass", "ports that do not answer: {f:#}");
        }
    }
    let listed: usize = scanned
        .iter()
        .map(|f| match f["endpoint"].as_str() {
            Some(e) if e == host => f["evidence"].as_str().unwrap_or("").split(", ").count(),
            _ => 1,
        })
        .sum();
    assert_eq!(
        listed,
        ravelin_audit::ports::MAIL_PORTS.len(),
        "every mail port has a verdict: {scanned:#?}"
    );
    // The PTR name is forward-confirmed and is the name Postfix gives in its banner and EHLO.
    a.expect(0, &[("dns.ptr", "pass")]);
    assert!(
        a.evidence(0, "dns.ptr")
            .contains("banner/EHLO name: mx.example.org"),
        "{}",
        a.evidence(0, "dns.ptr")
    );
    assert_eq!(a.finding(0, "dns.spf")["endpoint"], "example.org");
    assert!(
        a.evidence(0, "dns.mx")
            .contains(&format!("mx.example.org → {ip}"))
    );

    assert_eq!(a.report["targets"][1]["target"], "nullmx.example.org");
    assert_eq!(a.report["targets"][1]["endpoints"], serde_json::json!([]));
    a.expect(
        1,
        &[
            ("dns.mx", "pass"),
            ("dns.spf", "pass"),
            ("dns.dmarc", "pass"),
        ],
    );
    assert!(
        a.evidence(1, "dns.dmarc").contains("organisational domain"),
        "{}",
        a.evidence(1, "dns.dmarc")
    );
    assert!(
        a.findings(1).iter().all(|f| f["id"] != "smtp.connect"),
        "a null MX has no endpoint to connect to"
    );
    assert!(postfix.messages().is_empty());
}

/// `--dns-only`: a domain gets its DNS checks and the PTR and blocklist lookups of its MX
/// address, and nothing connects to the MX host (a listener that would see the connection in
/// its accept queue); a batch of domains sharing that MX host (on a thread per CPU) gets a
/// report per domain in the order given, each with the host's lookups; a host target, or
/// `--active` with it, is a usage error.
#[test]
fn dns_only_audits_the_records_without_connecting_to_the_mail_hosts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let port = listener.local_addr().expect("listener address").port();
    let zone = "@ MX 10 mx\nmx A 127.0.0.1\n@ TXT \"v=spf1 mx -all\"\n\
                _dmarc TXT \"v=DMARC1; p=none\"\n";
    let customers: Vec<(String, String)> = (1..=6)
        .map(|n| {
            let zone = "@ MX 10 mx.example.org.\n@ TXT \"v=spf1 -all\"\n".to_string();
            (format!("c{n}.example"), zone)
        })
        .collect();
    let mut zones = vec![
        ("example.org", zone),
        ("127.in-addr.arpa", "1.0.0 PTR mx.example.org.\n"),
        ("bl.example.org", "2.0.0.127 A 127.0.0.2\n"),
    ];
    zones.extend(customers.iter().map(|(d, z)| (d.as_str(), z.as_str())));
    let dns = ravelin_dns::testing::TestDnsServer::start(&zones).expect("in-process DNS server");
    let port_arg = port.to_string();
    let nameserver = dns.addr().to_string();
    let common = local_world_args(&nameserver, &port_arg);
    let a = Audit::run(&[&common[..], &["--dns-only", "example.org"]].concat());
    assert_eq!(a.exit, 0, "{:#}\n{}", a.report, a.stderr);
    let endpoint = format!("mx.example.org[127.0.0.1]:{port}");
    assert_eq!(
        a.report["targets"][0]["endpoints"],
        serde_json::json!([endpoint])
    );
    a.expect(
        0,
        &[
            ("dns.mx", "pass"),
            ("dns.spf", "pass"),
            ("dns.dmarc", "fail"),
            ("dns.dkim", "warn"),
            ("dns.mta_sts", "warn"),
            ("dns.tlsrpt", "warn"),
            ("dns.caa", "warn"),
            ("dns.ptr", "pass"),
            ("reputation.dnsbl", "pass"),
        ],
    );
    assert_eq!(a.finding(0, "dns.ptr")["endpoint"], endpoint.as_str());
    assert!(
        a.evidence(0, "dns.ptr")
            .contains("banner/EHLO name: not read"),
        "{}",
        a.evidence(0, "dns.ptr")
    );
    let ids: Vec<&str> = a
        .findings(0)
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert!(
        ids.iter()
            .all(|id| id.starts_with("dns.") || *id == "reputation.dnsbl")
            && !ids.contains(&"dns.dane"),
        "only DNS checks with --dns-only: {ids:?}"
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("--dns-only connected to the MX host (from {peer})"),
        Err(e) => panic!("accept on the MX listener: {e}"),
    }

    // A batch: the customers share the MX host, looked up once and reported in each.
    let mut batch: Vec<&str> = common.to_vec();
    batch.push("--dns-only");
    batch.extend(customers.iter().map(|(d, _)| d.as_str()));
    batch.push("example.org");
    let b = Audit::run(&batch);
    assert_eq!(b.exit, 0, "{:#}\n{}", b.report, b.stderr);
    let targets: Vec<&str> = b.report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["target"].as_str())
        .collect();
    let mut expected: Vec<&str> = customers.iter().map(|(d, _)| d.as_str()).collect();
    expected.push("example.org");
    assert_eq!(
        targets, expected,
        "one report per domain, in the order given"
    );
    for index in 0..expected.len() {
        assert_eq!(b.finding(index, "dns.ptr")["endpoint"], endpoint.as_str());
        assert_eq!(b.evidence(index, "dns.ptr"), a.evidence(0, "dns.ptr"));
        assert_eq!(
            b.finding(index, "reputation.dnsbl")["status"],
            "pass",
            "{:#}",
            b.report
        );
    }
    assert_eq!(b.finding(0, "dns.spf")["status"], "pass");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "--dns-only connected to the MX host in a batch"
    );

    // Without --dns-only the same run connects to the MX host (answered with a refusing
    // greeting): the listener above is what proves --dns-only did not.
    let greeter = refuse_one_greeting(listener);
    let out = ravelin_cli(
        &[&["audit"][..], &common[..], &["example.org"]].concat(),
        WAIT,
    );
    assert!(out.status.code().is_some(), "{}", describe(&out));
    assert!(
        greeter.join().expect("greeter thread"),
        "the audit without --dns-only connects to the MX host"
    );

    for args in [
        vec!["audit", "--dns-only", "mx.example.org:25"],
        vec!["audit", "--dns-only", "127.0.0.1"],
        vec!["audit", "--dns-only", "--active", "example.org"],
    ] {
        let out = ravelin_cli(&args, AUDIT_TIMEOUT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
}

/// `--check` and `--skip-check`: the report holds the chosen checks only; the DNS checks left
/// out send no query (the server counts what it receives: the whole DNS part asks 26 DKIM
/// selectors alone), and a domain whose chosen checks need no connection is not connected
/// to (a listener that would see it in its accept queue). A pattern naming no check is a
/// usage error; `--list-checks` prints every registered id.
#[test]
fn chosen_checks_run_and_the_others_cost_nothing() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let port = listener
        .local_addr()
        .expect("listener address")
        .port()
        .to_string();
    let zone = "@ MX 10 mx\nmx A 127.0.0.1\n@ TXT \"v=spf1 mx -all\"\n\
                _dmarc TXT \"v=DMARC1; p=none\"\n\
                selector1._domainkey TXT \"v=DKIM1; k=ed25519; \
                p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\"\n";
    let dns = ravelin_dns::testing::TestDnsServer::start(&[("example.org", zone)])
        .expect("in-process DNS server");
    let nameserver = dns.addr().to_string();
    let common = local_world_args(&nameserver, &port);
    let ids = |a: &Audit| -> Vec<String> {
        a.findings(0)
            .iter()
            .filter_map(|f| f["id"].as_str().map(str::to_string))
            .collect()
    };
    let queries = |args: &[&str]| -> (Audit, usize) {
        let before = dns.queries();
        let a = Audit::run(&[&common[..], args].concat());
        (a, dns.queries() - before)
    };

    let (whole, whole_queries) = queries(&["--dns-only", "example.org"]);
    assert!(
        ids(&whole).contains(&"dns.dkim".to_string()),
        "{:#}",
        whole.report
    );
    let (chosen, chosen_queries) =
        queries(&["--check", "dns.spf", "--check", "DNS.DMARC", "example.org"]);
    assert_eq!(chosen.exit, 0, "{:#}\n{}", chosen.report, chosen.stderr);
    assert_eq!(
        ids(&chosen),
        ["dns.spf", "dns.dmarc"],
        "{:#}",
        chosen.report
    );
    chosen.expect(0, &[("dns.spf", "pass"), ("dns.dmarc", "fail")]);
    // MX (the report names the endpoints), its address, the SPF record (and the `mx` term's
    // lookups), the DMARC record; no DKIM selector, CAA, MTA-STS or TLS-RPT question.
    assert!(
        chosen_queries <= 6 && whole_queries >= chosen_queries + 26,
        "chosen checks sent {chosen_queries} queries, the whole DNS part {whole_queries}"
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("DNS checks alone connected to the MX host (from {peer})"),
        Err(e) => panic!("accept on the MX listener: {e}"),
    }

    let (skipped, _) = queries(&[
        "--dns-only",
        "--skip-check",
        "dns.dkim",
        "--skip-check",
        "reputation",
        "example.org",
    ]);
    let left = ids(&skipped);
    assert!(
        !left.contains(&"dns.dkim".to_string())
            && !left.contains(&"reputation.dnsbl".to_string())
            && left.contains(&"dns.mx".to_string())
            && left.contains(&"dns.ptr".to_string()),
        "{left:?}"
    );

    for bad in [vec!["--check", "dns.spff"], vec!["--skip-check", "tsl"]] {
        let out = ravelin_cli(&[&["audit"][..], &bad[..], &["example.org"]].concat(), WAIT);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("names no check"),
            "{}",
            describe(&out)
        );
    }
    let out = ravelin_cli(
        &["audit", "--dns-only", "--check", "tls", "example.org"],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = ravelin_cli(&["audit", "--list-checks", "--format", "json"], WAIT);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("--list-checks JSON");
    assert!(
        listed
            .iter()
            .all(|c| c["description"].as_str().is_some_and(|d| !d.is_empty())),
        "{listed:?}"
    );
    let listed: Vec<&str> = listed.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(listed, ravelin_audit::check_ids());
    assert!(listed.iter().any(|id| id.starts_with("smtp.smuggling.")));

    // A chosen check of the mail host: the domain is connected to, and a host that cannot be
    // audited (it refuses at the greeting) still makes the run exit 3 with its smtp.connect
    // error, however few checks were chosen.
    let greeter = refuse_one_greeting(listener);
    let (refused, _) = queries(&["--check", "smtp.vrfy", "example.org"]);
    assert!(
        greeter.join().expect("greeter thread"),
        "smtp.vrfy connects"
    );
    assert_eq!(refused.exit, 3, "{:#}", refused.report);
    assert_eq!(ids(&refused), ["smtp.connect"], "{:#}", refused.report);
}

/// Answers the first connection to the non-blocking `listener` with a refusing greeting, as
/// a mail host that cannot be audited; the thread returns whether one came within [`WAIT`].
fn refuse_one_greeting(listener: std::net::TcpListener) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    use std::io::Write;
                    let _ = conn.write_all(b"554 5.3.2 not now\r\n");
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept on the MX listener: {e}"),
            }
        }
        false
    })
}

/// The arguments that point an audit at a test world: its DNS server, the port of its MX
/// hosts, a blocklist zone of its own (nothing is asked outside), no exit code for findings
/// below critical.
fn local_world_args<'a>(nameserver: &'a str, smtp_port: &'a str) -> [&'a str; 8] {
    [
        "--nameserver",
        nameserver,
        "--smtp-port",
        smtp_port,
        "--dnsbl",
        "bl.example.org",
        "--fail-on",
        "critical",
    ]
}

/// Connections the gateway has logged so far, once the count has stopped moving.
fn connections(ravelin: &Ravelin) -> usize {
    let mut last = usize::MAX;
    for _ in 0..50 {
        let now = ravelin.events("connect").len();
        if now == last {
            return now;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// Two domains with the same MX host (a hosting provider's customers): the host's SMTP, TLS
/// and per-address checks run once and both reports carry them; the checks that name the
/// domain (recipients, relay) run for each. Proven by the connections the MX host sees: the
/// second domain costs fewer than the first.
#[test]
fn domains_sharing_an_mx_host_share_its_audit() {
    let sink = SmtpSink::start();
    let dir = daemon_tempdir();
    let (ravelin, ca) = gateway(sink.addr, dir.path());
    let mx = ravelin.listener("mx");
    let zone = format!(
        "@ MX 10 mx\nshop MX 10 mx\nmx A {}\n@ TXT \"v=spf1 mx -all\"\n",
        mx.ip()
    );
    let dns = ravelin_dns::testing::TestDnsServer::start(&[("example.org", &zone)])
        .expect("in-process DNS server");
    let nameserver = dns.addr().to_string();
    let port = mx.port().to_string();
    let audit = |domains: &[&str]| {
        let before = connections(&ravelin);
        let common = [
            &local_world_args(&nameserver, &port)[..],
            &["--ca-file", ca.as_str()],
        ]
        .concat();
        let a = Audit::run(&[&common[..], domains].concat());
        assert_ne!(a.exit, 2, "{:#}\n{}", a.report, a.stderr);
        (a, connections(&ravelin) - before)
    };
    let (_, one) = audit(&["example.org"]);
    let (a, two) = audit(&["example.org", "shop.example.org"]);
    assert!(
        two - one < one,
        "the second domain cost {} connections to the MX host, the first {one}: its host \
         checks ran again",
        two - one
    );
    // Both reports carry the host's checks, with the same results.
    let host_checks = |target: usize| -> Vec<(String, String, String)> {
        a.findings(target)
            .iter()
            .filter(|f| {
                let id = f["id"].as_str().unwrap_or_default();
                id.starts_with("tls.") && id != "tls.consistency"
                    || [
                        "smtp.banner_disclosure",
                        "smtp.size_limit",
                        "dns.ptr",
                        "dns.dane",
                    ]
                    .contains(&id)
            })
            .map(|f| {
                (
                    f["id"].to_string(),
                    f["status"].to_string(),
                    f["evidence"].to_string(),
                )
            })
            .collect()
    };
    let first = host_checks(0);
    assert!(
        first.iter().any(|(id, _, _)| id == "\"tls.versions\"")
            && first.iter().any(|(id, _, _)| id == "\"smtp.size_limit\""),
        "{first:?}"
    );
    assert_eq!(first, host_checks(1));
    // The recipient checks asked about each domain's own addresses.
    assert!(a.evidence(0, "smtp.catch_all").contains("@example.org"));
    assert!(
        a.evidence(1, "smtp.catch_all")
            .contains("@shop.example.org"),
        "{}",
        a.evidence(1, "smtp.catch_all")
    );
}

/// Runs `ravelin audit --format FORMAT --output DIR/report.FORMAT ARGS…`, asserts the exit
/// code is one of `exits` and returns the path of the report.
fn report_file(dir: &std::path::Path, format: &str, args: &[&str], exits: &[i32]) -> String {
    let file = dir
        .join(format!("report.{format}"))
        .to_string_lossy()
        .into_owned();
    let mut all = vec!["audit", "--format", format, "--output", &file];
    all.extend_from_slice(args);
    let out = ravelin_cli(&all, AUDIT_TIMEOUT);
    let code = out.status.code().unwrap_or(-1);
    assert!(exits.contains(&code), "exit {code}: {}", describe(&out));
    file
}

/// The official SARIF 2.1.0 JSON schema (see tests/fixtures/README.md for its origin).
fn sarif_schema() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sarif-schema-2.1.0.json")
}

/// Validates a SARIF file against the schema with Python's `jsonschema` (draft-04, as the
/// schema declares); panics listing every violation.
fn assert_valid_sarif(file: &str) {
    const VALIDATE: &str = r#"
import json, sys
from jsonschema import Draft4Validator
schema = json.load(open(sys.argv[1], encoding="utf-8"))
Draft4Validator.check_schema(schema)
doc = json.load(open(sys.argv[2], encoding="utf-8"))
errors = sorted(Draft4Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
for e in errors:
    print("/".join(str(p) for p in e.absolute_path) or "(root)", ":", e.message[:300])
print(len(errors), "violations")
sys.exit(1 if errors else 0)
"#;
    let mut cmd = std::process::Command::new(venv_python());
    cmd.arg("-c").arg(VALIDATE).arg(sarif_schema()).arg(file);
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{file} does not validate against the SARIF 2.1.0 schema: {}",
        describe(&out)
    );
}

/// SARIF of real audits validates against the official SARIF 2.1.0 schema: the weak Postfix
/// (failed, warned and passed checks), an unreachable address (a check that could not run)
/// and Ravelin's gateway (informational and skipped checks), in one report and alone.
#[test]
fn sarif_output_validates_against_the_sarif_2_1_0_schema() {
    let sink = SmtpSink::start();
    let postfix = weak_postfix(sink.addr);
    let dir = daemon_tempdir();
    let (gw, _) = gateway(sink.addr, dir.path());
    let weak = format!("example.org@{}", postfix.addr);
    let mx = gw.listener("mx").to_string();
    let closed = free_addr().to_string();

    let one = dir.path().join("one");
    std::fs::create_dir(&one).expect("mkdir");
    let file = report_file(&one, "sarif", &[&weak], &[1]);
    assert_valid_sarif(&file);

    let list = dir.path().join("targets.txt");
    std::fs::write(&list, format!("{weak}\n{mx}\n{closed}\n")).expect("write targets file");
    let file = report_file(
        dir.path(),
        "sarif",
        &["--targets-file", &list.to_string_lossy()],
        &[1, 3],
    );
    assert_valid_sarif(&file);

    // The report validated has real findings of every kind.
    let sarif: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("JSON");
    let results = sarif["runs"][0]["results"].as_array().expect("results");
    let kinds: Vec<&str> = results.iter().filter_map(|r| r["kind"].as_str()).collect();
    for kind in ["fail", "pass", "informational", "review"] {
        assert!(kinds.contains(&kind), "no {kind} result in {sarif:#}");
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r["kind"] == "fail")
        .filter_map(|r| r["ruleId"].as_str())
        .collect();
    assert!(
        failed.contains(&"smtp.vrfy") && failed.contains(&"smtp.open_relay"),
        "{failed:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r["kind"] == "fail" && r["level"] == "error")
    );
    assert!(postfix.messages().is_empty() && sink.messages().is_empty());
}

/// Runs Debian's Chromium headless on a local file with everything that could reach the
/// network switched off: no background services, no component updates, no sync, every
/// host name unresolvable and a proxy that does not exist.
fn chromium(profile: &std::path::Path, args: &[&str], page: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(program("chromium"));
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--metrics-recording-only",
        "--no-pings",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(page)
    .env("HOME", profile);
    let out = run(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "chromium: {}", describe(&out));
    out
}

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// The HTML report of a real audit (the weak Postfix) opened in headless Chromium: the DOM
/// Chromium built holds the summary and every finding of the JSON report of the same target,
/// the problems table lists every failed check, and the screenshot is a real picture.
/// With `RAVELIN_AUDIT_SCREENSHOT=PATH` the screenshot is also copied to PATH (this is how
/// docs/audit-report.png was made).
#[test]
fn html_report_renders_in_headless_chromium() {
    let sink = SmtpSink::start();
    let postfix = weak_postfix(sink.addr);
    let dir = daemon_tempdir();
    let weak = format!("example.org@{}", postfix.addr);

    let json = Audit::run(&[&weak]);
    assert_eq!(json.exit, 1, "{}", json.stderr);
    let html = report_file(dir.path(), "html", &[&weak], &[1]);
    let page = format!("file://{html}");
    let profile = dir.path().join("chromium");
    std::fs::create_dir(&profile).expect("mkdir");

    let dom = chromium(&profile, &["--dump-dom"], &page);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(dom.contains("<h1>Mail security audit</h1>"), "{dom}");
    assert!(dom.contains(&format!("<h2>{weak}</h2>")), "{dom}");
    let findings = json.findings(0);
    let count = |status: &str| findings.iter().filter(|f| f["status"] == status).count();
    for (status, label) in [("fail", "failed"), ("pass", "passed")] {
        assert!(count(status) > 0, "{status}: {:#}", json.report);
        let card = format!(
            "<div class=\"card {status}\"><b>{}</b>{label}</div>",
            count(status)
        );
        assert!(dom.contains(&card), "{card} not in {dom}");
    }
    let (fix_first, details) = dom
        .split_once("<h2>What to fix first</h2>")
        .map(|(_, rest)| {
            rest.split_once(&format!("<h2>{weak}</h2>"))
                .expect("target")
        })
        .expect("problems section");
    for f in findings {
        let id = f["id"].as_str().expect("id");
        // In the problems table as `<td class="id">ID</td>`, below with a title attribute.
        let cell = format!(">{id}</td>");
        assert!(details.contains(&cell), "{id} not in the rendered report");
        if f["status"] == "fail" || f["status"] == "warn" {
            assert!(fix_first.contains(&cell), "{id} not in the problems table");
        }
    }
    assert!(fix_first.contains("smtp.vrfy") && fix_first.contains("smtp.open_relay"));

    let shot = dir.path().join("report.png");
    chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
        ],
        &page,
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert_eq!(png_size(&png), (1280, 2000));
    assert!(
        png.len() > 50_000,
        "a screenshot of {} bytes is too small to show the report",
        png.len()
    );
    if let Some(out) = std::env::var_os("RAVELIN_AUDIT_SCREENSHOT") {
        // A relative path is taken from the repository root (cargo runs tests in the crate).
        std::fs::copy(&shot, repo_root().join(out)).expect("copy the screenshot");
    }
    assert!(postfix.messages().is_empty() && sink.messages().is_empty());
}

/// `--postfix-config DIR` lints a configuration from the inside, alone or next to remote
/// targets: the weak fixture fails (exit 1) at the lines that decide, the hardened one passes,
/// and a directory without main.cf cannot be audited (exit 3).
#[test]
fn postfix_config_is_linted_from_the_command_line() {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../audit/tests/fixtures/postfix");
    let weak = fixtures.join("weak");
    let weak = weak.to_string_lossy();
    let a = Audit::run(&["--postfix-config", &weak]);
    assert_eq!(a.exit, 1, "{:#}\n{}", a.report, a.stderr);
    assert_eq!(a.report["targets"][0]["target"], format!("postfix:{weak}"));
    a.expect(
        0,
        &[
            ("smtp.open_relay", "fail"),
            ("postfix.mynetworks", "fail"),
            ("smtp.vrfy", "fail"),
        ],
    );
    assert!(
        a.finding(0, "smtp.open_relay")["endpoint"]
            .as_str()
            .is_some_and(|e| e.ends_with("main.cf:10")),
        "{:#}",
        a.report
    );
    let hardened = fixtures.join("hardened");
    let a = Audit::run(&["--postfix-config", &hardened.to_string_lossy()]);
    assert_eq!(a.exit, 0, "{:#}\n{}", a.report, a.stderr);
    let problems: Vec<&Value> = a
        .findings(0)
        .iter()
        .filter(|f| f["status"] == "fail" || f["status"] == "warn")
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let empty = daemon_tempdir();
    let a = Audit::run(&["--postfix-config", &empty.path().to_string_lossy()]);
    assert_eq!(a.exit, 3, "{:#}", a.report);
    a.expect(0, &[("postfix.config", "error")]);
    // Without any target at all it is a usage error.
    let out = ravelin_cli(&["audit"], WAIT);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// A server that accepts connections but never greets costs `--greeting-timeout`, not more:
/// the audit reports it as not reachable (exit 3) and says what it waited for.
#[test]
fn a_server_that_never_greets_costs_the_greeting_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("address");
    let held = std::thread::spawn(move || {
        // Accept and hold every connection, silent, until the audit is over.
        let mut conns = Vec::new();
        silent.set_nonblocking(true).expect("nonblocking");
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < until {
            match silent.accept() {
                Ok((c, _)) => conns.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let started = std::time::Instant::now();
    let a = Audit::run(&["--greeting-timeout", "2", &addr.to_string()]);
    let took = started.elapsed();
    assert_eq!(a.exit, 3, "{:#}\n{}", a.report, a.stderr);
    let evidence = a.evidence(0, "smtp.connect");
    assert!(evidence.contains("greeting"), "{evidence}");
    assert!(took < Duration::from_secs(30), "the audit took {took:?}");
    drop(held);
}
