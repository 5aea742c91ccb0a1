//! Any file found in the spool (a torn write, a disk error, an edited or foreign file): the
//! checks recovery and delivery run never panic and never allocate beyond their limits, and a
//! file they accept is exactly magic + envelope line + body + trailer, as its envelope says.
#![no_main]
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ravelin_gateway::spool::check_file;

/// One scratch file per fuzzing process, rewritten for every input.
fn scratch() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("ravelin-fuzz-spool-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("scratch file in the temporary directory");
        // The open descriptor is all we need; nothing is left behind.
        let _ = std::fs::remove_file(&path);
        file
    })
}

fuzz_target!(|data: &[u8]| {
    let mut file = scratch();
    file.set_len(0).expect("truncate scratch file");
    std::io::Seek::rewind(&mut file).expect("rewind scratch file");
    file.write_all(data).expect("write scratch file");
    if let Ok(envelope) = check_file(file) {
        let newline = data
            .iter()
            .skip(16)
            .position(|&b| b == b'\n')
            .expect("envelope line")
            + 16;
        assert_eq!(
            newline as u64 + 1 + envelope.size + 32,
            data.len() as u64,
            "the body length disagrees with the file"
        );
        assert!(data.starts_with(b"RAVELIN-SPOOL 1\n"));
    }
});
