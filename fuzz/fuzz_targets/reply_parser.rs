//! Any server byte stream: the client's reply parser never panics and never returns a reply
//! with an impossible code or an empty line list.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_wire::ReplyParser;

fuzz_target!(|data: &[u8]| {
    let mut p = ReplyParser::new();
    for chunk in data.chunks(7) {
        p.feed(chunk);
        loop {
            match p.next_reply() {
                Ok(Some(r)) => assert!((200..600).contains(&r.code) && !r.lines.is_empty()),
                Ok(None) | Err(_) => break,
            }
        }
    }
});
