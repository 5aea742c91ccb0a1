//! End-to-end proofs of recipient validation on an inbound listener of `ravelin serve`: the
//! recipient file (known, unknown, wildcard, reload), an LDAP directory (a real slapd with
//! `mail` and Active Directory style `proxyAddresses`), the callout to a real Postfix backend
//! with its own recipient map (and its cache, proved by stopping the backend; shared by two
//! nodes through a real redis-server), and the harvest defence (tarpit, then a ban that
//! `ravelin ban list` shows).
//!
//! Clients that must be counted for abuse come from 127.0.0.x addresses other than 127.0.0.1,
//! with `[bans] exempt = []` (loopback is exempt by default). The tests need root (Postfix
//! instances, the privilege drop) and the peers of scripts/install-test-deps.sh (swaks,
//! Postfix and smtp-sink, slapd and ldap-utils).

mod support;

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// A session from `from`, greeted, past EHLO and MAIL FROM.
fn transaction_from(from: &str, addr: SocketAddr) -> RawClient {
    let mut c = RawClient::connect_from(ip(from), addr).expect("connect");
    assert_eq!(c.read_reply().expect("greeting").code, 220);
    assert_eq!(c.command("EHLO client.test").expect("EHLO").code, 250);
    assert_eq!(
        c.command("MAIL FROM:<sender@example.net>")
            .expect("MAIL")
            .code,
        250
    );
    c
}

/// The reply to `RCPT TO:<to>`, as "CODE TEXT".
fn rcpt(c: &mut RawClient, to: &str) -> String {
    let r = c.command(&format!("RCPT TO:<{to}>")).expect("RCPT");
    format!("{} {}", r.code, r.text())
}

/// The directory of the configuration file (relative paths in it start there), given the
/// spool directory [`Ravelin::start_with`] passes to its preparation.
fn config_dir(spool: &Path) -> &Path {
    spool
        .parent()
        .expect("the spool is inside the gateway's directory")
}

fn unknown(to: &str) -> String {
    format!("550 5.1.1 <{to}>: Recipient address rejected: User unknown")
}

fn assert_tempfail(reply: &str, to: &str) {
    assert!(
        reply.starts_with(&format!(
            "450 4.1.1 <{to}>: Recipient address rejected: unverified address"
        )),
        "{to}: {reply}"
    );
}

/// A gateway in front of `backend` validating recipients with `sources` (TOML array text)
/// and `extra` TOML.
fn config(backend: SocketAddr, sources: &str, extra: &str) -> RavelinConfig {
    RavelinConfig::inbound(backend)
        .domains(&["example.org", "sales.example.org"])
        .set("recipients", &format!("sources = {sources}"))
        .extra(extra)
}

