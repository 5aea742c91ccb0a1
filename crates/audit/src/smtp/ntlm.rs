//! NTLM messages for `smtp.ntlm_info`: the NEGOTIATE message the probe sends after
//! `AUTH NTLM`, and a decoder for the CHALLENGE message a server answers with (MS-NLMP
//! sections 2.2.1.1, 2.2.1.2, 2.2.2.1 and 2.2.2.10).
//!
//! The challenge is sent to anyone before authentication and carries the server's NetBIOS and
//! DNS domain and computer names, the DNS forest, its clock and its Windows version and build:
//! the information leak of Exchange servers that offer NTLM to the internet. Nothing secret is
//! sent: the NEGOTIATE message names no user, domain or workstation, and the exchange is
//! cancelled after the challenge.
//!
//! The decoder reads untrusted bytes: every offset and length is checked against the
//! message, strings are capped at [`MAX_NAME_CHARS`], at most [`MAX_AV_PAIRS`] pairs are read,
//! messages over [`MAX_MESSAGE`] bytes are refused, and nothing panics (it is fuzzed).

use std::fmt;

/// NTLMSSP signature that starts every message.
const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
/// Largest challenge message decoded.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Most AV pairs read from the target information.
pub const MAX_AV_PAIRS: usize = 64;
/// Longest name kept, in characters.
pub const MAX_NAME_CHARS: usize = 256;

const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const NEGOTIATE_OEM: u32 = 0x0000_0002;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

/// Seconds between 1601-01-01 (FILETIME epoch) and 1970-01-01.
const FILETIME_UNIX_OFFSET: u64 = 11_644_473_600;

/// The NEGOTIATE message: flags asking for the target name, target information and version;
/// no domain, no workstation.
pub fn negotiate_message() -> Vec<u8> {
    let flags = NEGOTIATE_UNICODE
        | NEGOTIATE_OEM
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | NEGOTIATE_ALWAYS_SIGN
        | NEGOTIATE_EXTENDED_SESSIONSECURITY
        | NEGOTIATE_VERSION
        | NEGOTIATE_128
        | NEGOTIATE_56;
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    // DomainNameFields and WorkstationFields: empty (length 0, offset 40).
    for _ in 0..2 {
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&40u32.to_le_bytes());
    }
    // Version: left zero (the client's version means nothing to the server's answer).
    m.extend_from_slice(&[0u8; 8]);
    m
}

/// The server's Windows version from the challenge's Version field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsVersion {
    pub major: u8,
    pub minor: u8,
    pub build: u16,
}

impl fmt::Display for OsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{} build {}", self.major, self.minor, self.build)
    }
}

/// What a CHALLENGE message reveals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    pub flags: u32,
    /// TargetName: usually the NetBIOS domain name.
    pub target_name: Option<String>,
    pub netbios_computer: Option<String>,
    pub netbios_domain: Option<String>,
    pub dns_computer: Option<String>,
    pub dns_domain: Option<String>,
    pub dns_tree: Option<String>,
    /// The server's clock (MsvAvTimestamp) in seconds since the Unix epoch.
    pub timestamp: Option<i64>,
    pub version: Option<OsVersion>,
}

impl Challenge {
    /// Whether the challenge revealed any name or version.
    pub fn reveals_anything(&self) -> bool {
        !self.revealed().is_empty()
    }

    /// `(label, value)` for every piece of information revealed, in a fixed order.
    pub fn revealed(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut add = |label, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                out.push((label, v.clone()));
            }
        };
        add("target name", &self.target_name);
        add("NetBIOS domain", &self.netbios_domain);
        add("NetBIOS computer", &self.netbios_computer);
        add("DNS domain", &self.dns_domain);
        add("DNS computer", &self.dns_computer);
        add("DNS forest", &self.dns_tree);
        if let Some(v) = self.version {
            out.push(("Windows version", v.to_string()));
        }
        out
    }
}

/// Why a challenge could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NtlmError {
    TooShort,
    TooLong,
    NotNtlm,
    /// A message type other than 2 (CHALLENGE).
    WrongType(u32),
    /// A field points outside the message.
    BadField(&'static str),
}

impl fmt::Display for NtlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NtlmError::TooShort => f.write_str("NTLM message too short"),
            NtlmError::TooLong => write!(f, "NTLM message longer than {MAX_MESSAGE} bytes"),
            NtlmError::NotNtlm => f.write_str("no NTLMSSP signature"),
            NtlmError::WrongType(t) => write!(f, "NTLM message type {t}, expected 2 (challenge)"),
            NtlmError::BadField(name) => write!(f, "NTLM {name} field points outside the message"),
        }
    }
}

impl std::error::Error for NtlmError {}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// The payload a `(length, max length, offset)` field at `at` points to.
fn field<'a>(b: &'a [u8], at: usize, name: &'static str) -> Result<&'a [u8], NtlmError> {
    let len = u16_at(b, at).ok_or(NtlmError::TooShort)? as usize;
    let offset = u32_at(b, at + 4).ok_or(NtlmError::TooShort)? as usize;
    if len == 0 {
        return Ok(&[]);
    }
    let end = offset.checked_add(len).ok_or(NtlmError::BadField(name))?;
    b.get(offset..end).ok_or(NtlmError::BadField(name))
}

