//! Any message start, split at a fuzzer-chosen point: the header collector and parser never
//! panic, never hold more than the limits allow, give the same result however the input is
//! split, and the fields they return are the header section exactly (concatenated, they are
//! the bytes before the empty line), each a name of printable ASCII and a CRLF-terminated line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_wire::headers::{Collected, HeaderBlock, HeaderCollector, HeaderLimits};

const LIMITS: HeaderLimits = HeaderLimits {
    max_bytes: 2048,
    max_fields: 32,
    max_line: 200,
};

/// The collected header section (or the error), and where the body starts in the input.
fn collect(chunks: &[&[u8]]) -> (Result<Vec<u8>, String>, Option<usize>) {
    let mut c = HeaderCollector::new(LIMITS.max_bytes);
    let mut offset = 0;
    for chunk in chunks {
        match c.push(chunk) {
            Ok(Collected::NeedMore) => offset += chunk.len(),
            Ok(Collected::Complete { consumed }) => {
                assert!(consumed <= chunk.len());
                return (Ok(c.take()), Some(offset + consumed));
            }
            Err(e) => {
                assert!(c.buffered().len() <= LIMITS.max_bytes + 2);
                return (Err(e.to_string()), None);
            }
        }
    }
    (Ok(c.take()), None)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let input = &data[1..];
    let split = (data[0] as usize % data.len()).min(input.len());
    let whole = collect(&[input]);
    let parts = collect(&[&input[..split], &input[split..]]);
    assert_eq!(whole, parts);

    if let (Ok(section), Some(body_start)) = &whole {
        assert_eq!(&input[..*body_start], &section[..]);
        assert!(section.ends_with(b"\r\n"));
    }

    // The parser on the whole input agrees with the collector on where the body starts.
    if let Ok(block) = HeaderBlock::parse(input, &LIMITS) {
        assert!(block.len() <= LIMITS.max_fields);
        assert!(block.fields_bytes().len() <= LIMITS.max_bytes);
        let joined: Vec<u8> = block.fields().flat_map(|f| f.raw().to_vec()).collect();
        assert_eq!(&joined[..], block.fields_bytes());
        for f in block.fields() {
            assert!(!f.name().is_empty());
            assert!(f.name().bytes().all(|b| (33..=126).contains(&b) && b != b':'));
            assert!(f.raw().ends_with(b"\r\n"));
            assert_eq!(&input[f.range()], f.raw());
            assert!(f.unfolded().len() <= f.value().len());
        }
        if let Some(start) = block.body_start() {
            assert_eq!(whole.1, Some(start));
        }
    }
});
