//! End-to-end proofs of the gateway core: `ravelin serve` between real clients (swaks and a
//! raw socket) and real next hops (smtp-sink, a Postfix backend with Maildir delivery), all on
//! loopback, plus the operator commands (`config check`, `queue ...`, `demo`).
//!
//! What each test proves is written above it; every assertion is one that a broken gateway
//! fails. Settings: none from the environment. The tests need root (Postfix instances, the
//! privilege drop) and the peers installed by scripts/install-test-deps.sh, as CI has.

mod support;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// How long a message may take from the gateway to its next hop.
const WAIT: Duration = Duration::from_secs(20);
/// The gateway's configured host name (see [`RavelinConfig::inbound`]).
const HOSTNAME: &str = "mx.test.example";
/// The sender used by the legitimate clients.
const SENDER: &str = "sender@example.net";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Connects, checks the greeting, says EHLO and returns the client with the EHLO reply.
fn session_with_ehlo(addr: SocketAddr) -> (RawClient, RawReply) {
    let mut c = RawClient::connect(addr).expect("connect to ravelin");
    let greeting = c.read_reply().expect("greeting");
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let ehlo = c.command("EHLO client.test.example").expect("EHLO");
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    (c, ehlo)
}

fn session(addr: SocketAddr) -> RawClient {
    session_with_ehlo(addr).0
}

/// Asserts a reply's code and that every line starts with the enhanced status code.
#[track_caller]
fn expect(reply: &RawReply, code: u16, enhanced: &str) {
    assert!(
        reply.code == code
            && reply
                .lines
                .iter()
                .all(|l| l.starts_with(&format!("{enhanced} "))),
        "expected {code} {enhanced}, got {:?}",
        String::from_utf8_lossy(&reply.raw)
    );
}

/// The queue id of `... Ok: queued as ID`.
#[track_caller]
fn queued_as(text: &str) -> String {
    let (_, rest) = text
        .split_once("queued as ")
        .unwrap_or_else(|| panic!("no queue id in {text:?}"));
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    assert_eq!(id.len(), 16, "not a queue id in {text:?}");
    id
}

/// Sends `data` with swaks (which ends it with CRLF) and returns the queue id of the 250.
fn swaks_queue(server: SocketAddr, to: &str, data: &[u8], extra: &[&str]) -> (String, String) {
    let out = swaks_send(server, SENDER, to, data, extra);
    assert!(out.status.success(), "swaks: {}", describe(&out));
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = transcript
        .lines()
        .find(|l| l.contains("queued as "))
        .unwrap_or_else(|| panic!("no 250 with a queue id in the transcript:\n{transcript}"));
    (queued_as(line), transcript)
}

/// Dot-stuffs CRLF text for DATA (RFC 5321 4.5.2).
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    out
}

/// One transaction over a raw socket with `message` (CRLF, ending in CRLF); the queue id.
fn raw_send(addr: SocketAddr, to: &str, message: &[u8]) -> String {
    let mut c = session(addr);
    expect(
        &c.command(&format!("MAIL FROM:<{SENDER}>")).expect("MAIL"),
        250,
        "2.1.0",
    );
    expect(
        &c.command(&format!("RCPT TO:<{to}>")).expect("RCPT"),
        250,
        "2.1.5",
    );
    assert_eq!(c.command("DATA").expect("DATA").code, 354);
    let mut data = dot_stuff(message);
    data.extend_from_slice(b".\r\n");
    c.send(&data).expect("send the message");
    let done = c.read_reply().expect("reply to the end of data");
    expect(&done, 250, "2.0.0");
    expect(&c.command("QUIT").expect("QUIT"), 221, "2.0.0");
    queued_as(&done.text())
}

/// Splits a message with LF line endings into its first header field (continuation lines
/// included) and the rest.
fn first_header(message: &[u8]) -> (String, &[u8]) {
    let mut end = 0;
    loop {
        end = message[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |p| end + p + 1);
        if end >= message.len() || !matches!(message[end], b' ' | b'\t') {
            break;
        }
    }
    (
        String::from_utf8_lossy(&message[..end]).into_owned(),
        &message[end..],
    )
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[track_caller]
fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(40);
    panic!(
        "{what} differs at byte {at} (got {} bytes, want {})\n got: {:?}\nwant: {:?}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&got[from..(at + 40).min(got.len())]),
        String::from_utf8_lossy(&want[from..(at + 40).min(want.len())]),
    );
}

/// Checks a delivered message (LF line endings): our Received header comes first, names our
/// host, the protocol and the queue id from the 250 reply, and is followed by exactly what the
/// client sent. Returns the Received header.
#[track_caller]
fn assert_relayed(delivered: &[u8], queue_id: &str, proto: &str, sent: &[u8]) -> String {
    let (received, rest) = first_header(delivered);
    assert!(
        received.starts_with("Received: "),
        "the first header is not ours: {received:?}"
    );
    assert!(
        received.contains(&format!("by {HOSTNAME}"))
            && received.contains(&format!(" with {proto} id {queue_id}")),
        "Received header without `by {HOSTNAME}` and `with {proto} id {queue_id}`: {received:?}"
    );
    assert!(
        !received.to_ascii_lowercase().contains("ravelin"),
        "the Received header names the software: {received:?}"
    );
    assert_same_bytes("relayed message", rest, &crlf_to_lf(sent));
    received
}

/// A message with what relays get wrong: folded and 8-bit headers, lines that start with a
/// dot (one is only a dot), trailing white space, 8-bit UTF-8 text, lines of 996 octets (one
/// starting with a dot, so 997 octets stuffed) and a body ending in an empty line. CRLF
/// throughout; ends with CRLF CRLF.
fn varied_message(tag: &str) -> Vec<u8> {
    fn line(m: &mut Vec<u8>, s: &[u8]) {
        m.extend_from_slice(s);
        m.extend_from_slice(b"\r\n");
    }
    let long: Vec<u8> = b"0123456789".iter().copied().cycle().take(996).collect();
    let mut dotted_long = long.clone();
    dotted_long[0] = b'.';
    let mut m = Vec::new();
    line(&mut m, b"From: =?UTF-8?Q?Zo=C3=AB?= <zoe@example.net>");
    line(&mut m, b"To: Alice <a@example.org>");
    line(&mut m, format!("Subject: byte for byte {tag}").as_bytes());
    line(&mut m, b"Date: Mon, 23 Nov 2026 17:40:00 +0000");
    line(
        &mut m,
        format!("Message-ID: <{tag}@example.net>").as_bytes(),
    );
    line(&mut m, b"X-Folded: a header folded");
    line(&mut m, b"\tover a tab-indented line");
    line(&mut m, b"  and a space-indented one");
    line(&mut m, b"X-Eight-Bit: Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln");
    line(&mut m, b"MIME-Version: 1.0");
    line(&mut m, b"Content-Type: text/plain; charset=utf-8");
    line(&mut m, b"Content-Transfer-Encoding: 8bit");
    line(&mut m, b"");
    line(&mut m, b"First line of the body.");
    line(&mut m, b".");
    line(&mut m, b".leading dot");
    line(&mut m, b"..two leading dots");
    line(&mut m, b". dot and space");
    line(&mut m, b"");
    line(&mut m, b"trailing white space \t ");
    line(&mut m, b"\ttab-indented");
    line(
        &mut m,
        b"caf\xc3\xa9 \xe2\x9c\x93 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x99\x82",
    );
    line(&mut m, &long);
    line(&mut m, &dotted_long);
    line(&mut m, b"From the start of a line");
    line(&mut m, b"last line");
    line(&mut m, b"");
    m
}

