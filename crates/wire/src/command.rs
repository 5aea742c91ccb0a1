//! SMTP command lines (RFC 5321 section 4.1) and ESMTP parameters.
//!
//! [`parse`] takes one command line without its CRLF (the strict line reader in [`crate::line`]
//! has already refused bare CR and LF and enforced the length limit) and returns a [`Command`]
//! or a [`CommandError`] that maps to the reply the server sends. Parameters are checked here
//! against the extensions the server offers: SIZE and BODY on MAIL; nothing on RCPT (we offer
//! no DSN). Anything unknown is refused with 555 rather than ignored.

use crate::address::{self, AddressError, ForwardPath, ReversePath};
use crate::reply::Reply;
use zeroize::Zeroizing;

/// Commands we know and never implement.
const NOT_IMPLEMENTED: [&str; 8] = [
    "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML", "XCLIENT", "XFORWARD",
];

/// Most ESMTP parameters accepted on one command.
pub const MAX_PARAMS: usize = 8;

/// The BODY parameter of MAIL (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// Parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE= declared by the client (RFC 1870).
    pub size: Option<u64>,
    pub body: Option<Body>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
    },
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth(AuthArg),
    /// Commands we recognise and never implement (TURN, ETRN, ATRN, ...).
    NotImplemented(&'static str),
}

impl Command {
    /// RFC 2920 section 3.1: commands that may only be the last of a pipelined group.
    /// STARTTLS (RFC 3207) and AUTH (RFC 4954) are in the same position.
    pub fn must_end_group(&self) -> bool {
        matches!(
            self,
            Command::Ehlo(_)
                | Command::Helo(_)
                | Command::Data
                | Command::Vrfy
                | Command::Expn
                | Command::Quit
                | Command::Noop
                | Command::Help
                | Command::StartTls
                | Command::Auth(_)
                | Command::NotImplemented(_)
        )
    }

    /// The verb, for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy => "VRFY",
            Command::Expn => "EXPN",
            Command::Help => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth(_) => "AUTH",
            Command::NotImplemented(v) => v,
        }
    }
}

/// The argument of AUTH (RFC 4954 section 4): a mechanism name and perhaps an initial
/// response. Its `Debug` hides the response, which carries the password.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthArg {
    /// As the client wrote it (1 to 20 of A-Z, 0-9, `-`, `_`; any case).
    pub mechanism: String,
    /// The initial response as sent (base64, or `=` for an empty one).
    pub initial: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for AuthArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArg")
            .field("mechanism", &self.mechanism)
            .field("initial", &self.initial.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a command line was refused; [`CommandError::reply`] gives the answer to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    Unrecognized,
    /// Control characters or 8-bit bytes in a command line.
    BadCharacters,
    Syntax(&'static str),
    BadSender(AddressError),
    BadRecipient(AddressError),
    UnknownParameter(String),
    BadParameter(&'static str),
}

impl CommandError {
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => {
                Reply::ext(500, (5, 5, 2), "Error: command not recognized")
            }
            CommandError::BadCharacters => Reply::ext(
                500,
                (5, 5, 2),
                "Error: command contains control or 8-bit characters",
            ),
            CommandError::Syntax(usage) => Reply::ext(501, (5, 5, 4), format!("Syntax: {usage}")),
            CommandError::BadSender(AddressError::NonAscii)
            | CommandError::BadRecipient(AddressError::NonAscii) => {
                Reply::ext(553, (5, 6, 7), "Non-ASCII addresses are not supported")
            }
            CommandError::BadSender(e) => {
                Reply::ext(501, (5, 1, 7), format!("Bad sender address syntax: {e}"))
            }
            CommandError::BadRecipient(e) => {
                Reply::ext(501, (5, 1, 3), format!("Bad recipient address syntax: {e}"))
            }
            CommandError::UnknownParameter(p) => Reply::ext(
                555,
                (5, 5, 4),
                format!("Unsupported parameter {}", sanitize(p)),
            ),
            CommandError::BadParameter(what) => {
                Reply::ext(501, (5, 5, 4), format!("Bad parameter: {what}"))
            }
        }
    }
}

/// Keeps an echoed client token short and printable.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect()
}