/// UTF-16LE to text, invalid units replaced, control characters dropped, capped at
/// [`MAX_NAME_CHARS`]. An odd trailing byte is ignored.
fn utf16le(bytes: &[u8]) -> String {
    let units = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect()
}

/// OEM (8-bit) text: printable ASCII kept, anything else replaced, capped.
fn oem(bytes: &[u8]) -> String {
    bytes
        .iter()
        .filter(|b| !b.is_ascii_control())
        .take(MAX_NAME_CHARS)
        .map(|&b| {
            if b.is_ascii() {
                b as char
            } else {
                char::REPLACEMENT_CHARACTER
            }
        })
        .collect()
}

/// Decodes a CHALLENGE message.
pub fn parse_challenge(msg: &[u8]) -> Result<Challenge, NtlmError> {
    if msg.len() > MAX_MESSAGE {
        return Err(NtlmError::TooLong);
    }
    if msg.len() < 32 {
        return Err(NtlmError::TooShort);
    }
    if &msg[..8] != SIGNATURE {
        return Err(NtlmError::NotNtlm);
    }
    let kind = u32_at(msg, 8).ok_or(NtlmError::TooShort)?;
    if kind != 2 {
        return Err(NtlmError::WrongType(kind));
    }
    let flags = u32_at(msg, 20).ok_or(NtlmError::TooShort)?;
    let mut c = Challenge {
        flags,
        ..Challenge::default()
    };
    let name = field(msg, 12, "TargetName")?;
    if !name.is_empty() {
        c.target_name = Some(if flags & NEGOTIATE_UNICODE != 0 {
            utf16le(name)
        } else {
            oem(name)
        });
    }
    // Version 1 challenges (no target information) end at byte 32.
    if msg.len() >= 48 && flags & NEGOTIATE_TARGET_INFO != 0 {
        read_target_info(field(msg, 40, "TargetInfo")?, &mut c);
    }
    if msg.len() >= 56 && flags & NEGOTIATE_VERSION != 0 {
        c.version = Some(OsVersion {
            major: msg[48],
            minor: msg[49],
            build: u16_at(msg, 50).unwrap_or(0),
        });
    }
    Ok(c)
}

/// Reads AV pairs until MsvAvEOL, the end of the data, or [`MAX_AV_PAIRS`]; a pair that
/// runs past the end stops the reading (what came before is kept).
fn read_target_info(info: &[u8], c: &mut Challenge) {
    let mut at = 0usize;
    for _ in 0..MAX_AV_PAIRS {
        let (Some(id), Some(len)) = (u16_at(info, at), u16_at(info, at + 2)) else {
            return;
        };
        let start = at + 4;
        let Some(value) = info.get(start..start + len as usize) else {
            return;
        };
        match id {
            0 => return,
            1 => c.netbios_computer = Some(utf16le(value)),
            2 => c.netbios_domain = Some(utf16le(value)),
            3 => c.dns_computer = Some(utf16le(value)),
            4 => c.dns_domain = Some(utf16le(value)),
            5 => c.dns_tree = Some(utf16le(value)),
            7 => {
                c.timestamp = u64_at(value, 0)
                    .map(|ft| (ft / 10_000_000) as i64 - FILETIME_UNIX_OFFSET as i64);
            }
            _ => {}
        }
        at = start + len as usize;
    }
}

