//! A hand-made TLS ClientHello offering chosen cipher suites, to learn which one a server
//! picks without completing the handshake (the technique of testssl.sh's socket mode).
//!
//! Used where the linked OpenSSL cannot make the offer itself: Debian's OpenSSL 3 has no RC4,
//! single-DES, 3DES or export suites, yet old servers (Exchange on an unpatched SCHANNEL,
//! OpenSSL 1.0) still accept them. The hello carries SNI (for a host name), the usual groups,
//! point formats and signature algorithms (SHA-1 included), and the renegotiation SCSV. The
//! answer is read record by record: a ServerHello naming one of the offered suites means
//! accepted; an alert, or the connection closing, means refused. Nothing after the
//! ServerHello is read, and nothing is ever encrypted or sent after the hello.
//!
//! Limits: at most [`MAX_ANSWER_BYTES`] are read; every read has the caller's time limit.
//! Fails with [`ProbeError`]: `Refused` as above, `Connect` for network trouble and for
//! answers that are not TLS.

use std::io::{Read, Write};
use std::time::Duration;

use super::probe::{ProbeError, TlsTarget, open};

/// Most bytes of the server's answer read before giving up on finding the ServerHello.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// SSL 3.0, TLS 1.0, 1.1, 1.2 as written in a hello.
pub const SSL3: u16 = 0x0300;
pub const TLS10: u16 = 0x0301;
pub const TLS12: u16 = 0x0303;

/// Suites with export-grade (40/56-bit) keys.
pub const EXPORT_SUITES: &[u16] = &[
    0x0003, 0x0006, 0x0008, 0x000B, 0x000E, 0x0011, 0x0014, 0x0017, 0x0019, 0x0062, 0x0063, 0x0064,
    0x0065,
];
/// Suites with RC4.
pub const RC4_SUITES: &[u16] = &[
    0x0004, 0x0005, 0x0018, 0x0066, 0xC002, 0xC007, 0xC00C, 0xC011, 0xC016,
];
/// Suites with single DES.
pub const DES_SUITES: &[u16] = &[0x0009, 0x000C, 0x000F, 0x0012, 0x0015, 0x001A];
/// Suites with triple DES.
pub const TRIPLE_DES_SUITES: &[u16] = &[
    0x000A, 0x000D, 0x0010, 0x0013, 0x0016, 0x001B, 0xC003, 0xC008, 0xC00D, 0xC012, 0xC017,
];
/// Suites without server authentication (anonymous Diffie-Hellman).
pub const ANONYMOUS_SUITES: &[u16] = &[
    0x0034, 0x003A, 0x006C, 0x006D, 0x00A6, 0x00A7, 0xC018, 0xC019,
];
/// Suites an SSL 3.0 server would pick from (AES, 3DES, RC4, DES; RSA and DHE).
pub const SSL3_SUITES: &[u16] = &[
    0x002F, 0x0035, 0x0033, 0x0039, 0x000A, 0x0016, 0x0005, 0x0004, 0x0009,
];
/// Suites without encryption.
pub const NULL_SUITES: &[u16] = &[
    0x0001, 0x0002, 0x003B, 0xC001, 0xC006, 0xC00B, 0xC010, 0xC015,
];

/// What a ServerHello said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Picked {
    /// The protocol version of the ServerHello (`0x0303` for TLS 1.2).
    pub version: u16,
    pub suite: u16,
}

impl From<Picked> for super::Negotiated {
    fn from(picked: Picked) -> super::Negotiated {
        super::Negotiated {
            version: version_name(picked.version).to_string(),
            cipher: format!("suite {:#06x} (raw ClientHello)", picked.suite),
            group: None,
            ephemeral: None,
            chain: Vec::new(),
        }
    }
}

/// The name of a protocol version number.
pub fn version_name(version: u16) -> &'static str {
    match version {
        SSL3 => "SSLv3",
        TLS10 => "TLSv1",
        0x0302 => "TLSv1.1",
        TLS12 => "TLSv1.2",
        _ => "unknown version",
    }
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// `body` preceded by its length in `width` bytes.
fn with_length(width: usize, body: &[u8]) -> Vec<u8> {
    let len = body.len().to_be_bytes();
    let mut out = len[len.len() - width..].to_vec();
    out.extend_from_slice(body);
    out
}

fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_u16(&mut out, kind);
    out.extend(with_length(2, body));
    out
}

/// The ClientHello record offering `suites` at `version` (no extensions for SSL 3.0).
pub fn client_hello(version: u16, suites: &[u16], sni: Option<&str>, random: &[u8; 32]) -> Vec<u8> {
    let mut body = Vec::new();
    push_u16(&mut body, version);
    body.extend_from_slice(random);
    body.push(0); // no session id
    let mut list = Vec::new();
    for s in suites.iter().chain(&[0x00FF]) {
        push_u16(&mut list, *s);
    }
    body.extend(with_length(2, &list));
    body.extend_from_slice(&[1, 0]); // null compression only
    if version > SSL3 {
        let mut extensions = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0];
            entry.extend(with_length(2, name.as_bytes()));
            extensions.extend(extension(0x0000, &with_length(2, &entry)));
        }
        let groups: Vec<u8> = [0x001D_u16, 0x0017, 0x0018, 0x0019]
            .iter()
            .flat_map(|g| g.to_be_bytes())
            .collect();
        extensions.extend(extension(0x000A, &with_length(2, &groups)));
        extensions.extend(extension(0x000B, &[1, 0]));
        let schemes: Vec<u8> = [
            0x0403_u16, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0203,
            0x0201,
        ]
        .iter()
        .flat_map(|s| s.to_be_bytes())
        .collect();
        extensions.extend(extension(0x000D, &with_length(2, &schemes)));
        body.extend(with_length(2, &extensions));
    }
    let mut handshake = vec![1]; // client_hello
    handshake.extend(with_length(3, &body));
    let mut record = vec![0x16];
    push_u16(&mut record, if version > TLS10 { TLS10 } else { version });
    record.extend(with_length(2, &handshake));
    record
}

