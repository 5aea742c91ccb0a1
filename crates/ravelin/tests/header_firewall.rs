//! End-to-end proofs of the header processing on an inbound listener: `ravelin serve` between
//! swaks and smtp-sink on loopback. A message that claims to come from inside the
//! organisation (Exchange organisation fields, an Authentication-Results with the gateway's
//! authserv-id) arrives without those fields, everything else byte for byte; a header the
//! gateway cannot parse unambiguously, or one over the size limits, is refused at the end of
//! DATA and the session goes on.
//!
//! Fixtures: crates/gateway/tests/fixtures/headers/ (see its README). Settings: none from the
//! environment; needs the peers of scripts/install-test-deps.sh and root, as CI has.

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(20);
const HOSTNAME: &str = "mx.test.example";

fn fixture(name: &str) -> Vec<u8> {
    let path = repo_root()
        .join("crates/gateway/tests/fixtures/headers")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn lines(name: &str) -> Vec<String> {
    String::from_utf8(fixture(name))
        .expect("UTF-8 list")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// The header fields (unfolded names only) of an LF message.
fn field_names(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    text.split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .collect()
}

/// swaks' transcript of the reply to the end of the data.
fn data_reply(out: &std::process::Output) -> String {
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = transcript
        .lines()
        .skip_while(|l| !l.starts_with(" -> ."))
        .skip(1);
    lines.next().unwrap_or_default().to_string()
}

#[test]
fn inbound_mail_loses_what_only_the_inside_may_set() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(RavelinConfig::inbound(sink.addr));
    // The fixture's Authentication-Results claim mx1.example.org; the gateway here is
    // HOSTNAME, so that is the id they must claim.
    let message = String::from_utf8(fixture("inbound-forged.eml"))
        .unwrap()
        .replace("mx1.example.org", HOSTNAME)
        .replace("MX1.example.org", &HOSTNAME.to_ascii_uppercase());
    let out = swaks_send(
        ravelin.addr(),
        "it@example.net",
        "alice@example.org",
        message.as_bytes(),
        &[],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));

    let delivered = sink.wait_for_messages(1, WAIT).remove(0).message;
    let names = field_names(&delivered);
    assert_eq!(names[0], "Received", "our trace comes first: {names:?}");
    for forbidden in lines("inbound-forged.forbidden") {
        assert!(
            !names.iter().any(|n| n.eq_ignore_ascii_case(&forbidden)),
            "{forbidden} reached the backend: {names:?}"
        );
    }
    let text = String::from_utf8_lossy(&delivered).into_owned();
    assert_eq!(
        text.matches("Authentication-Results:").count(),
        1,
        "only the attacker's own results stay:\n{text}"
    );
    assert!(text.contains("Authentication-Results: mail.attacker.example;"));
    // Everything else arrives as sent (LF here: smtp-sink drops the CRs).
    let mut kept = String::new();
    let mut dropping = false;
    for line in message.lines() {
        if !line.starts_with([' ', '\t']) {
            dropping = line.to_ascii_lowercase().starts_with("x-ms-exchange")
                || (line.starts_with("Authentication-Results")
                    && line.to_ascii_lowercase().contains(HOSTNAME));
        }
        if !dropping {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    assert!(
        text.trim_end().ends_with(kept.trim_end()),
        "got:\n{text}\nwant the end:\n{kept}"
    );
    assert!(!text.contains("dkim=pass"), "{text}");

    let logged = ravelin.events("header_firewall");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0]["direction"], "inbound");
    let removed = logged[0]["removed"].as_str().unwrap_or_default();
    assert_eq!(
        removed.matches("Authentication-Results").count(),
        2,
        "{removed}"
    );
}

