//! The on-disk form of one message file, and how a complete file is told from a torn one.
//!
//! ```text
//! RAVELIN-SPOOL 1\n                  magic and format version
//! {"sender":"…",…}\n                 the envelope as one JSON line (at most MAX_HEADER octets)
//! <message bytes>                    CRLF canonical, not dot-stuffed, exactly as received
//! \n#END <len:16 hex> <crc32:8 hex>\n  trailer, 32 octets: body length and CRC-32 of the body
//! ```
//!
//! The trailer is written last, so a file cut short anywhere lacks it or disagrees with its own
//! length: [`read_layout`] checks magic, header and trailer and that header + body + trailer is
//! exactly the file's length. That is cheap (two short reads) and is what recovery does for
//! every queued file; [`verify_body`] also recomputes the CRC over the body and is done before a
//! delivery, where the body is read anyway. Every failure is `io::ErrorKind::InvalidData` with a
//! message saying what is wrong.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::Envelope;

pub(crate) const MAGIC: &[u8] = b"RAVELIN-SPOOL 1\n";
pub(crate) const TRAILER_LEN: u64 = 32;
/// Largest envelope line we write or read (a thousand long recipients fit comfortably).
pub(crate) const MAX_HEADER: usize = 1 << 20;

/// Where the parts of a message file are, as read back from disk.
#[derive(Debug)]
pub(crate) struct Layout {
    pub envelope: Envelope,
    pub body_start: u64,
    pub body_len: u64,
    pub crc: u32,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Magic line and envelope line for a new file.
pub(crate) fn encode_header(envelope: &Envelope) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(envelope).map_err(io::Error::other)?;
    if json.len() > MAX_HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "envelope of {} octets exceeds the spool limit of {MAX_HEADER}",
                json.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(MAGIC.len() + json.len() + 1);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(out)
}

pub(crate) fn encode_trailer(body_len: u64, crc: u32) -> [u8; TRAILER_LEN as usize] {
    let text = format!("\n#END {body_len:016x} {crc:08x}\n");
    let mut out = [0u8; TRAILER_LEN as usize];
    out.copy_from_slice(text.as_bytes());
    out
}

fn decode_trailer(t: &[u8]) -> Option<(u64, u32)> {
    if t.len() != TRAILER_LEN as usize
        || !t.starts_with(b"\n#END ")
        || t[22] != b' '
        || t[31] != b'\n'
    {
        return None;
    }
    fn hex(b: &[u8]) -> Option<&str> {
        std::str::from_utf8(b)
            .ok()
            .filter(|s| s.bytes().all(|c| c.is_ascii_hexdigit()))
    }
    let len = u64::from_str_radix(hex(&t[6..22])?, 16).ok()?;
    let crc = u32::from_str_radix(hex(&t[23..31])?, 16).ok()?;
    Some((len, crc))
}

/// Reads and checks the structure of a message file (not the body's checksum).
pub(crate) fn read_layout(file: &File) -> io::Result<Layout> {
    let file_len = file.metadata()?.len();
    // The envelope line: read in growing chunks until its newline, never past MAX_HEADER.
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let newline = loop {
        let n = file.read_at(&mut chunk, head.len() as u64)?;
        if n == 0 {
            return Err(invalid("file ends inside the header"));
        }
        let from = head.len();
        head.extend_from_slice(&chunk[..n]);
        if head.len() >= MAGIC.len() && !head.starts_with(MAGIC) {
            return Err(invalid("not a spool file (bad magic or version)"));
        }
        if head.len() > MAGIC.len()
            && let Some(pos) = head[from.max(MAGIC.len())..]
                .iter()
                .position(|&b| b == b'\n')
        {
            break from.max(MAGIC.len()) + pos;
        }
        if head.len() > MAGIC.len() + MAX_HEADER {
            return Err(invalid("envelope line exceeds the spool limit"));
        }
    };
    let envelope: Envelope = serde_json::from_slice(&head[MAGIC.len()..newline])
        .map_err(|e| invalid(format!("envelope does not parse: {e}")))?;
    let body_start = newline as u64 + 1;
    if file_len < body_start + TRAILER_LEN {
        return Err(invalid("file too short for its trailer (torn write)"));
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, file_len - TRAILER_LEN)?;
    let (body_len, crc) =
        decode_trailer(&trailer).ok_or_else(|| invalid("no valid trailer (torn write)"))?;
    if body_start
        .checked_add(body_len)
        .and_then(|v| v.checked_add(TRAILER_LEN))
        != Some(file_len)
    {
        return Err(invalid(format!(
            "trailer records {body_len} body octets but the file holds {}",
            file_len - body_start - TRAILER_LEN
        )));
    }
    let mut envelope = envelope;
    envelope.size = body_len;
    Ok(Layout {
        envelope,
        body_start,
        body_len,
        crc,
    })
}

/// Recomputes the body's CRC and compares it with the trailer's. A body of at most `keep`
/// octets is read in one piece and returned, so the caller need not read it again.
pub(crate) fn verify_body(file: &File, layout: &Layout, keep: u64) -> io::Result<Option<Vec<u8>>> {
    if layout.body_len <= keep {
        let mut body = vec![0u8; layout.body_len as usize];
        file.read_exact_at(&mut body, layout.body_start)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => invalid("file ends inside the body"),
                _ => e,
            })?;
        if crc32fast::hash(&body) != layout.crc {
            return Err(invalid("body checksum mismatch"));
        }
        return Ok(Some(body));
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    while pos < layout.body_len {
        let want = (layout.body_len - pos).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], layout.body_start + pos)?;
        if n == 0 {
            return Err(invalid("file ends inside the body"));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    if hasher.finalize() != layout.crc {
        return Err(invalid("body checksum mismatch"));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trip_and_rejects() {
        let t = encode_trailer(123_456, 0xDEAD_BEEF);
        assert_eq!(decode_trailer(&t), Some((123_456, 0xDEAD_BEEF)));
        let mut bad = t;
        bad[10] = b'g';
        assert_eq!(decode_trailer(&bad), None);
        let mut bad = t;
        bad[31] = b'x';
        assert_eq!(decode_trailer(&bad), None);
        assert_eq!(decode_trailer(&t[1..]), None);
    }
}
