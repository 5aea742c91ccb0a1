//! Self-test of the end-to-end harness (tests/support) against the real peers alone:
//! smtp-sink, a Postfix backend and relay, swaks, smtp-source and the raw client. If these
//! fail, the gateway's end-to-end tests cannot be trusted either.

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A message that exercises what relays get wrong: dot-stuffing, empty lines, trailing
/// white space, 8-bit text and a line of `long` bytes (3000 exceeds Postfix's 2048-byte
/// record size; over 998 the Postfix SMTP client folds it when relaying).
fn tricky_message(id: &str, long: usize) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"From: Alice <alice@example.net>\r\nTo: a@example.org\r\n");
    m.extend_from_slice(
        format!("Subject: peers self-test\r\nMessage-ID: <{id}@example.net>\r\n\r\n").as_bytes(),
    );
    m.extend_from_slice(b"first line\r\n.leading dot\r\n..two dots\r\n.\tdot tab\r\n\r\n\r\n");
    m.extend_from_slice(b"\ttab and trailing space \r\ncaf\xc3\xa9 \xe2\x9c\x93\r\n");
    m.extend(std::iter::repeat_n(b'x', long));
    m.extend_from_slice(b"\r\nlast line");
    m
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert!(
        got == want,
        "{what} differs\n got: {:?}\nwant: {:?}",
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(want)
    );
}

#[test]
fn smtp_sink_dumps_what_swaks_sent() {
    let sink = SmtpSink::start();
    let data = tricky_message("sink-1", 3000);
    let out = swaks_send(
        sink.addr,
        "sender@example.net",
        "a@example.org",
        &data,
        &["--ehlo", "client.test"],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));

    let messages = sink.wait_for_messages(1, WAIT);
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.client_addr, "127.0.0.1");
    assert_eq!(m.client_proto, "ESMTP");
    assert_eq!(m.helo.as_deref(), Some("client.test"));
    assert_eq!(m.sender(), "sender@example.net");
    assert_eq!(m.recipients(), vec!["a@example.org".to_string()]);
    assert!(
        m.sink_received
            .starts_with("Received: from client.test ([127.0.0.1])\n\tby sink.test.example")
    );
    // swaks ends the data with CRLF . CRLF; the sink stores lines with LF.
    let mut sent = data.clone();
    sent.extend_from_slice(b"\r\n");
    assert_same("sink message", &m.message, &crlf_to_lf(&sent));
    assert_same("sink message (CRLF)", &m.message_crlf(), &sent);
}

