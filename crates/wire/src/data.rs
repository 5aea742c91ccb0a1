//! The DATA phase in both directions: the reader takes a message from a client, the writer
//! ([`DotStuffer`]) sends one to a server.
//!
//! The writer never buffers a message: it turns each chunk it is given into wire form at once,
//! canonicalising every line ending to CRLF (a bare CR and a bare LF each become CRLF, so no
//! server ever sees a lone CR or LF from us, the basis of SMTP smuggling) and doubling a
//! leading dot on every line (RFC 5321 4.5.2). [`DotStuffer::finish`] ends an unterminated
//! last line and writes the `.` terminator. It cannot fail and keeps one byte of state.

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
