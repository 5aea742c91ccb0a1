//! Proof that the gateway's DKIM signatures verify with an independent implementation:
//! dkimpy (Python, in the repository's venv) checks every signature of every message signed
//! by the gateway's outbound pipeline — RSA and Ed25519 on each message (dual signing) —
//! with the public keys given to it directly, as `ravelin dkim keygen` printed them (no DNS
//! is involved). The messages (crates/gateway/tests/fixtures/messages/) cover multipart MIME,
//! 8-bit bodies and headers, bodies ending in empty lines, long and folded headers, no body
//! and an empty body, a body large enough to be held in a file while it is hashed, and an
//! Exchange message signed after the header firewall. Tampering with a signed body or header
//! must make dkimpy fail, and adding a field that is not signed must not, so the verdicts are
//! shown to depend on what was signed.
//!
//! The pipeline is driven in-process, in chunks, as a session drives it; the stored message
//! starts with the gateway's Received line as the session writes it. Settings: none from the
//! environment; needs the venv of scripts/install-test-deps.sh (dkimpy, PyNaCl for Ed25519).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ravelin_gateway::cleanup::{self, Finished, MessageCleanup, Policy, Trace};
use ravelin_gateway::config::{DkimKeyConfig, DkimSection, HeaderFirewallSection};
use ravelin_gateway::dkim::{Outcome, Signer};
use ravelin_gateway::firewall::HeaderFirewall;
use ravelin_wire::headers::HeaderLimits;
use support::*;

const HOSTNAME: &str = "mx1.example.org";
const DOMAIN: &str = "example.org";

