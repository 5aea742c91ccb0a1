//! The message header section (RFC 5322 2.2): split into fields, with limits.
//!
//! [`HeaderBlock::parse`] reads the header fields at the start of a message: each field's name,
//! its raw value with folding preserved, and its byte range, so a caller that removes fields
//! writes every other one back byte for byte. [`HeaderCollector`] finds the end of the header
//! section in a stream of chunks (the DATA content as it arrives), buffering at most the size
//! limit, so the header can be examined before the body streams on.
//!
//! Strictness: this parser decides what later stages (the header firewall, DKIM, the backend)
//! treat as a header field, so where parsers are known to disagree it refuses instead of
//! guessing — a gap between two parsers is where a forbidden header is smuggled past a filter.
//! Refused ([`HeaderError`]): a line without a colon or with a field name outside printable
//! ASCII, a continuation line before the first field, a line of white space only (some parsers
//! end the header there, others fold it), a CR or LF that is not part of CRLF, a NUL, an
//! unterminated last line. White space between the name and the colon (the obsolete syntax of
//! RFC 5322 4.5) is accepted and not part of the name. Values may hold 8-bit bytes (RFC 6532).
//!
//! Limits ([`HeaderLimits`]): bytes in the header section, number of fields, octets per line.
//! Nothing here panics on any input; everything is bounded by the limits or by the input.

use std::fmt;
use std::ops::Range;

use memchr::memchr3;

/// The header section ends at the first empty line.
const CRLF: &[u8] = b"\r\n";

/// What a header section may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Octets of header fields (the empty line after them not counted).
    pub max_bytes: usize,
    /// Header fields.
    pub max_fields: usize,
    /// Octets per line, CRLF included.
    pub max_line: usize,
}

impl Default for HeaderLimits {
    /// 256 KiB (Exchange's default `MaxHeaderSize`), 1000 fields, 1000-octet lines (RFC 5322
    /// 2.1.1: 998 characters and CRLF).
    fn default() -> Self {
        HeaderLimits {
            max_bytes: 256 * 1024,
            max_fields: 1000,
            max_line: crate::data::MAX_TEXT_LINE,
        }
    }
}

/// Why a header section was refused. Lines are counted from 1 at the first header line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The header fields exceed `max_bytes`.
    TooLarge { limit: usize },
    /// More than `max_fields` fields.
    TooManyFields { limit: usize },
    /// A line longer than `max_line` octets (CRLF included).
    LineTooLong { line: usize, limit: usize },
    /// A CR or LF that is not part of a CRLF pair.
    BareLineEnding { line: usize },
    /// A NUL octet.
    Nul { line: usize },
    /// The last line has no CRLF.
    Unterminated { line: usize },
    /// The first line starts with white space, so it continues no field.
    ContinuationFirst,
    /// A line of white space only.
    WhitespaceLine { line: usize },
    /// A line that neither continues a field nor has a colon.
    MissingColon { line: usize },
    /// A colon at the start of a line: a field without a name.
    EmptyName { line: usize },
    /// A field name with a byte outside printable ASCII (33–126).
    BadName { line: usize },
}

impl HeaderError {
    /// Whether the header broke a size limit (rather than the syntax).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            HeaderError::TooLarge { .. }
                | HeaderError::TooManyFields { .. }
                | HeaderError::LineTooLong { .. }
        )
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooLarge { limit } => {
                write!(f, "message header exceeds {limit} octets")
            }
            HeaderError::TooManyFields { limit } => {
                write!(f, "message header has more than {limit} fields")
            }
            HeaderError::LineTooLong { line, limit } => {
                write!(f, "message header line {line} exceeds {limit} octets")
            }
            HeaderError::BareLineEnding { line } => {
                write!(f, "message header line {line} has a CR or LF outside CRLF")
            }
            HeaderError::Nul { line } => write!(f, "message header line {line} has a NUL"),
            HeaderError::Unterminated { line } => {
                write!(f, "message header line {line} does not end with CRLF")
            }
            HeaderError::ContinuationFirst => {
                write!(f, "message header starts with a continuation line")
            }
            HeaderError::WhitespaceLine { line } => {
                write!(f, "message header line {line} is only white space")
            }
            HeaderError::MissingColon { line } => {
                write!(
                    f,
                    "message header line {line} is not a header field (no colon)"
                )
            }
            HeaderError::EmptyName { line } => {
                write!(f, "message header line {line} has an empty field name")
            }
            HeaderError::BadName { line } => write!(
                f,
                "message header line {line} has a field name outside printable ASCII"
            ),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Where one field is in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    /// The whole field, from its name to its final CRLF inclusive.
    start: usize,
    end: usize,
    /// End of the name (before any white space and the colon).
    name_end: usize,
    /// First byte after the colon.
    value_start: usize,
}

