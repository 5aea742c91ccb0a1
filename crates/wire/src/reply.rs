//! SMTP replies: the server writes them, the client parses them.
//!
//! A [`Reply`] is a three-digit code, an optional RFC 3463 enhanced status code and one or
//! more text lines. [`Reply::to_bytes`] always produces canonical output (`code-text` for every
//! line but the last, `code text` for the last, CRLF endings); text supplied by callers is
//! stripped of CR and LF so a reply can never inject a line of its own.
//!
//! [`ReplyParser`] is the client-side reader: fed arbitrary chunks of bytes it yields complete
//! replies. It fails (and stays failed) on lines over [`MAX_REPLY_LINE`] octets, on more than
//! [`MAX_REPLY_LINES`] lines in one reply, on a malformed code, and on continuation lines whose
//! code differs from the first line.

use std::fmt;

/// RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
/// We accept somewhat longer lines from servers (some are sloppy) but not unboundedly.
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines one multi-line reply may have (EHLO replies have ~15).
pub const MAX_REPLY_LINES: usize = 100;

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Enhanced {
    /// Parses the leading `x.y.z` of a reply text, returning the code and the rest of the text.
    pub fn parse_prefix(text: &str) -> Option<(Enhanced, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let mut parts = text[..end].split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some((Enhanced(class, subject, detail), text[end..].trim_start()))
    }
}

/// One SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    /// Text lines without the code and enhanced code; never empty.
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply. `enhanced` is written at the start of the text when present.
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// Shorthand for a reply with an enhanced code given as `(class, subject, detail)`.
    pub fn ext(code: u16, e: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply::new(code, Some(Enhanced(e.0, e.1, e.2)), text)
    }

    /// A multi-line reply (EHLO).
    pub fn multi(code: u16, enhanced: Option<Enhanced>, lines: Vec<String>) -> Reply {
        let lines = if lines.is_empty() {
            vec![String::new()]
        } else {
            lines
        };
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The whole text on one line (for logs and DSNs), enhanced code included.
    pub fn one_line(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = self.enhanced {
            s.push(' ');
            s.push_str(&e.to_string());
        }
        for l in &self.lines {
            s.push(' ');
            s.push_str(l);
        }
        s
    }

    /// Appends the canonical wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(if i + 1 == n { b' ' } else { b'-' });
            // EHLO keyword lines carry no enhanced code (RFC 2034 section 3 only
            // requires it on the text of ordinary replies); we write it on every line
            // of non-EHLO replies, as Postfix does.
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend(line.bytes().filter(|&b| b != b'\r' && b != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Why a server's reply could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyError {
    LineTooLong,
    TooManyLines,
    BadCode(String),
    CodeMismatch,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::LineTooLong => write!(f, "reply line longer than {MAX_REPLY_LINE} octets"),
            ReplyError::TooManyLines => write!(f, "reply with more than {MAX_REPLY_LINES} lines"),
            ReplyError::BadCode(l) => write!(f, "malformed reply line {l:?}"),
            ReplyError::CodeMismatch => write!(f, "multi-line reply changes its code"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Streaming reply reader for the client side.
///
/// Servers are allowed some leniency here (a bare LF ends a reply line), since a reply is
/// never forwarded anywhere: strictness matters on what we accept as mail, not on what we read
/// back from a server.
#[derive(Default, Debug)]
pub struct ReplyParser {
    buf: Vec<u8>,
    pending: Vec<String>,
    pending_code: Option<u16>,
    failed: Option<ReplyError>,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the server.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed but not yet consumed by a complete reply.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete reply, `Ok(None)` when more input is needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.next_inner();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(pos) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if pos > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let b = line.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !matches!(b[0], b'2'..=b'5')
            {
                return Err(ReplyError::BadCode(line));
            }
            let code: u16 = line[..3]
                .parse()
                .map_err(|_| ReplyError::BadCode(line.clone()))?;
            let (last, text) = match b.get(3) {
                None => (true, ""),
                Some(b' ') => (true, &line[4..]),
                Some(b'-') => (false, &line[4..]),
                Some(_) => return Err(ReplyError::BadCode(line.clone())),
            };
            if self.pending_code.is_some_and(|c| c != code) {
                return Err(ReplyError::CodeMismatch);
            }
            self.pending_code = Some(code);
            self.pending.push(text.to_string());
            if self.pending.len() > MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
            if last {
                let raw = std::mem::take(&mut self.pending);
                self.pending_code = None;
                // Take the enhanced code from the first line when every line carries the
                // same one (servers repeat it); keep the text of each line without it.
                let enhanced = raw
                    .first()
                    .and_then(|l| Enhanced::parse_prefix(l))
                    .map(|(e, _)| e)
                    .filter(|e| e.0 as u16 == code / 100);
                let lines = raw
                    .into_iter()
                    .map(|l| match (enhanced, Enhanced::parse_prefix(&l)) {
                        (Some(e), Some((e2, rest))) if e == e2 => rest.to_string(),
                        _ => l,
                    })
                    .collect();
                return Ok(Some(Reply {
                    code,
                    enhanced,
                    lines,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_canonical_multiline() {
        let r = Reply::multi(
            250,
            None,
            vec![
                "mx.example.org".into(),
                "PIPELINING".into(),
                "SIZE 100".into(),
            ],
        );
        assert_eq!(
            r.to_bytes(),
            b"250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
        let r = Reply::ext(550, (5, 5, 2), "bad\r\n250 injected");
        assert_eq!(r.to_bytes(), b"550 5.5.2 bad250 injected\r\n");
    }

    #[test]
    fn parses_split_replies() {
        let mut p = ReplyParser::new();
        p.feed(b"250-mx.example.org\r\n250-PIPE");
        assert_eq!(p.next_reply().unwrap(), None);
        p.feed(b"LINING\r\n250 8BITMIME\r\n354 go\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, vec!["mx.example.org", "PIPELINING", "8BITMIME"]);
        assert_eq!(p.next_reply().unwrap().unwrap().code, 354);
        assert_eq!(p.next_reply().unwrap(), None);
    }

    #[test]
    fn parses_enhanced_codes() {
        let mut p = ReplyParser::new();
        p.feed(b"550-5.1.1 no such user\r\n550 5.1.1 really\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.enhanced, Some(Enhanced(5, 1, 1)));
        assert_eq!(r.lines, vec!["no such user", "really"]);
        assert_eq!(r.one_line(), "550 5.1.1 no such user really");
    }

    #[test]
    fn rejects_garbage_and_mismatch() {
        let mut p = ReplyParser::new();
        p.feed(b"hello\r\n");
        assert!(p.next_reply().is_err());
        let mut p = ReplyParser::new();
        p.feed(b"250-a\r\n354 b\r\n");
        assert_eq!(p.next_reply(), Err(ReplyError::CodeMismatch));
    }
}
