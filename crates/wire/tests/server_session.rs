//! Drives the server session with whole client transcripts, as a driver that accepts every
//! decision would, and checks the exact replies and events.

use ravelin_wire::address::ForwardPath;
use ravelin_wire::auth::{Credentials, Mechanism, encode};
use ravelin_wire::reply::Reply;
use ravelin_wire::server::{CloseReason, Event, ServerConfig, ServerSession, Verdict};

/// What a transcript produced.
#[derive(Default, Debug)]
struct Outcome {
    output: String,
    messages: Vec<Vec<u8>>,
    events: Vec<Event>,
    closed: Option<CloseReason>,
    delay_secs: u64,
}

fn config() -> ServerConfig {
    let mut c = ServerConfig::new("mx.example.org");
    c.offer_starttls = true;
    c.max_message_size = 1000;
    c.max_recipients = 3;
    c
}

/// Feeds `chunks` one after the other (as separate reads); accepts every decision, except
/// recipients outside example.org and credentials whose password is not "secret" (refused
/// with 535, or with 454 for the password "unavailable").
fn run(config: ServerConfig, chunks: &[&[u8]]) -> Outcome {
    run_session(ServerSession::new(config), chunks)
}

fn run_session(mut s: ServerSession, chunks: &[&[u8]]) -> Outcome {
    s.greet();
    let mut o = Outcome::default();
    let mut current: Option<Vec<u8>> = None;
    let mut drive = |s: &mut ServerSession, o: &mut Outcome| {
        while let Some(ev) = s.poll() {
            match &ev {
                Event::Rcpt {
                    to: ForwardPath::Path(p),
                } if p.mailbox.domain.eq_name("example.org") => s.decide(Verdict::Accept),
                Event::Rcpt { .. } => s.decide(Verdict::Reject(Reply::ext(
                    554,
                    (5, 7, 1),
                    "Relay access denied",
                ))),
                Event::Mail { .. } => s.decide(Verdict::Accept),
                Event::Auth(c) => s.decide(match c.password.expose() {
                    "secret" => Verdict::Accept,
                    "unavailable" => Verdict::Reject(Reply::ext(
                        454,
                        (4, 7, 0),
                        "Temporary authentication failure",
                    )),
                    _ => Verdict::Reject(Reply::ext(
                        535,
                        (5, 7, 8),
                        "Authentication credentials invalid",
                    )),
                }),
                Event::DataStart => {
                    current = Some(Vec::new());
                    s.decide(Verdict::Accept)
                }
                Event::Data(d) => current
                    .as_mut()
                    .expect("data outside DATA")
                    .extend_from_slice(d),
                Event::DataEnd { size } => {
                    let m = current.take().unwrap();
                    assert_eq!(*size, m.len() as u64);
                    o.messages.push(m);
                    s.decide(Verdict::AcceptWith(Reply::ext(
                        250,
                        (2, 0, 0),
                        "Ok: queued as TEST",
                    )))
                }
                Event::DataRejected { .. } => current = None,
                Event::Close(r) => o.closed = Some(r.clone()),
                _ => {}
            }
            if !matches!(ev, Event::Data(_)) {
                o.events.push(ev);
            }
        }
        o.delay_secs += s.take_delay().as_secs();
        o.output
            .push_str(&String::from_utf8(s.take_output()).unwrap());
    };
    drive(&mut s, &mut o);
    for c in chunks {
        if s.is_closed() {
            break;
        }
        s.push_input(c);
        drive(&mut s, &mut o);
        if matches!(o.events.last(), Some(Event::StartTls)) {
            s.tls_established();
        }
    }
    o
}

fn codes(o: &Outcome) -> Vec<&str> {
    o.output
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect()
}

#[test]
fn a_plain_transaction() {
    let o = run(
        config(),
        &[
            b"EHLO client.example.net\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<b@example.org>\r\n",
            b"DATA\r\n",
            b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n",
            b"QUIT\r\n",
        ],
    );
    assert_eq!(codes(&o), ["220", "250", "250", "250", "354", "250", "221"]);
    assert!(o.output.starts_with(
        "220 mx.example.org ESMTP\r\n250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
    ));
    assert!(o.output.contains("250 STARTTLS\r\n"));
    assert!(o.output.contains("250 2.0.0 Ok: queued as TEST\r\n"));
    assert_eq!(
        o.messages,
        vec![b"Subject: hi\r\n\r\n.leading dot\r\n".to_vec()]
    );
    assert_eq!(o.closed, Some(CloseReason::Quit));
}

