//! Any client byte stream, in fuzzer-chosen reads, against a session that accepts every
//! decision: no panic, and the output is always whole CRLF-terminated reply lines.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_wire::server::{Event, ServerConfig, ServerSession, Verdict};

fuzz_target!(|data: &[u8]| {
    let mut c = ServerConfig::new("mx.example.org");
    c.offer_starttls = true;
    c.offer_auth = true;
    c.max_message_size = 2048;
    let mut s = ServerSession::new(c);
    s.greet();
    let mut out = s.take_output();
    for chunk in data.split(|&b| b == 0xff) {
        if s.is_closed() {
            break;
        }
        s.push_input(chunk);
        while let Some(ev) = s.poll() {
            match ev {
                Event::Mail { .. } | Event::Rcpt { .. } | Event::DataStart | Event::DataEnd { .. } | Event::Auth(_) => s.decide(Verdict::Accept),
                Event::StartTls => s.tls_established(),
                _ => {}
            }
        }
        out.extend(s.take_output());
    }
    assert!(out.is_empty() || out.ends_with(b"\r\n"));
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r") && line.len() >= 5 && line[..3].iter().all(u8::is_ascii_digit));
    }
});