/// Reads the server's answer to a hello: the suite it picked, or why not.
pub fn read_answer(stream: &mut impl Read) -> Result<Picked, ProbeError> {
    let mut handshake = Vec::new();
    let mut read = 0usize;
    loop {
        let mut header = [0u8; 5];
        if let Err(e) = stream.read_exact(&mut header) {
            return Err(match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    ProbeError::Connect(format!("handshake: {e}"))
                }
                _ => ProbeError::Refused(format!("the server closed the connection ({e})")),
            });
        }
        if !matches!(header[0], 0x15 | 0x16) {
            return Err(ProbeError::Connect(format!(
                "not a TLS answer (record type {})",
                header[0]
            )));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        read += 5 + len;
        if read > MAX_ANSWER_BYTES || len > 18 * 1024 {
            return Err(ProbeError::Connect(
                "no ServerHello within the first records".into(),
            ));
        }
        let mut fragment = vec![0u8; len];
        stream
            .read_exact(&mut fragment)
            .map_err(|e| ProbeError::Refused(format!("the server closed the connection ({e})")))?;
        if header[0] == 0x15 {
            let description = fragment.get(1).copied().unwrap_or_default();
            return Err(ProbeError::Refused(format!("alert {description}")));
        }
        handshake.extend_from_slice(&fragment);
        // handshake: type(1) length(3) version(2) random(32) session_id(1+n) suite(2)
        if handshake.len() < 4 {
            continue;
        }
        if handshake[0] != 2 {
            return Err(ProbeError::Connect(format!(
                "expected a ServerHello, got handshake type {}",
                handshake[0]
            )));
        }
        let Some(&id_len) = handshake.get(38) else {
            continue;
        };
        let at = 39 + usize::from(id_len);
        if let (Some(v), Some(s)) = (handshake.get(4..6), handshake.get(at..at + 2)) {
            return Ok(Picked {
                version: u16::from_be_bytes([v[0], v[1]]),
                suite: u16::from_be_bytes([s[0], s[1]]),
            });
        }
    }
}

/// Offers `suites` at `version` to `target` and reports the suite the server picks.
pub fn offer(
    target: &TlsTarget,
    timeout: Duration,
    ehlo_name: &str,
    version: u16,
    suites: &[u16],
) -> Result<Picked, ProbeError> {
    let mut random = [0u8; 32];
    openssl::rand::rand_bytes(&mut random).map_err(|e| ProbeError::Local(e.to_string()))?;
    let sni = target.host_ip().is_none().then_some(target.host.as_str());
    let mut stream = open(target, timeout, ehlo_name)?;
    stream
        .write_all(&client_hello(version, suites, sni, &random))
        .map_err(|e| ProbeError::Connect(format!("sending the hello: {e}")))?;
    let picked = read_answer(&mut stream)?;
    if picked.version > version {
        return Err(ProbeError::Refused(format!(
            "answered with {} to a {} hello",
            version_name(picked.version),
            version_name(version)
        )));
    }
    if !suites.contains(&picked.suite) {
        return Err(ProbeError::Connect(format!(
            "the server picked suite {:#06x}, which was not offered",
            picked.suite
        )));
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_layout() {
        let hello = client_hello(TLS12, &[0x0005], Some("mx.example.org"), &[7; 32]);
        assert_eq!(&hello[..3], &[0x16, 0x03, 0x01]);
        let record_len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        assert_eq!(record_len, hello.len() - 5);
        assert_eq!(hello[5], 1);
        assert_eq!(&hello[9..11], &[0x03, 0x03]);
        // After the random and the empty session id: two suites (ours and the SCSV).
        assert_eq!(&hello[44..50], &[0, 4, 0x00, 0x05, 0x00, 0xFF]);
        assert!(hello.windows(14).any(|w| w == b"mx.example.org"));
        // SSL 3.0: no extensions at all.
        let ssl3 = client_hello(SSL3, &[0x000A], Some("mx.example.org"), &[7; 32]);
        assert_eq!(ssl3.len(), 5 + 4 + 2 + 32 + 1 + 2 + 4 + 2);
    }

    #[test]
    fn answers() {
        // A ServerHello split over two records, choosing RC4-SHA at TLS 1.0.
        let mut hello = vec![2, 0, 0, 42, 0x03, 0x01];
        hello.extend([9; 32]);
        hello.extend([0, 0x00, 0x05, 0]);
        let mut wire = vec![0x16, 3, 1, 0, 10];
        wire.extend(&hello[..10]);
        wire.extend([0x16, 3, 1, 0, (hello.len() - 10) as u8]);
        wire.extend(&hello[10..]);
        assert_eq!(
            read_answer(&mut wire.as_slice()),
            Ok(Picked {
                version: TLS10,
                suite: 0x0005
            })
        );
        let alert = [0x15, 3, 3, 0, 2, 2, 40];
        assert_eq!(
            read_answer(&mut alert.as_slice()),
            Err(ProbeError::Refused("alert 40".into()))
        );
        assert!(matches!(
            read_answer(&mut &b"220 smtp\r\n"[..]),
            Err(ProbeError::Connect(_))
        ));
        assert!(matches!(
            read_answer(&mut &[][..]),
            Err(ProbeError::Refused(_))
        ));
    }
}
