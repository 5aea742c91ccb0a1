//! Any DATA stream, split at a fuzzer-chosen point: the reader never panics, never emits a bare
//! CR or LF, never emits more than the size limit, and gives the same result however it is split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_wire::data::{DataProgress, DataReader};

fn read(chunks: &[&[u8]]) -> (Vec<u8>, Option<DataProgress>) {
    let mut r = DataReader::new(4096, 1000);
    let mut out = Vec::new();
    let mut offset = 0;
    for c in chunks {
        match r.feed(c, &mut out) {
            DataProgress::NeedMore => offset += c.len(),
            DataProgress::Done { consumed } => return (out, Some(DataProgress::Done { consumed: offset + consumed })),
            v => return (out, Some(v)),
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let (whole, p1) = read(&[body]);
    let (parts, p2) = read(&[&body[..split], &body[split..]]);
    assert!(whole.len() <= 4096);
    for (i, &b) in whole.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && whole[i - 1] == b'\r');
        }
        if b == b'\r' {
            assert!(whole.get(i + 1) == Some(&b'\n'));
        }
    }
    assert_eq!(p1, p2);
    if matches!(p1, Some(DataProgress::Done { .. })) {
        assert_eq!(whole, parts);
    }
});
