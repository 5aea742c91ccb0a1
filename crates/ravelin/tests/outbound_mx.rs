//! End-to-end proofs of direct delivery to the internet (no smart host): MX lookup, null MX,
//! implicit MX, and the TLS policy per destination — DANE, MTA-STS, opportunistic STARTTLS.
//!
//! Every test runs the real gateway (`ravelin serve`) with a `relay` listener that trusts
//! 127.0.0.2, sends a message through it with swaks, and lets the gateway deliver it to the
//! recipient domain's MX: a real Postfix instance on a loopback high port
//! (`[delivery] smtp_port`) offering STARTTLS with a certificate from a test CA. DNS comes from
//! a DNSSEC world (zones signed with ldns-signzone, served by NSD, validated by unbound) for
//! the DANE tests, or from the in-process authoritative server for unsigned zones; MTA-STS
//! policies are served by the test HTTPS server, trusted through `[outbound] extra_ca_file`.
//!
//! The tests need root (Postfix, the privilege drop) and the peers of
//! scripts/install-test-deps.sh (postfix, swaks, nsd, unbound, ldnsutils, openssl).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ravelin_dns::testing::{DnssecWorld, TestDnsServer, TestHttpsServer};
use ravelin_tls::testing::{TestPki, TestPkiFiles};
use serde_json::Value;
use support::*;

/// How long a message may take from the gateway to the MX.
const WAIT: Duration = Duration::from_secs(40);
const SENDER: &str = "backend@example.org";

/// A Postfix MX for `domain` (mailbox bob) offering STARTTLS with `files`' certificate, and
/// logging its TLS sessions.
fn mx_postfix(domain: &str, files: &TestPkiFiles) -> Postfix {
    Postfix::start(
        PostfixOptions::backend(&["bob"])
            .domain(domain)
            .set("smtpd_tls_cert_file", &files.cert.display().to_string())
            .set("smtpd_tls_key_file", &files.key.display().to_string())
            .set("smtpd_tls_security_level", "may")
            .set("smtpd_tls_loglevel", "1")
            .set("smtpd_tls_received_header", "yes"),
    )
}

/// A test PKI for `host`, written to a new directory inside `dir`.
fn pki_files(dir: &Path, host: &str) -> TestPkiFiles {
    let sub = dir.join(host);
    std::fs::create_dir_all(&sub).expect("pki directory");
    TestPki::new(host)
        .expect("test PKI")
        .write_to(&sub)
        .expect("write the test PKI")
}

/// The gateway: no smart host, MX on `smtp_port`, DNS from `nameserver`, relay for
/// 127.0.0.2; `extra` are more `[outbound]` lines.
fn gateway(nameserver: std::net::SocketAddr, smtp_port: u16, outbound: &[&str]) -> Ravelin {
    let mut config = RavelinConfig::inbound(free_addr())
        .listener("relay", "relay", "offer")
        .set("outbound", "trusted_networks = [\"127.0.0.2/32\"]")
        .set("delivery", &format!("smtp_port = {smtp_port}"))
        .set("dns", &format!("nameservers = [\"{nameserver}\"]"))
        .set("dns", "timeout = \"2s\"");
    for line in outbound {
        config = config.set("outbound", line);
    }
    Ravelin::start(config)
}

/// Relays one message from 127.0.0.2 to `to`; asserts the gateway took it.
fn send(ravelin: &Ravelin, to: &str, subject: &str) {
    let out = swaks_send(
        ravelin.listener("relay"),
        SENDER,
        to,
        format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n").as_bytes(),
        &["--local-interface", "127.0.0.2"],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));
}

/// `_PORT._tcp.HOST. TLSA 3 1 1 <sha256 of the certificate's public key>`, computed by the
/// openssl command line tool (independent of the code under test).
fn tlsa_3_1_1(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -hex",
        cert.display()
    );
    let out = run(
        {
            let mut c = Command::new("sh");
            c.arg("-c").arg(script);
            c
        },
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "openssl: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.rsplit(' ').next().unwrap_or("").trim().to_string();
    assert_eq!(hex.len(), 64, "openssl printed {text:?}");
    hex
}

