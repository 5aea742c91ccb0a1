//! The strict command-line reader.
//!
//! RFC 5321 2.3.8: lines end with CRLF, and a bare CR or LF is not a line ending. This reader
//! takes bytes from the front of a buffer and yields one of: a complete line (without CRLF), a
//! bare LF, a bare CR, or an over-long line. An over-long line is consumed up to and including
//! its CRLF (the bytes are dropped as they arrive, so nothing over the limit is ever buffered)
//! and reported once. A bare CR or LF is reported without consuming anything: the stream is no
//! longer trustworthy and the caller closes the connection.

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line of `len` bytes (without CRLF) is at the front of the buffer; the caller
    /// takes `buf[..len]` and drains `len + 2` bytes.
    Line(usize),
    /// A line over the limit ended; the caller drains `consumed` bytes.
    TooLong {
        consumed: usize,
    },
    /// Part of an over-long line was dropped (`consumed` bytes); more is needed.
    Discarded {
        consumed: usize,
    },
    BareLf,
    BareCr,
    /// No complete line yet.
    NeedMore,
}

/// Reads CRLF-terminated lines of at most `max` octets including the CRLF.
#[derive(Debug)]
pub struct LineReader {
    max: usize,
    discarding: bool,
}

impl LineReader {
    pub fn new(max: usize) -> Self {
        LineReader {
            max: max.max(3),
            discarding: false,
        }
    }

    /// Looks at the front of `buf`.
    pub fn next(&mut self, buf: &[u8]) -> LineEvent {
        let end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
        match end {
            Some(i) if buf[i] == b'\n' => LineEvent::BareLf,
            Some(i) if i + 1 == buf.len() => self.partial(i),
            Some(i) if buf[i + 1] != b'\n' => LineEvent::BareCr,
            Some(i) => {
                if std::mem::take(&mut self.discarding) || i + 2 > self.max {
                    LineEvent::TooLong { consumed: i + 2 }
                } else {
                    LineEvent::Line(i)
                }
            }
            None => self.partial(buf.len()),
        }
    }

    /// No CRLF yet; `keep` bytes of `buf` must stay (a trailing CR whose LF has not arrived).
    fn partial(&mut self, keep: usize) -> LineEvent {
        if self.discarding || keep + 2 > self.max {
            self.discarding = true;
            if keep == 0 {
                return LineEvent::NeedMore;
            }
            return LineEvent::Discarded { consumed: keep };
        }
        LineEvent::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_violations() {
        let mut r = LineReader::new(512);
        assert_eq!(r.next(b"NOOP\r\nQUIT\r\n"), LineEvent::Line(4));
        assert_eq!(r.next(b"NOOP\r"), LineEvent::NeedMore);
        assert_eq!(r.next(b"NOOP"), LineEvent::NeedMore);
        assert_eq!(r.next(b"NOOP\nQUIT\r\n"), LineEvent::BareLf);
        assert_eq!(r.next(b"NOOP\rQUIT\r\n"), LineEvent::BareCr);
        assert_eq!(r.next(b"\r\n"), LineEvent::Line(0));
    }

    #[test]
    fn long_lines_are_dropped_as_they_arrive() {
        let mut r = LineReader::new(10);
        assert_eq!(
            r.next(b"0123456789abc"),
            LineEvent::Discarded { consumed: 13 }
        );
        assert_eq!(r.next(b"def\r"), LineEvent::Discarded { consumed: 3 });
        assert_eq!(r.next(b"\r\nNOOP\r\n"), LineEvent::TooLong { consumed: 2 });
        assert_eq!(r.next(b"NOOP\r\n"), LineEvent::Line(4));
        assert_eq!(r.next(b"12345678\r\n"), LineEvent::Line(8));
        assert_eq!(
            r.next(b"123456789\r\n"),
            LineEvent::TooLong { consumed: 11 }
        );
    }
}