/// The header fields at the start of a message, borrowed from it.
#[derive(Clone, Debug)]
pub struct HeaderBlock<'a> {
    raw: &'a [u8],
    spans: Vec<Span>,
    /// End of the last field (start of the empty line, or of the input).
    end: usize,
    /// First byte after the empty line; `None` when the input ended without one.
    body_start: Option<usize>,
}

/// One header field.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    raw: &'a [u8],
    span: Span,
}

impl<'a> Field<'a> {
    /// The name as written, without white space before the colon.
    pub fn name(&self) -> &'a str {
        // Checked to be printable ASCII by the parser.
        std::str::from_utf8(&self.raw[self.span.start..self.span.name_end]).unwrap_or("")
    }

    /// Whether the name is `name`, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name)
    }

    /// The value as written: everything after the colon up to the final CRLF (exclusive),
    /// folding kept.
    pub fn value(&self) -> &'a [u8] {
        &self.raw[self.span.value_start..self.span.end - CRLF.len()]
    }

    /// The value with folding removed (each CRLF that precedes white space dropped).
    pub fn unfolded(&self) -> Vec<u8> {
        let v = self.value();
        let mut out = Vec::with_capacity(v.len());
        let mut i = 0;
        while i < v.len() {
            if v[i] == b'\r' && v.get(i + 1) == Some(&b'\n') {
                i += 2;
            } else {
                out.push(v[i]);
                i += 1;
            }
        }
        out
    }

    /// The whole field, name to final CRLF inclusive, exactly as in the message.
    pub fn raw(&self) -> &'a [u8] {
        &self.raw[self.span.start..self.span.end]
    }

    /// Where [`Field::raw`] is in the message.
    pub fn range(&self) -> Range<usize> {
        self.span.start..self.span.end
    }
}

impl<'a> HeaderBlock<'a> {
    /// Reads the header fields at the start of `message`, up to the first empty line or the
    /// end of the input (a message without a body).
    pub fn parse(message: &'a [u8], limits: &HeaderLimits) -> Result<Self, HeaderError> {
        let mut spans: Vec<Span> = Vec::new();
        let mut pos = 0;
        let mut line = 0;
        loop {
            if pos == message.len() {
                return Ok(HeaderBlock {
                    raw: message,
                    spans,
                    end: pos,
                    body_start: None,
                });
            }
            line += 1;
            let rest = &message[pos..];
            let Some(i) = memchr3(b'\r', b'\n', 0, rest) else {
                return Err(if pos + rest.len() > limits.max_bytes {
                    HeaderError::TooLarge {
                        limit: limits.max_bytes,
                    }
                } else if rest.len() + CRLF.len() > limits.max_line {
                    HeaderError::LineTooLong {
                        line,
                        limit: limits.max_line,
                    }
                } else {
                    HeaderError::Unterminated { line }
                });
            };
            match (rest[i], rest.get(i + 1)) {
                (0, _) => return Err(HeaderError::Nul { line }),
                (b'\r', Some(b'\n')) => {}
                (b'\r', None) => return Err(HeaderError::Unterminated { line }),
                _ => return Err(HeaderError::BareLineEnding { line }),
            }
            let text = &rest[..i];
            let next = pos + i + CRLF.len();
            if text.is_empty() {
                return Ok(HeaderBlock {
                    raw: message,
                    spans,
                    end: pos,
                    body_start: Some(next),
                });
            }
            if next > limits.max_bytes {
                return Err(HeaderError::TooLarge {
                    limit: limits.max_bytes,
                });
            }
            if next - pos > limits.max_line {
                return Err(HeaderError::LineTooLong {
                    line,
                    limit: limits.max_line,
                });
            }
            if is_wsp(text[0]) {
                if text.iter().all(|&b| is_wsp(b)) {
                    return Err(HeaderError::WhitespaceLine { line });
                }
                match spans.last_mut() {
                    Some(span) => span.end = next,
                    None => return Err(HeaderError::ContinuationFirst),
                }
            } else {
                let Some(colon) = text.iter().position(|&b| b == b':') else {
                    return Err(HeaderError::MissingColon { line });
                };
                let name = trim_wsp_end(&text[..colon]);
                if name.is_empty() {
                    return Err(HeaderError::EmptyName { line });
                }
                if !name.iter().all(|&b| (33..=126).contains(&b)) {
                    return Err(HeaderError::BadName { line });
                }
                if spans.len() == limits.max_fields {
                    return Err(HeaderError::TooManyFields {
                        limit: limits.max_fields,
                    });
                }
                spans.push(Span {
                    start: pos,
                    end: next,
                    name_end: pos + name.len(),
                    value_start: pos + colon + 1,
                });
            }
            pos = next;
        }
    }