/// The `delivery_tls` events of the gateway so far.
fn tls_events(ravelin: &Ravelin) -> Vec<Value> {
    ravelin.events("delivery_tls")
}

/// Today's TLS-RPT document of the gateway, once it exists.
fn tlsrpt(ravelin: &Ravelin) -> Value {
    wait_until("the TLS-RPT file", WAIT, || {
        let dir = ravelin.spool().join("tlsrpt");
        let entry = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".json"))?;
        let text = std::fs::read_to_string(entry.path()).ok()?;
        serde_json::from_str::<Value>(&text).ok()
    })
}

/// The TLS-RPT entry of `domain` under `policy_type`, once it has `min` sessions.
fn tlsrpt_entry(ravelin: &Ravelin, domain: &str, policy_type: &str, min: u64) -> Value {
    wait_until("the TLS-RPT entry", WAIT, || {
        let doc = tlsrpt(ravelin);
        let entry = doc["policies"].as_array()?.iter().find(|p| {
            p["policy"]["policy-domain"] == domain && p["policy"]["policy-type"] == policy_type
        })?;
        let s = &entry["summary"];
        let n = s["total-successful-session-count"].as_u64().unwrap_or(0)
            + s["total-failure-session-count"].as_u64().unwrap_or(0);
        (n >= min).then(|| entry.clone())
    })
}

/// A signed zone for `domain` with MX `mx.DOMAIN` on 127.0.0.1 and `tlsa` (hex of a 3 1 1
/// record) at `_PORT._tcp.mx.DOMAIN`.
fn dane_zone(port: u16, tlsa: &str) -> String {
    format!("@ IN MX 10 mx\nmx IN A 127.0.0.1\n_{port}._tcp.mx IN TLSA 3 1 1 {tlsa}\n")
}

// ---------------------------------------------------------------------------------------------
// DANE

/// A DNSSEC-signed zone whose TLSA record matches the MX's key: the message is delivered over
/// TLS (Postfix logs the TLS session and writes it into its Received line) and the gateway
/// logs the DANE policy as verified; the TLS-RPT file counts a successful `tlsa` session.
#[test]
fn dane_matching_tlsa_delivers_over_verified_tls() {
    let dir = daemon_tempdir();
    let files = pki_files(dir.path(), "mx.dane.test");
    let postfix = mx_postfix("dane.test", &files);
    let tlsa = tlsa_3_1_1(&files.cert);
    let world = DnssecWorld::builder()
        .signed_zone("dane.test", &dane_zone(postfix.addr.port(), &tlsa))
        .start()
        .expect("DNSSEC world");
    let ravelin = gateway(world.resolver_addr(), postfix.addr.port(), &[]);

    send(&ravelin, "bob@dane.test", "dane ok");
    let messages = postfix.wait_for_messages(1, WAIT);
    let trace = String::from_utf8_lossy(&messages[0].postfix_headers).into_owned();
    assert!(trace.contains("(using TLSv1."), "{trace}");
    assert!(
        postfix
            .maillog()
            .contains("TLS connection established from"),
        "{}",
        postfix.maillog()
    );
    let tls = tls_events(&ravelin);
    assert!(
        tls.iter()
            .any(|e| e["policy"] == "dane" && e["verification"] == "verified"),
        "{tls:#?}"
    );
    assert!(tls.iter().all(|e| e["policy"] == "dane"), "{tls:#?}");
    let entry = tlsrpt_entry(&ravelin, "dane.test", "tlsa", 1);
    assert_eq!(entry["summary"]["total-successful-session-count"], 1);
    assert_eq!(entry["summary"]["total-failure-session-count"], 0);
    assert_eq!(entry["policy"]["policy-string"][0], format!("3 1 1 {tlsa}"));
}

