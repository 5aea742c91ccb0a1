//! The Postfix linter (`ravelin audit --postfix-config DIR`) on real configuration
//! directories: hand-written weak, hardened and legacy fixtures (tests/fixtures/postfix/,
//! each accepted by Postfix's own `postconf`), the configuration tests/peers/postfix-instance.sh
//! generates, and the Postfix 3.7 defaults the linter relies on compared with `postconf -d`.
//!
//! Needs Postfix installed (scripts/install-test-deps.sh) and root for postfix-instance.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

use ravelin_audit::local::lint_postfix_config;
use ravelin_audit::local::postfix::view::DEFAULTS;
use ravelin_audit::{Finding, Severity, Status};

const INSTALL_HINT: &str = "install the test peers with scripts/install-test-deps.sh";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/postfix")
        .join(name)
}

/// Runs a Postfix tool (found in PATH or /usr/sbin) and returns (success, stdout, stderr).
fn postfix_tool(name: &str, args: &[&str]) -> (bool, String, String) {
    let path = ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed: {INSTALL_HINT}"));
    let out = Command::new(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The findings of `id`.
fn of<'a>(findings: &'a [Finding], id: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.id == id).collect()
}

/// The one finding of `id`.
fn one<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
    match of(findings, id).as_slice() {
        [f] => f,
        other => panic!("expected one {id} finding, got {other:#?}"),
    }
}

/// (status, severity, endpoint relative to the fixture directory) of the one `id` finding.
fn summary(findings: &[Finding], id: &str, dir: &Path) -> (Status, Severity, String) {
    let f = one(findings, id);
    let prefix = format!("{}/", dir.display());
    (
        f.status,
        f.severity,
        f.endpoint.trim_start_matches(&prefix).to_string(),
    )
}

#[test]
fn fixtures_are_configurations_postfix_accepts() {
    for name in ["weak", "hardened", "legacy"] {
        let dir = fixture(name);
        let dir = dir.to_str().expect("UTF-8 path");
        let (ok, _, stderr) = postfix_tool("postconf", &["-c", dir, "-n"]);
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("master.cf: No such file"))
            .collect();
        assert!(ok && warnings.is_empty(), "postconf -n on {name}: {stderr}");
        if dir.ends_with("legacy") {
            continue;
        }
        let (ok, services, stderr) = postfix_tool("postconf", &["-c", dir, "-M"]);
        assert!(ok && stderr.is_empty(), "postconf -M on {name}: {stderr}");
        assert!(services.contains("smtpd"), "{services}");
    }
}

#[test]
fn weak_configuration_fails_each_check_where_the_setting_is() {
    let dir = fixture("weak");
    let findings = lint_postfix_config(&dir);
    let s = |id| summary(&findings, id, &dir);
    assert_eq!(
        s("smtp.open_relay"),
        (Status::Fail, Severity::Critical, "main.cf:10".into())
    );
    assert_eq!(
        s("postfix.mynetworks"),
        (Status::Fail, Severity::Critical, "main.cf:7".into())
    );
    assert_eq!(
        s("smtp.smuggling"),
        (Status::Fail, Severity::High, "main.cf:21".into())
    );
    assert_eq!(
        s("smtp.auth_before_tls"),
        (Status::Fail, Severity::High, "main.cf".into())
    );
    assert_eq!(
        s("smtp.vrfy"),
        (Status::Fail, Severity::Medium, "main.cf:15".into())
    );
    assert_eq!(
        s("smtp.banner_disclosure"),
        (Status::Fail, Severity::Low, "main.cf:4".into())
    );
    assert_eq!(
        s("smtp.size_limit"),
        (Status::Fail, Severity::Medium, "main.cf:20".into())
    );
    assert_eq!(
        s("postfix.rate_limits"),
        (Status::Fail, Severity::Medium, "master.cf".into())
    );
    assert_eq!(
        s("postfix.helo_required"),
        (Status::Warn, Severity::Low, "main.cf".into())
    );
    assert_eq!(
        s("postfix.inet_interfaces"),
        (Status::Info, Severity::Info, "main.cf:22".into())
    );

    // One tls.starttls finding per distinct problem: port 25 without TLS (main.cf), the
    // submission override without a certificate, and port 465 without wrapper mode.
    let starttls = of(&findings, "tls.starttls");
    let ends: Vec<(&str, Status)> = starttls
        .iter()
        .map(|f| (f.endpoint.rsplit('/').next().unwrap_or_default(), f.status))
        .collect();
    assert_eq!(
        ends,
        [
            ("main.cf:16", Status::Fail),
            ("master.cf:5", Status::Fail),
            ("master.cf:6", Status::Fail)
        ],
        "{starttls:#?}"
    );
    assert!(starttls[0].title.ends_with("[smtp]"));
    assert!(starttls[0].fix.contains("smtpd_tls_security_level = may"));
    assert!(starttls[0].fix.contains("smtpd_tls_chain_files"));
    assert_eq!(
        starttls[2].fix,
        "In master.cf, on the `smtps` service: `-o smtpd_tls_wrappermode=yes`"
    );

    // Evidence quotes the line as written, continuation lines joined.
    let relay = one(&findings, "smtp.open_relay");
    assert!(
        relay.evidence.contains(
            "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, permit, reject_unauth_destination"
        ),
        "{relay:#?}"
    );
    assert_eq!(
        relay.fix,
        "In main.cf: `smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination`"
    );
    let mynetworks = one(&findings, "postfix.mynetworks");
    assert!(
        mynetworks.title.contains("10.0.0.0/8, 0.0.0.0/0"),
        "{mynetworks:#?}"
    );
    let banner = one(&findings, "smtp.banner_disclosure");
    assert!(
        banner
            .evidence
            .contains("\"220 mail.example.com ESMTP Postfix (3.x.y)\""),
        "{banner:#?}"
    );
}