    /// The fields in message order.
    pub fn fields(&self) -> impl DoubleEndedIterator<Item = Field<'a>> + ExactSizeIterator + '_ {
        let raw = self.raw;
        self.spans.iter().map(move |&span| Field { raw, span })
    }

    /// The fields named `name` (any case), in message order.
    pub fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Field<'a>> + 's {
        self.fields().filter(move |f| f.is(name))
    }

    /// The first field named `name`.
    pub fn get(&self, name: &str) -> Option<Field<'a>> {
        self.all(name).next()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The header fields as written, without the empty line.
    pub fn fields_bytes(&self) -> &'a [u8] {
        &self.raw[..self.end]
    }

    /// Where the body starts (after the empty line); `None` when there was no empty line.
    pub fn body_start(&self) -> Option<usize> {
        self.body_start
    }

    /// The body: everything after the empty line (empty when there was none).
    pub fn body(&self) -> &'a [u8] {
        match self.body_start {
            Some(start) => &self.raw[start..],
            None => &[],
        }
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_wsp_end(mut s: &[u8]) -> &[u8] {
    while let [rest @ .., last] = s
        && is_wsp(*last)
    {
        s = rest;
    }
    s
}

/// What [`HeaderCollector::push`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collected {
    /// The whole chunk was taken; the header goes on.
    NeedMore,
    /// The header section ended: the first `consumed` bytes of the chunk completed it (empty
    /// line included), the rest of the chunk is body.
    Complete { consumed: usize },
}

/// Buffers the start of a message until the header section is complete, never more than
/// the header size limit.
#[derive(Debug)]
pub struct HeaderCollector {
    buf: Vec<u8>,
    /// `max_bytes` plus the empty line.
    cap: usize,
    /// Where the search for the end resumes.
    scanned: usize,
    complete: bool,
}

impl HeaderCollector {
    /// A collector for a header section of at most `max_bytes` octets of fields.
    pub fn new(max_bytes: usize) -> Self {
        HeaderCollector {
            buf: Vec::new(),
            cap: max_bytes.saturating_add(CRLF.len()),
            scanned: 0,
            complete: false,
        }
    }

