//! SASL for SMTP AUTH (RFC 4954): the PLAIN (RFC 4616) and LOGIN mechanisms.
//!
//! The server session ([`crate::server`]) runs the exchange; this module holds what it needs:
//! the mechanism names, the decoding of one client response (`*` cancels, `=` is an empty
//! initial response, anything else must be canonical base64), the parsing of a PLAIN message,
//! and the [`Credentials`] handed to the driver. Nothing here verifies a password.
//!
//! Limits: an AUTH command line or a response line is at most [`MAX_AUTH_LINE`] octets with
//! its CRLF (RFC 4954 section 4); each of authorization identity, user name and password is at
//! most [`MAX_FIELD`] octets of UTF-8 (RFC 4616 section 2). What does not fit is refused.
//!
//! Secrets: a [`Password`] is overwritten with zeros when dropped, and so is every buffer that
//! held decoded credentials; its `Debug` prints `<redacted>`, so no log line can carry it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, Zeroizing};

use crate::reply::Reply;

/// Longest AUTH command or SASL response line, CRLF included (RFC 4954 section 4).
pub const MAX_AUTH_LINE: usize = 12288;

/// Longest authorization identity, user name or password, in octets (RFC 4616 section 2).
pub const MAX_FIELD: usize = 255;

/// The mechanisms offered, as the EHLO keyword line lists them.
pub const OFFERED: &str = "AUTH PLAIN LOGIN";

/// A SASL mechanism the server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Case-insensitive, as SASL mechanism names are.
    pub fn parse(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// A password: zeroed on drop, compared in constant time, never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(s: String) -> Password {
        Password(s)
    }

    /// The secret itself; keep the borrow short and never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl PartialEq for Password {
    fn eq(&self, other: &Password) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Password {}

/// What a client presented: the driver verifies it and answers with a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub mechanism: Mechanism,
    /// The identity to act as (PLAIN only); `None` when empty, i.e. the user name itself.
    pub authzid: Option<String>,
    /// The user name (authentication identity).
    pub authcid: String,
    pub password: Password,
}

/// Why a SASL response was refused; [`SaslError::reply`] is the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`.
    Cancelled,
    /// Not canonical base64.
    BadBase64,
    /// A PLAIN message without exactly two NULs, an empty user name or password, a field
    /// longer than [`MAX_FIELD`], or text that is not UTF-8.
    Malformed,
    /// A response line longer than [`MAX_AUTH_LINE`].
    TooLong,
}

impl SaslError {
    pub fn reply(self) -> Reply {
        match self {
            SaslError::Cancelled => Reply::ext(501, (5, 0, 0), "Authentication cancelled"),
            SaslError::BadBase64 => {
                Reply::ext(501, (5, 5, 2), "Cannot decode the response (base64)")
            }
            SaslError::Malformed => Reply::ext(501, (5, 5, 2), "Malformed authentication response"),
            SaslError::TooLong => {
                Reply::ext(500, (5, 5, 6), "Authentication exchange line is too long")
            }
        }
    }
}

/// Decodes one client response: `*` cancels; `=` is an empty initial response
/// (`initial` only, RFC 4954 section 4); anything else must be canonical base64.
pub fn decode_response(line: &[u8], initial: bool) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if initial && line == b"=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    if line.is_empty() {
        return Err(SaslError::BadBase64);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(line.len() / 4 * 3 + 3));
    STANDARD
        .decode_vec(line, &mut out)
        .map_err(|_| SaslError::BadBase64)?;
    Ok(out)
}

/// One field of a credential: UTF-8, at most [`MAX_FIELD`] octets.
pub fn field(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.len() > MAX_FIELD || bytes.contains(&0) {
        return Err(SaslError::Malformed);
    }
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| SaslError::Malformed)
}

/// A PLAIN message: `[authzid] NUL authcid NUL passwd` (RFC 4616 section 2).
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    let authzid = field(authzid)?;
    Ok(Credentials {
        mechanism: Mechanism::Plain,
        authzid: (!authzid.is_empty()).then_some(authzid),
        authcid: field(authcid)?,
        password: Password::new(field(password)?),
    })
}

/// The LOGIN mechanism's challenges, base64 of `Username:` and `Password:`.
pub const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// Base64 of `bytes`, as a client writes a response (for tests and the auditor).
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let c = parse_plain(b"\0alice@example.org\0secret").unwrap();
        assert_eq!(c.authzid, None);
        assert_eq!(c.authcid, "alice@example.org");
        assert_eq!(c.password.expose(), "secret");
        let c = parse_plain(b"admin\0alice\0s\xc3\xa9cret").unwrap();
        assert_eq!(c.authzid.as_deref(), Some("admin"));
        assert_eq!(c.password.expose(), "s\u{e9}cret");
        for bad in [
            &b"alice\0secret"[..],
            b"\0\0secret",
            b"\0alice\0",
            b"\0alice\0secret\0",
            b"\0al\xffice\0secret",
        ] {
            assert_eq!(parse_plain(bad), Err(SaslError::Malformed), "{bad:?}");
        }
        let long = [&b"\0"[..], &[b'a'; 256], b"\0pw"].concat();
        assert_eq!(parse_plain(&long), Err(SaslError::Malformed));
    }

    #[test]
    fn responses() {
        assert_eq!(decode_response(b"*", false), Err(SaslError::Cancelled));
        assert_eq!(decode_response(b"=", true).unwrap().as_slice(), b"");
        assert_eq!(decode_response(b"=", false), Err(SaslError::BadBase64));
        assert_eq!(decode_response(b"", false), Err(SaslError::BadBase64));
        assert_eq!(
            decode_response(b"YWxpY2U=", false).unwrap().as_slice(),
            b"alice"
        );
        for bad in [&b"YWxpY2U"[..], b"YWxp Y2U=", b"!!!!", b"YWxpY2U=="] {
            assert_eq!(
                decode_response(bad, false),
                Err(SaslError::BadBase64),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passwords_are_never_printed() {
        let c = parse_plain(b"\0alice\0hunter2").unwrap();
        let shown = format!("{c:?} {:?}", c.password);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"));
    }
}
