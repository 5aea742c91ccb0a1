//! Any server byte stream, in fuzzer-chosen reads, against the delivery client running one
//! transaction (STARTTLS when offered and chosen): no panic; everything the client writes is
//! whole CRLF-terminated command lines without stray CR or LF; it never has more than
//! MAX_OUTSTANDING commands awaiting replies; a finished transaction has one outcome per
//! recipient; what it read from EHLO stays within its limits; and after an error every later
//! poll returns the same error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_wire::client::{Capabilities, Client, MAX_OUTSTANDING, Step, Transaction};
use ravelin_wire::{Reply, ReplyParser};

/// Checks one write of the client outside a body: whole command lines only.
fn check_commands(bytes: &[u8]) -> usize {
    assert!(bytes.ends_with(b"\r\n"), "{bytes:?}");
    let mut lines = 0;
    for line in bytes[..bytes.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!line.contains(&b'\r') && !line.is_empty(), "{bytes:?}");
        lines += 1;
    }
    lines
}

fn check_caps(caps: &Capabilities) {
    assert!(caps.auth.len() <= 32);
    assert!(caps.auth.iter().all(|m| !m.is_empty() && m.len() <= 64));
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, data)) = data.split_first() else {
        return;
    };
    // 1 to 250 recipients: above MAX_OUTSTANDING they go out in several batches.
    let n = usize::from(knobs >> 1).max(1) * 2 - 1;
    let want_tls = knobs & 1 == 1;
    let recipients: Vec<String> = (0..n).map(|i| format!("r{i}@example.org")).collect();
    let mut client = Client::new("gw.example.net").expect("valid HELO name");
    let mut chunks = data.split(|&b| b == 0xff);
    let mut begun = false;
    let mut tls_tried = false;
    let mut sent_lines = 0usize;
    let mut done = false;
    // Every reply the server sent so far, counted as the client reads them.
    let mut replies = ReplyParser::new();
    let mut answered = 0usize;
    for _ in 0..10_000 {
        match client.poll() {
            Ok(Step::Send(bytes)) => sent_lines += check_commands(&bytes),
            Ok(Step::Read) => match chunks.next() {
                Some(chunk) => {
                    client.feed(chunk);
                    replies.feed(chunk);
                    while let Ok(Some(r)) = replies.next_reply() {
                        let _: Reply = r;
                        answered += 1;
                    }
                }
                None => client.eof(),
            },
            Ok(Step::Ready) => {
                check_caps(client.capabilities());
                if want_tls && !tls_tried && client.capabilities().starttls {
                    tls_tried = true;
                    client.starttls().expect("STARTTLS when offered and ready");
                } else if !begun {
                    begun = true;
                    client
                        .begin(Transaction {
                            sender: "s@example.net".into(),
                            recipients: recipients.clone(),
                            size: Some(100),
                            eight_bit: knobs & 2 == 2,
                        })
                        .expect("begin when ready");
                } else {
                    client.quit().expect("QUIT when ready");
                }
            }
            Ok(Step::StartTls) => {
                // A fresh TLS stream: replies before it are forgotten by both sides.
                replies = ReplyParser::new();
                client.tls_established().expect("after StartTls");
            }
            Ok(Step::StartTlsRefused(_) | Step::AuthRefused(_)) => {}
            Ok(Step::SendBody) => client.body_sent().expect("body after 354"),
            Ok(Step::Done(outcomes)) => {
                assert!(!done, "one transaction, one Done");
                done = true;
                assert_eq!(outcomes.len(), n);
            }
            Ok(Step::Closed) => break,
            Err(e) => {
                assert_eq!(client.poll(), Err(e));
                break;
            }
        }
        // Bodies are not counted as lines; each command awaits at most one reply.
        assert!(sent_lines.saturating_sub(answered) <= MAX_OUTSTANDING + 2);
    }
});