/// Builds a CHALLENGE message, for tests and fuzzing seeds: `names` are `(AvId, text)` pairs
/// written in order, then the timestamp (Unix seconds) when given, then MsvAvEOL.
pub fn build_challenge(
    target_name: &str,
    names: &[(u16, &str)],
    timestamp: Option<i64>,
    version: Option<OsVersion>,
) -> Vec<u8> {
    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
    }
    let mut info = Vec::new();
    for (id, text) in names {
        let v = utf16(text);
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(v.len() as u16).to_le_bytes());
        info.extend_from_slice(&v);
    }
    if let Some(t) = timestamp {
        let ft = (t + FILETIME_UNIX_OFFSET as i64).max(0) as u64 * 10_000_000;
        info.extend_from_slice(&7u16.to_le_bytes());
        info.extend_from_slice(&8u16.to_le_bytes());
        info.extend_from_slice(&ft.to_le_bytes());
    }
    info.extend_from_slice(&[0, 0, 0, 0]);
    let name = utf16(target_name);
    let mut flags = NEGOTIATE_UNICODE | REQUEST_TARGET | NEGOTIATE_NTLM | NEGOTIATE_TARGET_INFO;
    if version.is_some() {
        flags |= NEGOTIATE_VERSION;
    }
    let header = 56u32;
    let mut m = Vec::new();
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&(name.len() as u16).to_le_bytes());
    m.extend_from_slice(&(name.len() as u16).to_le_bytes());
    m.extend_from_slice(&header.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(header + name.len() as u32).to_le_bytes());
    match version {
        Some(v) => {
            m.push(v.major);
            m.push(v.minor);
            m.extend_from_slice(&v.build.to_le_bytes());
            m.extend_from_slice(&[0, 0, 0, 15]);
        }
        None => m.extend_from_slice(&[0u8; 8]),
    }
    m.extend_from_slice(&name);
    m.extend_from_slice(&info);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange_like() -> Vec<u8> {
        build_challenge(
            "CORP",
            &[
                (2, "CORP"),
                (1, "EXCH01"),
                (4, "corp.local"),
                (3, "exch01.corp.local"),
                (5, "corp.local"),
            ],
            Some(1_700_000_000),
            Some(OsVersion {
                major: 10,
                minor: 0,
                build: 17763,
            }),
        )
    }

    #[test]
    fn negotiate_message_is_well_formed() {
        let m = negotiate_message();
        assert_eq!(m.len(), 40);
        assert_eq!(&m[..8], b"NTLMSSP\0");
        assert_eq!(u32_at(&m, 8), Some(1));
        assert_eq!(u32_at(&m, 12), Some(0xa208_8207));
    }

    #[test]
    fn decodes_what_an_exchange_server_reveals() {
        let c = parse_challenge(&exchange_like()).unwrap();
        assert_eq!(c.target_name.as_deref(), Some("CORP"));
        assert_eq!(c.netbios_domain.as_deref(), Some("CORP"));
        assert_eq!(c.netbios_computer.as_deref(), Some("EXCH01"));
        assert_eq!(c.dns_domain.as_deref(), Some("corp.local"));
        assert_eq!(c.dns_computer.as_deref(), Some("exch01.corp.local"));
        assert_eq!(c.dns_tree.as_deref(), Some("corp.local"));
        assert_eq!(c.timestamp, Some(1_700_000_000));
        assert_eq!(c.version.unwrap().to_string(), "10.0 build 17763");
        assert!(c.reveals_anything());
        assert_eq!(c.revealed().len(), 7);
    }

    #[test]
    fn oem_target_name_and_no_target_info() {
        let mut m = build_challenge("", &[], None, None);
        // Clear UNICODE and TARGET_INFO; point TargetName at 4 OEM bytes appended at the end.
        let flags = u32_at(&m, 20).unwrap() & !NEGOTIATE_UNICODE & !NEGOTIATE_TARGET_INFO;
        m[20..24].copy_from_slice(&flags.to_le_bytes());
        let at = m.len() as u32;
        m.extend_from_slice(b"WORK");
        m[12..14].copy_from_slice(&4u16.to_le_bytes());
        m[16..20].copy_from_slice(&at.to_le_bytes());
        let c = parse_challenge(&m).unwrap();
        assert_eq!(c.target_name.as_deref(), Some("WORK"));
        assert_eq!(c.dns_domain, None);
        assert!(c.version.is_none());
    }

    #[test]
    fn refuses_what_is_not_a_challenge() {
        assert_eq!(parse_challenge(b"NTLMSSP\0"), Err(NtlmError::TooShort));
        assert_eq!(parse_challenge(&[0u8; 64]), Err(NtlmError::NotNtlm));
        let mut m = exchange_like();
        m[8] = 3;
        assert_eq!(parse_challenge(&m), Err(NtlmError::WrongType(3)));
        let mut m = exchange_like();
        m[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_challenge(&m), Err(NtlmError::BadField("TargetName")));
        let mut m = exchange_like();
        m[44..48].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert_eq!(parse_challenge(&m), Err(NtlmError::BadField("TargetInfo")));
        assert_eq!(
            parse_challenge(&vec![0u8; MAX_MESSAGE + 1]),
            Err(NtlmError::TooLong)
        );
    }

    #[test]
    fn truncated_av_pairs_keep_what_came_before() {
        let mut m = exchange_like();
        // Claim a longer target info than there is room for after the first pair: the
        // field check fails, so shorten the message's view instead by cutting a pair's value.
        let info_len = u16_at(&m, 40).unwrap() as usize;
        let info_off = u32_at(&m, 44).unwrap() as usize;
        // Make the second pair's length huge.
        let first_len = u16_at(&m, info_off + 2).unwrap() as usize;
        let second = info_off + 4 + first_len;
        m[second + 2..second + 4].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(info_off + info_len <= m.len());
        let c = parse_challenge(&m).unwrap();
        assert_eq!(c.netbios_domain.as_deref(), Some("CORP"));
        assert_eq!(c.netbios_computer, None);
    }

    #[test]
    fn never_panics_on_any_prefix_or_bit_flip() {
        let good = exchange_like();
        for n in 0..=good.len() {
            let _ = parse_challenge(&good[..n]);
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut m = good.clone();
                m[i] ^= 1 << bit;
                let _ = parse_challenge(&m);
            }
        }
    }

    #[test]
    fn names_are_capped_and_cleaned() {
        let long = "A".repeat(1000);
        let m = build_challenge("X", &[(3, &long), (1, "EX\u{0}CH\u{7}")], None, None);
        let c = parse_challenge(&m).unwrap();
        assert_eq!(c.dns_computer.unwrap().len(), MAX_NAME_CHARS);
        assert_eq!(c.netbios_computer.as_deref(), Some("EXCH"));
    }
}