/// `ravelin queue list --json`.
fn queue_list(ravelin: &Ravelin) -> Vec<Value> {
    let out = ravelin.command(&["queue", "list", "--json"]);
    assert!(out.status.success(), "queue list: {}", describe(&out));
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(entries)) => entries,
        _ => panic!("queue list --json is not a JSON array: {}", describe(&out)),
    }
}

/// Runs a `ravelin queue` subcommand with `--json` and parses its output.
fn queue_json(ravelin: &Ravelin, args: &[&str]) -> Value {
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = ravelin.command(&all);
    assert!(out.status.success(), "queue {args:?}: {}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "queue {args:?} --json printed no JSON ({e}): {}",
            describe(&out)
        )
    })
}

fn entry_ids(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Byte-for-byte relaying

/// The same varied message sent with swaks and with a raw client reaches smtp-sink unchanged
/// apart from our Received header, which comes first and names the queue id of the 250 reply.
/// (smtp-sink drops CRs and un-stuffs: compared with LF line endings.)
#[test]
fn relays_byte_for_byte_to_smtp_sink() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(RavelinConfig::inbound(sink.addr));

    let raw = varied_message("sink-raw");
    let raw_id = raw_send(ravelin.addr(), "a@example.org", &raw);
    let swaks = varied_message("sink-swaks");
    // swaks appends CRLF to the data, so leave the final one out.
    let (swaks_id, _) = swaks_queue(
        ravelin.addr(),
        "a@example.org",
        &swaks[..swaks.len() - 2],
        &[],
    );
    assert_ne!(raw_id, swaks_id);

    let messages = sink.wait_for_messages(2, WAIT);
    assert_eq!(messages.len(), 2, "{messages:?}");
    for (id, sent, tag) in [
        (&raw_id, &raw, "sink-raw"),
        (&swaks_id, &swaks, "sink-swaks"),
    ] {
        let m = messages
            .iter()
            .find(|m| contains(&m.message, &format!("<{tag}@example.net>")))
            .unwrap_or_else(|| panic!("message {tag} did not reach the sink"));
        assert_eq!(m.sender(), SENDER);
        assert_eq!(m.recipients(), vec!["a@example.org".to_string()]);
        assert_eq!(
            m.helo.as_deref(),
            Some(HOSTNAME),
            "we introduce ourselves by hostname"
        );
        assert_relayed(&m.message, id, "ESMTP", sent);
    }
    assert!(
        queue_list(&ravelin).is_empty(),
        "delivered mail stays queued"
    );
}

/// As above, into a Postfix backend's Maildir (Postfix stores LF; its own headers come before
/// ours and are left out of the comparison).
#[test]
fn relays_byte_for_byte_to_postfix() {
    let backend = Postfix::backend(&["a"]);
    let ravelin = Ravelin::start(RavelinConfig::inbound(backend.addr));

    let raw = varied_message("postfix-raw");
    let raw_id = raw_send(ravelin.addr(), "a@example.org", &raw);
    let swaks = varied_message("postfix-swaks");
    let (swaks_id, _) = swaks_queue(
        ravelin.addr(),
        "a@example.org",
        &swaks[..swaks.len() - 2],
        &[],
    );

    let messages = backend.wait_for_messages(2, WAIT);
    assert_eq!(messages.len(), 2, "{messages:?}");
    for (id, sent, tag) in [
        (&raw_id, &raw, "postfix-raw"),
        (&swaks_id, &swaks, "postfix-swaks"),
    ] {
        let m = messages
            .iter()
            .find(|m| contains(&m.message, &format!("<{tag}@example.net>")))
            .unwrap_or_else(|| panic!("message {tag} was not delivered by Postfix"));
        assert_eq!(m.return_path, SENDER);
        assert_eq!(m.delivered_to, "a@example.org");
        let postfix = String::from_utf8_lossy(&m.postfix_headers);
        assert!(
            postfix.contains(&format!("from {HOSTNAME} (")),
            "Postfix did not get the message from us: {postfix}"
        );
        assert_relayed(&m.message, id, "ESMTP", sent);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. STARTTLS

/// Lines of a swaks transcript that are replies read before (`<-`) or after (`<~`) TLS.
fn transcript_replies<'a>(transcript: &'a str, prefix: &str) -> Vec<&'a str> {
    transcript
        .lines()
        .filter(|l| l.trim_start().starts_with(prefix))
        .collect()
}

/// Checks a swaks `-tls` transcript: STARTTLS offered in clear text, TLS started, and the EHLO
/// after TLS no longer offers STARTTLS.
#[track_caller]
fn assert_starttls_transcript(transcript: &str) {
    let clear = transcript_replies(transcript, "<-");
    let tls = transcript_replies(transcript, "<~");
    assert!(
        clear
            .iter()
            .any(|l| l.ends_with("250-STARTTLS") || l.ends_with("250 STARTTLS")),
        "STARTTLS not offered in clear text:\n{transcript}"
    );
    assert!(
        transcript.contains("=== TLS started"),
        "TLS did not start:\n{transcript}"
    );
    assert!(
        tls.iter().any(|l| l.contains(&format!("250-{HOSTNAME}"))),
        "no EHLO reply under TLS:\n{transcript}"
    );
    assert!(
        !tls.iter().any(|l| l.contains("STARTTLS")),
        "STARTTLS still offered under TLS:\n{transcript}"
    );
}