/// A key made by `ravelin dkim keygen`: its file and the TXT record it printed (the quoted
/// strings of the zone line, joined).
fn keygen(dir: &Path, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ravelin"));
    cmd.args(["dkim", "keygen", "--domain", DOMAIN, "--selector", selector])
        .args(["--algorithm", algorithm, "--output"])
        .arg(dir);
    let out = run(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "keygen: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let zone_line = text
        .lines()
        .find(|l| l.starts_with(&format!("{selector}._domainkey.{DOMAIN}. IN TXT (")))
        .unwrap_or_else(|| panic!("no zone line in:\n{text}"));
    let strings: Vec<&str> = zone_line.split('"').skip(1).step_by(2).collect();
    assert!(strings.iter().all(|s| s.len() <= 255), "{zone_line}");
    let file = dir.join(format!("{DOMAIN}.{selector}.pem"));
    let mode = std::fs::metadata(&file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    (file, strings.concat())
}

struct Keys {
    _dir: tempfile::TempDir,
    policy: Arc<Policy>,
    records: Vec<(String, String)>,
}

/// An RSA and an Ed25519 key for example.org, both signing, and the outbound pipeline.
fn keys() -> Keys {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut section = DkimSection::default();
    let mut records = Vec::new();
    for (selector, algorithm) in [("rsa2026", "rsa"), ("ed2026", "ed25519")] {
        let (key_file, record) = keygen(dir.path(), selector, algorithm);
        assert!(
            record.starts_with(&format!("v=DKIM1; k={algorithm}; p=")),
            "{record}"
        );
        records.push((format!("{selector}._domainkey.{DOMAIN}"), record));
        section.keys.push(DkimKeyConfig {
            domain: DOMAIN.into(),
            selector: selector.into(),
            key_file,
        });
    }
    let signer = Signer::new(&section).expect("the generated keys load");
    let policy = Arc::new(Policy {
        outbound: true,
        firewall: HeaderFirewall::new(&HeaderFirewallSection::default(), HOSTNAME),
        limits: HeaderLimits::default(),
        authserv_id: HOSTNAME.into(),
        hold_for_checks: false,
        signer: Some(Arc::new(signer)),
        scratch_dir: dir.path().to_path_buf(),
    });
    Keys {
        _dir: dir,
        policy,
        records,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = repo_root()
        .join("crates/gateway/tests/fixtures/messages")
        .join(name);
    lf_to_crlf(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The message as the spool stores it: our Received line, then what the pipeline wrote for
/// `message` fed in chunks of `chunk` octets.
fn sign(policy: &Arc<Policy>, message: &[u8], chunk: usize) -> Vec<u8> {
    let mut stored = cleanup::received(&Trace {
        hostname: HOSTNAME,
        helo: None,
        extended: true,
        client_ip: None,
        show_client: false,
        tls: Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384"),
        queue_id: "06H0KKPX414SD8KP",
        recipients: &[],
        now: 1_795_455_600,
    })
    .into_bytes();
    let mut c = MessageCleanup::new(policy.clone());
    let mut out = Vec::new();
    for piece in message.chunks(chunk) {
        c.push(piece, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .expect("pipeline");
    }
    let report = c
        .finish(&mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .expect("pipeline finish");
    let Finished::Written(report) = report else {
        panic!("an outbound message held for the inbound checks");
    };
    match report.dkim {
        Some(Outcome::Signed {
            domain, selectors, ..
        }) => {
            assert_eq!(domain, DOMAIN);
            assert_eq!(selectors, ["rsa2026", "ed2026"]);
        }
        other => panic!("not signed: {other:?}"),
    }
    stored.extend_from_slice(&out);
    stored
}

#[track_caller]
fn assert_verdicts(what: &str, verdicts: &[DkimVerdict], want: bool) {
    assert_eq!(verdicts.len(), 2, "{what}: two signatures expected");
    for (v, alg) in verdicts.iter().zip(["rsa-sha256", "ed25519-sha256"]) {
        assert_eq!(
            v.ok, want,
            "{what}, {alg}: dkimpy says {}:\n{}",
            v.ok, v.log
        );
    }
}

const FIXTURES: &[&str] = &[
    "multipart.eml",
    "eight-bit.eml",
    "trailing-blank-lines.eml",
    "folded-headers.eml",
    "no-body.eml",
    "empty-body.eml",
    "from-exchange.eml",
];

/// A body of more than `cleanup::MEMORY_STAGE` octets, held in a file while it is hashed.
fn large_message() -> Vec<u8> {
    let mut m =
        b"From: big@example.org\r\nTo: x@partner.example\r\nSubject: large\r\n\r\n".to_vec();
    let mut n = 0u32;
    while m.len() <= cleanup::MEMORY_STAGE + 200_000 {
        m.extend_from_slice(format!("line {n:07} {}\r\n", "data ".repeat(150)).as_bytes());
        n += 1;
    }
    m.extend_from_slice(b"\r\n\r\n");
    m
}

#[test]
fn dkimpy_verifies_every_signed_message() {
    let keys = keys();
    let mut names: Vec<String> = Vec::new();
    let mut signed = Vec::new();
    for name in FIXTURES {
        // Whole, and in small pieces that split lines, CRLFs and the header's end.
        for chunk in [usize::MAX, 7] {
            names.push(format!("{name} (chunks of {chunk})"));
            signed.push(sign(&keys.policy, &fixture(name), chunk));
        }
    }
    names.push("a message larger than the memory stage".into());
    signed.push(sign(&keys.policy, &large_message(), 64 * 1024));

    let verdicts = dkimpy_verify(&signed, &keys.records);
    for (name, v) in names.iter().zip(&verdicts) {
        assert_verdicts(name, v, true);
    }

    // The Exchange message was signed after the firewall: nothing internal is left to sign.
    let exchange = String::from_utf8_lossy(
        &signed[names
            .iter()
            .position(|n| n.starts_with("from-exchange"))
            .unwrap()],
    )
    .into_owned();
    for leak in [
        "corp.example.org",
        "10.1.",
        "fe80",
        "X-MS-Exchange",
        "x-originating-ip",
    ] {
        assert!(
            !exchange
                .to_ascii_lowercase()
                .contains(&leak.to_ascii_lowercase()),
            "{leak} in:\n{exchange}"
        );
    }
}

/// Replaces the first occurrence of `from` with `to`.
fn replace_once(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at = message
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in the message"));
    [&message[..at], to.as_bytes(), &message[at + from.len()..]].concat()
}

/// Inserts `field` (CRLF terminated) right after the DKIM-Signature fields, at the top of the
/// message's own header.
fn insert_field(message: &[u8], before: &str, field: &str) -> Vec<u8> {
    replace_once(message, before, &format!("{field}{before}"))
}

#[test]
fn dkimpy_rejects_tampered_messages() {
    let keys = keys();
    let original = sign(&keys.policy, &fixture("multipart.eml"), usize::MAX);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("untouched", original.clone(), true),
        (
            "an unsigned field added",
            insert_field(&original, "From: Alice", "X-Added-Later: harmless\r\n"),
            true,
        ),
        (
            "a body character changed",
            replace_once(&original, "The total is", "The total was"),
            false,
        ),
        (
            "a line appended to the body",
            [&original[..], b"P.S. pay to another account\r\n"].concat(),
            false,
        ),
        (
            "the Subject changed",
            replace_once(
                &original,
                "Subject: Report with attachment",
                "Subject: Report with attachments",
            ),
            false,
        ),
        (
            "a second Subject added above the first (over-signed)",
            insert_field(
                &original,
                "From: Alice",
                "Subject: Urgent: new bank details\r\n",
            ),
            false,
        ),
        (
            "a second From added (over-signed)",
            insert_field(&original, "From: Alice", "From: ceo@example.org\r\n"),
            false,
        ),
        (
            "a Content-Type parameter changed",
            replace_once(
                &original,
                "boundary=\"outer-boundary-7f3a\"",
                "boundary=\"inner-boundary-19c2\"",
            ),
            false,
        ),
    ];
    let messages: Vec<Vec<u8>> = cases.iter().map(|(_, m, _)| m.clone()).collect();
    let verdicts = dkimpy_verify(&messages, &keys.records);
    for ((what, _, want), v) in cases.iter().zip(&verdicts) {
        assert_verdicts(what, v, *want);
    }

    // A key that is not the published one fails too.
    let wrong: Vec<(String, String)> = keys
        .records
        .iter()
        .rev()
        .zip(&keys.records)
        .map(|((_, other_record), (name, _))| (name.clone(), other_record.clone()))
        .collect();
    let verdicts = dkimpy_verify(&[original], &wrong);
    assert_verdicts("verified against the other key", &verdicts[0], false);
}
