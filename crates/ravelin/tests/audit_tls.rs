//! The auditor's TLS checks (ravelin_audit::tls) against real servers on loopback: Postfix
//! instances with a sound certificate, with legacy settings (TLS 1.0 / 1.1, NULL and
//! anonymous suites, RSA key exchange and a 1024-bit DHE group, made possible with
//! `@SECLEVEL=0` in `tls_medium_cipherlist` and `smtpd_tls_dh1024_param_file`), with a flawed
//! certificate (1024-bit RSA, SHA-1, expired), without TLS and with implicit TLS; and
//! `ravelin serve` itself, which must pass every check. The Postfix linter, run on the
//! legacy instance's own main.cf, reports the same `tls.versions` failure as the probe.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ravelin_audit::tls::testing::{CertSpec, Digest, KeySpec, TestCert, weak_dh_params_pem};
use ravelin_audit::tls::{
    self, EndpointReport, ProbeError, TlsMode, TlsOptions, TlsTarget, Trust, hello,
};
use ravelin_audit::{Finding, Severity, Status};
use support::*;

/// Every check these tests expect on a TLS endpoint, in the order they are reported.
const TLS_CHECKS: &[&str] = &[
    "tls.starttls",
    "tls.versions",
    "tls.ciphers",
    "tls.kex",
    "tls.cert_chain",
    "tls.cert_hostname",
    "tls.cert_key",
    "tls.cert_signature",
    "tls.cert_expiry",
];

/// [`TLS_CHECKS`] is the TLS registry less `tls.consistency` (a finding per target, not per
/// endpoint, asserted on its own below): a check added to `ravelin_audit::tls::CHECKS` must be
/// expected of every endpoint here.
#[test]
fn tls_expectations_name_every_registered_tls_check() {
    let registered: Vec<&str> = tls::CHECKS
        .iter()
        .map(|c| c.id)
        .filter(|id| *id != "tls.consistency")
        .collect();
    assert_eq!(TLS_CHECKS, registered.as_slice());
}

/// Audits `addr` as `host`, trusting `ca_der` (and the public roots).
fn audit(host: &str, addr: SocketAddr, mode: TlsMode, ca_der: Option<Vec<u8>>) -> EndpointReport {
    let options = TlsOptions {
        timeout: Duration::from_secs(10),
        ehlo_name: "client.test.example".into(),
        trust: Trust {
            public_roots: true,
            extra_roots: ca_der.into_iter().map(Into::into).collect(),
        },
    };
    let target = TlsTarget {
        host: host.into(),
        addr,
        mode,
    };
    tls::audit_endpoint(&target, &options)
}

fn finding<'a>(report: &'a EndpointReport, id: &str) -> &'a Finding {
    report
        .findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no {id} finding in {:#?}", report.findings))
}

fn verdict(report: &EndpointReport, id: &str) -> (Status, Severity) {
    let f = finding(report, id);
    (f.status, f.severity)
}

fn ids(report: &EndpointReport) -> Vec<&str> {
    report.findings.iter().map(|f| f.id.as_str()).collect()
}

fn assert_all_pass(report: &EndpointReport) {
    assert_eq!(ids(report), TLS_CHECKS, "{:#?}", report.findings);
    let not_passed: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.status != Status::Pass)
        .collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}");
}

/// The DER of the first certificate in a PEM file (read as `--ca-file` is).
fn pem_der(path: &Path) -> Vec<u8> {
    let certs = tls::load_ca_file(path).expect("a PEM certificate");
    certs[0].to_vec()
}

/// What a default Postfix 3.7 on OpenSSL 3 needs to pass: TLS 1.2 and later only (the
/// default `>=TLSv1` lets OpenSSL 3 accept TLS 1.0), and no anonymous suites (Postfix enables
/// them on the server side).
const HARDENED: &[(&str, &str)] = &[
    ("smtpd_tls_protocols", ">=TLSv1.2"),
    ("smtpd_tls_mandatory_protocols", ">=TLSv1.2"),
    ("smtpd_tls_exclude_ciphers", "aNULL, kRSA"),
];

