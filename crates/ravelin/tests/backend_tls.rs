//! Delivery to the backend over STARTTLS, against a real Postfix backend with a certificate
//! from a private CA: `backend_tls = "verify"` with the right CA delivers over TLS; with a CA
//! that did not issue the backend's certificate nothing is delivered and the message waits in
//! the queue (a verification failure is never a reason to fall back to clear text).

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(40);

/// A Postfix backend offering STARTTLS with a certificate for `localhost` issued by `pki`.
fn tls_backend(dir: &std::path::Path, pki: &ravelin_tls::testing::TestPki) -> Postfix {
    let files = pki.write_to(dir).expect("write the test PKI");
    Postfix::start(
        PostfixOptions::backend(&["alice"])
            .set("smtpd_tls_cert_file", &files.cert.display().to_string())
            .set("smtpd_tls_key_file", &files.key.display().to_string())
            .set("smtpd_tls_security_level", "may")
            .set("smtpd_tls_received_header", "yes"),
    )
}

fn gateway(backend: std::net::SocketAddr, ca: &std::path::Path) -> Ravelin {
    Ravelin::start(
        RavelinConfig::inbound(backend)
            .backends(&[&format!("smtp://localhost:{}", backend.port())])
            .set("inbound", "backend_tls = \"verify\"")
            .set(
                "inbound",
                &format!("backend_ca_file = {:?}", ca.display().to_string()),
            ),
    )
}

#[test]
fn verified_tls_to_the_backend() {
    let dir = daemon_tempdir();
    let pki = ravelin_tls::testing::TestPki::new("localhost").expect("test PKI");
    let backend = tls_backend(dir.path(), &pki);
    let ravelin = gateway(backend.addr, &dir.path().join("ca.pem"));

    let out = swaks_send(
        ravelin.addr(),
        "sender@example.net",
        "alice@example.org",
        b"Subject: over TLS\r\n\r\nhello\r\n",
        &[],
    );
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let messages = backend.wait_for_messages(1, WAIT);
    let text = String::from_utf8_lossy(&messages[0].message_crlf()).into_owned();
    assert!(text.contains("Subject: over TLS"), "{text}");
    // Postfix's own Received line records the TLS session our delivery agent opened.
    let trace = String::from_utf8_lossy(&messages[0].postfix_headers).into_owned();
    assert!(
        trace.contains("(using TLSv1.3") || trace.contains("(using TLSv1.2"),
        "not delivered over TLS:\n{trace}"
    );
    ravelin.wait_for_event("delivery_tls", WAIT, |_| true);
}

#[test]
fn wrong_ca_defers_and_never_falls_back_to_clear_text() {
    let dir = daemon_tempdir();
    let pki = ravelin_tls::testing::TestPki::new("localhost").expect("test PKI");
    let backend = tls_backend(dir.path(), &pki);
    let stranger_dir = daemon_tempdir();
    let stranger = ravelin_tls::testing::TestPki::new("localhost").expect("test PKI");
    let stranger_files = stranger.write_to(stranger_dir.path()).expect("write PKI");
    let ravelin = gateway(backend.addr, &stranger_files.ca);

    let out = swaks_send(
        ravelin.addr(),
        "sender@example.net",
        "alice@example.org",
        b"Subject: must wait\r\n\r\nhello\r\n",
        &[],
    );
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deferred = ravelin.wait_for_event("deferred", WAIT, |_| true);
    eprintln!("deferred: {deferred}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        backend.messages().is_empty(),
        "delivered despite a certificate from an unknown CA"
    );
    let out = ravelin.command(&["queue", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("queue list --json");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "the message must wait in the queue: {list}"
    );
}
