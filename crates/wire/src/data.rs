//! The DATA reader and writer.
//!
//! Reader ([`DataReader`]): turns the bytes a client sends after `354` into message content.
//! Only `CRLF . CRLF` ends the data (the CRLF before the dot belongs to the last line, so the
//! end is a line holding just a dot). A bare CR, a bare LF or a NUL anywhere is a
//! [`DataViolation`]: it is how SMTP smuggling hides a second message, and the session refuses
//! with `550 5.5.2` and closes. Lines starting with a dot are un-stuffed. The message size is
//! counted as the content streams through; past the limit the content is dropped (never
//! buffered) and the reader goes on to the end of data so the reply can be `552`. Lines over the
//! text-line limit are flagged the same way.
//!
//! Writer ([`DotStuffer`]): turns any bytes into canonical SMTP content (see its docs).

use memchr::memchr3;

/// RFC 5321 4.5.3.1.6: a text line is at most 1000 octets including CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

/// A framing error inside DATA; the connection cannot be trusted after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataViolation {
    BareLf,
    BareCr,
    Nul,
}

impl DataViolation {
    pub fn describe(self) -> &'static str {
        match self {
            DataViolation::BareLf => "bare LF received; lines must end with CRLF (RFC 5321 2.3.8)",
            DataViolation::BareCr => "bare CR received; lines must end with CRLF (RFC 5321 2.3.8)",
            DataViolation::Nul => "NUL character received in message data",
        }
    }
}

/// What [`DataReader::feed`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataProgress {
    /// All input consumed; the data goes on.
    NeedMore,
    /// The end-of-data line was read; `consumed` bytes of the input belong to the message and
    /// its terminator, the rest (if any) is what the client sent after it.
    Done {
        consumed: usize,
    },
    Violation(DataViolation),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// A line started with a dot.
    Dot,
    /// A line holding just a dot has seen its CR.
    DotCr,
    /// Inside a line.
    Text,
    /// Inside a line, a CR was seen.
    Cr,
}

/// Streaming, strict DATA reader.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    max_size: u64,
    max_line: usize,
    size: u64,
    line_len: usize,
    oversize: bool,
    long_line: bool,
}

impl DataReader {
    /// `max_size`: content octets accepted; `max_line`: octets per line including CRLF.
    pub fn new(max_size: u64, max_line: usize) -> Self {
        DataReader {
            state: State::LineStart,
            max_size,
            max_line,
            size: 0,
            line_len: 0,
            oversize: false,
            long_line: false,
        }
    }

    /// Content octets seen so far (counted even past the limit).
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Whether the content exceeded the size limit (and was dropped from that point).
    pub fn oversize(&self) -> bool {
        self.oversize
    }
    /// Whether a line exceeded the text-line limit.
    pub fn long_line(&self) -> bool {
        self.long_line
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.oversize = true;
        }
        if !self.oversize {
            out.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.line_len + 2 > self.max_line {
            self.long_line = true;
        }
        self.line_len = 0;
        self.emit(b"\r\n", out);
        self.state = State::LineStart;
    }

    /// Consumes `input`, appending un-stuffed content to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataProgress {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::LineStart if b == b'.' => {
                    self.state = State::Dot;
                    i += 1;
                }
                State::Dot if b == b'\r' => {
                    self.state = State::DotCr;
                    i += 1;
                }
                State::DotCr => {
                    return if b == b'\n' {
                        DataProgress::Done { consumed: i + 1 }
                    } else {
                        DataProgress::Violation(DataViolation::BareCr)
                    };
                }
                State::Cr => {
                    if b != b'\n' {
                        return DataProgress::Violation(DataViolation::BareCr);
                    }
                    self.end_line(out);
                    i += 1;
                }
                // LineStart (not a dot), Dot (a stuffed dot was dropped) and Text all read text.
                State::LineStart | State::Dot | State::Text => {
                    let run = memchr3(b'\r', b'\n', 0, &input[i..]).unwrap_or(input.len() - i);
                    if run > 0 {
                        self.line_len += run;
                        self.emit(&input[i..i + run], out);
                        i += run;
                        self.state = State::Text;
                        continue;
                    }
                    match b {
                        b'\r' => {
                            self.state = State::Cr;
                            i += 1;
                        }
                        b'\n' => return DataProgress::Violation(DataViolation::BareLf),
                        _ => return DataProgress::Violation(DataViolation::Nul),
                    }
                }
            }
        }
        DataProgress::NeedMore
    }
}

