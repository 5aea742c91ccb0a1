//! End-to-end proofs of outbound mail from users and trusted networks: `submission` (587,
//! STARTTLS required), `submissions` (465, implicit TLS) and `relay` listeners of
//! `ravelin serve`, with swaks and a raw socket as clients, smtp-sink as the smart host, the
//! users file maintained by `ravelin user`, and a private slapd for LDAP binds — all on
//! loopback.
//!
//! What each test proves is written above it; every assertion is one that a broken gateway
//! fails. Settings: none from the environment. The tests need root (smtp-sink, the privilege
//! drop) and the peers installed by scripts/install-test-deps.sh (swaks, Postfix's smtp-sink,
//! slapd and ldap-utils).

mod support;

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use std::time::Duration;

use support::*;

/// How long a message may take from the gateway to its next hop.
const WAIT: Duration = Duration::from_secs(20);
const HOSTNAME: &str = "mx.test.example";
const ALICE: &str = "alice@example.org";
/// Distinctive, so a search of the log for it cannot match anything else.
const ALICE_PASSWORD: &str = "Tr0ub4dor&3-alice";

// ---------------------------------------------------------------------------------------------
// Helpers

/// `ravelin user add LOGIN --config CONFIG` with the password on standard input.
fn add_user(config: &Path, login: &str, password: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ravelin"));
    cmd.args(["user", "add", login, "--config"]).arg(config);
    run_with_input(
        cmd,
        Some(format!("{password}\n").as_bytes()),
        Duration::from_secs(60),
    )
}

/// The sender map of most tests: alice may also send as sales@ and from example.net.
const SENDER_MAP: &str =
    "sender_map = { \"alice@example.org\" = [\"sales@example.org\", \"@example.net\"] }";

/// A gateway configuration with `sub` (submission), `smtps` (submissions) and `relay`
/// listeners besides the inbound `mx`; [tls] with `cert.pem` / `key.pem` next to the config
/// (written by [`start`]); `users_file = "users"` and `sender_map`; outbound mail to
/// `smart_host`; 127.0.0.2 trusted. `extra` is more TOML (whole tables).
fn outbound_config(smart_host: SocketAddr, sender_map: &str, extra: &str) -> RavelinConfig {
    RavelinConfig::inbound(smart_host)
        .listener("sub", "submission", "require")
        .listener("smtps", "submissions", "implicit")
        .listener("relay", "relay", "offer")
        .set("outbound", "trusted_networks = [\"127.0.0.2/32\"]")
        .set(
            "outbound",
            &format!(
                "smart_host = {}",
                toml_string(&format!("smtp://{smart_host}"))
            ),
        )
        .set("outbound", "smart_host_tls = \"may\"")
        .set("auth", "users_file = \"users\"")
        .set("auth", sender_map)
        .extra(&format!(
            "[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n{extra}"
        ))
}

/// Starts the gateway after writing its certificate (a test CA's) and a users file with
/// alice, made by `ravelin user add` as an operator would.
fn start(config: RavelinConfig) -> Ravelin {
    Ravelin::start_with(config, |spool| {
        let dir = spool.parent().expect("spool parent");
        ravelin_tls::testing::TestPki::new(HOSTNAME)
            .expect("test PKI")
            .write_to(dir)
            .expect("write the test PKI");
        let out = add_user(&dir.join("ravelin.toml"), ALICE, ALICE_PASSWORD);
        assert!(out.status.success(), "user add: {}", describe(&out));
    })
}

fn gateway(smart_host: SocketAddr) -> Ravelin {
    start(outbound_config(smart_host, SENDER_MAP, ""))
}

/// swaks through `server` (`tls`: `--tls` for STARTTLS, `--tlsc` for implicit TLS) as `user`
/// with `mechanism`.
fn swaks_auth(
    server: SocketAddr,
    tls: &str,
    mechanism: &str,
    user: &str,
    password: &str,
    from: &str,
    to: &str,
) -> (Output, String) {
    let args = [
        tls,
        "--auth",
        mechanism,
        "--auth-user",
        user,
        "--auth-password",
        password,
    ];
    let subject = format!("Subject: from {from} by {mechanism}\r\n\r\nbody\r\n");
    let out = swaks_send(server, from, to, subject.as_bytes(), &args);
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, transcript)
}