/// A Postfix backend offering STARTTLS with `cert` and `key`, plus `settings`.
fn tls_postfix(cert: &Path, key: &Path, settings: &[(&str, &str)]) -> Postfix {
    let mut options = PostfixOptions::backend(&["user"])
        .set("smtpd_tls_security_level", "may")
        .set("smtpd_tls_cert_file", &cert.display().to_string())
        .set("smtpd_tls_key_file", &key.display().to_string());
    for (name, value) in settings {
        options = options.set(name, value);
    }
    Postfix::start(options)
}

#[test]
fn sound_postfix_and_ravelin_serve_pass_every_check_alike() {
    let dir = daemon_tempdir();
    let pki = ravelin_tls::testing::TestPki::new("localhost").expect("test PKI");
    let files = pki.write_to(dir.path()).expect("write the PKI");
    let postfix = tls_postfix(&files.cert, &files.key, HARDENED);
    let ca = pem_der(&files.ca);
    let sound = audit(
        "localhost",
        postfix.addr,
        TlsMode::StartTls,
        Some(ca.clone()),
    );
    assert_all_pass(&sound);
    let versions = finding(&sound, "tls.versions");
    assert!(
        versions.evidence.contains("TLSv1: refused"),
        "{versions:#?}"
    );
    assert_eq!(sound.summary.versions, ["TLSv1.3", "TLSv1.2"]);

    // Without the private CA the chain is untrusted; under another name the name is wrong.
    let untrusted = audit("localhost", postfix.addr, TlsMode::StartTls, None);
    assert_eq!(verdict(&untrusted, "tls.cert_chain").0, Status::Fail);
    let other_name = audit(
        "mx.other.example",
        postfix.addr,
        TlsMode::StartTls,
        Some(ca.clone()),
    );
    assert_eq!(
        verdict(&other_name, "tls.cert_hostname"),
        (Status::Fail, Severity::Medium)
    );
    assert_eq!(verdict(&other_name, "tls.cert_chain").0, Status::Pass);

    // ravelin serve with its own certificate.
    let gw_dir = daemon_tempdir();
    let gw_pki = ravelin_tls::testing::TestPki::new("mx.test.example").expect("test PKI");
    let gw_files = gw_pki.write_to(gw_dir.path()).expect("write the PKI");
    let ravelin = Ravelin::start(RavelinConfig::inbound(postfix.addr).extra(&format!(
        "[tls]\ncertificate = {}\nprivate_key = {}",
        toml_string(&gw_files.cert.display().to_string()),
        toml_string(&gw_files.key.display().to_string())
    )));
    let gateway = audit(
        "mx.test.example",
        ravelin.addr(),
        TlsMode::StartTls,
        Some(pem_der(&gw_files.ca)),
    );
    assert_all_pass(&gateway);
    assert_eq!(gateway.summary.versions, ["TLSv1.3", "TLSv1.2"]);
    assert!(gateway.summary.weak_suites.is_empty() && gateway.summary.weak_kex.is_empty());

    // Two hosts, each with its own certificate, configured alike.
    let alike = tls::consistency(
        "example.org",
        &[sound.summary.clone(), gateway.summary.clone()],
    );
    assert_eq!(
        (alike.id.as_str(), alike.status),
        ("tls.consistency", Status::Pass),
        "{alike:#?}"
    );
}

#[test]
fn default_postfix_accepts_tls_1_0_and_anonymous_suites_and_both_checks_say_so() {
    // Postfix 3.7's default protocol list is >=TLSv1, and an OpenSSL 3 server accepts TLS 1.0
    // and 1.1 at its default security level; Postfix also enables anonymous suites for
    // servers. The probe sees both, the linter predicts both, under the same ids.
    let dir = daemon_tempdir();
    let pki = ravelin_tls::testing::TestPki::new("localhost").expect("test PKI");
    let files = pki.write_to(dir.path()).expect("write the PKI");
    let postfix = tls_postfix(&files.cert, &files.key, &[]);
    let ca = Some(pem_der(&files.ca));
    let report = audit("localhost", postfix.addr, TlsMode::StartTls, ca);
    assert_eq!(
        verdict(&report, "tls.versions"),
        (Status::Fail, Severity::Medium)
    );
    assert_eq!(
        report.summary.versions,
        ["TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"]
    );
    assert_eq!(
        verdict(&report, "tls.ciphers"),
        (Status::Fail, Severity::Low)
    );
    assert_eq!(
        report.summary.weak_suites,
        ["anonymous (no server authentication)"]
    );
    let lint = ravelin_audit::local::lint_postfix_config(&postfix.dir().join("etc"));
    let linted = |id: &str| {
        let f = lint.iter().find(|f| f.id == id).expect("linted finding");
        (f.status, f.severity, f.fix.clone())
    };
    let fix = |line: &str| format!("In main.cf: `{line}`");
    assert_eq!(
        linted("tls.versions"),
        (
            Status::Fail,
            Severity::Medium,
            fix("smtpd_tls_protocols = >=TLSv1.2")
        )
    );
    assert_eq!(
        linted("tls.ciphers"),
        (
            Status::Fail,
            Severity::Low,
            fix("smtpd_tls_exclude_ciphers = aNULL")
        )
    );
}

