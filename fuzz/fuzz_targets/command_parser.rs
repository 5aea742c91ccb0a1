//! Any command line: the parser returns a command or an error, never panics, and anything it
//! accepts as MAIL/RCPT round-trips through the address printer into something it accepts again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_wire::command::{Command, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Command::Rcpt { to }) = parse(data) {
        let again = format!("RCPT TO:<{to}>");
        assert!(parse(again.as_bytes()).is_ok(), "{again:?}");
    }
});