/// Checks that our Received header says ESMTPS with a TLS 1.2 or 1.3 cipher.
#[track_caller]
fn assert_tls_received(received: &str) {
    assert!(
        received.contains(&format!("by {HOSTNAME} (TLSv1.3 with cipher "))
            || received.contains(&format!("by {HOSTNAME} (TLSv1.2 with cipher ")),
        "Received header does not record TLS 1.2/1.3: {received:?}"
    );
}

/// With `tls = "offer"` and no [tls] section, STARTTLS works with a self-signed certificate;
/// the relayed message's Received header says ESMTPS and the TLS version; EHLO after
/// STARTTLS no longer offers STARTTLS.
#[test]
fn starttls_with_a_self_signed_certificate() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(RavelinConfig::inbound(sink.addr).tls("offer"));
    let data = b"Subject: self-signed\r\n\r\nsent over TLS";
    let (id, transcript) = swaks_queue(ravelin.addr(), "a@example.org", data, &["-tls"]);
    assert_starttls_transcript(&transcript);

    let m = &sink.wait_for_messages(1, WAIT)[0];
    let mut sent = data.to_vec();
    sent.extend_from_slice(b"\r\n");
    let received = assert_relayed(&m.message, &id, "ESMTPS", &sent);
    assert_tls_received(&received);
    ravelin.wait_for_event("tls_self_signed", WAIT, |_| true);
    ravelin.wait_for_event("tls", WAIT, |e| {
        e["tls"].as_str().is_some_and(|t| t.starts_with("TLSv1."))
    });
}

/// With a [tls] certificate (from a test CA), STARTTLS serves exactly that certificate and a
/// verifying client accepts it (one trusting another CA refuses it); a `tls = "require"`
/// listener answers MAIL before STARTTLS with 530 5.7.0 and accepts mail after it.
#[test]
fn starttls_with_a_configured_certificate_and_require() {
    let pki = ravelin_tls::testing::TestPki::new(HOSTNAME).expect("test PKI");
    let other = ravelin_tls::testing::TestPki::new(HOSTNAME).expect("second test PKI");
    let dir = daemon_tempdir();
    let files = pki.write_to(dir.path()).expect("write the test PKI");
    let other_dir = dir.path().join("other");
    fs::create_dir(&other_dir).expect("mkdir");
    let other_files = other.write_to(&other_dir).expect("write the second PKI");

    let sink = SmtpSink::start();
    let config = RavelinConfig::inbound(sink.addr)
        .listener("secure", "inbound", "require")
        .extra(&format!(
            "[tls]\ncertificate = {}\nprivate_key = {}",
            toml_string(&files.cert.to_string_lossy()),
            toml_string(&files.key.to_string_lossy())
        ));
    let ravelin = Ravelin::start(config);
    let ca = files.ca.to_string_lossy().into_owned();
    let peer = dir.path().join("peer.pem");
    let peer_arg = peer.to_string_lossy().into_owned();

    // Offer: a verifying client gets our certificate.
    let (id, transcript) = swaks_queue(
        ravelin.listener("mx"),
        "a@example.org",
        b"Subject: verified\r\n\r\nverified TLS",
        &[
            "-tls",
            "--tls-verify",
            "--tls-ca-path",
            &ca,
            "--tls-sni",
            HOSTNAME,
            "--tls-get-peer-cert",
            &peer_arg,
        ],
    );
    assert_starttls_transcript(&transcript);
    let served = fs::read_to_string(&peer).expect("swaks wrote the peer certificate");
    assert_eq!(
        pem_body(&served),
        pem_body(&pki.cert_pem),
        "the listener did not serve the configured certificate"
    );
    // Control: a client that trusts another CA refuses the certificate, so the verification
    // above was real.
    let out = swaks_send(
        ravelin.listener("mx"),
        SENDER,
        "a@example.org",
        b"Subject: untrusted\r\n\r\nx",
        &[
            "-tls",
            "--tls-verify",
            "--tls-ca-path",
            &other_files.ca.to_string_lossy(),
            "--tls-sni",
            HOSTNAME,
        ],
    );
    assert!(
        !out.status.success(),
        "swaks accepted a certificate from an untrusted CA: {}",
        describe(&out)
    );

    // Require: clear-text MAIL is refused, nothing is accepted without TLS.
    let (mut c, ehlo) = session_with_ehlo(ravelin.listener("secure"));
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    expect(
        &c.command(&format!("MAIL FROM:<{SENDER}>")).expect("MAIL"),
        530,
        "5.7.0",
    );
    assert!(c.command("RCPT TO:<a@example.org>").expect("RCPT").code >= 500);
    assert!(c.command("DATA").expect("DATA").code >= 500);
    expect(&c.command("QUIT").expect("QUIT"), 221, "2.0.0");
    let out = swaks_send(
        ravelin.listener("secure"),
        SENDER,
        "a@example.org",
        b"Subject: clear\r\n\r\nclear text",
        &[],
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("<** 530 5.7.0"),
        "clear-text mail on a require listener: {}",
        describe(&out)
    );
    let (secure_id, transcript) = swaks_queue(
        ravelin.listener("secure"),
        "a@example.org",
        b"Subject: required\r\n\r\nrequired TLS",
        &["-tls"],
    );
    assert_starttls_transcript(&transcript);

    let messages = sink.wait_for_messages(2, WAIT);
    assert_eq!(messages.len(), 2, "only the two TLS messages may arrive");
    for (id, text) in [(&id, "verified TLS"), (&secure_id, "required TLS")] {
        let m = messages
            .iter()
            .find(|m| contains(&m.message, text))
            .unwrap_or_else(|| panic!("{text:?} did not arrive"));
        let (received, _) = first_header(&m.message);
        assert!(
            received.contains(&format!(" with ESMTPS id {id}")),
            "{received:?}"
        );
        assert_tls_received(&received);
    }
    assert!(
        ravelin.events("tls_self_signed").is_empty(),
        "a self-signed certificate was made although [tls] is configured"
    );
}

/// The certificate a verifying STARTTLS client trusting `ca` gets from `addr` (the base64 body
/// of its PEM), or swaks' transcript when the handshake or the message failed.
fn served_certificate(addr: SocketAddr, ca: &Path, dir: &Path) -> Result<String, String> {
    let peer = dir.join("peer.pem");
    let _ = fs::remove_file(&peer);
    let out = swaks_send(
        addr,
        SENDER,
        "a@example.org",
        b"Subject: certificate\r\n\r\nwhich certificate",
        &[
            "-tls",
            "--tls-verify",
            "--tls-ca-path",
            &ca.to_string_lossy(),
            "--tls-sni",
            HOSTNAME,
            "--tls-get-peer-cert",
            &peer.to_string_lossy(),
        ],
    );
    if !out.status.success() {
        return Err(describe(&out));
    }
    let pem = fs::read_to_string(&peer).map_err(|e| format!("no peer certificate: {e}"))?;
    Ok(pem_body(&pem))
}

fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// SIGHUP reads the [tls] certificate and key again (renewal): the next client gets the new
/// certificate, a session opened before the reload goes on and delivers its message, and
/// files that do not fit together are refused with an error line while the certificate in use
/// stays. The start and the reload log the certificate's subject and days left (an error line
/// under 30 days), and the metrics endpoint shows its expiry.
#[test]
fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = daemon_tempdir();
    let first = ravelin_tls::testing::TestPki::new(HOSTNAME).expect("test PKI");
    let files = first.write_to(dir.path()).expect("write the test PKI");
    let renewed_dir = dir.path().join("renewed");
    fs::create_dir(&renewed_dir).expect("mkdir");
    // The "renewed" certificate expires in 20 days: an alert at the reload.
    let renewed = ravelin_tls::testing::TestPki::expiring_in(HOSTNAME, 20).expect("second PKI");
    let renewed_files = renewed
        .write_to(&renewed_dir)
        .expect("write the second PKI");

    let sink = SmtpSink::start();
    let metrics = free_addr();
    let config = RavelinConfig::inbound(sink.addr)
        .certificate(&files)
        .set("metrics", &format!("listen = \"{metrics}\""));
    let ravelin = Ravelin::start(config);
    let started = ravelin.wait_for_event("tls_certificate", WAIT, |_| true);
    assert_eq!(started["subject"], format!("CN={HOSTNAME}"), "{started}");
    assert_eq!(started["level"], "info", "{started}");
    assert!(
        started["days_left"].as_i64().is_some_and(|d| d > 60),
        "{started}"
    );
    assert!(wait_for_port(metrics, WAIT));
    let not_after = || {
        let (status, page) = http_get(metrics, "/metrics", None);
        assert_eq!(status, 200, "{page}");
        sample(&page, "ravelin_tls_certificate_not_after_seconds")
            .unwrap_or_else(|| panic!("no certificate expiry in {page}"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(not_after() > now + 365.0 * 86_400.0);
    assert_eq!(
        served_certificate(ravelin.addr(), &files.ca, dir.path()),
        Ok(pem_body(&first.cert_pem))
    );

    // A session opened before the reload, in the middle of its transaction.
    let (mut open, _) = session_with_ehlo(ravelin.addr());
    expect(
        &open
            .command(&format!("MAIL FROM:<{SENDER}>"))
            .expect("MAIL"),
        250,
        "2.1.0",
    );

    // Renewal: the new files are written over the old ones, then SIGHUP.
    fs::copy(&renewed_files.cert, &files.cert).expect("renew the certificate");
    fs::copy(&renewed_files.key, &files.key).expect("renew the key");
    ravelin.signal(nix::sys::signal::Signal::SIGHUP);
    ravelin.wait_for_event("reload", WAIT, |e| e["reloaded"] == "tls_certificate");
    let alert = ravelin.wait_for_event("tls_certificate", WAIT, |e| e["level"] == "error");
    // 20 days from its making, whole seconds: 19 or 20 whole days left by now.
    assert!(
        alert["days_left"]
            .as_i64()
            .is_some_and(|d| d == 19 || d == 20),
        "{alert}"
    );
    let left = not_after() - now;
    assert!(
        (19.0 * 86_400.0..20.0 * 86_400.0 + 60.0).contains(&left),
        "the metric shows the renewed certificate's expiry: {left} s left"
    );
    assert_eq!(
        served_certificate(ravelin.addr(), &renewed_files.ca, dir.path()),
        Ok(pem_body(&renewed.cert_pem)),
        "the renewed certificate is served after SIGHUP"
    );
    assert!(served_certificate(ravelin.addr(), &files.ca, dir.path()).is_err());

    expect(
        &open.command("RCPT TO:<a@example.org>").expect("RCPT"),
        250,
        "2.1.5",
    );
    assert_eq!(open.command("DATA").expect("DATA").code, 354);
    open.send(b"Subject: opened before the reload\r\n\r\nstill here\r\n.\r\n")
        .expect("send the message");
    expect(&open.read_reply().expect("end of data"), 250, "2.0.0");

    // A half-done renewal (the key of another certificate): refused, nothing changes.
    let stray_dir = dir.path().join("stray");
    fs::create_dir(&stray_dir).expect("mkdir");
    let stray = ravelin_tls::testing::TestPki::new(HOSTNAME)
        .expect("third test PKI")
        .write_to(&stray_dir)
        .expect("write the third PKI");
    fs::copy(&stray.key, &files.key).expect("write a mismatched key");
    ravelin.signal(nix::sys::signal::Signal::SIGHUP);
    let failed = ravelin.wait_for_event("reload_failed", WAIT, |_| true);
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("does not match the certificate")),
        "{failed}"
    );
    assert_eq!(
        served_certificate(ravelin.addr(), &renewed_files.ca, dir.path()),
        Ok(pem_body(&renewed.cert_pem)),
        "a failed reload keeps the certificate in use"
    );
    let messages = sink.wait_for_messages(4, WAIT);
    assert!(
        messages
            .iter()
            .any(|m| contains(&m.message, "opened before the reload"))
    );
}