#[test]
fn legacy_postfix_fails_versions_ciphers_and_key_exchange() {
    let dir = daemon_tempdir();
    let cert = TestCert::new(&CertSpec::good("localhost")).expect("certificate");
    let files = cert.write_to(dir.path()).expect("write the certificate");
    let dh = dir.path().join("dh1024.pem");
    std::fs::write(&dh, weak_dh_params_pem().expect("DH parameters")).expect("write DH parameters");
    let postfix = tls_postfix(
        &files.cert,
        &files.key,
        &[
            ("tls_medium_cipherlist", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"),
            ("smtpd_tls_dh1024_param_file", &dh.display().to_string()),
        ],
    );
    let legacy = audit(
        "localhost",
        postfix.addr,
        TlsMode::StartTls,
        Some(cert.ca_der.clone()),
    );
    assert_eq!(ids(&legacy), TLS_CHECKS);
    let versions = finding(&legacy, "tls.versions");
    assert_eq!(
        (versions.status, versions.severity),
        (Status::Fail, Severity::Medium)
    );
    assert_eq!(versions.title, "TLS 1.1 and TLS 1.0 accepted");
    let ciphers = finding(&legacy, "tls.ciphers");
    assert_eq!(
        (ciphers.status, ciphers.severity),
        (Status::Fail, Severity::High)
    );
    assert_eq!(
        legacy.summary.weak_suites,
        [
            "NULL (no encryption)",
            "anonymous (no server authentication)"
        ]
    );
    let kex = finding(&legacy, "tls.kex");
    assert_eq!(kex.status, Status::Fail, "{kex:#?}");
    assert_eq!(legacy.summary.weak_kex, ["RSA", "DHE 1024"]);
    // The raw ClientHello agrees with OpenSSL where both can make the offer (NULL suites are
    // picked), and is refused where Debian's OpenSSL 3 cannot make it for either side
    // (RC4, 3DES, SSL 3.0): the "refused" in the findings comes from the server.
    let target = TlsTarget::new("localhost", postfix.addr);
    let timeout = Duration::from_secs(10);
    let picked = hello::offer(
        &target,
        timeout,
        "client.test.example",
        hello::TLS12,
        hello::NULL_SUITES,
    )
    .expect("NULL suites accepted");
    assert!(hello::NULL_SUITES.contains(&picked.suite));
    assert_eq!(picked.version, hello::TLS12);
    for (version, suites) in [
        (hello::TLS12, hello::RC4_SUITES),
        (hello::TLS12, hello::TRIPLE_DES_SUITES),
        (hello::SSL3, hello::SSL3_SUITES),
    ] {
        let refused = hello::offer(&target, timeout, "client.test.example", version, suites);
        assert!(
            matches!(refused, Err(ProbeError::Refused(_))),
            "{version:#x}: {refused:?}"
        );
    }
    assert!(ciphers.evidence.contains("RC4: refused"), "{ciphers:#?}");
    assert!(
        versions.evidence.contains("SSLv3: refused"),
        "{versions:#?}"
    );
    // The certificate itself is sound.
    for id in &TLS_CHECKS[4..] {
        assert_eq!(verdict(&legacy, id).0, Status::Pass, "{id}");
    }

    // The linter reads the same instance's main.cf and says the same under the same id.
    let lint = ravelin_audit::local::lint_postfix_config(&postfix.dir().join("etc"));
    let linted = lint
        .iter()
        .find(|f| f.id == "tls.versions")
        .expect("linted tls.versions");
    assert_eq!(linted.status, Status::Fail, "{linted:#?}");
    assert!(linted.evidence.contains("@SECLEVEL=0"), "{linted:#?}");

    // Against ravelin serve (TLS 1.2+ only) the set-up differs.
    let ravelin = Ravelin::start(RavelinConfig::inbound(postfix.addr));
    let gateway = audit("mx.test.example", ravelin.addr(), TlsMode::StartTls, None);
    let differ = tls::consistency(
        "example.org",
        &[legacy.summary.clone(), gateway.summary.clone()],
    );
    assert_eq!(
        (differ.id.as_str(), differ.status, differ.severity),
        ("tls.consistency", Status::Warn, Severity::Low)
    );
    assert!(differ.evidence.contains("versions: "), "{differ:#?}");
    assert!(differ.evidence.contains("weak suites: "), "{differ:#?}");
}

#[test]
fn postfix_with_a_short_sha1_expired_certificate() {
    let dir = daemon_tempdir();
    let cert = TestCert::new(&CertSpec {
        key: KeySpec::Rsa(1024),
        digest: Digest::Sha1,
        from_days: -400,
        until_days: -3,
        ..CertSpec::good("localhost")
    })
    .expect("certificate");
    let files = cert.write_to(dir.path()).expect("write the certificate");
    // OpenSSL 3 loads a 1024-bit key only at security level 0.
    let postfix = tls_postfix(
        &files.cert,
        &files.key,
        &[("tls_medium_cipherlist", "DEFAULT:@SECLEVEL=0")],
    );
    let report = audit(
        "localhost",
        postfix.addr,
        TlsMode::StartTls,
        Some(cert.ca_der.clone()),
    );
    assert_eq!(ids(&report), TLS_CHECKS, "{:#?}", report.findings);
    // rustls still completes the handshake (the probe does not judge the key), so versions
    // are described as a modern client sees them.
    assert_eq!(verdict(&report, "tls.starttls").0, Status::Pass);
    assert_eq!(
        verdict(&report, "tls.cert_key"),
        (Status::Fail, Severity::High)
    );
    assert_eq!(
        verdict(&report, "tls.cert_signature"),
        (Status::Fail, Severity::Medium)
    );
    let expiry = finding(&report, "tls.cert_expiry");
    assert_eq!(
        (expiry.status, expiry.severity),
        (Status::Fail, Severity::High)
    );
    assert!(
        expiry.title.starts_with("The certificate expired"),
        "{expiry:#?}"
    );
    assert_eq!(verdict(&report, "tls.cert_chain").0, Status::Fail);
    assert_eq!(verdict(&report, "tls.cert_hostname").0, Status::Pass);
}

#[test]
fn no_tls_and_implicit_tls() {
    let plain = Postfix::backend(&["user"]);
    let report = audit("localhost", plain.addr, TlsMode::StartTls, None);
    assert_eq!(ids(&report), ["tls.starttls"]);
    let f = finding(&report, "tls.starttls");
    assert_eq!((f.status, f.severity), (Status::Fail, Severity::High));
    assert!(
        f.evidence.contains("PIPELINING"),
        "the EHLO keywords are quoted: {f:#?}"
    );
    assert!(!report.summary.tls);

    let dir = daemon_tempdir();
    let pki = ravelin_tls::testing::TestPki::new("localhost").expect("test PKI");
    let files = pki.write_to(dir.path()).expect("write the PKI");
    let mut settings = HARDENED.to_vec();
    settings.push(("smtpd_tls_wrappermode", "yes"));
    let implicit = tls_postfix(&files.cert, &files.key, &settings);
    let report = audit(
        "localhost",
        implicit.addr,
        TlsMode::Implicit,
        Some(pem_der(&files.ca)),
    );
    assert_all_pass(&report);
    assert_eq!(
        finding(&report, "tls.starttls").title,
        "Implicit TLS: the handshake succeeds"
    );
    // Spoken to with STARTTLS, an implicit-TLS port is not an SMTP server.
    let wrong = audit("localhost", implicit.addr, TlsMode::StartTls, None);
    assert_eq!(
        verdict(&wrong, "tls.starttls").0,
        Status::Error,
        "{:#?}",
        wrong.findings
    );
}
