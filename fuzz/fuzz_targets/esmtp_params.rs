//! ESMTP parameters after a valid MAIL FROM or RCPT TO path: the parser never panics, never
//! accepts more than MAX_PARAMS parameters or one it does not offer, and what it accepts
//! prints back into the same parameters.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_wire::command::{Body, Command, MAX_PARAMS, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, params)) = data.split_first() else {
        return;
    };
    let verb: &[u8] = if selector & 1 == 0 {
        b"MAIL FROM:<a@example.net>"
    } else {
        b"RCPT TO:<b@example.org>"
    };
    let line = [verb, params].concat();
    let Ok(cmd) = parse(&line) else { return };
    let words = params
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .count();
    assert!(words <= MAX_PARAMS, "{line:?}");
    match cmd {
        Command::Mail { params: p, .. } => {
            assert!(words <= 2, "only SIZE and BODY are offered: {line:?}");
            let mut again = String::from("MAIL FROM:<a@example.net>");
            if let Some(size) = p.size {
                again.push_str(&format!(" SIZE={size}"));
            }
            match p.body {
                Some(Body::SevenBit) => again.push_str(" BODY=7BIT"),
                Some(Body::EightBitMime) => again.push_str(" BODY=8BITMIME"),
                None => {}
            }
            match parse(again.as_bytes()) {
                Ok(Command::Mail { params: q, .. }) => assert_eq!(p, q, "{again:?}"),
                other => panic!("{again:?} -> {other:?}"),
            }
        }
        Command::Rcpt { .. } => assert_eq!(words, 0, "RCPT takes no parameters: {line:?}"),
        other => panic!("{line:?} parsed as {other:?}"),
    }
});