#[test]
fn smtp_sink_lists_only_completed_transactions() {
    let sink = SmtpSink::start();
    let mut c = RawClient::connect(sink.addr).expect("connect");
    assert_eq!(c.read_reply().expect("greeting").code, 220);
    let ehlo = c.command("EHLO raw.test").expect("EHLO");
    assert_eq!(ehlo.code, 250);
    assert!(
        ehlo.lines.len() > 1 && ehlo.lines.iter().any(|l| l == "PIPELINING"),
        "{ehlo:?}"
    );
    assert!(ehlo.raw.ends_with(b"\r\n") && ehlo.raw.starts_with(b"250-sink.test.example\r\n"));
    assert_eq!(
        c.command("MAIL FROM:<s@example.net> BODY=8BITMIME")
            .expect("MAIL")
            .code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<one@example.org>").expect("RCPT").code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<two@example.org>").expect("RCPT").code,
        250
    );
    assert_eq!(c.command("DATA").expect("DATA").code, 354);
    c.send(b"Subject: half\r\n\r\nfirst half\r\n")
        .expect("send");
    // The transaction is open: its dump file exists but must not be listed.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sink.messages().is_empty(),
        "an unfinished transaction was listed"
    );
    c.send(b"..second half\r\n.\r\n").expect("send");
    assert_eq!(c.read_reply().expect("end of data").code, 250);
    let m = &sink.wait_for_messages(1, WAIT)[0];
    assert_eq!(m.mail_args, "<s@example.net> BODY=8BITMIME");
    assert_eq!(
        m.recipients(),
        vec!["one@example.org".to_string(), "two@example.org".to_string()]
    );
    assert_same(
        "message",
        &m.message,
        b"Subject: half\n\nfirst half\n.second half\n",
    );

    // An aborted transaction leaves nothing behind.
    assert_eq!(
        c.command("MAIL FROM:<s@example.net>").expect("MAIL").code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<one@example.org>").expect("RCPT").code,
        250
    );
    assert_eq!(c.command("RSET").expect("RSET").code, 250);
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);
    assert!(c.is_closed());
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn postfix_backend_delivers_byte_for_byte_and_rejects_unknown_users() {
    let backend = Postfix::backend(&["a", "b"]);
    let data = tricky_message("backend-1", 3000);
    let out = swaks_send(
        backend.addr,
        "sender@example.net",
        "a@example.org",
        &data,
        &[],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));
    let out = swaks_send(
        backend.addr,
        "",
        "b@example.org",
        b"Subject: null sender\r\n\r\nbody",
        &[],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));

    let messages = backend.wait_for_messages(2, WAIT);
    assert_eq!(messages.len(), 2, "{messages:?}");
    let a = messages
        .iter()
        .find(|m| m.user == "a")
        .expect("delivery to a");
    assert_eq!(a.return_path, "sender@example.net");
    assert_eq!(a.delivered_to, "a@example.org");
    let mut sent = data.clone();
    sent.extend_from_slice(b"\r\n");
    assert_same("backend message", &a.message, &crlf_to_lf(&sent));
    let headers = String::from_utf8_lossy(&a.postfix_headers);
    assert!(
        headers.contains("by backend.test.example (Postfix)"),
        "{headers}"
    );
    let b = messages
        .iter()
        .find(|m| m.user == "b")
        .expect("delivery to b");
    assert_eq!(b.return_path, "");
    assert_same(
        "backend message",
        &b.message,
        b"Subject: null sender\n\nbody\n",
    );

    // Unknown mailbox and foreign domain: refused at RCPT.
    let mut c = RawClient::connect(backend.addr).expect("connect");
    assert_eq!(c.read_reply().expect("greeting").code, 220);
    assert_eq!(c.command("EHLO raw.test").expect("EHLO").code, 250);
    assert_eq!(
        c.command("MAIL FROM:<s@example.net>").expect("MAIL").code,
        250
    );
    let unknown = c
        .command("RCPT TO:<nobody-here@example.org>")
        .expect("RCPT");
    assert_eq!(unknown.code, 550, "{unknown:?}");
    assert!(unknown.text().starts_with("5.1.1 "), "{unknown:?}");
    let relay = c.command("RCPT TO:<x@elsewhere.example>").expect("RCPT");
    assert_eq!(relay.code, 554, "{relay:?}");
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);

    let out = swaks_send(
        backend.addr,
        "s@example.net",
        "zz@example.org",
        b"Subject: x\r\n\r\ny",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("<** 550 5.1.1"),
        "{}",
        describe(&out)
    );
    assert_eq!(backend.messages().len(), 2);
}

#[test]
fn postfix_backend_refuses_bare_lf_from_loopback() {
    let backend = Postfix::backend(&["a"]);
    let mut c = RawClient::connect(backend.addr).expect("connect");
    assert_eq!(c.read_reply().expect("greeting").code, 220);
    assert_eq!(c.command("EHLO raw.test").expect("EHLO").code, 250);
    assert_eq!(
        c.command("MAIL FROM:<s@example.net>").expect("MAIL").code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<a@example.org>").expect("RCPT").code,
        250
    );
    assert_eq!(c.command("DATA").expect("DATA").code, 354);
    c.send(b"Subject: smuggle\r\n\r\nbefore\n.\r\nMAIL FROM:<evil@example.net>\r\n.\r\n")
        .expect("send");
    let reply = c.read_reply().expect("reply to bare LF");
    assert_eq!(
        reply.code, 550,
        "Postfix accepted a bare LF from loopback: {reply:?}"
    );
    assert!(reply.text().contains("bare <LF>"), "{reply:?}");
    // The smuggled MAIL command was message content, not a command: the next reply is NOOP's.
    let noop = c.command("NOOP").expect("NOOP");
    assert_eq!(
        (noop.code, noop.text().as_str()),
        (250, "2.0.0 Ok"),
        "{noop:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(backend.messages().is_empty());
}

#[test]
fn postfix_relay_forwards_to_the_sink() {
    let sink = SmtpSink::start();
    let relay = Postfix::relay(sink.addr);
    let data = tricky_message("relay-1", 998);
    let out = swaks_send(
        relay.addr,
        "sender@example.net",
        "user@example.org",
        &data,
        &[],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));

    let m = &sink.wait_for_messages(1, WAIT)[0];
    assert_eq!(m.helo.as_deref(), Some("relay.test.example"));
    assert_eq!(m.sender(), "sender@example.net");
    assert_eq!(m.recipients(), vec!["user@example.org".to_string()]);
    // Postfix puts its Received header in front of the message and changes nothing else.
    let mut sent = data.clone();
    sent.extend_from_slice(b"\r\n");
    let want = crlf_to_lf(&sent);
    assert!(
        m.message.starts_with(b"Received: from "),
        "{:?}",
        String::from_utf8_lossy(&m.message)
    );
    assert_same(
        "relayed message",
        &m.message[m.message.len() - want.len()..],
        &want,
    );
}

