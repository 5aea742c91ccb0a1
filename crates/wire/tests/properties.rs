//! Property tests: the server session never panics and always answers in canonical form, and
//! the DATA reader returns exactly what a conforming client stuffed.

use proptest::prelude::*;
use ravelin_wire::data::{DataProgress, DataReader};
use ravelin_wire::server::{Event, ServerConfig, ServerSession, Verdict};

/// Input biased towards SMTP: command words, addresses, CR, LF, dots, NULs, and noise.
fn smtp_ish() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let token = prop_oneof![
        Just(b"EHLO x\r\n".to_vec()),
        Just(b"HELO x\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.example>\r\n".to_vec()),
        Just(b"RCPT TO:<c@example.org>\r\n".to_vec()),
        Just(b"RCPT TO:<\"c@d\"@example.org>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"BDAT 4\r\n".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b".".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(vec![0u8]),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(
        proptest::collection::vec(token, 1..6).prop_map(|v| v.concat()),
        1..12,
    )
}

fn is_canonical_reply_stream(out: &[u8]) -> bool {
    if out.is_empty() {
        return true;
    }
    if !out.ends_with(b"\r\n") {
        return false;
    }
    out[..out.len() - 2].split(|&b| b == b'\n').all(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.len() >= 4
            && line[..3].iter().all(u8::is_ascii_digit)
            && (line[3] == b' ' || line[3] == b'-')
            && !line.contains(&b'\r')
    })
}

proptest! {
    #[test]
    fn session_never_panics_and_replies_canonically(chunks in smtp_ish(), tls in any::<bool>()) {
        let mut c = ServerConfig::new("mx.example.org");
        c.offer_starttls = true;
        c.max_message_size = 200;
        let mut s = ServerSession::new(c);
        s.greet();
        let mut out = s.take_output();
        for chunk in chunks {
            if s.is_closed() { break; }
            s.push_input(&chunk);
            while let Some(ev) = s.poll() {
                match ev {
                    Event::Mail { .. } | Event::Rcpt { .. } | Event::DataStart | Event::DataEnd { .. } => s.decide(Verdict::Accept),
                    Event::StartTls if tls => s.tls_established(),
                    _ => {}
                }
            }
            out.extend(s.take_output());
        }
        prop_assert!(is_canonical_reply_stream(&out), "{:?}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn reader_inverts_stuffing(lines in proptest::collection::vec("[ -~]{0,80}", 0..30), split in 0usize..4000) {
        // A conforming client: CRLF lines, dot-stuffed, terminated.
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for l in &lines {
            if l.starts_with('.') { wire.push(b'.'); }
            wire.extend_from_slice(l.as_bytes());
            wire.extend_from_slice(b"\r\n");
            expected.extend_from_slice(l.as_bytes());
            expected.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        let split = split.min(wire.len());
        let mut r = DataReader::new(1 << 20, 1000);
        let mut out = Vec::new();
        let first = r.feed(&wire[..split], &mut out);
        let done = if let DataProgress::Done { consumed } = first {
            consumed
        } else {
            prop_assert_eq!(first, DataProgress::NeedMore);
            match r.feed(&wire[split..], &mut out) {
                DataProgress::Done { consumed } => split + consumed,
                other => { prop_assert!(false, "{:?}", other); 0 }
            }
        };
        prop_assert_eq!(done, wire.len());
        prop_assert_eq!(out, expected);
    }
}