#[test]
fn ambiguous_and_oversized_headers_are_refused() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .set("limits", "header_size = 2000")
            .set("limits", "header_fields = 10"),
    );
    let big = format!(
        "Subject: big\nX-Pad-1: {x}\nX-Pad-2: {x}\nX-Pad-3: {x}\n\nbody\n",
        x = "x".repeat(900)
    );
    let cases: [(&str, String, &str); 4] = [
        (
            "a white-space line inside the header",
            "Subject: x\n \nX-MS-Exchange-Organization-SCL: -1\n\nbody\n".into(),
            "550 5.6.0",
        ),
        (
            "a line that is not a field",
            "Subject: x\nnot a header field\n\nbody\n".into(),
            "550 5.6.0",
        ),
        ("a header over header_size", big, "552 5.3.4"),
        (
            "more fields than header_fields",
            format!("{}\nbody\n", "X-A: 1\n".repeat(11)),
            "552 5.3.4",
        ),
    ];
    for (what, message, want) in &cases {
        let out = swaks_send(
            ravelin.addr(),
            "a@example.net",
            "b@example.org",
            message.as_bytes(),
            &[],
        );
        let reply = data_reply(&out);
        assert!(
            reply.contains(want),
            "{what}: {reply:?}\n{}",
            describe(&out)
        );
    }
    // The gateway still takes a good message afterwards, and nothing refused was delivered.
    let out = swaks_send(
        ravelin.addr(),
        "a@example.net",
        "b@example.org",
        b"Subject: fine\n\nbody\n",
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let delivered = sink.wait_for_messages(1, WAIT);
    assert!(String::from_utf8_lossy(&delivered[0].message).contains("Subject: fine"));
    assert_eq!(
        ravelin.events("queued").len(),
        1,
        "a refused message was queued"
    );
    let refused: Vec<String> = ravelin
        .events("data")
        .iter()
        .filter(|e| e["decision"] == "reject")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(
        refused[0].contains("line 2 is only white space"),
        "{refused:?}"
    );
}

/// Whether `text` holds an address of a private, loopback, link-local, CGNAT or unique-local
/// range (IPv4 dotted quads and IPv6 words), which mail leaving the organisation must not.
fn private_addresses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':')) {
        let word = word.trim_matches(|c| c == '.' || c == ':');
        if let Ok(v4) = word.parse::<std::net::Ipv4Addr>() {
            let [a, b, ..] = v4.octets();
            if v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
            {
                found.push(word.to_string());
            }
        } else if let Ok(v6) = word.parse::<std::net::Ipv6Addr>() {
            let first = v6.segments()[0];
            if v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
                found.push(word.to_string());
            }
        }
    }
    found
}

/// The outbound proof: each fixture (Exchange 2010 to 2019 and Postfix header blocks, as those
/// servers write them) goes from the mail server through the `relay` listener to the smart
/// host (smtp-sink); every header delivered is scanned and holds none of the fixture's leaks
/// (internal host names, addresses, tenant ids) and no private address at all, keeps the
/// fields the recipient needs, and — unless the message came from outside and was forwarded —
/// carries exactly one Received field, ours, naming only our host.
#[test]
fn outbound_mail_reveals_nothing_of_the_inside() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .listener("relay", "relay", "off")
            .set("outbound", "trusted_networks = [\"127.0.0.1/32\"]")
            .set(
                "outbound",
                &format!(
                    "smart_host = {}",
                    toml_string(&format!("smtp://{}", sink.addr))
                ),
            )
            .set("outbound", "smart_host_tls = \"none\""),
    );
    let fixtures = [
        "exchange2010",
        "exchange2013",
        "exchange2016",
        "exchange2019",
        "postfix",
        "postfix-forwarded",
    ];
    for (n, name) in fixtures.iter().enumerate() {
        let message = lf_to_crlf(&fixture(&format!("{name}.eml")));
        let out = swaks_send(
            ravelin.listener("relay"),
            "alice@example.org",
            "bob@partner.example",
            &message,
            &[],
        );
        assert!(out.status.success(), "{name}: swaks: {}", describe(&out));
        let delivered = sink.wait_for_messages(n + 1, WAIT);
        let message = &delivered[n].message;
        let header = String::from_utf8_lossy(message)
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .to_string();
        let lower = header.to_ascii_lowercase();
        for leak in lines(&format!("{name}.leaks")) {
            assert!(
                !lower.contains(&leak.to_ascii_lowercase()),
                "{name}: {leak:?} was delivered in\n{header}"
            );
        }
        let private = private_addresses(&header);
        assert!(
            private.is_empty(),
            "{name}: private addresses {private:?} in\n{header}"
        );
        let names = field_names(message);
        for field in lines(&format!("{name}.kept")) {
            assert!(
                names.contains(&field),
                "{name}: {field} was removed: {names:?}"
            );
        }
        let received: Vec<&str> = header
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("received:"))
            .collect();
        assert!(
            received[0].contains(&format!("by {HOSTNAME}")),
            "{name}: ours is not first: {received:?}"
        );
        if *name != "postfix-forwarded" {
            assert_eq!(received.len(), 1, "{name}: {received:?}");
        }
        eprintln!(
            "{name}: {} header lines delivered, no leak",
            header.lines().count()
        );
    }
}