/// Parses one command line (without CRLF).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b >= 0x7f) {
        return Err(CommandError::BadCharacters);
    }
    // Checked ASCII above.
    let line = std::str::from_utf8(line).map_err(|_| CommandError::BadCharacters)?;
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    let no_arg = |c: Command| {
        if arg.trim().is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax("no arguments allowed"))
        }
    };
    match upper.as_str() {
        "EHLO" | "HELO" => {
            let name = arg.trim();
            if name.is_empty() || name.len() > 255 || name.contains([' ', '\t']) {
                return Err(CommandError::Syntax(if upper == "EHLO" {
                    "EHLO hostname"
                } else {
                    "HELO hostname"
                }));
            }
            Ok(if upper == "EHLO" {
                Command::Ehlo(name.into())
            } else {
                Command::Helo(name.into())
            })
        }
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" => no_arg(Command::Data),
        "BDAT" => Ok(Command::Bdat),
        "RSET" => no_arg(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_arg(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_arg(Command::StartTls),
        "AUTH" => parse_auth(arg),
        other => NOT_IMPLEMENTED
            .iter()
            .find(|v| **v == other)
            .map(|v| Command::NotImplemented(v))
            .ok_or(CommandError::Unrecognized),
    }
}

fn parse_auth(arg: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "AUTH mechanism [initial-response]";
    let mut words = arg.split(' ');
    let mechanism = words.next().unwrap_or("");
    let initial = words.next();
    let valid = !mechanism.is_empty()
        && mechanism.len() <= 20
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid || words.next().is_some() || initial == Some("") {
        return Err(CommandError::Syntax(USAGE));
    }
    Ok(Command::Auth(AuthArg {
        mechanism: mechanism.to_string(),
        initial: initial.map(|s| Zeroizing::new(s.to_string())),
    }))
}

/// Strips a case-insensitive `FROM:` / `TO:` keyword. RFC 5321 has no space before the path;
/// like most servers we tolerate spaces after the colon, never before it.
fn strip_keyword<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| arg[keyword.len()..].trim_start_matches(' '))
}

fn parse_mail(arg: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "MAIL FROM:<address>";
    let rest = strip_keyword(arg, "FROM:").ok_or(CommandError::Syntax(USAGE))?;
    let (inner, params) = address::split_bracketed(rest).map_err(|e| match e {
        AddressError::MissingBrackets => CommandError::Syntax(USAGE),
        e => CommandError::BadSender(e),
    })?;
    let from = address::parse_reverse_path(inner).map_err(CommandError::BadSender)?;
    let mut out = MailParams::default();
    for (key, value) in split_params(params)? {
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) if out.size.is_none() => {
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CommandError::BadParameter("SIZE must be a number"));
                }
                out.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(v)) if out.body.is_none() => {
                out.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    _ => return Err(CommandError::BadParameter("BODY must be 7BIT or 8BITMIME")),
                });
            }
            ("SIZE" | "BODY", _) => {
                return Err(CommandError::BadParameter(
                    "SIZE and BODY take one value each",
                ));
            }
            _ => return Err(CommandError::UnknownParameter(key.to_string())),
        }
    }
    Ok(Command::Mail { from, params: out })
}

fn parse_rcpt(arg: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "RCPT TO:<address>";
    let rest = strip_keyword(arg, "TO:").ok_or(CommandError::Syntax(USAGE))?;
    let (inner, params) = address::split_bracketed(rest).map_err(|e| match e {
        AddressError::MissingBrackets => CommandError::Syntax(USAGE),
        e => CommandError::BadRecipient(e),
    })?;
    let to = address::parse_forward_path(inner).map_err(CommandError::BadRecipient)?;
    if let Some((key, _)) = split_params(params)?.into_iter().next() {
        return Err(CommandError::UnknownParameter(key.to_string()));
    }
    Ok(Command::Rcpt { to })
}