/// Input pipelined behind STARTTLS (CVE-2011-0411: it would be read as if sent under TLS) is
/// refused with 554 5.5.0 instead of 220, and the connection closes without TLS.
#[test]
fn input_pipelined_after_starttls_is_refused() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(RavelinConfig::inbound(sink.addr));
    let (mut c, ehlo) = session_with_ehlo(ravelin.addr());
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    c.send(b"STARTTLS\r\nMAIL FROM:<attacker@example.net>\r\n")
        .expect("send");
    let reply = c.read_reply().expect("reply to STARTTLS");
    expect(&reply, 554, "5.5.0");
    let rest = c.read_until_closed().expect("the gateway closes");
    assert!(
        rest.is_empty(),
        "more after the 554: {:?}",
        String::from_utf8_lossy(&rest)
    );
    ravelin.wait_for_event("protocol_violation", WAIT, |e| {
        e["reason"] == "unauthorised pipelining"
    });
    assert!(
        ravelin.events("tls").is_empty(),
        "a TLS session was started"
    );
    assert!(
        ravelin.events("mail").is_empty(),
        "the injected MAIL was read"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. SMTP smuggling

/// Endings that some server (or the backend behind a lenient gateway) reads as the end of
/// data, though only CRLF.CRLF is.
const SMUGGLING_ENDINGS: &[&[u8]] = &[
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\r\n.\r\r\n",
];

/// For each ending, a first message followed in the same write by a pipelined second
/// transaction (spoofed sender, unique marker) is answered with 550 5.5.2 and the connection
/// closes; neither message is queued, and once a legitimate message sent afterwards has reached
/// the Postfix backend and the queue is empty, no message with either marker was delivered.
#[test]
fn smuggled_messages_never_reach_postfix() {
    let backend = Postfix::backend(&["a"]);
    let ravelin = Ravelin::start(RavelinConfig::inbound(backend.addr));

    for (i, ending) in SMUGGLING_ENDINGS.iter().enumerate() {
        let mut c = session(ravelin.addr());
        expect(
            &c.command(&format!("MAIL FROM:<{SENDER}>")).expect("MAIL"),
            250,
            "2.1.0",
        );
        expect(
            &c.command("RCPT TO:<a@example.org>").expect("RCPT"),
            250,
            "2.1.5",
        );
        assert_eq!(c.command("DATA").expect("DATA").code, 354);
        let mut attack = format!(
            "From: {SENDER}\r\nTo: a@example.org\r\nSubject: first {i}\r\n\r\nFIRST-MARKER-{i}"
        )
        .into_bytes();
        attack.extend_from_slice(ending);
        attack.extend_from_slice(
            format!(
                "MAIL FROM:<ceo@example.org>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n\
                 From: ceo@example.org\r\nTo: a@example.org\r\nSubject: urgent\r\n\r\n\
                 SMUGGLED-MARKER-{i}\r\n.\r\nQUIT\r\n"
            )
            .as_bytes(),
        );
        c.send(&attack).expect("send the attack");
        let reply = c
            .read_reply()
            .unwrap_or_else(|e| panic!("ending {ending:?}: no reply: {e}"));
        assert!(
            reply.code == 550 && reply.text().starts_with("5.5.2 "),
            "ending {ending:?}: expected 550 5.5.2, got {:?}",
            reply.text()
        );
        let rest = c.read_until_closed().expect("the gateway closes");
        assert!(
            rest.is_empty(),
            "ending {ending:?}: more replies after the 550 (the smuggled commands were read): {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    // A legitimate message afterwards drains the path: once it arrived and nothing is queued,
    // nothing else is on its way.
    let (legit_id, _) = swaks_queue(
        ravelin.addr(),
        "a@example.org",
        b"Subject: legitimate\r\n\r\nLEGIT-MARKER",
        &[],
    );
    backend.wait_for_messages(1, WAIT);
    wait_until("an empty queue", WAIT, || {
        queue_list(&ravelin).is_empty().then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let messages = backend.messages();
    for m in &messages {
        assert!(
            !contains(&m.message, "SMUGGLED-MARKER") && !contains(&m.message, "FIRST-MARKER"),
            "a smuggled or refused message reached the backend:\n{}",
            String::from_utf8_lossy(&m.message)
        );
    }
    assert_eq!(messages.len(), 1, "only the legitimate message may arrive");
    assert!(contains(&messages[0].message, "LEGIT-MARKER"));
    let queued: Vec<String> = ravelin
        .events("queued")
        .iter()
        .map(|e| e["queue_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(queued, vec![legit_id], "the gateway queued an attack");
    assert_eq!(
        ravelin.events("protocol_violation").len(),
        SMUGGLING_ENDINGS.len(),
        "every ending is a logged protocol violation"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Relay control

/// The target of nmap's relay tests (its default `smtp.domain`).
const RELAY_TARGET: &str = "nmap.scanme.org";

/// nmap's smtp-open-relay tests, in its order: (MAIL FROM, RCPT TO) with `ours` in the places
/// where nmap puts the server's own name and `ip` as the server's address.
fn nmap_relay_tests(ours: &str, ip: &str) -> Vec<(String, String)> {
    let t = RELAY_TARGET;
    let lit = format!("antispam@[{ip}]");
    let mut tests = vec![
        (String::new(), format!("relaytest@{t}")),
        (format!("antispam@{t}"), format!("relaytest@{t}")),
        (format!("antispam@{ours}"), format!("relaytest@{t}")),
    ];
    for to in [
        format!("relaytest@{t}"),
        format!("relaytest%{t}@[{ip}]"),
        format!("relaytest%{t}@{ours}"),
        format!("\"relaytest@{t}\""),
        format!("\"relaytest%{t}\""),
        format!("relaytest@{t}@[{ip}]"),
        format!("\"relaytest@{t}\"@[{ip}]"),
        format!("relaytest@{t}@{ours}"),
        format!("@[{ip}]:relaytest@{t}"),
        format!("@{ours}:relaytest@{t}"),
        format!("{t}!relaytest"),
        format!("{t}!relaytest@[{ip}]"),
        format!("{t}!relaytest@{ours}"),
    ] {
        tests.push((lit.clone(), to));
    }
    tests
}

/// Variants nmap does not try: case, IPv6 literals, a subdomain and look-alikes of ours,
/// multi-hop routes, trailing dots. Each with the reply code it gets: 554 5.7.1 (relay
/// refused) or 501 5.1.3 (the address is not valid RFC 5321 syntax: a trailing dot).
fn relay_variants() -> Vec<(&'static str, u16)> {
    vec![
        ("RELAYTEST@NMAP.SCANME.ORG", 554),
        ("relaytest%NMAP.SCANME.ORG@EXAMPLE.ORG", 554),
        ("NMAP.SCANME.ORG!relaytest@Example.Org", 554),
        ("relaytest@nmap.scanme.org@EXAMPLE.ORG", 554),
        ("\"relaytest%nmap.scanme.org\"@example.org", 554),
        ("\"relaytest@nmap.scanme.org\"@example.org", 554),
        ("@EXAMPLE.ORG:relaytest@nmap.scanme.org", 554),
        ("@example.org,@nmap.scanme.org:relaytest@example.org", 554),
        ("@nmap.scanme.org:relaytest@example.org", 554),
        ("relaytest@[IPv6:::1]", 554),
        ("relaytest%nmap.scanme.org@[IPv6:::1]", 554),
        ("\"relaytest@nmap.scanme.org\"@[IPv6:::1]", 554),
        ("@[IPv6:::1]:relaytest@nmap.scanme.org", 554),
        ("nmap.scanme.org!relaytest@[IPv6:::1]", 554),
        ("relaytest@[127.0.0.1]", 554),
        ("relaytest@sub.example.org", 554),
        ("relaytest%nmap.scanme.org@sub.example.org", 554),
        ("relaytest@example.org.nmap.scanme.org", 554),
        ("relaytest@xexample.org", 554),
        ("relaytest@mx.test.example", 554),
        ("relaytest@example.org.", 501),
        ("relaytest@nmap.scanme.org.", 501),
        ("relaytest%nmap.scanme.org@example.org.", 501),
    ]
}

/// Every form of nmap's smtp-open-relay script (run as nmap runs it: one connection, RSET
/// between tests; with our accepted domain and with our host name in nmap's "server name"
/// places, and 127.0.0.1 as the address) and every variant is refused at RCPT, DATA then has
/// no recipient; nothing is queued and the backend receives only a legitimate control message
/// sent at the end.
#[test]
fn open_relay_attempts_are_refused() {
    let sink = SmtpSink::start();
    // Enough error allowance for a whole nmap run on one connection.
    let config = RavelinConfig::inbound(sink.addr)
        .set("limits", "soft_errors = 400")
        .set("limits", "hard_errors = 400");
    let ravelin = Ravelin::start(config);

    let mut refused = 0;
    for ours in ["example.org", HOSTNAME] {
        let mut c = RawClient::connect(ravelin.addr()).expect("connect");
        assert_eq!(c.read_reply().expect("greeting").code, 220);
        assert_eq!(
            c.command(&format!("EHLO {RELAY_TARGET}"))
                .expect("EHLO")
                .code,
            250
        );
        let tests = nmap_relay_tests(ours, "127.0.0.1");
        assert_eq!(tests.len(), 16);
        for (from, to) in &tests {
            expect(&c.command("RSET").expect("RSET"), 250, "2.0.0");
            expect(
                &c.command(&format!("MAIL FROM:<{from}>")).expect("MAIL"),
                250,
                "2.1.0",
            );
            let reply = c.command(&format!("RCPT TO:<{to}>")).expect("RCPT");
            assert!(
                reply.code == 554 && reply.text().starts_with("5.7.1 "),
                "MAIL FROM:<{from}> RCPT TO:<{to}>: expected 554 5.7.1, got {:?}",
                reply.text()
            );
            let data = c.command("DATA").expect("DATA");
            assert_eq!(data.code, 554, "DATA after a refused RCPT: {data:?}");
            refused += 1;
        }
        expect(&c.command("QUIT").expect("QUIT"), 221, "2.0.0");
    }

    let mut c = session(ravelin.addr());
    for (to, code) in relay_variants() {
        expect(
            &c.command(&format!("MAIL FROM:<{SENDER}>")).expect("MAIL"),
            250,
            "2.1.0",
        );
        let reply = c.command(&format!("RCPT TO:<{to}>")).expect("RCPT");
        let enhanced = if code == 554 { "5.7.1" } else { "5.1.3" };
        assert!(
            reply.code == code && reply.text().starts_with(&format!("{enhanced} ")),
            "RCPT TO:<{to}>: expected {code} {enhanced}, got {} {:?}",
            reply.code,
            reply.text()
        );
        expect(&c.command("RSET").expect("RSET"), 250, "2.0.0");
        refused += 1;
    }
    expect(&c.command("QUIT").expect("QUIT"), 221, "2.0.0");
    assert_eq!(refused, 32 + relay_variants().len());

    assert!(
        queue_list(&ravelin).is_empty(),
        "a relay attempt was queued"
    );
    assert!(ravelin.events("queued").is_empty());
    // Control: a plain recipient of ours goes through, and is the only thing the sink sees.
    let (id, _) = swaks_queue(
        ravelin.addr(),
        "relaytest@example.org",
        b"Subject: control\r\n\r\nCONTROL",
        &[],
    );
    let messages = sink.wait_for_messages(1, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 1, "{messages:?}");
    assert_eq!(messages[0].recipients(), vec!["relaytest@example.org"]);
    assert!(contains(&messages[0].message, &format!(" id {id}")));
}

// ---------------------------------------------------------------------------------------------
// 5. Disclosure

/// The banner and EHLO show only the configured host name; no reply names the software or
/// its version; VRFY answers 252 without repeating the user; EXPN is 502; HELP is one line
/// that says nothing about the server.
#[test]
fn replies_disclose_only_the_hostname() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(RavelinConfig::inbound(sink.addr));
    let version = env!("CARGO_PKG_VERSION");
    let mut c = RawClient::connect(ravelin.addr()).expect("connect");
    let mut replies = Vec::new();

    let banner = c.read_reply().expect("greeting");
    assert_eq!(banner.raw, format!("220 {HOSTNAME} ESMTP\r\n").into_bytes());
    replies.push(banner);
    let ehlo = c.command("EHLO client.test.example").expect("EHLO");
    assert_eq!(ehlo.code, 250);
    assert_eq!(
        ehlo.lines[0], HOSTNAME,
        "EHLO greets with more than the name"
    );
    replies.push(ehlo);
    let helo = c.command("HELO client.test.example").expect("HELO");
    assert_eq!(helo.raw, format!("250 {HOSTNAME}\r\n").into_bytes());
    replies.push(helo);

    for user in ["root", "postmaster", "a@example.org", "<a@example.org>"] {
        let vrfy = c.command(&format!("VRFY {user}")).expect("VRFY");
        expect(&vrfy, 252, "2.5.2");
        assert!(
            !vrfy.text().contains(user.trim_matches(['<', '>'])),
            "VRFY repeats the user: {vrfy:?}"
        );
        replies.push(vrfy);
    }
    for list in ["postmaster", "all@example.org"] {
        let expn = c.command(&format!("EXPN {list}")).expect("EXPN");
        assert_eq!(expn.code, 502, "{expn:?}");
        assert!(!expn.text().contains(list), "{expn:?}");
        replies.push(expn);
    }
    for help in ["HELP", "HELP MAIL"] {
        let reply = c.command(help).expect("HELP");
        assert_eq!(reply.code, 214, "{reply:?}");
        assert_eq!(reply.lines.len(), 1, "HELP lists things: {reply:?}");
        assert!(
            !reply.text().contains(HOSTNAME) && !reply.text().contains("MAIL"),
            "{reply:?}"
        );
        replies.push(reply);
    }
    replies.push(c.command("FROB").expect("unknown command"));
    replies.push(c.command("QUIT").expect("QUIT"));
    for r in &replies {
        let text = String::from_utf8_lossy(&r.raw).to_ascii_lowercase();
        assert!(
            !text.contains("ravelin") && !text.contains(version) && !text.contains("rust"),
            "a reply names the software or version: {text:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Operations

/// The 1-based number of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
        + 1
}

/// Asserts that `stderr` has a `FILE:LINE: ...` error for the line of `text` holding each
/// needle, mentioning `what`.
#[track_caller]
fn assert_errors_at(file: &Path, text: &str, stderr: &str, expected: &[(&str, &str)]) {
    let file = file.display().to_string();
    for (needle, what) in expected {
        let prefix = format!("{file}:{}: ", line_of(text, needle));
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(what)),
            "no `{prefix}... {what}` error in:\n{stderr}\nconfig:\n{text}"
        );
    }
    assert_eq!(
        stderr.lines().count(),
        expected.len(),
        "other errors than expected:\n{stderr}"
    );
}

/// `ravelin config check` accepts a good file (exit 0). For a file with an unknown key, an
/// unknown value and a bad duration it exits 1 and names FILE:LINE: for each of them; so it
/// does for a file whose every value reads but two are wrong (a host name that is not a
/// domain, a hard error limit below the soft one).
#[test]
fn config_check_reports_every_error_with_its_line() {
    let dir = daemon_tempdir();
    let spool = dir.path().join("spool");
    let check = |name: &str, config: &RavelinConfig| {
        let path = dir.path().join(name);
        let text = config.render(&spool);
        fs::write(&path, &text).expect("write the config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ravelin"));
        cmd.args(["config", "check", "--config"]).arg(&path);
        let out = run(cmd, Duration::from_secs(30));
        (path, text, out)
    };

    let (_, _, out) = check("good.toml", &RavelinConfig::inbound(free_addr()));
    assert!(
        out.status.success(),
        "good config refused: {}",
        describe(&out)
    );

    let unreadable = RavelinConfig::inbound(free_addr())
        .tls("sometimes")
        .set("server", "usr = \"nobody\"")
        .set("delivery", "retry_max = \"5 parsecs\"");
    let (path, text, out) = check("bad-values.toml", &unreadable);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_errors_at(
        &path,
        &text,
        &String::from_utf8_lossy(&out.stderr),
        &[
            ("usr = ", "unknown key \"usr\""),
            ("tls = \"sometimes\"", "sometimes"),
            ("retry_max = ", "5 parsecs"),
        ],
    );

    let mut wrong = RavelinConfig::inbound(free_addr())
        .set("limits", "soft_errors = 5")
        .set("limits", "hard_errors = 4");
    wrong.hostname = "localhost".into();
    let (path, text, out) = check("bad-meaning.toml", &wrong);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_errors_at(
        &path,
        &text,
        &String::from_utf8_lossy(&out.stderr),
        &[
            ("hostname = ", "localhost"),
            ("hard_errors = ", "hard_errors"),
        ],
    );
}

/// Against a gateway whose backend is down, messages wait in the queue: `queue list`, `show`,
/// `hold`, `release`, `delete` and `flush` (all --json) see and change them; when a sink
/// appears on the backend's port, a flush delivers the waiting message, a held one stays until
/// released and flushed, and a deleted one is never delivered.
#[test]
fn queue_tools_manage_mail_waiting_for_the_backend() {
    let backend = free_addr();
    let config = RavelinConfig::inbound(backend)
        .retry_initial("1h")
        .set("delivery", "scan_interval = \"1s\"");
    let ravelin = Ravelin::start(config);

    let mut ids = Vec::new();
    for n in 1..=3 {
        let (id, _) = swaks_queue(
            ravelin.addr(),
            "a@example.org",
            format!("Subject: waiting {n}\r\n\r\nQUEUE-MARKER-{n}").as_bytes(),
            &[],
        );
        ids.push(id);
    }
    let (held, deleted, waiting) = (&ids[0], &ids[1], &ids[2]);
    // Each has been tried once and deferred (nothing listens on the backend port).
    let entries = wait_until("three deferred messages", WAIT, || {
        let entries = queue_list(&ravelin);
        (entries.len() == 3
            && entries
                .iter()
                .all(|e| e["state"]["attempts"].as_u64() >= Some(1)))
        .then_some(entries)
    });
    let mut listed = entry_ids(&entries);
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);
    for e in &entries {
        assert_eq!(e["held"], false);
        assert_eq!(e["envelope"]["sender"], SENDER);
        assert_eq!(
            e["envelope"]["recipients"],
            serde_json::json!(["a@example.org"])
        );
    }

    let shown = queue_json(&ravelin, &["show", waiting]);
    assert_eq!(shown["entry"]["id"], waiting.as_str());
    let headers = shown["headers"].as_str().unwrap_or_default();
    assert!(
        headers.starts_with("Received: ")
            && headers.contains(&format!(" id {waiting}"))
            && headers.contains("Subject: waiting 3"),
        "queue show headers: {headers:?}"
    );

    let result = queue_json(&ravelin, &["hold", held]);
    assert_eq!(result, serde_json::json!([{"id": held, "result": "held"}]));
    let result = queue_json(&ravelin, &["delete", deleted]);
    assert_eq!(
        result,
        serde_json::json!([{"id": deleted, "result": "deleted"}])
    );
    let entries = queue_list(&ravelin);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let held_entry = entries
        .iter()
        .find(|e| e["id"] == held.as_str())
        .expect("held message listed");
    assert_eq!(held_entry["held"], true);
    assert!(!entry_ids(&entries).contains(deleted));
    let out = ravelin.command(&["queue", "show", deleted, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // The backend comes up; the next retry is an hour away, so nothing moves on its own ...
    let sink = SmtpSink::start_on(backend, &[]);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(sink.messages().is_empty(), "delivered before the flush");
    // ... until a flush.
    let result = queue_json(&ravelin, &["flush"]);
    assert_eq!(result, serde_json::json!({"flush": "requested"}));
    let messages = sink.wait_for_messages(1, WAIT);
    assert!(contains(&messages[0].message, "QUEUE-MARKER-3"));
    wait_until("the flushed message to leave the queue", WAIT, || {
        (entry_ids(&queue_list(&ravelin)) == vec![held.clone()]).then_some(())
    });
    // The held one stays held through further scans.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.messages().len(), 1, "a held message was delivered");

    let result = queue_json(&ravelin, &["release", held]);
    assert_eq!(
        result,
        serde_json::json!([{"id": held, "result": "released"}])
    );
    queue_json(&ravelin, &["flush"]);
    sink.wait_for_messages(2, WAIT);
    wait_until("an empty queue", WAIT, || {
        queue_list(&ravelin).is_empty().then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let messages = sink.messages();
    assert_eq!(messages.len(), 2, "the deleted message was delivered");
    assert!(
        messages
            .iter()
            .any(|m| contains(&m.message, "QUEUE-MARKER-1"))
    );
    assert!(
        !messages
            .iter()
            .any(|m| contains(&m.message, "QUEUE-MARKER-2"))
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Privileges

/// The Uid and Gid lines of a /proc status file: (real, effective, saved, filesystem).
fn ids_of(status: &str, field: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} line in {status}"))
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect()
}

/// Started as root with `[server] user = "nobody"` and a listener on a port below 1024 (as
/// port 25 is), every thread of the running gateway has nobody's user and group ids (real,
/// effective, saved, filesystem) and no other group; the privileged port stays open; the
/// spool belongs to nobody; mail still flows; the pid file was written in a directory only
/// root can write. Not started as root, it runs as the caller.
#[test]
fn runs_as_the_configured_user() {
    let sink = SmtpSink::start();
    // The pid file's directory is writable by the starting user only, as /run is root's.
    let run_dir = tempfile::tempdir().expect("a directory for the pid file");
    let pid_file = run_dir.path().join("ravelin.pid");
    let mut config = RavelinConfig::inbound(sink.addr).set(
        "server",
        &format!(
            "pid_file = {}",
            toml_string(&pid_file.display().to_string())
        ),
    );
    if is_root() {
        config.listeners[0].address = privileged_addr();
    }
    let mut ravelin = Ravelin::start(config);
    let pid = ravelin.pid().expect("running");
    // Opened before the privilege drop, written once the start is complete.
    let written = wait_until("the pid file", WAIT, || {
        fs::read_to_string(&pid_file).ok().filter(|s| !s.is_empty())
    });
    assert_eq!(written, format!("{pid}\n"));
    let (uid, gid) = if is_root() {
        let user = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("a nobody account");
        ravelin.wait_for_event("privileges_dropped", WAIT, |e| e["user"] == "nobody");
        (user.uid.as_raw(), user.gid.as_raw())
    } else {
        eprintln!("not root: checking that ravelin runs as the current user (CI runs as root)");
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    };
    let tasks: Vec<_> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read the task list")
        .flatten()
        .collect();
    assert!(!tasks.is_empty());
    for task in tasks {
        let status = fs::read_to_string(task.path().join("status")).expect("read status");
        assert_eq!(ids_of(&status, "Uid"), vec![uid; 4], "{status}");
        assert_eq!(ids_of(&status, "Gid"), vec![gid; 4], "{status}");
        if is_root() {
            assert_eq!(ids_of(&status, "Groups"), vec![gid], "{status}");
        }
    }
    assert_eq!(
        listening_sockets(pid),
        [ravelin.addr()].into(),
        "still listening after the privilege drop"
    );
    use std::os::unix::fs::MetadataExt;
    let spool = fs::metadata(ravelin.spool()).expect("the spool exists");
    assert_eq!((spool.uid(), spool.gid()), (uid, gid));

    swaks_queue(
        ravelin.addr(),
        "a@example.org",
        b"Subject: unprivileged\r\n\r\nstill works",
        &[],
    );
    sink.wait_for_messages(1, WAIT);

    // Stopped, it leaves no pid file naming it: removed, or emptied where the directory is
    // root's and the gateway no longer is.
    ravelin.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(ravelin.wait_exit(WAIT).is_some(), "ravelin did not stop");
    assert_eq!(fs::read_to_string(&pid_file).unwrap_or_default(), "");
}

/// A pid file that cannot be written stops the start (an init system waiting for it would
/// otherwise time out), with a message naming the setting and the fix; nothing is listening.
/// So does a symbolic link in its place (root would write where it points).
#[test]
fn an_unwritable_pid_file_stops_the_start() {
    let sink = SmtpSink::start();
    let dir = daemon_tempdir();
    let config = RavelinConfig::inbound(sink.addr).set(
        "server",
        &format!(
            "pid_file = {}",
            toml_string(&dir.path().join("missing/ravelin.pid").display().to_string())
        ),
    );
    let listen = config.listeners[0].address;
    let path = dir.path().join("ravelin.toml");
    fs::write(&path, config.render(&dir.path().join("spool"))).expect("write ravelin.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ravelin"));
    cmd.arg("serve").arg("--config").arg(&path);
    let out = run(cmd, Duration::from_secs(30));
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write the pid file") && stderr.contains("[server] pid_file"),
        "{}",
        describe(&out)
    );
    assert!(!is_listening(listen));

    // A symbolic link in its place is refused, and what it points to is left alone.
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious\n").expect("write the victim file");
    let link = dir.path().join("link.pid");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let config = RavelinConfig::inbound(sink.addr).set(
        "server",
        &format!("pid_file = {}", toml_string(&link.display().to_string())),
    );
    fs::write(&path, config.render(&dir.path().join("spool"))).expect("write ravelin.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ravelin"));
    cmd.arg("serve").arg("--config").arg(&path);
    let out = run(cmd, Duration::from_secs(30));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot write the pid file"),
        "{}",
        describe(&out)
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
}

// ---------------------------------------------------------------------------------------------
// 8. Demo

/// `ravelin demo` runs offline, exits 0 and reports that every attack was stopped.
#[test]
fn demo_stops_every_attack() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ravelin"));
    cmd.arg("demo");
    let out = run(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "ravelin demo: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "Every attack was stopped",
        "Ravelin audits itself (ravelin audit --active --no-port-scan demo.example@127.0.0.1:",
        "0 message(s) delivered by the audit",
        "expected on loopback: the demo makes a self-signed certificate",
    ] {
        assert!(stdout.contains(expected), "{expected}: {}", describe(&out));
    }
    assert!(!stdout.contains("UNEXPECTED"), "{}", describe(&out));
    // The JSON form carries the same verdicts for scripts.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ravelin"));
    cmd.args(["demo", "--json"]);
    let out = run(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "ravelin demo --json: {}",
        describe(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("demo --json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["self_audit"]["ok"], true);
    let findings = v["self_audit"]["findings"].as_array().expect("findings");
    let status = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .map(|f| f["status"].clone())
    };
    assert_eq!(status("smtp.open_relay"), Some("pass".into()));
    assert_eq!(status("smtp.smuggling.lf-dot-lf"), Some("pass".into()));
    assert_eq!(status("tls.versions"), Some("pass".into()));
    // The demo knows its users (a recipients file): no catch-all, no enumeration.
    assert_eq!(status("smtp.catch_all"), Some("pass".into()));
    assert_eq!(status("smtp.rcpt_enumeration"), Some("pass".into()));
}
