//! Drives the server session with whole client transcripts, as a driver that accepts every
//! decision would, and checks the exact replies and events.

use ravelin_wire::address::ForwardPath;
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
/// recipients outside example.org.
fn run(config: ServerConfig, chunks: &[&[u8]]) -> Outcome {
    let mut s = ServerSession::new(config);
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