/// alice, with her password, by STARTTLS and AUTH PLAIN.
fn alice_sends(server: SocketAddr, from: &str, to: &str) -> (Output, String) {
    swaks_auth(server, "--tls", "PLAIN", ALICE, ALICE_PASSWORD, from, to)
}

/// Asserts that the log never contains `secret`.
#[track_caller]
fn assert_not_logged(ravelin: &Ravelin, secret: &str) {
    let log = ravelin.log_text();
    assert!(!log.contains(secret), "the log contains a password:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// Submission

/// A user authenticates with AUTH PLAIN and with AUTH LOGIN after STARTTLS on the submission
/// listener, sends as itself and as an address the sender map gives it, to other domains;
/// both messages reach the smart host with their envelopes, the log has `event=auth` with the
/// login name and mechanism, the queued messages are outbound, and the password is nowhere in
/// the log.
#[test]
fn submission_with_starttls_and_auth_plain_or_login_reaches_the_smart_host() {
    let sink = SmtpSink::start();
    let ravelin = gateway(sink.addr);
    let sub = ravelin.listener("sub");
    let (out, transcript) = alice_sends(sub, ALICE, "bob@example.net");
    assert!(out.status.success(), "PLAIN: {}", describe(&out));
    assert!(
        transcript.contains("<~  235 2.7.0 Authentication successful"),
        "{transcript}"
    );
    let (out, transcript) = swaks_auth(
        sub,
        "--tls",
        "LOGIN",
        ALICE,
        ALICE_PASSWORD,
        "sales@example.org",
        "carol@example.com",
    );
    assert!(out.status.success(), "LOGIN: {}", describe(&out));
    assert!(transcript.contains("<~  334 VXNlcm5hbWU6"), "{transcript}");

    let mut got: Vec<(String, Vec<String>)> = sink
        .wait_for_messages(2, WAIT)
        .iter()
        .map(|m| (m.sender(), m.recipients()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (ALICE.to_string(), vec!["bob@example.net".to_string()]),
            (
                "sales@example.org".to_string(),
                vec!["carol@example.com".to_string()]
            ),
        ]
    );
    let auths = ravelin.events("auth");
    let seen: Vec<(&str, &str, &str)> = auths
        .iter()
        .map(|e| {
            (
                e["result"].as_str().unwrap_or(""),
                e["user"].as_str().unwrap_or(""),
                e["mechanism"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("success", ALICE, "PLAIN"), ("success", ALICE, "LOGIN")]
    );
    let queued = ravelin.events("queued");
    assert_eq!(queued.len(), 2);
    assert!(queued.iter().all(|e| e["direction"] == "outbound"));
    assert_not_logged(&ravelin, ALICE_PASSWORD);
}

/// The submissions listener speaks TLS from the first byte; AUTH PLAIN inside it works and the
/// message reaches the smart host.
#[test]
fn submissions_with_implicit_tls() {
    let sink = SmtpSink::start();
    let ravelin = gateway(sink.addr);
    let (out, transcript) = swaks_auth(
        ravelin.listener("smtps"),
        "--tlsc",
        "PLAIN",
        ALICE,
        ALICE_PASSWORD,
        ALICE,
        "dave@example.net",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(transcript.contains("235 2.7.0"), "{transcript}");
    let m = sink.wait_for_messages(1, WAIT);
    assert_eq!(m[0].recipients(), ["dave@example.net"]);
}

/// Before STARTTLS, EHLO offers no AUTH, AUTH is refused (538) and MAIL gets 530 5.7.0
/// "Must issue a STARTTLS command first"; inside TLS but before AUTH, MAIL gets 530 5.7.0
/// "Authentication required" and EHLO does offer AUTH PLAIN LOGIN. Nothing is queued.
#[test]
fn no_auth_before_starttls_and_no_mail_before_auth() {
    let sink = SmtpSink::start();
    let ravelin = gateway(sink.addr);
    let sub = ravelin.listener("sub");
    let mut c = RawClient::connect(sub).expect("connect");
    assert_eq!(c.read_reply().expect("greeting").code, 220);
    let ehlo = c.command("EHLO client.test.example").expect("EHLO");
    assert_eq!(ehlo.code, 250);
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert!(
        !ehlo
            .lines
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("AUTH")),
        "AUTH offered before TLS: {ehlo:?}"
    );
    let auth = c
        .command("AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n")
        .expect("AUTH");
    assert_eq!(auth.code, 538, "{auth:?}");
    let mail = c.command(&format!("MAIL FROM:<{ALICE}>")).expect("MAIL");
    assert_eq!(
        String::from_utf8_lossy(&mail.raw),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);

    // Inside TLS, without AUTH.
    let out = swaks_send(
        sub,
        ALICE,
        "bob@example.net",
        b"Subject: no auth\r\n\r\nx",
        &["--tls"],
    );
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        transcript.contains("<~  250 AUTH PLAIN LOGIN")
            || transcript.contains("<~  250-AUTH PLAIN LOGIN"),
        "{transcript}"
    );
    assert!(
        transcript.contains("<~* 530 5.7.0 Authentication required"),
        "{transcript}"
    );
    assert!(ravelin.events("queued").is_empty());
    // The auth attempt in clear never reached a password check.
    assert!(ravelin.events("auth").is_empty());
}

/// The smart host route with AUTH: a gateway whose `outbound.smart_host` is another gateway's
/// submission listener (STARTTLS required, AUTH against its users file) logs in as alice with
/// the password from a 0600 file, and the message goes through to the sink. With a wrong
/// password the smart host refuses AUTH (`535`), the message stays deferred in the queue
/// (never bounced for a configuration error), and neither password is logged.
#[test]
fn smart_host_with_tls_and_auth() {
    let sink = SmtpSink::start();
    let smart = gateway(sink.addr);
    let dir = tempfile::tempdir().unwrap();
    let front = |password: &str, name: &str| {
        let file = dir.path().join(name);
        fs::write(&file, format!("{password}\n")).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        Ravelin::start(
            RavelinConfig::inbound(sink.addr)
                .listener("relay", "relay", "off")
                .set("outbound", "trusted_networks = [\"127.0.0.1/32\"]")
                .set(
                    "outbound",
                    &format!(
                        "smart_host = {}",
                        toml_string(&format!("smtp://{}", smart.listener("sub")))
                    ),
                )
                .set("outbound", "smart_host_tls = \"encrypt\"")
                .set(
                    "outbound",
                    &format!("smart_host_user = {}", toml_string(ALICE)),
                )
                .set(
                    "outbound",
                    &format!(
                        "smart_host_password_file = {}",
                        toml_string(&file.to_string_lossy())
                    ),
                ),
        )
    };
    let message = format!("From: <{ALICE}>\r\nSubject: via the smart host\r\n\r\nbody\r\n");

    let good = front(ALICE_PASSWORD, "good");
    let out = swaks_send(
        good.listener("relay"),
        ALICE,
        "friend@elsewhere.example",
        message.as_bytes(),
        &[],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));
    let delivered = sink.wait_for_messages(1, WAIT);
    assert_eq!(delivered[0].recipients(), ["friend@elsewhere.example"]);
    let login = good.wait_for_event("delivery_auth", WAIT, |_| true);
    assert_eq!(login["result"], "success", "{login}");
    let seen = smart.wait_for_event("auth", WAIT, |e| e["result"] == "success");
    assert_eq!(seen["user"], ALICE);

    let wrong = "not-alices-password-77";
    let bad = front(wrong, "bad");
    let out = swaks_send(
        bad.listener("relay"),
        ALICE,
        "friend@elsewhere.example",
        message.as_bytes(),
        &[],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));
    let refused = bad.wait_for_event("delivery_auth", WAIT, |_| true);
    assert_eq!(refused["result"], "failure", "{refused}");
    assert!(
        refused["reply"].as_str().unwrap_or("").starts_with("535"),
        "{refused}"
    );
    bad.wait_for_event("deferred", WAIT, |_| true);
    assert!(
        bad.events("bounced").is_empty(),
        "a login failure bounced the message"
    );
    assert_eq!(
        sink.messages().len(),
        1,
        "the refused login delivered something"
    );
    for ravelin in [&good, &bad, &smart] {
        assert_not_logged(ravelin, ALICE_PASSWORD);
        assert_not_logged(ravelin, wrong);
    }
}

/// `[rate_limits] messages_per_user`: alice's third message within the window is refused with
/// `451 4.7.1` at MAIL FROM, although she sends from loopback (exempt from the address
/// limits): a stolen password cannot turn the gateway into a spam cannon. The first refusal
/// is an error line `user_over_limit` naming the account.
#[test]
fn per_user_limits_hold_for_an_authenticated_user() {
    let sink = SmtpSink::start();
    let ravelin = start(
        outbound_config(sink.addr, SENDER_MAP, "").set("rate_limits", "messages_per_user = 2"),
    );
    let sub = ravelin.listener("sub");
    for n in 0..2 {
        let (out, transcript) = alice_sends(sub, ALICE, "friend@elsewhere.example");
        assert!(out.status.success(), "message {n}: {transcript}");
    }
    let (out, transcript) = alice_sends(sub, ALICE, "friend@elsewhere.example");
    assert!(
        !out.status.success(),
        "the third message went through: {transcript}"
    );
    assert!(
        transcript.contains("451 4.7.1"),
        "no 451 4.7.1 to MAIL FROM: {transcript}"
    );
    let limited = ravelin.wait_for_event("rate_limit", WAIT, |_| true);
    assert_eq!(limited["limit"], "messages_per_user", "{limited}");
    // The first refusal is also an error line (an alert with [alerts]); a fourth is not.
    let over = ravelin.wait_for_event("user_over_limit", WAIT, |_| true);
    assert_eq!(over["level"], "error", "{over}");
    assert_eq!(over["user"], ALICE, "{over}");
    let (out, _) = alice_sends(sub, ALICE, "friend@elsewhere.example");
    assert!(!out.status.success());
    ravelin.wait_for_event("rate_limit", WAIT, |e| e["count"] == 4);
    assert_eq!(ravelin.events("user_over_limit").len(), 1);
    sink.wait_for_messages(2, WAIT);
}

/// Brute force: five wrong passwords from 127.0.0.5 within the window ban that address (the
/// default `[bans.auth_failures]`: 5 in 10 minutes, one hour); the sixth connection from it is
/// refused at the greeting, while alice from 127.0.0.6 is still served. The ban survives a
/// restart of the gateway and shows in `ravelin ban list`.
#[test]
fn repeated_wrong_passwords_ban_the_address_and_the_ban_survives_a_restart() {
    let sink = SmtpSink::start();
    let mut ravelin = start(
        outbound_config(sink.addr, SENDER_MAP, "")
            .set("bans", "exempt = []")
            .set("rate_limits", "exempt = []"),
    );
    let sub = ravelin.listener("sub");
    let from = |source: &str, password: &str| {
        let args = [
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            ALICE,
            "--auth-password",
            password,
            "--local-interface",
            source,
        ];
        swaks_send(
            sub,
            ALICE,
            "friend@elsewhere.example",
            b"Subject: x\r\n\r\nx\r\n",
            &args,
        )
    };
    for n in 1..=5 {
        let out = from("127.0.0.5", &format!("guess-{n}"));
        assert!(!out.status.success(), "guess {n} was accepted");
    }
    ravelin.wait_for_event("ban_added", WAIT, |e| {
        e["client"].as_str().unwrap_or("").starts_with("127.0.0.5")
            && e["reason"] == "auth_failures"
    });
    let greeting = |source: &str, ravelin: &Ravelin| {
        let mut c = RawClient::connect_from(source.parse().unwrap(), ravelin.listener("sub"))
            .expect("connect");
        c.read_reply().expect("a greeting")
    };
    let refused = greeting("127.0.0.5", &ravelin);
    assert_eq!(refused.code, 554, "{refused:?}");
    let out = from("127.0.0.6", ALICE_PASSWORD);
    assert!(
        out.status.success(),
        "alice from 127.0.0.6: {}",
        describe(&out)
    );

    ravelin.restart();
    let refused = greeting("127.0.0.5", &ravelin);
    assert_eq!(refused.code, 554, "after a restart: {refused:?}");
    assert_eq!(greeting("127.0.0.6", &ravelin).code, 220);
    let out = ravelin.command(&["ban", "list", "--json"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("127.0.0.5/32") && list.contains("auth_failures"),
        "{list}"
    );
    assert_not_logged(&ravelin, "guess-3");
}

/// A wrong password gets 535 5.7.8 after a one-second tarpit; the log says `event=auth`,
/// `result=failure` with the login name and neither password. With `limits.auth_failures = 2`
/// a client that fails twice in one session is disconnected with 421.
#[test]
fn wrong_passwords_are_delayed_logged_and_end_the_session() {
    let sink = SmtpSink::start();
    let ravelin =
        start(outbound_config(sink.addr, SENDER_MAP, "").set("limits", "auth_failures = 2"));
    let wrong = "guess-9f3b2c";
    let (out, transcript) = swaks_auth(
        ravelin.listener("sub"),
        "--tls",
        "PLAIN",
        ALICE,
        wrong,
        ALICE,
        "bob@example.net",
    );
    assert!(!out.status.success());
    assert!(
        transcript.contains("<~* 535 5.7.8 Authentication credentials invalid"),
        "{transcript}"
    );
    let failure = ravelin.wait_for_event("auth", WAIT, |e| e["result"] == "failure");
    assert_eq!(failure["user"], ALICE);
    assert_eq!(failure["mechanism"], "PLAIN");
    let session = failure["session"].clone();
    let tarpit = ravelin.wait_for_event("tarpit", WAIT, |e| e["session"] == session);
    assert_eq!(tarpit["delay_ms"], 1000);

    // Two mechanisms, two failures in one session: the second one ends it.
    let (out, transcript) = swaks_auth(
        ravelin.listener("sub"),
        "--tls",
        "PLAIN,LOGIN",
        ALICE,
        wrong,
        ALICE,
        "bob@example.net",
    );
    assert!(!out.status.success());
    assert_eq!(transcript.matches("535 5.7.8").count(), 2, "{transcript}");
    ravelin.wait_for_event("disconnect", WAIT, |e| {
        e["reason"] == "too many authentication failures"
    });
    assert!(sink.messages().is_empty());
    assert_not_logged(&ravelin, wrong);
    assert_not_logged(&ravelin, ALICE_PASSWORD);
}

/// The envelope sender must belong to the authenticated user: another address of our domain
/// gets 553 5.7.1 at MAIL and so does the null sender. So must the From header: a message
/// whose From (or one of two From fields) names someone else gets 553 5.7.1 at the end of data
/// and is not stored; one from an address the sender map gives the user is delivered.
#[test]
fn a_sender_the_user_does_not_own_is_refused() {
    let sink = SmtpSink::start();
    let ravelin = gateway(sink.addr);
    let sub = ravelin.listener("sub");
    for from in ["ceo@example.org", ""] {
        let (out, transcript) = alice_sends(sub, from, "bob@example.net");
        assert!(!out.status.success());
        assert!(
            transcript.contains("<~* 553 5.7.1 ")
                && transcript
                    .contains("Sender address rejected: not owned by user alice@example.org"),
            "{from:?}: {transcript}"
        );
    }
    assert!(ravelin.events("queued").is_empty());

    let auth = [
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        ALICE,
        "--auth-password",
        ALICE_PASSWORD,
    ];
    for header in [
        "From: \"Alice\" <ceo@example.org>",
        "From: alice@example.org\r\nFrom: ceo@example.org",
    ] {
        let data = format!("{header}\r\nSubject: spoof\r\n\r\nbody");
        let out = swaks_send(sub, ALICE, "bob@example.net", data.as_bytes(), &auth);
        let transcript = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{header}: {transcript}");
        assert!(
            transcript.contains("<~* 553 5.7.1 From: ")
                && transcript.contains("ceo@example.org")
                && transcript.contains("not owned by user alice@example.org"),
            "{header}: {transcript}"
        );
    }
    assert!(ravelin.events("queued").is_empty());
    assert!(ravelin.queue_list().is_empty());

    let data = "From: Sales <sales@example.org>\r\nSubject: ok\r\n\r\nbody";
    let out = swaks_send(sub, ALICE, "bob@example.net", data.as_bytes(), &auth);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(sink.wait_for_messages(1, WAIT).len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Relay listener and the spool envelope

/// The relay listener serves only `outbound.trusted_networks`: 127.0.0.3 gets 554 5.7.1 at
/// connect and is disconnected; 127.0.0.2 relays to another domain without AUTH. With the
/// smart host down, the queued messages (relay and submission) wait in the spool marked
/// outbound, the submitted one with its login name.
#[test]
fn relay_listener_serves_only_trusted_networks_and_marks_mail_outbound() {
    let down = free_addr();
    let ravelin = gateway(down);
    let relay = ravelin.listener("relay");

    let outsider: IpAddr = "127.0.0.3".parse().expect("ip");
    let mut c = RawClient::connect_from(outsider, relay).expect("connect from 127.0.0.3");
    let refusal = c.read_reply().expect("refusal");
    assert_eq!(
        String::from_utf8_lossy(&refusal.raw),
        format!("554 5.7.1 {HOSTNAME} Access denied\r\n")
    );
    assert!(c.is_closed(), "the untrusted client was not disconnected");
    let refused = ravelin.wait_for_event("refused", WAIT, |e| e["client"] == "127.0.0.3");
    assert_eq!(refused["reason"], "client not in outbound.trusted_networks");

    let out = swaks_send(
        relay,
        "backend@example.org",
        "someone@example.com",
        b"Subject: relayed\r\n\r\nfrom the backend",
        &["--local-interface", "127.0.0.2"],
    );
    assert!(out.status.success(), "relay: {}", describe(&out));
    let (out, _) = alice_sends(ravelin.listener("sub"), ALICE, "bob@example.net");
    assert!(out.status.success(), "submission: {}", describe(&out));

    let mut entries: Vec<(String, String, String)> = ravelin
        .queue_list()
        .iter()
        .map(|e| {
            let env = &e["envelope"];
            (
                env["sender"].as_str().unwrap_or("").to_string(),
                env["direction"].as_str().unwrap_or("").to_string(),
                env["auth_user"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            (ALICE.into(), "outbound".into(), ALICE.into()),
            ("backend@example.org".into(), "outbound".into(), "-".into()),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The users file

/// `ravelin user add|list|remove` maintain the users file (mode 0600, one argon2id hash per
/// user, no password in it); the running gateway picks up a user added and one removed without
/// a restart; `config check` refuses the file once group or others may read it.
#[test]
fn user_command_maintains_the_file_and_the_gateway_reloads_it() {
    let sink = SmtpSink::start();
    let ravelin = gateway(sink.addr);
    let users = ravelin.dir().join("users");
    let dave_password = "dave-pw-5521";
    let out = add_user(ravelin.config_path(), "Dave@Example.NET", dave_password);
    assert!(out.status.success(), "user add: {}", describe(&out));
    let text = fs::read_to_string(&users).expect("read users");
    assert!(text.contains("dave@example.net:$argon2id$"), "{text}");
    assert!(!text.contains(dave_password) && !text.contains(ALICE_PASSWORD));
    let mode = fs::metadata(&users)
        .expect("stat users")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let list = ravelin.command(&["user", "list", "--json"]);
    assert!(list.status.success(), "{}", describe(&list));
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).expect("JSON");
    assert_eq!(
        listed["users"],
        serde_json::json!(["alice@example.org", "dave@example.net"])
    );

    // The new user works without a restart.
    let (out, _) = swaks_auth(
        ravelin.listener("sub"),
        "--tls",
        "LOGIN",
        "dave@example.net",
        dave_password,
        "dave@example.net",
        "erin@example.com",
    );
    assert!(out.status.success(), "dave: {}", describe(&out));

    // A removed user does not.
    let out = ravelin.command(&["user", "remove", ALICE]);
    assert!(out.status.success(), "user remove: {}", describe(&out));
    let (out, transcript) = alice_sends(ravelin.listener("sub"), ALICE, "bob@example.net");
    assert!(!out.status.success());
    assert!(transcript.contains("535 5.7.8"), "{transcript}");
    let out = ravelin.command(&["user", "remove", ALICE]);
    assert!(!out.status.success(), "removing a missing user succeeded");

    fs::set_permissions(&users, fs::Permissions::from_mode(0o644)).expect("chmod");
    let check = ravelin.command(&["config", "check"]);
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("mode 0644") && stderr.contains(&format!("chmod 600 {}", users.display())),
        "{stderr}"
    );
    sink.wait_for_messages(1, WAIT);
}

// ---------------------------------------------------------------------------------------------
// LDAP

/// LDAP simple bind against a real slapd: with a DN template over `ldap://` on loopback, and
/// with a search by a service account (its password in a 0600 file) over `ldaps://` verified
/// against the test CA, the right password is accepted (and the mail delivered) and a wrong
/// one, or an unknown user, is refused with 535. No password is logged.
#[test]
fn ldap_bind_accepts_the_right_password_only() {
    let ldap_password = "carol-ldap-8812";
    let service_password = "svc-ldap-4410";
    let pki = ravelin_tls::testing::TestPki::new("127.0.0.1").expect("LDAP test PKI");
    let slapd = Slapd::start(
        &[
            ("carol", "carol@example.org", ldap_password),
            ("ravelin", "ravelin@example.org", service_password),
        ],
        &pki,
        "127.0.0.1",
    );
    let ca_dir = daemon_tempdir();
    let ca = pki.write_to(ca_dir.path()).expect("write the CA").ca;
    let password_file = ca_dir.path().join("ldap-password");
    fs::write(&password_file, format!("{service_password}\n")).expect("write the password file");
    fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    let sink = SmtpSink::start();
    let sender_map =
        "sender_map = { \"carol\" = [\"carol@example.org\"], \"alice@example.org\" = [] }";
    let ldap_tables = [
        format!(
            "[auth.ldap]\nurl = {}\nbind_dn_template = \"uid={{user}},ou=people,{LDAP_SUFFIX}\"\n",
            toml_string(&slapd.url)
        ),
        format!(
            "[auth.ldap]\nurl = {}\nsearch_base = \"{LDAP_SUFFIX}\"\nsearch_filter = \"(&(objectClass=inetOrgPerson)(uid={{user}}))\"\nsearch_bind_dn = \"uid=ravelin,ou=people,{LDAP_SUFFIX}\"\nsearch_bind_password_file = {}\nca_file = {}\n",
            toml_string(&slapd.ldaps_url),
            toml_string(&password_file.to_string_lossy()),
            toml_string(&ca.to_string_lossy())
        ),
    ];
    for (i, table) in ldap_tables.iter().enumerate() {
        let ravelin = start(outbound_config(sink.addr, sender_map, table));
        let sub = ravelin.listener("sub");
        let to = format!("ldap{i}@example.net");
        let (out, transcript) = swaks_auth(
            sub,
            "--tls",
            "PLAIN",
            "carol",
            ldap_password,
            "carol@example.org",
            &to,
        );
        assert!(
            out.status.success(),
            "{table}: {}\nslapd: {}\nlog: {}",
            describe(&out),
            slapd.stderr(),
            ravelin.log_text()
        );
        assert!(transcript.contains("235 2.7.0"), "{transcript}");
        for (user, password) in [("carol", "wrong-ldap-1"), ("nobody-here", ldap_password)] {
            let (out, transcript) = swaks_auth(
                sub,
                "--tls",
                "LOGIN",
                user,
                password,
                "carol@example.org",
                &to,
            );
            assert!(!out.status.success(), "{table}: {user} got in");
            assert!(transcript.contains("535 5.7.8"), "{transcript}");
        }
        let results: Vec<(String, String)> = ravelin
            .events("auth")
            .iter()
            .map(|e| {
                (
                    e["result"].as_str().unwrap_or("").to_string(),
                    e["source"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(results[0], ("success".to_string(), "ldap".to_string()));
        assert!(
            results[1..].iter().all(|(r, _)| r == "failure"),
            "{results:?}"
        );
        assert_not_logged(&ravelin, ldap_password);
        assert_not_logged(&ravelin, service_password);
        assert_not_logged(&ravelin, "wrong-ldap-1");
        let delivered = sink.wait_for_messages(i + 1, WAIT);
        assert!(delivered.iter().any(|m| m.recipients() == [to.clone()]));
    }
}
