//! The verdicts of the checks that judge what discovery saw, on hand-made server answers
//! (an Exchange-like greeting, NTLM challenges, AUTH lists) that no test peer on this machine
//! produces. The checks that talk to servers are tested end to end in crates/ravelin/tests.

use std::time::Duration;

use ravelin_wire::Reply;

use super::ntlm::{self, OsVersion};
use super::session::Ehlo;
use super::{Ctx, Discovery, SmtpOptions, auth, disclosure};
use crate::finding::{Finding, Severity, Status};
use crate::target::{Endpoint, Role};

const NOW: i64 = 1_717_401_600; // 2024-06-03 08:00:00 UTC

fn endpoint(role: Role) -> Endpoint {
    Endpoint {
        name: Some("mail.example.org".into()),
        addr: "198.51.100.25:25".parse().unwrap(),
        role,
        domain: Some("example.org".into()),
    }
}

fn ehlo(lines: &[&str]) -> Ehlo {
    Ehlo {
        extended: true,
        reply: Reply::multi(250, None, lines.iter().map(|l| l.to_string()).collect()),
    }
}

fn discovery(greeting: &str, ehlo_lines: &[&str], tls: Option<&[&str]>) -> Discovery {
    Discovery {
        greeting: Reply::new(220, None, greeting),
        greeting_delay: Duration::from_millis(5),
        greeting_at: NOW,
        ehlo: ehlo(ehlo_lines),
        tls_ehlo: tls.map(|l| Ok(ehlo(l))),
        help: None,
        local: Some("192.168.1.50".parse().unwrap()),
        transcript: String::new(),
    }
}

fn check(f: &Finding, id: &str, status: Status, severity: Severity) {
    assert_eq!(
        (f.id.as_str(), f.status, f.severity),
        (id, status, severity),
        "{}: {}\n{}",
        f.id,
        f.title,
        f.evidence
    );
}

const EXCHANGE_GREETING: &str =
    "EXCH01.corp.local Microsoft ESMTP MAIL Service ready at Mon, 3 Jun 2024 10:00:00 +0200";

#[test]
fn exchange_banner_reveals_its_internal_name_but_not_our_address() {
    let options = SmtpOptions::default();
    let ep = endpoint(Role::Mx);
    let ctx = Ctx::new(&ep, &options);
    let d = discovery(
        EXCHANGE_GREETING,
        &["EXCH01.corp.local Hello [192.168.1.50]", "SIZE 36700160"],
        None,
    );
    let f = disclosure::banner_finding(&ctx, &d);
    check(&f, "smtp.banner_disclosure", Status::Fail, Severity::Medium);
    assert!(
        f.evidence
            .contains("greeting names the internal host EXCH01.corp.local")
    );
    assert!(f.evidence.contains("greeting names Microsoft Exchange"));
    assert!(!f.evidence.contains("private address 192.168.1.50"));
    assert!(f.fix.contains("Set-ReceiveConnector"));
    assert_eq!(f.endpoint, "mail.example.org[198.51.100.25]:25");

    let clean = discovery("mail.example.org ESMTP", &["mail.example.org"], None);
    check(
        &disclosure::banner_finding(&ctx, &clean),
        "smtp.banner_disclosure",
        Status::Pass,
        Severity::Info,
    );
    let product = discovery(
        "mail.example.org ESMTP Postfix (Debian/GNU)",
        &["mail.example.org"],
        None,
    );
    check(
        &disclosure::banner_finding(&ctx, &product),
        "smtp.banner_disclosure",
        Status::Warn,
        Severity::Low,
    );
}

#[test]
fn clock_skew_from_the_greeting_and_the_ntlm_timestamp() {
    let options = SmtpOptions::default();
    let ep = endpoint(Role::Mx);
    let ctx = Ctx::new(&ep, &options);
    let mut d = discovery(EXCHANGE_GREETING, &["x"], None);
    // The greeting says 08:00:00 UTC.
    check(
        &disclosure::clock_finding(&ctx, &d, None),
        "smtp.clock_skew",
        Status::Pass,
        Severity::Info,
    );
    d.greeting_at = NOW - 200;
    let f = disclosure::clock_finding(&ctx, &d, None);
    check(&f, "smtp.clock_skew", Status::Warn, Severity::Low);
    assert!(f.evidence.contains("+200 s"), "{}", f.evidence);
    d.greeting_at = NOW + 3600;
    check(
        &disclosure::clock_finding(&ctx, &d, None),
        "smtp.clock_skew",
        Status::Fail,
        Severity::Medium,
    );
    // A greeting without a date: the NTLM timestamp alone decides.
    let mut plain = discovery("mail.example.org ESMTP", &["x"], None);
    plain.greeting_at = NOW;
    let skipped = disclosure::clock_finding(&ctx, &plain, None);
    assert_eq!(skipped.status, Status::Skipped);
    let c = ntlm::parse_challenge(&ntlm::build_challenge("C", &[], Some(NOW - 900), None)).unwrap();
    let f = disclosure::clock_finding(&ctx, &plain, Some(&c));
    check(&f, "smtp.clock_skew", Status::Fail, Severity::Medium);
    assert!(f.evidence.starts_with("NTLM timestamp"), "{}", f.evidence);
}