/// A signed TLSA record that does not match the MX's key: the handshake is refused, the
/// message is deferred and retried (two DANE failures logged), never delivered and never sent
/// in plaintext; TLS-RPT counts the failures.
#[test]
fn dane_mismatching_tlsa_defers_and_retries_never_plaintext() {
    let dir = daemon_tempdir();
    let files = pki_files(dir.path(), "mx.dane.test");
    let postfix = mx_postfix("dane.test", &files);
    let other = pki_files(dir.path(), "other.dane.test");
    let wrong = tlsa_3_1_1(&other.cert);
    let world = DnssecWorld::builder()
        .signed_zone("dane.test", &dane_zone(postfix.addr.port(), &wrong))
        .start()
        .expect("DNSSEC world");
    let ravelin = gateway(world.resolver_addr(), postfix.addr.port(), &[]);

    send(&ravelin, "bob@dane.test", "dane mismatch");
    let deferred = ravelin.wait_for_event("deferred", WAIT, |e| e["rcpt"] == "bob@dane.test");
    assert!(
        deferred["reply"].as_str().unwrap_or("").contains("DANE"),
        "{deferred}"
    );
    // Retried (retry_initial = 1s): a second DANE failure.
    wait_until("a retry", WAIT, || {
        let failed: Vec<Value> = tls_events(&ravelin)
            .into_iter()
            .filter(|e| e["policy"] == "dane" && e["verification"] == "failed")
            .collect();
        (failed.len() >= 2).then_some(())
    });
    let tls = tls_events(&ravelin);
    assert!(
        tls.iter().all(|e| e["verification"] == "failed"),
        "nothing but failures: {tls:#?}"
    );
    assert!(ravelin.events("delivered").is_empty());
    assert!(postfix.messages().is_empty(), "delivered despite DANE");
    assert!(!postfix.maillog().contains("from=<backend@example.org>"));
    let entry = tlsrpt_entry(&ravelin, "dane.test", "tlsa", 2);
    assert_eq!(entry["summary"]["total-successful-session-count"], 0);
    assert_eq!(
        entry["failure-details"][0]["result-type"],
        "validation-failure"
    );
    assert_eq!(
        entry["failure-details"][0]["receiving-mx-hostname"],
        "mx.dane.test"
    );
}

/// The same mismatching TLSA record in an unsigned zone is not DANE: the message goes out
/// with opportunistic TLS (encrypted, not authenticated).
#[test]
fn unsigned_zone_ignores_tlsa_and_uses_opportunistic_tls() {
    let dir = daemon_tempdir();
    let files = pki_files(dir.path(), "mx.plain.test");
    let postfix = mx_postfix("plain.test", &files);
    let world = DnssecWorld::builder()
        .unsigned_zone(
            "plain.test",
            &dane_zone(postfix.addr.port(), &"ab".repeat(32)),
        )
        .start()
        .expect("DNSSEC world");
    let ravelin = gateway(world.resolver_addr(), postfix.addr.port(), &[]);

    send(&ravelin, "bob@plain.test", "opportunistic");
    let messages = postfix.wait_for_messages(1, WAIT);
    let trace = String::from_utf8_lossy(&messages[0].postfix_headers).into_owned();
    assert!(trace.contains("(using TLSv1."), "{trace}");
    let tls = tls_events(&ravelin);
    assert!(
        tls.iter()
            .any(|e| e["policy"] == "opportunistic" && e["verification"] == "unverified"),
        "{tls:#?}"
    );
    assert!(!tls.iter().any(|e| e["policy"] == "dane"), "{tls:#?}");
}

// ---------------------------------------------------------------------------------------------
// MX lookup

/// A null MX (RFC 7505) bounces the recipient with 556 5.1.10 without any connection; a
/// domain without MX is delivered to its own address (implicit MX).
#[test]
fn null_mx_bounces_and_no_mx_falls_back_to_the_address() {
    let dir = daemon_tempdir();
    let files = pki_files(dir.path(), "implicit.test");
    let postfix = mx_postfix("implicit.test", &files);
    let dns = TestDnsServer::start(&[
        ("nullmx.test", "@ IN MX 0 .\n@ IN A 127.0.0.1\n"),
        ("implicit.test", "@ IN A 127.0.0.1\n"),
    ])
    .expect("test DNS server");
    let ravelin = gateway(dns.addr(), postfix.addr.port(), &[]);

    send(&ravelin, "bob@nullmx.test", "null mx");
    let bounced = ravelin.wait_for_event("bounced", WAIT, |e| e["rcpt"] == "bob@nullmx.test");
    let reply = bounced["reply"].as_str().unwrap_or("");
    assert!(reply.starts_with("556 5.1.10"), "{bounced}");
    assert!(
        !ravelin
            .events("delivery_connect")
            .iter()
            .any(|e| e["queue_id"] == bounced["queue_id"]),
        "a connection was made for a null MX domain"
    );

    send(&ravelin, "bob@implicit.test", "implicit mx");
    let messages = postfix.wait_for_messages(1, WAIT);
    assert_eq!(messages[0].delivered_to, "bob@implicit.test");
    let mx = ravelin.wait_for_event("delivery_mx", WAIT, |e| e["domain"] == "implicit.test");
    assert_eq!(mx["implicit"], true, "{mx}");
}