#[test]
fn pipelined_transaction_is_answered_in_order() {
    let o = run(
        config(),
        &[
            b"EHLO c.example.net\r\n",
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@elsewhere.net>\r\nDATA\r\n",
            b"x\r\n.\r\nQUIT\r\n",
        ],
    );
    assert_eq!(
        codes(&o),
        ["220", "250", "250", "250", "554", "354", "250", "221"]
    );
}

#[test]
fn every_smuggling_ending_is_refused_and_nothing_more_is_read() {
    let endings: [&[u8]; 11] = [
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
    for ending in endings {
        let mut body = b"Subject: one\r\n\r\nfirst".to_vec();
        body.extend_from_slice(ending);
        body.extend_from_slice(b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: two\r\n\r\nsmuggled\r\n.\r\n");
        let o = run(
            config(),
            &[
                b"EHLO c.example.net\r\n",
                b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
                &body,
                b"QUIT\r\n",
            ],
        );
        assert!(o.messages.is_empty(), "{ending:?}: a message was accepted");
        assert!(
            o.output.ends_with("\r\n") && o.output.contains("550 5.5.2 Error: "),
            "{ending:?}: {}",
            o.output
        );
        assert!(
            matches!(o.closed, Some(CloseReason::Framing(_))),
            "{ending:?}"
        );
        assert_eq!(
            o.events
                .iter()
                .filter(|e| matches!(e, Event::Mail { .. }))
                .count(),
            1,
            "{ending:?}"
        );
    }
}

#[test]
fn bare_newlines_in_commands_close_the_session() {
    for input in [
        &b"NOOP\nQUIT\r\n"[..],
        b"MAIL FROM:<a@example.net>\rRCPT TO:<b@example.org>\r\n",
    ] {
        let o = run(config(), &[b"EHLO c.example.net\r\n", input]);
        assert!(o.output.contains("550 5.5.2 Error: bare"), "{}", o.output);
        assert!(matches!(o.closed, Some(CloseReason::Framing(_))));
    }
}

#[test]
fn unauthorised_pipelining_is_refused() {
    // Talking past EHLO, DATA, NOOP; pipelining without EHLO; input after STARTTLS.
    let cases: [&[&[u8]]; 5] = [
        &[b"EHLO c.example.net\r\nMAIL FROM:<a@example.net>\r\n"],
        &[
            b"HELO c.example.net\r\n",
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n",
        ],
        &[
            b"EHLO c.example.net\r\n",
            b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n",
        ],
        &[b"EHLO c.example.net\r\n", b"NOOP\r\nNOOP\r\n"],
        &[
            b"EHLO c.example.net\r\n",
            b"STARTTLS\r\nMAIL FROM:<injected@example.net>\r\n",
        ],
    ];
    for chunks in cases {
        let o = run(config(), chunks);
        assert!(
            o.output
                .contains("554 5.5.0 Error: SMTP protocol synchronization"),
            "{chunks:?}: {}",
            o.output
        );
        assert!(matches!(o.closed, Some(CloseReason::Pipelining(_))));
        assert!(!o.events.iter().any(|e| matches!(e, Event::StartTls)));
    }
}

#[test]
fn helo_client_must_wait_after_data_too() {
    let o = run(
        config(),
        &[
            b"HELO c\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<b@example.org>\r\n",
            b"DATA\r\n",
            b"x\r\n.\r\nMAIL FROM:<c@d.e>\r\n",
        ],
    );
    assert_eq!(o.messages.len(), 1);
    assert!(matches!(o.closed, Some(CloseReason::Pipelining("DATA"))));
}

#[test]
fn vrfy_expn_help_reveal_nothing() {
    let o = run(
        config(),
        &[
            b"EHLO c\r\n",
            b"VRFY root\r\n",
            b"EXPN staff\r\n",
            b"HELP\r\n",
        ],
    );
    assert!(o.output.contains("252 2.5.2 "));
    assert!(o.output.contains("502 5.5.1 "));
    assert!(o.output.contains("214 2.0.0 See RFC 5321\r\n"));
    assert!(!o.output.to_lowercase().contains("root"));
    assert!(!o.output.to_lowercase().contains("ravelin"));
}

#[test]
fn size_is_enforced_declared_and_streamed() {
    let o = run(
        config(),
        &[b"EHLO c\r\n", b"MAIL FROM:<a@example.net> SIZE=5000\r\n"],
    );
    assert!(o.output.contains("552 5.3.4"));
    let big = format!("{}\r\n", "x".repeat(900)).repeat(2) + ".\r\n";
    let o = run(
        config(),
        &[
            b"EHLO c\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<b@example.org>\r\n",
            b"DATA\r\n",
            big.as_bytes(),
        ],
    );
    assert!(o.messages.is_empty());
    assert!(o.output.contains("552 5.3.4"), "{}", o.output);
    assert!(
        o.events
            .iter()
            .any(|e| matches!(e, Event::DataRejected { .. }))
    );
}

#[test]
fn recipient_limit() {
    let o = run(
        config(),
        &[
            b"EHLO c\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nRCPT TO:<d@example.org>\r\n",
        ],
    );
    assert_eq!(codes(&o)[2..], ["250", "250", "250", "250", "452"]);
}

/// Surplus recipients get 452 without counting as errors, up to the overshoot allowance: a
/// client that pipelines more recipients than the limit still reaches DATA, undelayed. Past
/// the allowance each one is an error, up to the hard limit.
#[test]
fn recipient_overshoot_is_not_an_error_until_its_limit() {
    let rcpts: Vec<u8> = (0..10)
        .flat_map(|i| format!("RCPT TO:<r{i}@example.org>\r\n").into_bytes())
        .collect();
    let batch = [rcpts.as_slice(), b"DATA\r\n"].concat();
    let mut c = config();
    c.soft_error_limit = 1;
    c.hard_error_limit = 3;
    let o = run(
        c.clone(),
        &[b"EHLO c\r\n", b"MAIL FROM:<a@example.net>\r\n", &batch],
    );
    let mut want = vec!["250"; 3];
    want.extend(["452"; 7]);
    want.push("354");
    assert_eq!(codes(&o)[3..], want);
    assert_eq!(o.closed, None);
    assert_eq!(o.delay_secs, 0);

    c.max_recipient_overshoot = 2;
    let o = run(
        c,
        &[b"EHLO c\r\n", b"MAIL FROM:<a@example.net>\r\n", &rcpts],
    );
    assert_eq!(
        codes(&o)[3..],
        ["250", "250", "250", "452", "452", "452", "452", "421"]
    );
    assert_eq!(o.closed, Some(CloseReason::TooManyErrors));
}

#[test]
fn sequence_errors() {
    let o = run(
        config(),
        &[
            b"MAIL FROM:<a@example.net>\r\n",
            b"EHLO c\r\n",
            b"RCPT TO:<b@example.org>\r\n",
            b"DATA\r\n",
        ],
    );
    assert_eq!(codes(&o), ["220", "503", "250", "503", "503"]);
}

#[test]
fn errors_are_delayed_then_the_session_ends() {
    let mut chunks: Vec<&[u8]> = vec![b"EHLO c\r\n"];
    chunks.extend(std::iter::repeat_n(&b"BOGUS\r\n"[..], 12));
    let o = run(config(), &chunks);
    assert!(
        o.output
            .ends_with("421 4.7.0 mx.example.org Error: too many errors\r\n")
    );
    assert_eq!(o.closed, Some(CloseReason::TooManyErrors));
    // Errors 4..9 are delayed 1+2+...+6 seconds.
    assert_eq!(o.delay_secs, 21);
}

#[test]
fn require_tls_refuses_mail_before_starttls() {
    let mut c = config();
    c.require_tls = true;
    let o = run(
        c,
        &[
            b"EHLO c\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"STARTTLS\r\n",
            b"EHLO c\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
        ],
    );
    assert_eq!(codes(&o), ["220", "250", "530", "220", "250", "250"]);
    // After TLS, EHLO no longer offers STARTTLS.
    assert_eq!(
        o.output.matches("250 STARTTLS").count() + o.output.matches("250-STARTTLS").count(),
        1
    );
}

#[test]
fn long_command_lines() {
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    let o = run(config(), &[b"EHLO c\r\n", long.as_bytes(), b"NOOP\r\n"]);
    assert_eq!(codes(&o), ["220", "250", "500", "250"]);
}

#[test]
fn relay_tricks_reach_the_policy() {
    let o = run(
        config(),
        &[
            b"EHLO c\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<x@other.net@example.org>\r\n",
        ],
    );
    assert!(o.events.iter().any(|e| matches!(e, Event::Rcpt { .. })));
}

#[test]
fn bdat_closes() {
    let o = run(config(), &[b"EHLO c\r\n", b"BDAT 10 LAST\r\n"]);
    assert_eq!(o.closed, Some(CloseReason::Chunking));
}

#[test]
fn shutdown_lets_data_finish() {
    let mut s = ServerSession::new(config());
    s.greet();
    s.push_input(b"EHLO c\r\n");
    while s.poll().is_some() {}
    s.push_input(b"MAIL FROM:<a@example.net>\r\n");
    assert!(matches!(s.poll(), Some(Event::Mail { .. })));
    s.decide(Verdict::Accept);
    s.shutdown();
    s.push_input(b"RCPT TO:<b@example.org>\r\n");
    assert!(matches!(s.poll(), Some(Event::Rcpt { .. })));
    s.decide(Verdict::Accept);
    s.push_input(b"DATA\r\n");
    assert_eq!(s.poll(), Some(Event::DataStart));
    s.decide(Verdict::Accept);
    s.push_input(b"x\r\n.\r\n");
    assert!(matches!(s.poll(), Some(Event::Data(_))));
    assert!(matches!(s.poll(), Some(Event::DataEnd { .. })));
    s.decide(Verdict::Accept);
    s.push_input(b"MAIL FROM:<a@example.net>\r\n");
    assert_eq!(s.poll(), Some(Event::Close(CloseReason::Shutdown)));
    assert!(
        String::from_utf8(s.take_output())
            .unwrap()
            .ends_with("421 4.3.2 Service shutting down\r\n")
    );
}

// ---------------------------------------------------------------------------------------------
// AUTH

fn auth_config() -> ServerConfig {
    let mut c = config();
    c.offer_auth = true;
    c.require_auth = true;
    c
}

/// A session that is TLS from the start (as on port 465), after EHLO.
fn run_tls(config: ServerConfig, chunks: &[&[u8]]) -> Outcome {
    let mut all: Vec<&[u8]> = vec![b"EHLO c.example.net\r\n"];
    all.extend_from_slice(chunks);
    run_session(ServerSession::new_tls(config), &all)
}

fn plain(authzid: &str, user: &str, password: &str) -> String {
    encode(format!("{authzid}\0{user}\0{password}").as_bytes())
}

fn auth_events(o: &Outcome) -> Vec<&Credentials> {
    o.events
        .iter()
        .filter_map(|e| match e {
            Event::Auth(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn auth_is_neither_offered_nor_accepted_before_tls() {
    let ir = format!("AUTH PLAIN {}\r\n", plain("", "alice", "secret"));
    let o = run(
        auth_config(),
        &[
            b"EHLO c\r\n",
            ir.as_bytes(),
            b"MAIL FROM:<alice@example.org>\r\n",
            b"STARTTLS\r\n",
            b"EHLO c\r\n",
            ir.as_bytes(),
            b"MAIL FROM:<alice@example.org>\r\n",
        ],
    );
    assert_eq!(
        codes(&o),
        ["220", "250", "538", "530", "220", "250", "235", "250"]
    );
    let (before, after) = o.output.split_once("220 2.0.0 Ready to start TLS").unwrap();
    assert!(!before.contains("AUTH"), "{before}");
    assert!(after.contains("250 AUTH PLAIN LOGIN\r\n"), "{after}");
    assert!(o.output.contains("538 5.7.11 "));
    assert!(o.output.contains("530 5.7.0 Authentication required\r\n"));
    assert!(o.output.contains("235 2.7.0 Authentication successful\r\n"));
    // Only the attempt inside TLS reached the driver.
    assert_eq!(auth_events(&o).len(), 1);
}

#[test]
fn auth_plain_and_login_in_every_form() {
    let ir = format!("AUTH PLAIN {}\r\n", plain("boss", "alice", "secret"));
    let response = format!("{}\r\n", plain("", "alice", "secret"));
    let user = format!("{}\r\n", encode(b"bob@example.org"));
    let password = format!("{}\r\n", encode(b"secret"));
    let login_ir = format!("AUTH LOGIN {}", user);
    let cases: Vec<Vec<&[u8]>> = vec![
        vec![ir.as_bytes()],
        vec![b"AUTH plain\r\n", response.as_bytes()],
        vec![b"AUTH LOGIN\r\n", user.as_bytes(), password.as_bytes()],
        vec![login_ir.as_bytes(), password.as_bytes()],
    ];
    let mut seen = Vec::new();
    for chunks in cases {
        let o = run_tls(auth_config(), &chunks);
        assert!(
            o.output
                .ends_with("235 2.7.0 Authentication successful\r\n"),
            "{chunks:?}: {}",
            o.output
        );
        let creds = auth_events(&o);
        assert_eq!(creds.len(), 1);
        seen.push((
            creds[0].mechanism,
            creds[0].authzid.clone(),
            creds[0].authcid.clone(),
        ));
    }
    assert_eq!(
        seen,
        [
            (Mechanism::Plain, Some("boss".into()), "alice".into()),
            (Mechanism::Plain, None, "alice".into()),
            (Mechanism::Login, None, "bob@example.org".into()),
            (Mechanism::Login, None, "bob@example.org".into()),
        ]
    );
    // The LOGIN challenges are base64 of "Username:" and "Password:".
    let o = run_tls(auth_config(), &[b"AUTH LOGIN\r\n", user.as_bytes()]);
    assert!(
        o.output
            .contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n")
    );
    let o = run_tls(auth_config(), &[b"AUTH PLAIN\r\n"]);
    assert!(o.output.ends_with("334 \r\n"), "{}", o.output);
}

#[test]
fn auth_cancel_and_malformed_responses() {
    let cases: [(&[&[u8]], &str); 8] = [
        (&[b"AUTH PLAIN\r\n", b"*\r\n"], "501 5.0.0 "),
        (
            &[b"AUTH LOGIN\r\n", b"YWxpY2U=\r\n", b"*\r\n"],
            "501 5.0.0 ",
        ),
        (&[b"AUTH PLAIN\r\n", b"not base64!\r\n"], "501 5.5.2 "),
        (&[b"AUTH PLAIN AGFsaWNl\r\n"], "501 5.5.2 "),
        (&[b"AUTH PLAIN =\r\n"], "501 5.5.2 "),
        (&[b"AUTH LOGIN\r\n", b"\r\n"], "501 5.5.2 "),
        (&[b"AUTH CRAM-MD5\r\n"], "504 5.5.4 "),
        (&[b"AUTH\r\n"], "501 5.5.4 "),
    ];
    for (chunks, expected) in cases {
        let o = run_tls(auth_config(), chunks);
        let last = o.output.lines().last().unwrap_or("");
        assert!(last.starts_with(expected), "{chunks:?}: {}", o.output);
        assert!(auth_events(&o).is_empty());
        assert_eq!(o.closed, None);
    }
    // After a cancelled exchange the session reads commands again.
    let ir = format!("AUTH PLAIN {}\r\n", plain("", "alice", "secret"));
    let o = run_tls(auth_config(), &[b"AUTH LOGIN\r\n", b"*\r\n", ir.as_bytes()]);
    assert!(
        o.output
            .ends_with("235 2.7.0 Authentication successful\r\n")
    );
}

#[test]
fn auth_sequence_errors() {
    let ir = format!("AUTH PLAIN {}\r\n", plain("", "alice", "secret"));
    // AUTH twice.
    let o = run_tls(auth_config(), &[ir.as_bytes(), ir.as_bytes()]);
    assert_eq!(codes(&o)[2..], ["235", "503"]);
    assert!(o.output.contains("503 5.5.1 Error: already authenticated"));
    // AUTH inside a transaction (where MAIL is allowed without AUTH).
    let mut c = auth_config();
    c.require_auth = false;
    let o = run_tls(c, &[b"MAIL FROM:<a@example.net>\r\n", ir.as_bytes()]);
    assert_eq!(codes(&o)[2..], ["250", "503"]);
    assert!(
        o.output
            .contains("503 5.5.1 Error: MAIL transaction in progress")
    );
    // AUTH where it is not enabled.
    let o = run_tls(config(), &[ir.as_bytes()]);
    assert!(
        o.output
            .ends_with("503 5.5.1 Error: authentication is not enabled\r\n")
    );
    // AUTH before EHLO.
    let o = run_session(ServerSession::new_tls(auth_config()), &[ir.as_bytes()]);
    assert!(o.output.ends_with("503 5.5.1 Error: send EHLO first\r\n"));
}

#[test]
fn auth_line_limits() {
    // An AUTH line may exceed 512 octets (here its PLAIN message then has a field over 255).
    let long = format!("AUTH PLAIN {}\r\n", plain("", &"a".repeat(400), "secret"));
    let o = run_tls(auth_config(), &[long.as_bytes()]);
    assert!(
        o.output
            .ends_with("501 5.5.2 Malformed authentication response\r\n")
    );
    // A response line may too, up to 12288 with its CRLF.
    let response = format!("{}\r\n", encode(&[b'x'; 9000]));
    assert!(response.len() <= 12288);
    let o = run_tls(auth_config(), &[b"AUTH LOGIN\r\n", response.as_bytes()]);
    assert!(
        o.output
            .ends_with("501 5.5.2 Malformed authentication response\r\n")
    );
    // Longer is refused, and the exchange ends.
    let response = format!("{}\r\n", "QUFB".repeat(3100));
    let o = run_tls(
        auth_config(),
        &[b"AUTH LOGIN\r\n", response.as_bytes(), b"NOOP\r\n"],
    );
    assert!(o.output.contains("500 5.5.6 "), "{}", o.output);
    assert!(o.output.ends_with("250 2.0.0 Ok\r\n"));
    // Other commands keep the 512-octet limit.
    let noop = format!("NOOP {}\r\n", "x".repeat(600));
    let o = run_tls(auth_config(), &[noop.as_bytes()]);
    assert!(
        o.output
            .ends_with("500 5.5.2 Error: command line too long\r\n")
    );
}

#[test]
fn failed_auth_is_delayed_more_each_time_then_the_session_ends() {
    let wrong = format!("AUTH PLAIN {}\r\n", plain("", "alice", "guess"));
    let unavailable = format!("AUTH PLAIN {}\r\n", plain("", "alice", "unavailable"));
    let o = run_tls(
        auth_config(),
        &[
            wrong.as_bytes(),
            unavailable.as_bytes(),
            wrong.as_bytes(),
            wrong.as_bytes(),
            b"NOOP\r\n",
        ],
    );
    assert_eq!(codes(&o)[2..], ["535", "454", "535", "535", "421"]);
    assert!(o.output.contains("535 5.7.8 "));
    assert!(
        o.output
            .ends_with("421 4.7.0 mx.example.org Error: too many authentication failures\r\n")
    );
    assert_eq!(o.closed, Some(CloseReason::AuthFailures));
    // 1 + 2 + 4 seconds; the temporary failure costs nothing.
    assert_eq!(o.delay_secs, 7);
    let mut c = auth_config();
    c.max_auth_failures = 10;
    c.max_auth_delay = std::time::Duration::from_secs(3);
    let chunks = vec![wrong.as_bytes(); 4];
    let o = run_tls(c, &chunks);
    assert_eq!(o.delay_secs, 1 + 2 + 3 + 3);
    assert_eq!(o.closed, None);
}

#[test]
fn auth_responses_must_not_be_pipelined() {
    let response = format!(
        "{}\r\nMAIL FROM:<a@example.org>\r\n",
        plain("", "a", "secret")
    );
    let o = run_tls(auth_config(), &[b"AUTH PLAIN\r\n", response.as_bytes()]);
    assert!(matches!(o.closed, Some(CloseReason::Pipelining("AUTH"))));
    assert!(auth_events(&o).is_empty());
}

#[test]
fn passwords_do_not_show_in_debug_output() {
    let ir = format!("AUTH PLAIN {}\r\n", plain("", "alice", "hunter2"));
    let o = run_tls(auth_config(), &[ir.as_bytes()]);
    assert_eq!(auth_events(&o).len(), 1);
    let shown = format!("{:?}", o.events);
    assert!(
        shown.contains("alice") && !shown.contains("hunter2"),
        "{shown}"
    );
}