/// Known recipients of the file pass and reach the sink, unknown ones get Postfix's 550 5.1.1
/// (logged with the source), `@domain` accepts a whole domain, case does not matter, and a
/// change of the file applies without a restart.
#[test]
fn file_source_accepts_listed_rejects_unknown_and_reloads() {
    let sink = SmtpSink::start();
    let cfg = config(sink.addr, "[\"file\"]", "")
        .set("recipients", "file = \"recipients\"")
        .set("recipients", "harvest_threshold = 50");
    let ravelin = Ravelin::start_with(cfg, |spool| {
        fs::write(
            config_dir(spool).join("recipients"),
            "# mailboxes\nalice@example.org\nPostmaster@Example.org OK\n@sales.example.org\n",
        )
        .expect("write the recipient file");
    });
    let addr = ravelin.addr();

    let out = swaks_send(
        addr,
        "sender@example.net",
        "Alice@EXAMPLE.org",
        b"Subject: known\r\n\r\nhello\r\n",
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let got = sink.wait_for_messages(1, WAIT);
    assert_eq!(got[0].recipients(), ["Alice@example.org"]);

    let mut c = transaction_from("127.0.0.1", addr);
    assert_eq!(
        rcpt(&mut c, "nobody@example.org"),
        unknown("nobody@example.org")
    );
    assert!(rcpt(&mut c, "postmaster@example.org").starts_with("250"));
    assert!(rcpt(&mut c, "anyone@Sales.example.org").starts_with("250"));
    assert_eq!(rcpt(&mut c, "bob@example.org"), unknown("bob@example.org"));
    let event = ravelin.wait_for_event("recipient_unknown", WAIT, |e| {
        e["to"] == "nobody@example.org"
    });
    assert_eq!(event["source"], "file");
    assert_eq!(event["client"], "127.0.0.1");
    assert_eq!(event["decision"], "reject");

    // Bob is added: the file is read again on its next use after the change.
    fs::write(
        ravelin.dir().join("recipients"),
        "alice@example.org\nbob@example.org\n",
    )
    .expect("rewrite the recipient file");
    let reply = wait_until("bob to be accepted", WAIT, || {
        let r = rcpt(&mut c, "bob@example.org");
        r.starts_with("250").then_some(r)
    });
    assert!(reply.starts_with("250"), "{reply}");
    ravelin.wait_for_event("recipients_file_reloaded", WAIT, |e| e["entries"] == 2);
    // The wildcard is gone with the old contents.
    assert_eq!(
        rcpt(&mut c, "anyone@sales.example.org"),
        unknown("anyone@sales.example.org")
    );
    // A broken file keeps the last good contents.
    fs::write(ravelin.dir().join("recipients"), "not an address\n").expect("break the file");
    wait_until("the broken file to be noticed", WAIT, || {
        assert!(rcpt(&mut c, "bob@example.org").starts_with("250"));
        (!ravelin.events("recipients_file_error").is_empty()).then_some(())
    });
    assert!(rcpt(&mut c, "bob@example.org").starts_with("250"));
}

/// After `harvest_threshold` unknown recipients each further RCPT waits longer, and at the
/// `[bans.harvesting]` threshold the client is banned: the session closes, the next
/// connection is refused and `ravelin ban list` shows the ban with its reason.
#[test]
fn harvesting_is_tarpitted_then_banned() {
    let sink = SmtpSink::start();
    let cfg = config(
        sink.addr,
        "[\"file\"]",
        "[bans.harvesting]\nthreshold = 5\ndelay = \"0s\"",
    )
    .set("recipients", "file = \"recipients\"")
    .set("recipients", "harvest_threshold = 2")
    .set("recipients", "harvest_delay = \"1s\"")
    .set("bans", "exempt = []")
    // The session's own error delay starts later, so the delays measured are the tarpit's.
    .set("limits", "soft_errors = 8")
    .set("limits", "hard_errors = 20");
    let ravelin = Ravelin::start_with(cfg, |spool| {
        fs::write(config_dir(spool).join("recipients"), "alice@example.org\n").expect("write");
    });
    let addr = ravelin.addr();
    let mut c = transaction_from("127.0.0.9", addr);
    let mut took = Vec::new();
    for n in 1..=4 {
        let to = format!("guess{n}@example.org");
        let start = Instant::now();
        assert_eq!(rcpt(&mut c, &to), unknown(&to));
        took.push(start.elapsed());
    }
    assert!(took[0] < Duration::from_millis(900), "{took:?}");
    assert!(took[1] < Duration::from_millis(900), "{took:?}");
    assert!(took[2] >= Duration::from_secs(1), "{took:?}");
    assert!(took[3] >= Duration::from_secs(2), "{took:?}");
    // A known recipient is delayed too once the session is suspect.
    let start = Instant::now();
    assert!(rcpt(&mut c, "alice@example.org").starts_with("250"));
    assert!(start.elapsed() >= Duration::from_secs(3));
    ravelin.wait_for_event("tarpit", WAIT, |e| e["reason"] == "unknown recipients");
    // The fifth unknown recipient bans.
    assert_eq!(
        rcpt(&mut c, "guess5@example.org"),
        unknown("guess5@example.org")
    );
    assert!(
        c.is_closed(),
        "the banning RCPT closes the session; log:\n{}",
        ravelin.log_text()
    );
    let mut again = RawClient::connect_from(ip("127.0.0.9"), addr).expect("connect");
    let reply = again.read_reply().expect("a reply");
    assert_eq!(
        (reply.code, reply.text()),
        (554, "5.7.1 Access denied".into())
    );
    let out = ravelin.command(&["ban", "list", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let bans: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["target"], "127.0.0.9/32");
    assert_eq!(bans[0]["reason"], "harvesting");
    // Another client is not affected.
    let mut other = transaction_from("127.0.0.10", addr);
    assert!(rcpt(&mut other, "alice@example.org").starts_with("250"));
}

/// The callout asks a real Postfix backend, whose own recipient map rejects unknown users at
/// RCPT: known accepted (and the message delivered there), unknown refused with 550 5.1.1.
/// With the backend stopped, both answers come from the cache, and an address never asked
/// before gets 450 4.1.1, never 550 and never an accept.
#[test]
fn callout_to_postfix_with_cache() {
    let mut postfix = Postfix::backend(&["alice"]);
    let ravelin = Ravelin::start(config(postfix.addr, "[\"callout\"]", ""));
    let addr = ravelin.addr();

    let mut c = transaction_from("127.0.0.1", addr);
    assert!(rcpt(&mut c, "alice@example.org").starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "nobody@example.org"),
        unknown("nobody@example.org")
    );
    let probe = ravelin.wait_for_event("callout", WAIT, |e| e["to"] == "nobody@example.org");
    assert_eq!(probe["result"], "unknown");
    assert_eq!(probe["cached"], false);
    assert!(
        probe["reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("550")),
        "{probe}"
    );
    let event = ravelin.wait_for_event("recipient_unknown", WAIT, |e| {
        e["to"] == "nobody@example.org"
    });
    assert_eq!(event["source"], "callout");
    drop(c);

    let out = swaks_send(
        addr,
        "sender@example.net",
        "alice@example.org",
        b"Subject: via callout\r\n\r\nhello\r\n",
        &[],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let got = postfix.wait_for_messages(1, WAIT);
    assert_eq!(got[0].user, "alice");

    postfix.stop();
    let cached = || {
        ravelin
            .events("callout")
            .into_iter()
            .filter(|e| e["cached"] == true)
            .count()
    };
    let before = cached();
    let mut c = transaction_from("127.0.0.1", addr);
    assert!(rcpt(&mut c, "alice@example.org").starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "nobody@example.org"),
        unknown("nobody@example.org")
    );
    assert_eq!(cached() - before, 2, "{:?}", ravelin.events("callout"));
    assert_tempfail(&rcpt(&mut c, "carol@example.org"), "carol@example.org");
    let event = ravelin.wait_for_event("recipient_unverified", WAIT, |e| {
        e["to"] == "carol@example.org"
    });
    assert_eq!(event["source"], "callout");
}

/// A real slapd holding a person with `mail` and one with Active Directory style
/// `proxyAddresses` (`SMTP:` primary, `smtp:` alias, a `sip:` entry that is no mail address),
/// searched by a service account whose password is in a 0600 file: each address is known or
/// unknown as the directory says, case aside; with slapd gone the answer is 450 4.1.1; the
/// service password never reaches the log.
#[test]
fn ldap_source_finds_mail_and_proxy_addresses() {
    let service_password = "svc-recipients-5521";
    let tls_name = "127.0.0.1";
    let pki = ravelin_tls::testing::TestPki::new(tls_name).expect("LDAP test PKI");
    let mut slapd = Slapd::start_with(
        &[
            ("ravelin", "ravelin@example.org", service_password),
            ("dave", "dave@example.org", "dave-pw-1"),
        ],
        &pki,
        tls_name,
        &format!(
            "\ndn: uid=erin,ou=people,{LDAP_SUFFIX}\nobjectClass: inetOrgPerson\n\
             objectClass: ravelinTestMailRecipient\nuid: erin\ncn: erin\nsn: erin\n\
             proxyAddresses: SMTP:erin.primary@example.org\n\
             proxyAddresses: smtp:erin.alias@example.org\n\
             proxyAddresses: sip:erin.sip@example.org\n"
        ),
    );
    let sink = SmtpSink::start();
    let extra = format!(
        "[recipients.ldap]\nurl = {}\nbase = \"{LDAP_SUFFIX}\"\nbind_dn = \"uid=ravelin,ou=people,{LDAP_SUFFIX}\"\nbind_password_file = \"ldap-password\"\ntimeout = \"2s\"\n",
        toml_string(&slapd.url)
    );
    let ravelin = Ravelin::start_with(config(sink.addr, "[\"ldap\"]", &extra), |spool| {
        let file = config_dir(spool).join("ldap-password");
        fs::write(&file, format!("{service_password}\n")).expect("write the password file");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
    });
    let addr = ravelin.addr();

    let mut c = transaction_from("127.0.0.1", addr);
    for known in [
        "dave@example.org",
        "erin.primary@example.org",
        "Erin.Alias@example.org",
    ] {
        let reply = rcpt(&mut c, known);
        assert!(
            reply.starts_with("250"),
            "{known}: {reply}\nslapd: {}",
            slapd.stderr()
        );
    }
    for unknown_address in [
        "erin.sip@example.org",
        "nobody@example.org",
        "erin@example.org",
    ] {
        assert_eq!(rcpt(&mut c, unknown_address), unknown(unknown_address));
    }
    let event = ravelin.wait_for_event("recipient_unknown", WAIT, |e| {
        e["to"] == "erin.sip@example.org"
    });
    assert_eq!(event["source"], "ldap");
    // Filter metacharacters are escaped, not interpreted.
    assert_eq!(rcpt(&mut c, "*@example.org"), unknown("*@example.org"));

    slapd.stop();
    assert_tempfail(&rcpt(&mut c, "dave@example.org"), "dave@example.org");
    let event = ravelin.wait_for_event("recipient_unverified", WAIT, |e| {
        e["to"] == "dave@example.org"
    });
    assert_eq!(event["source"], "ldap");
    assert!(
        !ravelin.log_text().contains(service_password),
        "the service password is in the log"
    );
}

/// The callout cache lives in the state store: with Redis, an answer one node got from the
/// backend is used by another node, which never reaches the (by then stopped) backend.
#[test]
fn callout_cache_is_shared_through_redis() {
    let redis = RedisServer::start();
    let mut postfix = Postfix::backend(&["alice"]);
    let node = || {
        Ravelin::start(
            config(postfix.addr, "[\"callout\"]", "")
                .set("state", &format!("store = {}", toml_string(&redis.url(2)))),
        )
    };
    let (first, second) = (node(), node());
    let mut c = transaction_from("127.0.0.1", first.addr());
    assert!(rcpt(&mut c, "alice@example.org").starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "nobody@example.org"),
        unknown("nobody@example.org")
    );
    postfix.stop();
    let mut c = transaction_from("127.0.0.1", second.addr());
    assert!(rcpt(&mut c, "alice@example.org").starts_with("250"));
    assert_eq!(
        rcpt(&mut c, "nobody@example.org"),
        unknown("nobody@example.org")
    );
    let answers = second.events("callout");
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers.iter().all(|e| e["cached"] == true), "{answers:?}");
    assert_tempfail(&rcpt(&mut c, "carol@example.org"), "carol@example.org");
}