// ---------------------------------------------------------------------------------------------
// MTA-STS

/// An unsigned zone `sts.test` publishing MTA-STS (`_mta-sts` TXT with `id`), the policy host
/// `mta-sts.sts.test` and the MX `mx.sts.test` on 127.0.0.1; an HTTPS server for the policy
/// and a Postfix MX, both with certificates from test CAs listed in `ca.pem`.
struct StsWorld {
    dns: TestDnsServer,
    https: TestHttpsServer,
    postfix: Postfix,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn sts_zone(id: &str) -> String {
    format!(
        "@ IN MX 10 mx\nmx IN A 127.0.0.1\nmta-sts IN A 127.0.0.1\n_mta-sts IN TXT \"v=STSv1; id={id}\"\n"
    )
}

/// `mx_cert_trusted`: whether the MX's CA is in `ca.pem` (else the MX's certificate is not
/// WebPKI-valid for us).
fn sts_world(mx_cert_trusted: bool) -> StsWorld {
    let dir = daemon_tempdir();
    let policy_files = pki_files(dir.path(), "mta-sts.sts.test");
    let mx_files = pki_files(dir.path(), "mx.sts.test");
    let mut ca = std::fs::read_to_string(&policy_files.ca).expect("ca");
    if mx_cert_trusted {
        ca.push_str(&std::fs::read_to_string(&mx_files.ca).expect("ca"));
    }
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca).expect("write ca.pem");
    let https = TestHttpsServer::start(&policy_files.cert, &policy_files.key).expect("https");
    let dns = TestDnsServer::start(&[("sts.test", &sts_zone("1"))]).expect("dns");
    let postfix = mx_postfix("sts.test", &mx_files);
    StsWorld {
        dns,
        https,
        postfix,
        ca: ca_path,
        _dir: dir,
    }
}

fn policy(mode: &str, mx: &str, max_age: u32) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: {max_age}\r\n")
}

fn sts_gateway(world: &StsWorld) -> Ravelin {
    gateway(
        world.dns.addr(),
        world.postfix.addr.port(),
        &[
            &format!(
                "extra_ca_file = {}",
                toml_string(&world.ca.to_string_lossy())
            ),
            &format!("mta_sts_port = {}", world.https.addr().port()),
        ],
    )
}

/// `enforce` with a matching pattern and a valid certificate: delivered over verified TLS.
#[test]
fn mta_sts_enforce_delivers_over_verified_tls() {
    let world = sts_world(true);
    world
        .https
        .serve_policy(&policy("enforce", "*.sts.test", 86400));
    let ravelin = sts_gateway(&world);

    send(&ravelin, "bob@sts.test", "sts enforce");
    let messages = world.postfix.wait_for_messages(1, WAIT);
    let trace = String::from_utf8_lossy(&messages[0].postfix_headers).into_owned();
    assert!(trace.contains("(using TLSv1."), "{trace}");
    let tls = tls_events(&ravelin);
    assert!(
        tls.iter()
            .any(|e| e["policy"] == "mta-sts" && e["verification"] == "verified"),
        "{tls:#?}"
    );
    assert_eq!(world.https.requests(), 1);
    let entry = tlsrpt_entry(&ravelin, "sts.test", "sts", 1);
    assert_eq!(entry["summary"]["total-successful-session-count"], 1);
    assert_eq!(entry["policy"]["policy-string"][1], "mode: enforce");
}