#[test]
fn hardened_configuration_has_nothing_worse_than_information() {
    let dir = fixture("hardened");
    let findings = lint_postfix_config(&dir);
    let bad: Vec<&Finding> = findings
        .iter()
        .filter(|f| !matches!(f.status, Status::Pass | Status::Info))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(of(&findings, "postfix.syntax").is_empty());
    // Each service got its own verdict where its overrides differ.
    let starttls: Vec<&str> = of(&findings, "tls.starttls")
        .iter()
        .map(|f| f.title.as_str())
        .collect();
    assert_eq!(
        starttls,
        [
            "STARTTLS is offered [smtpd]",
            "Submission requires STARTTLS [submission]",
            "Implicit TLS (smtpd_tls_wrappermode = yes) [submissions]"
        ]
    );
    let relay = of(&findings, "smtp.open_relay");
    assert_eq!(relay.len(), 3, "{relay:#?}");
    assert!(relay[1].endpoint.ends_with("master.cf:10"), "{relay:#?}");
    assert_eq!(
        one(&findings, "smtp.vrfy").title,
        "VRFY is disabled [smtpd, submission, submissions]"
    );
}

#[test]
fn legacy_configuration_with_a_lowered_security_level() {
    let dir = fixture("legacy");
    let findings = lint_postfix_config(&dir);
    let s = |id| summary(&findings, id, &dir);
    assert_eq!(
        s("smtp.open_relay"),
        (Status::Pass, Severity::Info, "main.cf:6".into())
    );
    assert_eq!(
        s("tls.starttls"),
        (Status::Pass, Severity::Info, "main.cf:7".into())
    );
    assert_eq!(
        s("tls.versions"),
        (Status::Fail, Severity::Medium, "main.cf:10".into())
    );
    assert_eq!(s("tls.ciphers").0, Status::Fail);
    assert_eq!(s("tls.kex").0, Status::Warn);
    assert_eq!(
        s("postfix.mynetworks"),
        (Status::Fail, Severity::Medium, "main.cf:5".into())
    );
    // Bare LF is normalised, but $mynetworks (a /16) is exempt by default.
    assert_eq!(
        s("smtp.smuggling"),
        (Status::Warn, Severity::Medium, "main.cf".into())
    );
    assert_eq!(
        s("smtp.vrfy"),
        (Status::Fail, Severity::Medium, "main.cf".into())
    );
    assert_eq!(
        s("smtp.size_limit"),
        (Status::Pass, Severity::Info, "main.cf".into())
    );
    let versions = one(&findings, "tls.versions");
    assert!(
        versions
            .evidence
            .contains("tls_medium_cipherlist = DEFAULT:@SECLEVEL=0"),
        "{versions:#?}"
    );
    assert_eq!(
        versions.fix,
        "In main.cf: `smtpd_tls_protocols = >=TLSv1.2`"
    );
}

