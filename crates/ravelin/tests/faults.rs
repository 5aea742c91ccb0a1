//! Fault injection end to end: a broken next hop, broken TLS and clients that vanish. The
//! gateway must keep every message it acknowledged, leave nothing half-stored, say in its log
//! what happened, never panic, and go on serving.
//!
//! - A flapping backend ([`FlakyBackend`], a scripted fault injector) resets the connection in
//!   the middle of DATA, then answers the end of data with 451, then is replaced by a real
//!   smtp-sink on the same port: every acknowledged message arrives exactly once (counted by
//!   Message-ID) after a `deferred` log event for each failed attempt.
//! - TLS handshakes that fail: garbage after STARTTLS, a ClientHello offering only TLS 1.0
//!   (raw bytes, so it does not depend on what the local OpenSSL still allows), and the same
//!   on an implicit-TLS listener; each is logged with its reason and the next client is served.
//! - Clients that vanish mid-command, mid-DATA (FIN and RST) and mid-handshake: no file is
//!   left in `incoming/`, nothing reaches the backend, and mail still flows.
//!
//! A full spool file system is in durability.rs. A panic anywhere in the gateway would print
//! a non-JSON line to its log, which [`Ravelin::log_events`] refuses; each test also reads
//! the whole log at the end.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);
const LOCAL2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A client past EHLO on a fresh connection.
fn ehlo(addr: SocketAddr) -> RawClient {
    let mut c = RawClient::connect(addr).expect("connect to ravelin");
    assert_eq!(c.read_reply().expect("greeting").code, 220);
    let r = c.command("EHLO client.test.example").expect("EHLO reply");
    assert_eq!(r.code, 250, "{r:?}");
    c
}

/// Sends one message on a client past EHLO and returns the reply to the end of data.
fn transaction(c: &mut RawClient, to: &str, data: &[u8]) -> RawReply {
    for (line, want) in [
        ("MAIL FROM:<sender@example.net>".to_string(), 250),
        (format!("RCPT TO:<{to}>"), 250),
        ("DATA".to_string(), 354),
    ] {
        let r = c.command(&line).expect("reply");
        assert_eq!(r.code, want, "{line} -> {r:?}");
    }
    c.send(data).expect("message data");
    c.send(b".\r\n").expect("end of data");
    c.read_reply().expect("reply to the end of data")
}

/// The queue id of `250 2.0.0 Ok: queued as ID`.
fn queue_id_of(reply: &RawReply) -> String {
    assert_eq!(reply.code, 250, "{reply:?}");
    let id = reply.text().rsplit(' ').next().unwrap_or("").to_string();
    assert!(
        reply.text().contains("queued as") && !id.is_empty(),
        "{reply:?}"
    );
    id
}

fn message(token: &str) -> Vec<u8> {
    format!(
        "From: <sender@example.net>\r\nTo: <user@example.org>\r\nSubject: {token}\r\n\
         Message-ID: <{token}@example.net>\r\n\r\nbody of {token}\r\n{}",
        format!("{}\r\n", "x".repeat(70)).repeat(60)
    )
    .into_bytes()
}

/// The Message-ID token of a message as smtp-sink stored it.
fn message_id(m: &SinkMessage) -> String {
    let text = String::from_utf8_lossy(&m.message);
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID: <"))
        .and_then(|v| v.strip_suffix("@example.net>"))
        .unwrap_or_else(|| panic!("no Message-ID in {}", m.path.display()))
        .to_string()
}

/// Panics if the gateway's log shows a panic or a line that is not JSON, or it exited.
fn assert_healthy(gw: &mut Ravelin) {
    let text = gw.log_text();
    assert!(
        !text.contains("panicked"),
        "the gateway panicked:\n{}",
        tail(&gw.log_path(), 40)
    );
    gw.log_events();
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "the gateway exited; log:\n{}",
        tail(&gw.log_path(), 40)
    );
}