/// `enforce` whose MX certificate is not valid for us (its CA is not trusted): deferred, not
/// delivered; `enforce` whose `mx` pattern does not match the MX: deferred without connecting.
#[test]
fn mta_sts_enforce_defers_on_bad_certificate_or_mx_mismatch() {
    let world = sts_world(false);
    world
        .https
        .serve_policy(&policy("enforce", "mx.sts.test", 86400));
    let ravelin = sts_gateway(&world);

    send(&ravelin, "bob@sts.test", "untrusted certificate");
    let deferred = ravelin.wait_for_event("deferred", WAIT, |e| e["rcpt"] == "bob@sts.test");
    assert!(
        deferred["reply"]
            .as_str()
            .unwrap_or("")
            .contains("certificate"),
        "{deferred}"
    );
    assert!(world.postfix.messages().is_empty());
    let entry = tlsrpt_entry(&ravelin, "sts.test", "sts", 1);
    assert_eq!(
        entry["failure-details"][0]["result-type"],
        "certificate-not-trusted"
    );

    let world = sts_world(true);
    world
        .https
        .serve_policy(&policy("enforce", "other.sts.test", 86400));
    let ravelin = sts_gateway(&world);
    send(&ravelin, "bob@sts.test", "mx mismatch");
    let deferred = ravelin.wait_for_event("deferred", WAIT, |e| e["rcpt"] == "bob@sts.test");
    assert!(
        deferred["reply"]
            .as_str()
            .unwrap_or("")
            .contains("does not match the MTA-STS policy"),
        "{deferred}"
    );
    assert!(ravelin.events("delivery_connect").is_empty());
    assert!(world.postfix.messages().is_empty());
}

/// `testing`: an MX whose certificate is not trusted (not WebPKI-valid for us) still gets the
/// message, and the failures are recorded for TLS-RPT.
#[test]
fn mta_sts_testing_delivers_and_reports_failures() {
    let world = sts_world(false);
    world
        .https
        .serve_policy(&policy("testing", "mx.sts.test", 86400));
    let ravelin = sts_gateway(&world);

    send(&ravelin, "bob@sts.test", "sts testing");
    world.postfix.wait_for_messages(1, WAIT);
    let tls = tls_events(&ravelin);
    assert!(
        tls.iter()
            .any(|e| e["policy"] == "mta-sts-testing" && e["verification"] == "failed-tolerated"),
        "{tls:#?}"
    );
    let entry = tlsrpt_entry(&ravelin, "sts.test", "sts", 1);
    assert_eq!(entry["summary"]["total-failure-session-count"], 1);
    assert_eq!(
        entry["failure-details"][0]["result-type"],
        "certificate-not-trusted"
    );
}

/// The policy is cached by TXT id and `max_age`: while it is fresh a changed policy file is
/// not fetched (the next message still goes out under the cached policy); once `max_age` has
/// passed it is fetched again and the new policy (an `mx` that no longer matches) applies.
#[test]
fn mta_sts_policy_cache_expires_after_max_age() {
    let world = sts_world(true);
    world
        .https
        .serve_policy(&policy("enforce", "mx.sts.test", 5));
    let ravelin = sts_gateway(&world);

    send(&ravelin, "bob@sts.test", "first");
    world.postfix.wait_for_messages(1, WAIT);
    assert_eq!(world.https.requests(), 1);
    world
        .https
        .serve_policy(&policy("enforce", "other.sts.test", 5));
    send(&ravelin, "bob@sts.test", "second");
    world.postfix.wait_for_messages(2, WAIT);
    assert_eq!(
        world.https.requests(),
        1,
        "a fresh cached policy was fetched again"
    );

    std::thread::sleep(Duration::from_secs(6));
    send(&ravelin, "bob@sts.test", "third");
    let deferred = ravelin.wait_for_event("deferred", WAIT, |e| e["rcpt"] == "bob@sts.test");
    assert!(
        deferred["reply"]
            .as_str()
            .unwrap_or("")
            .contains("does not match the MTA-STS policy"),
        "{deferred}"
    );
    assert_eq!(world.https.requests(), 2);
    assert_eq!(world.postfix.messages().len(), 2);
}