#[test]
fn smtp_source_load_reaches_the_sink() {
    let sink = SmtpSink::start();
    let addr = sink.addr.to_string();
    let out = smtp_source(&[
        "-s",
        "3",
        "-m",
        "12",
        "-l",
        "2048",
        "-f",
        "load@example.net",
        "-t",
        "user@example.org",
        &addr,
    ]);
    assert!(out.status.success(), "smtp-source: {}", describe(&out));
    let messages = sink.wait_for_messages(12, WAIT);
    assert_eq!(messages.len(), 12);
    for m in &messages {
        assert_eq!(m.sender(), "load@example.net");
        assert_eq!(m.recipients(), vec!["user@example.org".to_string()]);
        assert!(m.message.len() >= 2048, "{} bytes", m.message.len());
    }
}

#[test]
fn free_ports_are_distinct_and_waiting_does_not_connect() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b);
    let addr = free_addr();
    assert!(!wait_for_port(addr, Duration::from_millis(100)));
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    assert!(wait_for_port(addr, Duration::from_secs(1)));
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(
        listener.accept().is_err(),
        "wait_for_port opened a connection"
    );
}

#[test]
fn raw_client_binds_distinct_loopback_addresses() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let local: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let _client = RawClient::connect_from(local, addr).expect("connect from 127.0.0.2");
    let (_, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip(), local);
}

/// Without name servers of its own, a test gateway's resolver is a closed loopback port, so
/// direct delivery never sends a query (or mail) off the host.
#[test]
fn ravelin_config_keeps_dns_on_loopback_by_default() {
    let text = RavelinConfig::inbound(free_addr()).render(std::path::Path::new("/tmp/spool"));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(doc["dns"]["nameservers"][0].as_str(), Some("127.0.0.1:9"));
}

#[test]
fn ravelin_config_renders_the_contract_keys_as_valid_toml() {
    let backend = free_addr();
    let config = RavelinConfig::inbound(backend)
        .listener("sub", "submission", "require")
        .domains(&["example.org", "example.com"])
        .set("delivery", "max_attempts = 3")
        .set("dns", "nameservers = [\"127.0.0.1:5353\"]")
        .extra("[outbound]\ntrusted_networks = [\"127.0.0.1/32\"]");
    let spool = std::path::Path::new("/tmp/spool \"quoted\"");
    let text = config.render(spool);
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(doc["hostname"].as_str(), Some("mx.test.example"));
    let listen = doc["listen"].as_array().expect("[[listen]]");
    assert_eq!(listen.len(), 2);
    assert_eq!(listen[0]["name"].as_str(), Some("mx"));
    assert_eq!(listen[0]["kind"].as_str(), Some("inbound"));
    assert_eq!(listen[0]["tls"].as_str(), Some("offer"));
    assert_eq!(listen[1]["tls"].as_str(), Some("require"));
    let mx: std::net::SocketAddr = listen[0]["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("addr");
    assert!(mx.ip().is_loopback());
    assert_eq!(
        doc["inbound"]["backend"][0].as_str(),
        Some(format!("smtp://{backend}").as_str())
    );
    assert_eq!(doc["inbound"]["domains"].as_array().map(Vec::len), Some(2));
    assert_eq!(doc["spool"]["path"].as_str(), Some("/tmp/spool \"quoted\""));
    assert_eq!(doc["delivery"]["retry_initial"].as_str(), Some("1s"));
    assert_eq!(doc["delivery"]["max_attempts"].as_integer(), Some(3));
    assert_eq!(
        doc["dns"]["nameservers"][0].as_str(),
        Some("127.0.0.1:5353")
    );
    assert_eq!(
        doc["outbound"]["trusted_networks"][0].as_str(),
        Some("127.0.0.1/32")
    );
    assert_eq!(doc["log"]["format"].as_str(), Some("json"));
    assert_eq!(
        doc["server"].get("user").and_then(|u| u.as_str()) == Some("nobody"),
        is_root()
    );
}