/// Waits until every session that connected has logged its disconnect.
fn wait_all_disconnected(gw: &Ravelin) {
    wait_until("every session to end", WAIT, || {
        (gw.events("connect").len() == gw.events("disconnect").len()).then_some(())
    });
}

/// Sends one good message through the gateway and waits for it at the sink.
fn assert_still_serving(gw: &Ravelin, sink: &SmtpSink, token: &str) {
    let before = sink.messages().len();
    let mut c = ehlo(gw.addr());
    let id = queue_id_of(&transaction(&mut c, "user@example.org", &message(token)));
    let _ = c.command("QUIT");
    let got = sink.wait_for_messages(before + 1, WAIT);
    assert!(
        got.iter().any(|m| message_id(m) == token),
        "{token} (queue id {id}) did not arrive"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. A flapping backend

/// Five messages are acknowledged while the backend resets every connection in the middle of
/// DATA; then it answers every end of data with 451; then a real smtp-sink takes its port.
/// Each message has a `deferred` event for a reset attempt and for a 451 attempt, then one
/// `delivered`; the sink holds each Message-ID exactly once; the queue ends empty.
#[test]
fn a_flapping_backend_loses_nothing_and_duplicates_nothing() {
    let mut flaky = FlakyBackend::start(Flaw::ResetInData);
    let mut gw = Ravelin::start(
        RavelinConfig::inbound(flaky.addr)
            .tls("off")
            .set("delivery", "retry_max = \"2s\""),
    );
    let tokens: Vec<String> = (0..5).map(|i| format!("flap-{i}")).collect();
    let mut ids = BTreeMap::new();
    for token in &tokens {
        let mut c = ehlo(gw.addr());
        let id = queue_id_of(&transaction(&mut c, "user@example.org", &message(token)));
        let _ = c.command("QUIT");
        ids.insert(id, token.clone());
    }

    // Phase 1: every message met a reset in DATA and was deferred for it.
    let deferred_for = |id: &str, what: &dyn Fn(&str) -> bool| {
        gw.events("deferred")
            .iter()
            .any(|e| e["queue_id"] == id && what(e["reply"].as_str().unwrap_or("")))
    };
    wait_until("a deferral of every message after a reset", WAIT, || {
        ids.keys()
            .all(|id| deferred_for(id, &|r| !r.contains("flaky backend")))
            .then_some(())
    });
    assert!(flaky.failed(Flaw::ResetInData) >= ids.len());

    // Phase 2: the whole message goes out and is refused with 451.
    flaky.set(Flaw::TempFailData);
    wait_until("a deferral of every message after a 451", WAIT, || {
        ids.keys()
            .all(|id| deferred_for(id, &|r| r.contains("451 4.3.0 flaky backend")))
            .then_some(())
    });
    assert!(
        gw.events("delivered").is_empty(),
        "delivered to a broken backend"
    );

    // Phase 3: the backend is back (a real one, same port).
    flaky.stop();
    let sink = SmtpSink::start_on(flaky.addr, &[]);
    let got = sink.wait_for_messages(ids.len(), WAIT);
    thread::sleep(Duration::from_secs(3)); // room for a duplicate to show up
    let got_again = sink.messages();
    assert_eq!(
        got.len(),
        got_again.len(),
        "more deliveries after the last one"
    );
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for m in &got_again {
        *count.entry(message_id(m)).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = tokens.iter().map(|t| (t.clone(), 1)).collect();
    assert_eq!(count, want, "each acknowledged message exactly once");
    for id in ids.keys() {
        let delivered = gw
            .events("delivered")
            .iter()
            .filter(|e| e["queue_id"] == id.as_str())
            .count();
        assert_eq!(delivered, 1, "{id} delivered {delivered} times per the log");
    }
    wait_until("an empty queue", WAIT, || {
        gw.spool_entries("queue").is_empty().then_some(())
    });
    let deferrals = gw.events("deferred").len();
    eprintln!(
        "flapping backend: {} messages acknowledged, {} resets in DATA, {} refusals with 451, \
         {deferrals} deferrals logged, each message delivered once",
        ids.len(),
        flaky.failed(Flaw::ResetInData),
        flaky.failed(Flaw::TempFailData)
    );
    assert_healthy(&mut gw);
}

// ---------------------------------------------------------------------------------------------
// 2. TLS handshakes that fail

/// A TLS 1.0 ClientHello (record and handshake version 3.1, no supported_versions extension)
/// offering the CBC suites such a client has (ECDHE-RSA-AES128-SHA, ECDHE-RSA-AES256-SHA,
/// AES128-SHA): what a client that speaks nothing newer sends.
fn tls10_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x01]; // client_version TLS 1.0
    hello.extend_from_slice(&[0x5a; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x06, 0xc0, 0x13, 0xc0, 0x14, 0x00, 0x2f]); // cipher suites
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// `answer` is exactly one fatal TLS alert: handshake_failure (40, no common cipher suite) or
/// protocol_version (70); rustls has neither TLS 1.0 nor its CBC suites.
fn assert_fatal_alert(answer: &[u8]) {
    assert!(
        matches!(answer, [0x15, 0x03, _, 0x00, 0x02, 0x02, 40 | 70]),
        "not a fatal handshake_failure or protocol_version alert: {answer:?}"
    );
}

/// A client past STARTTLS's `220`, ready for the handshake.
fn after_starttls(addr: SocketAddr) -> RawClient {
    let mut c = ehlo(addr);
    let r = c.command("STARTTLS").expect("STARTTLS reply");
    assert_eq!(r.code, 220, "{r:?}");
    c
}

/// Everything the gateway answers until it closes, at most a few KiB.
fn answer_until_closed(c: &mut RawClient) -> Vec<u8> {
    c.read_until_closed()
        .expect("the gateway closes the connection")
}

/// The disconnect events whose reason starts with `prefix`.
fn disconnects(gw: &Ravelin, prefix: &str) -> Vec<serde_json::Value> {
    gw.events("disconnect")
        .into_iter()
        .filter(|e| e["reason"].as_str().is_some_and(|r| r.starts_with(prefix)))
        .collect()
}

/// Garbage after STARTTLS, a TLS 1.0-only ClientHello after STARTTLS and on an implicit-TLS
/// listener: the gateway closes each connection (after a TLS alert where TLS got that far),
/// logs `TLS handshake failed` with the reason, does not panic, and serves the next client.
#[test]
fn failed_tls_handshakes_are_logged_and_the_gateway_keeps_serving() {
    let (_pki, files) = test_pki("mx.test.example");
    let sink = SmtpSink::start();
    let mut gw = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .listener("smtps", "inbound", "implicit")
            .certificate(&files),
    );

    // Plain text where the ClientHello should be.
    let mut c = after_starttls(gw.addr());
    c.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<user@example.org>\r\n")
        .expect("send garbage");
    let answer = answer_until_closed(&mut c);
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "not a TLS alert: {answer:?}"
    );
    wait_until("the failed handshake in the log", WAIT, || {
        (disconnects(&gw, "TLS handshake failed").len() == 1).then_some(())
    });

    // TLS 1.0 only, after STARTTLS: a protocol_version alert (rustls speaks 1.2 and 1.3).
    let mut c = after_starttls(gw.addr());
    c.send(&tls10_client_hello()).expect("send the ClientHello");
    assert_fatal_alert(&answer_until_closed(&mut c));

    // The same on the implicit-TLS listener.
    let mut raw = TcpStream::connect(gw.listener("smtps")).expect("connect to smtps");
    raw.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    raw.write_all(&tls10_client_hello())
        .expect("send the ClientHello");
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert_fatal_alert(&answer);
    drop(raw);

    wait_all_disconnected(&gw);
    let failed = disconnects(&gw, "TLS handshake failed");
    assert_eq!(failed.len(), 3, "{failed:#?}");
    for e in &failed {
        assert!(
            e["session"].is_string() && e["client"] == "127.0.0.1",
            "{e}"
        );
    }
    eprintln!(
        "failed handshakes logged as: {}",
        failed
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert_still_serving(&gw, &sink, "after-tls-failures");
    assert_healthy(&mut gw);
}

// ---------------------------------------------------------------------------------------------
// 3. Clients that vanish

/// Closes the socket with RST instead of FIN (linger 0).
fn reset(c: RawClient) {
    let mut c = c;
    socket2::SockRef::from(&*c.stream())
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
}

/// Clients that go away mid-command, mid-DATA (with FIN and with RST, after a little and
/// after a lot of data), right after DATA's 354, and in the middle of a STARTTLS handshake:
/// every session ends, `incoming/` and `queue/` are empty, nothing reached the backend, the
/// gateway did not panic and the next client's mail goes through.
#[test]
fn clients_that_vanish_leave_nothing_behind() {
    let sink = SmtpSink::start();
    let mut gw = Ravelin::start(RavelinConfig::inbound(sink.addr));
    let addr = gw.addr();

    // Mid-command: half a line, then FIN; and half a line, then RST.
    let mut c = ehlo(addr);
    c.send(b"MAIL FROM:<sender@exa").expect("half a command");
    c.shutdown_write().expect("FIN");
    assert!(c.is_closed());
    let mut c = RawClient::connect_from(LOCAL2, addr).expect("connect");
    c.read_reply().expect("greeting");
    c.send(b"EHLO half").expect("half a command");
    reset(c);

    // Mid-DATA, after a little and after a lot (past the spool's write buffer), FIN and RST.
    for (size, rst) in [(100, false), (100, true), (300_000, false), (300_000, true)] {
        let mut c = ehlo(addr);
        for (line, want) in [
            ("MAIL FROM:<sender@example.net>", 250),
            ("RCPT TO:<user@example.org>", 250),
            ("DATA", 354),
        ] {
            assert_eq!(c.command(line).expect("reply").code, want, "{line}");
        }
        let mut data = b"Subject: vanishing\r\n\r\n".to_vec();
        while data.len() < size {
            data.extend_from_slice(b"a line of a message that will never end\r\n");
        }
        c.send(&data).expect("part of the message");
        if rst {
            reset(c);
        } else {
            c.shutdown_write().expect("FIN");
            let answer = c.read_until_closed().expect("closed");
            assert!(
                answer.is_empty() || answer.starts_with(b"451") || answer.starts_with(b"421"),
                "{:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    }

    // Right after 354, before any data.
    let mut c = ehlo(addr);
    c.command("MAIL FROM:<sender@example.net>").expect("MAIL");
    c.command("RCPT TO:<user@example.org>").expect("RCPT");
    assert_eq!(c.command("DATA").expect("DATA").code, 354);
    reset(c);

    // Mid-handshake: half a ClientHello, then FIN; and then RST.
    let hello = tls10_client_hello();
    for rst in [false, true] {
        let mut c = after_starttls(addr);
        c.send(&hello[..hello.len() / 2])
            .expect("half a ClientHello");
        if rst {
            reset(c);
        } else {
            c.shutdown_write().expect("FIN");
            let _ = c.read_until_closed();
        }
    }

    wait_all_disconnected(&gw);
    assert_eq!(gw.spool_entries("incoming"), Vec::<String>::new());
    assert_eq!(gw.spool_entries("queue"), Vec::<String>::new());
    assert!(
        sink.messages().is_empty(),
        "a vanished client's message went out"
    );
    let aborted = gw
        .events("data")
        .into_iter()
        .filter(|e| e["decision"] == "reject")
        .count();
    assert_eq!(aborted, 5, "one rejected-data event per vanished DATA");
    assert!(gw.events("queued").is_empty());
    assert_still_serving(&gw, &sink, "after-vanishing-clients");
    assert_healthy(&mut gw);
}