    /// Takes the next chunk of message data. After `Complete`, further chunks are not taken
    /// (each returns `Complete { consumed: 0 }`). `TooLarge` when the limit is reached first.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Collected, HeaderError> {
        if self.complete {
            return Ok(Collected::Complete { consumed: 0 });
        }
        let before = self.buf.len();
        let take = chunk.len().min(self.cap.saturating_sub(before));
        self.buf.extend_from_slice(&chunk[..take]);
        let end = if self.buf.starts_with(CRLF) {
            Some(CRLF.len())
        } else {
            memchr::memmem::find(&self.buf[self.scanned..], b"\r\n\r\n")
                .map(|i| self.scanned + i + 4)
        };
        if let Some(end) = end {
            self.buf.truncate(end);
            self.complete = true;
            return Ok(Collected::Complete {
                consumed: end - before,
            });
        }
        if take < chunk.len() || self.buf.len() >= self.cap {
            return Err(HeaderError::TooLarge {
                limit: self.cap - CRLF.len(),
            });
        }
        self.scanned = self.buf.len().saturating_sub(3);
        Ok(Collected::NeedMore)
    }

    /// Whether the empty line that ends the header section was seen.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// What was collected: the header section with its empty line once complete, otherwise
    /// everything so far (at the end of the data: a message without a body).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the buffer out, leaving the collector empty.
    pub fn take(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(m: &[u8]) -> Result<HeaderBlock<'_>, HeaderError> {
        HeaderBlock::parse(m, &HeaderLimits::default())
    }

    #[test]
    fn fields_values_and_body() {
        let m = b"From: a@example.org\r\nSubject: one\r\n\ttwo\r\nX-Empty:\r\nTo : b@example.org\r\n\r\nbody\r\n";
        let h = parse(m).unwrap();
        let names: Vec<&str> = h.fields().map(|f| f.name()).collect();
        assert_eq!(names, ["From", "Subject", "X-Empty", "To"]);
        let subject = h.get("subject").unwrap();
        assert_eq!(subject.value(), b" one\r\n\ttwo");
        assert_eq!(subject.unfolded(), b" one\ttwo");
        assert_eq!(subject.raw(), b"Subject: one\r\n\ttwo\r\n");
        assert_eq!(&m[subject.range()], subject.raw());
        assert_eq!(h.get("x-empty").unwrap().value(), b"");
        assert_eq!(h.get("to").unwrap().value(), b" b@example.org");
        assert_eq!(h.body(), b"body\r\n");
        assert_eq!(h.body_start(), Some(m.len() - 6));
        let joined: Vec<u8> = h.fields().flat_map(|f| f.raw().to_vec()).collect();
        assert_eq!(joined, h.fields_bytes());
    }

    #[test]
    fn no_body_and_no_header() {
        let h = parse(b"Subject: x\r\n").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h.body_start(), None);
        assert_eq!(h.body(), b"");
        let h = parse(b"\r\nbody").unwrap();
        assert!(h.is_empty());
        assert_eq!(h.body(), b"body");
        assert!(parse(b"").unwrap().is_empty());
    }

    #[test]
    fn eight_bit_values_are_fields() {
        let h = parse("Subject: Grüße\r\n\r\n".as_bytes()).unwrap();
        assert_eq!(h.get("Subject").unwrap().value(), " Grüße".as_bytes());
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], HeaderError)] = &[
            (b" folded: first\r\n\r\n", HeaderError::ContinuationFirst),
            (
                b"A: 1\r\n \r\nX-MS-Exchange-Organization-SCL: -1\r\n\r\n",
                HeaderError::WhitespaceLine { line: 2 },
            ),
            (
                b"A: 1\r\nnot a header\r\n\r\n",
                HeaderError::MissingColon { line: 2 },
            ),
            (b": x\r\n\r\n", HeaderError::EmptyName { line: 1 }),
            (
                b"A: 1\r\nFrom alice Mon: x\r\n\r\n",
                HeaderError::BadName { line: 2 },
            ),
            (
                "N\u{e4}me: x\r\n\r\n".as_bytes(),
                HeaderError::BadName { line: 1 },
            ),
            (
                b"A: 1\nB: 2\r\n\r\n",
                HeaderError::BareLineEnding { line: 1 },
            ),
            (
                b"A: 1\rB: 2\r\n\r\n",
                HeaderError::BareLineEnding { line: 1 },
            ),
            (b"A: 1\r\nB: \x002\r\n\r\n", HeaderError::Nul { line: 2 }),
            (b"A: 1\r\nB: 2", HeaderError::Unterminated { line: 2 }),
            (b"A: 1\r\nB: 2\r", HeaderError::Unterminated { line: 2 }),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits() {
        let limits = HeaderLimits {
            max_bytes: 40,
            max_fields: 2,
            max_line: 20,
        };
        assert!(HeaderBlock::parse(b"A: 1\r\nB: 2\r\n\r\n", &limits).is_ok());
        assert_eq!(
            HeaderBlock::parse(b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n", &limits).unwrap_err(),
            HeaderError::TooManyFields { limit: 2 }
        );
        assert_eq!(
            HeaderBlock::parse(b"A: 0123456789abcdefg\r\n\r\n", &limits).unwrap_err(),
            HeaderError::LineTooLong { line: 1, limit: 20 }
        );
        assert_eq!(
            HeaderBlock::parse(b"A: 0123456789abcdefg", &limits).unwrap_err(),
            HeaderError::LineTooLong { line: 1, limit: 20 }
        );
        let folded = b"A: 0123456789\r\n 0123456789\r\n 0123456789\r\n 0123456789\r\n\r\n";
        assert_eq!(
            HeaderBlock::parse(folded, &limits).unwrap_err(),
            HeaderError::TooLarge { limit: 40 }
        );
        assert!(HeaderError::TooLarge { limit: 1 }.is_limit());
        assert!(!HeaderError::ContinuationFirst.is_limit());
        // The limit is on the fields; the body may be any size.
        let mut m = b"A: 1\r\n\r\n".to_vec();
        m.extend(std::iter::repeat_n(b'x', 1000));
        assert!(HeaderBlock::parse(&m, &limits).is_ok());
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            HeaderError::MissingColon { line: 3 }.to_string(),
            "message header line 3 is not a header field (no colon)"
        );
    }

    #[test]
    fn collector_finds_the_end_across_chunks() {
        let mut c = HeaderCollector::new(1024);
        assert_eq!(c.push(b"Subject: x\r").unwrap(), Collected::NeedMore);
        assert_eq!(c.push(b"\n\r").unwrap(), Collected::NeedMore);
        assert_eq!(
            c.push(b"\nbody\r\n").unwrap(),
            Collected::Complete { consumed: 1 }
        );
        assert!(c.is_complete());
        assert_eq!(c.buffered(), b"Subject: x\r\n\r\n");
        assert_eq!(
            c.push(b"more").unwrap(),
            Collected::Complete { consumed: 0 }
        );

        let mut c = HeaderCollector::new(1024);
        assert_eq!(
            c.push(b"\r\nbody").unwrap(),
            Collected::Complete { consumed: 2 }
        );
        assert_eq!(c.take(), b"\r\n");
    }

    #[test]
    fn collector_stops_at_the_limit() {
        let mut c = HeaderCollector::new(10);
        assert_eq!(c.push(b"A: 1234\r\n").unwrap(), Collected::NeedMore);
        assert_eq!(
            c.push(b"B: 1\r\n\r\n").unwrap_err(),
            HeaderError::TooLarge { limit: 10 }
        );
        assert!(c.buffered().len() <= 12);
        // Exactly at the limit, with the empty line after it.
        let mut c = HeaderCollector::new(9);
        assert_eq!(
            c.push(b"A: 1234\r\n\r\nbody").unwrap(),
            Collected::Complete { consumed: 11 }
        );
    }

    fn collect(chunks: &[&[u8]], max: usize) -> (Result<Vec<usize>, HeaderError>, Vec<u8>) {
        let mut c = HeaderCollector::new(max);
        let mut consumed = Vec::new();
        for chunk in chunks {
            match c.push(chunk) {
                Ok(Collected::Complete { consumed: n }) => consumed.push(n),
                Ok(Collected::NeedMore) => {}
                Err(e) => return (Err(e), c.take()),
            }
        }
        (Ok(consumed), c.take())
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_ranges_hold(m in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), Just(b'A'), any::<u8>()], 0..300)) {
            let limits = HeaderLimits { max_bytes: 200, max_fields: 8, max_line: 60 };
            if let Ok(h) = HeaderBlock::parse(&m, &limits) {
                prop_assert!(h.len() <= 8);
                prop_assert!(h.fields_bytes().len() <= 200);
                let joined: Vec<u8> = h.fields().flat_map(|f| f.raw().to_vec()).collect();
                prop_assert_eq!(&joined[..], h.fields_bytes());
                for f in h.fields() {
                    prop_assert!(f.raw().ends_with(b"\r\n"));
                    prop_assert!(!f.name().is_empty());
                }
            }
        }

        #[test]
        fn collector_is_split_invariant(m in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a'), Just(b':')], 0..120), split in 0usize..120) {
            let split = split.min(m.len());
            let (whole, whole_buf) = collect(&[&m], 64);
            let (parts, parts_buf) = collect(&[&m[..split], &m[split..]], 64);
            prop_assert_eq!(whole.is_ok(), parts.is_ok());
            if whole.is_ok() {
                prop_assert_eq!(whole_buf, parts_buf);
            }
        }
    }
}
