//! Any bytes after `AUTH NTLM`: the auditor's CHALLENGE decoder never panics, and what it
//! returns stays within its limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_audit::smtp::ntlm::{MAX_NAME_CHARS, parse_challenge};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = parse_challenge(data) {
        for (_, value) in c.revealed() {
            assert!(value.chars().count() <= MAX_NAME_CHARS);
        }
    }
});