#[cfg(test)]
mod reader_tests {
    use super::*;

    fn read_all(chunks: &[&[u8]]) -> (Vec<u8>, DataProgress, DataReader) {
        let mut r = DataReader::new(1 << 20, MAX_TEXT_LINE);
        let mut out = Vec::new();
        let mut last = DataProgress::NeedMore;
        for c in chunks {
            last = r.feed(c, &mut out);
            if last != DataProgress::NeedMore {
                break;
            }
        }
        (out, last, r)
    }

    #[test]
    fn unstuffs_and_ends() {
        let (out, p, _) = read_all(&[b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n"]);
        assert_eq!(out, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!(p, DataProgress::Done { consumed: 24 });
        let (out, p, _) = read_all(&[b".\r\n"]);
        assert_eq!(
            (out.as_slice(), p),
            (&b""[..], DataProgress::Done { consumed: 3 })
        );
    }

    #[test]
    fn split_anywhere() {
        let msg = b"a\r\n.b\r\n..\r\n.\r\n";
        for split in 0..msg.len() {
            let (out, p, _) = read_all(&[&msg[..split], &msg[split..]]);
            assert_eq!(out, b"a\r\nb\r\n.\r\n", "split at {split}");
            assert!(matches!(p, DataProgress::Done { .. }));
        }
    }

    #[test]
    fn smuggling_endings_are_violations() {
        let cases: [(&[u8], DataViolation); 11] = [
            (b"\n.\n", DataViolation::BareLf),
            (b"\n.\r\n", DataViolation::BareLf),
            (b"\r.\n", DataViolation::BareCr),
            (b"\r.\r", DataViolation::BareCr),
            (b"\r.\r\n", DataViolation::BareCr),
            (b"\r\n.\r", DataViolation::BareCr),
            (b"\r\n.\n", DataViolation::BareLf),
            (b"\n.\r", DataViolation::BareLf),
            (b"\r\n\x00.\r\n", DataViolation::Nul),
            (b"\r\n.\x00\r\n", DataViolation::Nul),
            (b"\r\r\n.\r\r\n", DataViolation::BareCr),
        ];
        for (ending, want) in cases {
            let mut input = b"Subject: s\r\n\r\nbody".to_vec();
            input.extend_from_slice(ending);
            input.extend_from_slice(
                b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\nsmuggled\r\n.\r\n",
            );
            let (_, p, _) = read_all(&[&input]);
            assert_eq!(p, DataProgress::Violation(want), "{ending:?}");
        }
    }

    #[test]
    fn size_is_counted_while_streaming() {
        let mut r = DataReader::new(10, MAX_TEXT_LINE);
        let mut out = Vec::new();
        assert_eq!(
            r.feed(b"0123456789abcdef\r\n", &mut out),
            DataProgress::NeedMore
        );
        assert!(r.oversize());
        assert!(out.len() <= 10);
        assert!(matches!(
            r.feed(b".\r\n", &mut out),
            DataProgress::Done { .. }
        ));
        assert_eq!(r.size(), 18);
    }

    #[test]
    fn long_lines_are_flagged() {
        let mut line = vec![b'x'; 998];
        line.extend_from_slice(b"\r\n");
        let (_, _, r) = read_all(&[&line, b".\r\n"]);
        assert!(!r.long_line());
        let mut line = vec![b'x'; 999];
        line.extend_from_slice(b"\r\n");
        let (_, _, r) = read_all(&[&line, b".\r\n"]);
        assert!(r.long_line());
    }
}

// ---- writer ----

/// Streaming dot-stuffer for the client side of DATA.
///
/// `push` converts any bare CR or bare LF into CRLF and doubles a dot at the start of a line;
/// `finish` terminates the last line if needed and writes `.\r\n`. A CR at the end of one
/// chunk followed by LF at the start of the next is one line ending, as it should be.
#[derive(Debug)]
pub struct DotStuffer {
    /// The next byte starts a line.
    at_line_start: bool,
    /// The last byte pushed was a CR whose line ending is not written yet.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the wire form of `input` to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 2);
        while let Some(&first) = input.first() {
            if self.pending_cr {
                // The CR ends a line whether or not an LF follows it.
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if first == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            // Copy up to the next line-ending byte in one go.
            let run = input
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(input.len());
            out.extend_from_slice(&input[..run]);
            if run > 0 {
                self.at_line_start = false;
            }
            match input.get(run) {
                Some(b'\r') => self.pending_cr = true,
                Some(_) => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
                None => {}
            }
            input = &input[(run + 1).min(input.len())..];
        }
    }

    /// Ends the last line if it is unterminated and writes the end-of-data marker.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;
    use proptest::prelude::*;

    fn stuff(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    /// What the wire form must carry: every line ending made CRLF, the last line terminated.
    fn canonical(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' if input.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// A deliberately naive receiver: split at CRLF, stop at ".", drop one leading dot.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = wire;
        loop {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("unterminated line");
            let line = &rest[..end];
            rest = &rest[end + 2..];
            if line == b"." {
                assert!(rest.is_empty(), "data after the terminator");
                return out;
            }
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            out.extend_from_slice(b"\r\n");
        }
    }

    #[test]
    fn stuffs_and_terminates() {
        assert_eq!(stuff(&[]), b".\r\n");
        assert_eq!(stuff(&[b""]), b".\r\n");
        assert_eq!(stuff(&[b"a\r\n.\r\n..b\r\n"]), b"a\r\n..\r\n...b\r\n.\r\n");
        assert_eq!(stuff(&[b".x"]), b"..x\r\n.\r\n");
        assert_eq!(stuff(&[b"no newline"]), b"no newline\r\n.\r\n");
    }

    #[test]
    fn canonicalises_bare_line_endings() {
        assert_eq!(stuff(&[b"a\rb\nc\r\n"]), b"a\r\nb\r\nc\r\n.\r\n");
        assert_eq!(stuff(&[b"a\n.\r.\n"]), b"a\r\n..\r\n..\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r"]), b"a\r\n.\r\n");
        assert_eq!(stuff(&[b"\r\r\n\n"]), b"\r\n\r\n\r\n.\r\n");
    }

    #[test]
    fn line_endings_split_across_chunks() {
        assert_eq!(stuff(&[b"a\r", b"\n.b"]), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r", b".b"]), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\n", b"", b".", b"."]), b"a\r\n...\r\n.\r\n");
    }

    proptest! {
        #[test]
        fn round_trips_and_never_leaks(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for c in cuts {
                chunks.push(&input[start..c]);
                start = c;
            }
            chunks.push(&input[start..]);
            let wire = stuff(&chunks);
            prop_assert_eq!(&wire, &stuff(&[&input]));
            prop_assert_eq!(unstuff(&wire), canonical(&input));
            // No bare CR or LF anywhere.
            for (i, &b) in wire.iter().enumerate() {
                if b == b'\r' {
                    prop_assert_eq!(wire.get(i + 1), Some(&b'\n'));
                }
                if b == b'\n' {
                    prop_assert!(i > 0 && wire[i - 1] == b'\r');
                }
            }
            // The end-of-data marker appears once, at the end.
            let marker = b"\r\n.\r\n";
            let first = wire.windows(5).position(|w| w == marker);
            if wire.len() > 3 {
                prop_assert_eq!(first, Some(wire.len() - 5));
            } else {
                prop_assert_eq!(&wire, b".\r\n");
            }
            prop_assert!(!wire.starts_with(b".\r\n") || wire.len() == 3);
        }
    }
}