#[test]
fn a_missing_directory_is_one_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let findings = lint_postfix_config(dir.path());
    assert_eq!(findings.len(), 1);
    assert_eq!(
        (findings[0].id.as_str(), findings[0].status),
        ("postfix.config", Status::Error)
    );
}

#[test]
fn defaults_relied_on_are_those_of_the_installed_postfix() {
    let names: Vec<&str> = DEFAULTS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != "mail_version")
        .collect();
    let mut args = vec!["-d"];
    args.extend(&names);
    let (ok, stdout, stderr) = postfix_tool("postconf", &args);
    assert!(ok, "postconf -d: {stderr}");
    let (_, version, _) = postfix_tool("postconf", &["-dh", "mail_version"]);
    assert!(
        version.starts_with("3.7."),
        "the linter documents Postfix 3.7 defaults; installed: {version}"
    );
    for (name, want) in DEFAULTS.iter().filter(|(n, _)| *n != "mail_version") {
        let line = stdout
            .lines()
            .find(|l| l.split(" = ").next() == Some(*name) || l.trim_end() == format!("{name} ="))
            .unwrap_or_else(|| panic!("postconf -d does not know {name}: {stdout}"));
        let got = line
            .split_once('=')
            .map(|(_, v)| v.trim())
            .unwrap_or_default();
        assert_eq!(got, *want, "default of {name}");
    }
}

/// Creates a postfix-instance.sh configuration (nothing is started) and lints it.
fn instance_findings(mode: &[&str], settings: &[&str]) -> (tempfile::TempDir, Vec<Finding>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let instance = dir.path().join("postfix");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/postfix-instance.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .arg("create")
        .arg(&instance)
        .args(["--port", "2525"])
        .args(mode);
    for s in settings {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run postfix-instance.sh");
    assert!(
        out.status.success(),
        "postfix-instance.sh create: {} ({INSTALL_HINT}; it needs root)",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings = lint_postfix_config(&instance.join("etc"));
    (dir, findings)
}

#[test]
fn the_test_instances_of_postfix_instance_sh() {
    let (dir, findings) = instance_findings(&["--mode", "backend"], &[]);
    let etc = dir.path().join("postfix/etc");
    let s = |id| summary(&findings, id, &etc);
    // Backend mode: closed relay, narrow mynetworks, strict bare-LF handling, short banner...
    assert_eq!(s("smtp.open_relay").0, Status::Pass);
    assert_eq!(s("postfix.mynetworks").0, Status::Pass);
    assert_eq!(s("smtp.smuggling").0, Status::Pass);
    assert_eq!(s("smtp.banner_disclosure").0, Status::Pass);
    // ... but no TLS and VRFY on: it is a test instance, not a hardened server.
    assert_eq!(
        s("tls.starttls"),
        (Status::Fail, Severity::High, "main.cf".into())
    );
    assert_eq!(s("smtp.vrfy").0, Status::Fail);
    let inet = one(&findings, "postfix.inet_interfaces");
    assert_eq!(inet.title, "Postfix listens on 127.0.0.1");

    // Relay mode: permit_mynetworks, reject.
    let (_dir, findings) = instance_findings(
        &["--mode", "relay", "--relayhost", "127.0.0.1:2526"],
        &[
            "smtpd_tls_security_level=may",
            "smtpd_tls_chain_files=/nonexistent/key-and-chain.pem",
        ],
    );
    let relay = one(&findings, "smtp.open_relay");
    assert_eq!(
        relay.title,
        "Relaying is refused to unknown clients (reject)"
    );
    assert_eq!(one(&findings, "tls.starttls").status, Status::Pass);
    assert_eq!(one(&findings, "tls.versions").status, Status::Fail);

    // Widening mynetworks on the relay (edited with postconf -e) opens it.
    let (dir, _) = instance_findings(&["--mode", "relay", "--relayhost", "127.0.0.1:2526"], &[]);
    let etc = dir.path().join("postfix/etc");
    let (ok, _, stderr) = postfix_tool(
        "postconf",
        &[
            "-c",
            etc.to_str().expect("UTF-8 path"),
            "-e",
            "mynetworks=0.0.0.0/0",
        ],
    );
    assert!(ok, "postconf -e: {stderr}");
    let findings = lint_postfix_config(&etc);
    assert_eq!(one(&findings, "smtp.open_relay").status, Status::Fail);
    assert_eq!(
        one(&findings, "postfix.mynetworks").severity,
        Severity::Critical
    );
}
