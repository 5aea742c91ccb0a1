//! Any configuration text: parsing and validation never panic, and every error names the
//! origin and a line within the text (or 0 for the whole file) with a fix.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_gateway::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::parse(text, "fuzz.toml") {
        let lines = text.lines().count().max(1);
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert_eq!(e.file, "fuzz.toml");
            assert!(e.line <= lines + 1, "line {} of {lines}: {e:?}", e.line);
            assert!(!e.message.is_empty() && !e.fix.is_empty(), "{e:?}");
        }
    }
});
