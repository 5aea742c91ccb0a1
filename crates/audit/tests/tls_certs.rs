//! The certificate checks (`tls.cert_chain`, `tls.cert_hostname`, `tls.cert_key`,
//! `tls.cert_signature`, `tls.cert_expiry`) on real certificates made with OpenSSL: sound
//! ones and ones with each flaw, judged exactly as the chain a server sends would be.

use std::time::SystemTime;

use ravelin_audit::tls::cert::{self, Trust};
use ravelin_audit::tls::testing::{CertSpec, Digest, KeySpec, TestCert};
use ravelin_audit::{Finding, Severity, Status};

const HOST: &str = "mx.example.test";

fn make(spec: CertSpec) -> TestCert {
    TestCert::new(&spec).expect("make a test certificate")
}

/// The certificate findings for `chain`, trusting `cert`'s CA.
fn judge(cert: &TestCert, chain: &[Vec<u8>], host: &str) -> Vec<Finding> {
    let trust = Trust {
        public_roots: true,
        extra_roots: vec![cert.ca_der.clone().into()],
    };
    cert::check("mx[127.0.0.1]:25", host, chain, &trust, SystemTime::now()).0
}

fn verdict(findings: &[Finding], id: &str) -> (Status, Severity, String) {
    let f = findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no {id} in {findings:#?}"));
    (f.status, f.severity, f.title.clone())
}

#[test]
fn a_sound_certificate_passes_every_check() {
    let cert = make(CertSpec::good(HOST));
    let findings = judge(&cert, std::slice::from_ref(&cert.cert_der), HOST);
    assert_eq!(findings.len(), 5);
    assert!(
        findings.iter().all(|f| f.status == Status::Pass),
        "{findings:#?}"
    );
    assert_eq!(verdict(&findings, "tls.cert_key").2, "RSA 2048 key");
    assert!(
        verdict(&findings, "tls.cert_expiry")
            .2
            .contains("more days")
    );

    let ec = make(CertSpec {
        key: KeySpec::EcP256,
        ..CertSpec::good(HOST)
    });
    let findings = judge(&ec, std::slice::from_ref(&ec.cert_der), HOST);
    assert_eq!(
        verdict(&findings, "tls.cert_key"),
        (Status::Pass, Severity::Info, "EC P-256 key".into())
    );
    let (_, facts) = cert::check(
        "e",
        HOST,
        std::slice::from_ref(&ec.cert_der),
        &Trust::default(),
        SystemTime::now(),
    );
    assert_eq!(facts.key, "EC P-256");
    assert_eq!(facts.fingerprint.len(), 64);
}

#[test]
fn names_are_matched_against_the_subject_alternative_names() {
    let cert = make(CertSpec::good("*.example.test"));
    let chain = std::slice::from_ref(&cert.cert_der);
    assert_eq!(
        verdict(&judge(&cert, chain, HOST), "tls.cert_hostname").0,
        Status::Pass
    );
    let other = judge(&cert, chain, "mx.other.test");
    assert_eq!(verdict(&other, "tls.cert_hostname").0, Status::Fail);
    // The chain is still fine: a wrong name is reported once.
    assert_eq!(verdict(&other, "tls.cert_chain").0, Status::Pass);
}

#[test]
fn untrusted_self_signed_and_incomplete_chains() {
    let cert = make(CertSpec::good(HOST));
    let leaf_only = std::slice::from_ref(&cert.cert_der);
    let untrusted = Trust {
        public_roots: true,
        extra_roots: Vec::new(),
    };
    let findings = cert::check("e", HOST, leaf_only, &untrusted, SystemTime::now()).0;
    let (status, _, title) = verdict(&findings, "tls.cert_chain");
    assert_eq!(status, Status::Fail);
    assert!(
        title.contains("no intermediate certificate was sent"),
        "{title}"
    );
    let with_ca = [cert.cert_der.clone(), cert.ca_der.clone()];
    let findings = cert::check("e", HOST, &with_ca, &untrusted, SystemTime::now()).0;
    assert_eq!(
        verdict(&findings, "tls.cert_chain").2,
        "The chain does not lead to a trusted root"
    );

    let own = make(CertSpec {
        self_signed: true,
        ..CertSpec::good(HOST)
    });
    let findings = judge(&own, std::slice::from_ref(&own.cert_der), HOST);
    assert_eq!(
        verdict(&findings, "tls.cert_chain"),
        (
            Status::Fail,
            Severity::Medium,
            "Self-signed certificate".into()
        )
    );
}

#[test]
fn short_keys_and_weak_signatures_fail() {
    let short = make(CertSpec {
        key: KeySpec::Rsa(1024),
        ..CertSpec::good(HOST)
    });
    let findings = judge(&short, std::slice::from_ref(&short.cert_der), HOST);
    assert_eq!(
        verdict(&findings, "tls.cert_key"),
        (
            Status::Fail,
            Severity::High,
            "RSA key of 1024 bits (under 2048)".into()
        )
    );
    for digest in [Digest::Sha1, Digest::Md5] {
        let weak = make(CertSpec {
            digest,
            ..CertSpec::good(HOST)
        });
        let findings = judge(&weak, std::slice::from_ref(&weak.cert_der), HOST);
        let f = findings
            .iter()
            .find(|f| f.id == "tls.cert_signature")
            .expect("signature finding");
        assert_eq!(f.status, Status::Fail, "{digest:?}: {f:#?}");
        let name = if digest == Digest::Sha1 {
            "sha1WithRSAEncryption"
        } else {
            "md5WithRSAEncryption"
        };
        assert!(f.evidence.starts_with(name), "{f:#?}");
        // WebPKI refuses such a chain too.
        assert_eq!(verdict(&findings, "tls.cert_chain").0, Status::Fail);
    }
}

#[test]
fn expiry_warns_at_60_days_fails_at_30_and_when_expired() {
    let cases = [
        (-1, 45, Status::Warn, Severity::Low),
        (-1, 20, Status::Fail, Severity::Medium),
        (-400, -10, Status::Fail, Severity::High),
        (5, 400, Status::Fail, Severity::High),
        (-1, 90, Status::Pass, Severity::Info),
    ];
    for (from_days, until_days, status, severity) in cases {
        let cert = make(CertSpec {
            from_days,
            until_days,
            ..CertSpec::good(HOST)
        });
        let findings = judge(&cert, std::slice::from_ref(&cert.cert_der), HOST);
        let (got, sev, title) = verdict(&findings, "tls.cert_expiry");
        assert_eq!(
            (got, sev),
            (status, severity),
            "{from_days}..{until_days}: {title}"
        );
        // An expired certificate is not also an untrusted chain.
        assert_eq!(
            verdict(&findings, "tls.cert_chain").0,
            Status::Pass,
            "{from_days}..{until_days}"
        );
    }
}

#[test]
fn garbage_is_an_error_not_a_verdict() {
    let findings = cert::check(
        "e",
        HOST,
        &[b"not a certificate".to_vec()],
        &Trust::default(),
        SystemTime::now(),
    )
    .0;
    assert_eq!(findings.len(), 5);
    assert!(
        findings.iter().all(|f| f.status == Status::Error),
        "{findings:#?}"
    );
}