#[test]
fn software_versions_and_windows_builds() {
    let options = SmtpOptions::default();
    let ep = endpoint(Role::Mx);
    let ctx = Ctx::new(&ep, &options);
    let exim = discovery("mx ESMTP Exim 4.90 Mon, 03 Jun 2024", &["mx"], None);
    let f = disclosure::software_finding(&ctx, &exim, None);
    check(&f, "smtp.software", Status::Fail, Severity::Critical);
    assert!(f.evidence.contains("CVE-2019-10149") && f.evidence.contains("CVE-2023-51766"));
    assert!(f.fix.contains("Upgrade Exim"));

    let c = ntlm::parse_challenge(&ntlm::build_challenge(
        "CORP",
        &[(2, "CORP")],
        None,
        Some(OsVersion {
            major: 6,
            minor: 3,
            build: 9600,
        }),
    ))
    .unwrap();
    let exchange = discovery(EXCHANGE_GREETING, &["x"], None);
    let f = disclosure::software_finding(&ctx, &exchange, Some(&c));
    check(&f, "smtp.software", Status::Fail, Severity::High);
    assert!(
        f.evidence.contains("Windows Server 2012 R2"),
        "{}",
        f.evidence
    );
    assert!(f.evidence.contains("2023-10-10"));

    let unversioned = discovery("mx ESMTP Postfix (Debian/GNU)", &["mx"], None);
    check(
        &disclosure::software_finding(&ctx, &unversioned, None),
        "smtp.software",
        Status::Info,
        Severity::Info,
    );
    let patched = discovery("mx ESMTP Postfix 3.8.4", &["mx"], None);
    let f = disclosure::software_finding(&ctx, &patched, None);
    check(&f, "smtp.software", Status::Pass, Severity::Info);
    assert!(f.evidence.contains("smtpd_forbid_bare_newline"));
}

#[test]
fn auth_mechanisms_by_role() {
    let options = SmtpOptions::default();
    let mx = endpoint(Role::Mx);
    let sub = endpoint(Role::Submission);
    let verdict = |ep: &Endpoint, plain: &[&str], tls: &[&str]| {
        auth::mechanisms(&Ctx::new(ep, &options), &discovery("x", plain, Some(tls)))
    };
    check(
        &verdict(&mx, &["x"], &["x", "AUTH PLAIN LOGIN"]),
        "smtp.auth_mechanisms",
        Status::Warn,
        Severity::Low,
    );
    check(
        &verdict(&sub, &["x"], &["x", "AUTH PLAIN LOGIN"]),
        "smtp.auth_mechanisms",
        Status::Pass,
        Severity::Info,
    );
    check(
        &verdict(&sub, &["x"], &["x", "AUTH=CRAM-MD5 PLAIN"]),
        "smtp.auth_mechanisms",
        Status::Warn,
        Severity::Medium,
    );
    check(
        &verdict(&sub, &["x", "AUTH ANONYMOUS"], &["x"]),
        "smtp.auth_mechanisms",
        Status::Fail,
        Severity::High,
    );
    check(
        &verdict(&mx, &["x"], &["x"]),
        "smtp.auth_mechanisms",
        Status::Pass,
        Severity::Info,
    );
}

#[tokio::test]
async fn auth_offered_before_tls_fails_without_a_connection() {
    let options = SmtpOptions::default();
    let sub = endpoint(Role::Submission);
    let ctx = Ctx::new(&sub, &options);
    let f = auth::auth_before_tls(&ctx, &discovery("x", &["x", "AUTH PLAIN LOGIN"], None)).await;
    check(&f, "smtp.auth_before_tls", Status::Fail, Severity::High);
    assert!(f.fix.contains("smtpd_tls_auth_only = yes"));
    let f = auth::auth_before_tls(&ctx, &discovery("x", &["x", "AUTH NTLM"], None)).await;
    check(&f, "smtp.auth_before_tls", Status::Fail, Severity::Medium);
    let implicit = endpoint(Role::Submissions);
    let f = auth::auth_before_tls(
        &Ctx::new(&implicit, &options),
        &discovery("x", &["x", "AUTH PLAIN"], None),
    )
    .await;
    check(&f, "smtp.auth_before_tls", Status::Pass, Severity::Info);
}