/// `" KEY=VALUE KEY"` → pairs. Keys are esmtp-keywords, values esmtp-values (RFC 5321 4.1.2).
fn split_params(s: &str) -> Result<Vec<(&str, Option<&str>)>, CommandError> {
    if !s.is_empty() && !s.starts_with(' ') {
        return Err(CommandError::Syntax(
            "parameters must follow the address after a space",
        ));
    }
    let mut out = Vec::new();
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        if out.len() == MAX_PARAMS {
            return Err(CommandError::BadParameter("too many parameters"));
        }
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && v.bytes().all(|b| (33..=126).contains(&b) && b != b'=')
        });
        if !key_ok || !value_ok {
            return Err(CommandError::BadParameter("malformed parameter"));
        }
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Domain;

    #[test]
    fn parses_envelope_commands() {
        let c = parse(b"MAIL FROM:<a@example.net> SIZE=1000 BODY=8BITMIME").unwrap();
        let Command::Mail { from, params } = c else {
            panic!()
        };
        assert_eq!(from.to_string(), "a@example.net");
        assert_eq!(
            params,
            MailParams {
                size: Some(1000),
                body: Some(Body::EightBitMime)
            }
        );
        assert_eq!(
            parse(b"mail from: <>").unwrap(),
            Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default()
            }
        );
        let Command::Rcpt {
            to: ForwardPath::Path(p),
        } = parse(b"RCPT TO:<b@Example.org>").unwrap()
        else {
            panic!()
        };
        assert_eq!(p.mailbox.domain, Domain::Name("Example.org".into()));
    }

    #[test]
    fn refuses_what_we_do_not_offer() {
        assert_eq!(
            parse(b"MAIL FROM:<a@b.c> SMTPUTF8"),
            Err(CommandError::UnknownParameter("SMTPUTF8".into()))
        );
        assert_eq!(
            parse(b"RCPT TO:<a@b.c> NOTIFY=NEVER"),
            Err(CommandError::UnknownParameter("NOTIFY".into()))
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b.c> SIZE=x").unwrap_err().reply().code,
            501
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b.c> BODY=BINARYMIME")
                .unwrap_err()
                .reply()
                .code,
            501
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b.c> SIZE=1 SIZE=2")
                .unwrap_err()
                .reply()
                .code,
            501
        );
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(parse(b"MAIL FROM:a@b.c").unwrap_err().reply().code, 501);
        assert_eq!(parse(b"MAIL TO:<a@b.c>").unwrap_err().reply().code, 501);
        assert_eq!(parse(b"MAIL FROM :<a@b.c>").unwrap_err().reply().code, 501);
        assert_eq!(parse(b"EHLO").unwrap_err().reply().code, 501);
        assert_eq!(parse(b"DATA now").unwrap_err().reply().code, 501);
        assert_eq!(parse(b"XYZZY"), Err(CommandError::Unrecognized));
        assert_eq!(parse(b"HELO a\0b"), Err(CommandError::BadCharacters));
        assert_eq!(
            parse(b"RCPT TO:<a@b.c>x"),
            Err(CommandError::Syntax(
                "parameters must follow the address after a space"
            ))
        );
    }

    #[test]
    fn non_ascii_addresses_get_553() {
        let e = parse(b"RCPT TO:<\xc3\xa9@b.c>").unwrap_err();
        assert_eq!(e, CommandError::BadCharacters);
        assert_eq!(e.reply().code, 500);
    }

    #[test]
    fn auth_arguments() {
        let Ok(Command::Auth(a)) = parse(b"AUTH plain AGFsaWNlAHNlY3JldA==") else {
            panic!()
        };
        assert_eq!(a.mechanism, "plain");
        assert_eq!(
            a.initial.as_deref().map(String::as_str),
            Some("AGFsaWNlAHNlY3JldA==")
        );
        assert!(!format!("{a:?}").contains("AGFsaWNl"));
        let Ok(Command::Auth(a)) = parse(b"AUTH LOGIN") else {
            panic!()
        };
        assert_eq!(a.initial, None);
        for bad in [
            &b"AUTH"[..],
            b"AUTH ",
            b"AUTH PLAIN a b",
            b"AUTH PL@IN",
            b"AUTH PLAIN ",
        ] {
            assert_eq!(parse(bad).unwrap_err().reply().code, 501, "{bad:?}");
        }
    }

    #[test]
    fn group_enders() {
        assert!(parse(b"DATA").unwrap().must_end_group());
        assert!(parse(b"EHLO x").unwrap().must_end_group());
        assert!(!parse(b"RSET").unwrap().must_end_group());
        assert!(!parse(b"RCPT TO:<a@b.c>").unwrap().must_end_group());
    }
}
