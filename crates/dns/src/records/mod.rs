//! Parsers of the DNS records (and the MTA-STS policy file) that the gateway acts on and the
//! auditor reports on: SPF, DMARC, MTA-STS, TLS-RPT and DKIM keys.
//!
//! Every parser is a pure function of the text: no DNS, no clock, no panic on any input.
//! Each input has a length limit (checked first). A record that cannot be used at all is an
//! `Err(RecordError)`; problems that leave it usable (an unknown value replaced by the
//! default, a duplicate field ignored) are [`Diagnostic`]s kept in the parsed record. Both say
//! where ([`Position`]: the record, a 1-based character column, or a line of the policy file)
//! and what, in words an auditor can quote to an administrator.
//!
//! Shared here: the diagnostic type and the `tag=value; ...` list syntax of DKIM (RFC 6376
//! §3.2), which DMARC, MTA-STS and TLS-RPT records also use.

pub mod dkim;
pub mod dmarc;
pub mod mta_sts;
pub mod spf;
pub mod tlsrpt;

use std::fmt;

/// The longest TXT-based record parsed (SPF, DMARC, MTA-STS, TLS-RPT): 8 KiB.
pub const MAX_RECORD_LEN: usize = 8 * 1024;

/// Where a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The record as a whole.
    Record,
    /// The 1-based character column in a one-line record.
    Column(usize),
    /// The 1-based line of a multi-line text (the MTA-STS policy file).
    Line(usize),
}

/// A problem in a record, located in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub position: Position,
    /// What is wrong, and where it matters what to write instead.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic for the character at byte offset `offset` of `text`.
    pub(crate) fn at(text: &str, offset: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            position: Position::Column(column(text, offset)),
            message: message.into(),
        }
    }

    /// A diagnostic about the whole record.
    pub(crate) fn whole(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            position: Position::Record,
            message: message.into(),
        }
    }

    /// A diagnostic about a line (1-based) of a multi-line text.
    pub(crate) fn line(line: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            position: Position::Line(line),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Position::Record => f.write_str(&self.message),
            Position::Column(column) => write!(f, "at character {column}: {}", self.message),
            Position::Line(line) => write!(f, "line {line}: {}", self.message),
        }
    }
}

/// A record that cannot be used; the diagnostic says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError(pub Diagnostic);

impl RecordError {
    pub(crate) fn at(text: &str, offset: usize, message: impl Into<String>) -> RecordError {
        RecordError(Diagnostic::at(text, offset, message))
    }

    pub(crate) fn whole(message: impl Into<String>) -> RecordError {
        RecordError(Diagnostic::whole(message))
    }

    /// Where the problem is.
    pub fn position(&self) -> Position {
        self.0.position
    }

    /// What the problem is.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for RecordError {}

/// The 1-based character column of byte offset `offset` in `text` (clamped to the text).
pub(crate) fn column(text: &str, offset: usize) -> usize {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].chars().count() + 1
}

/// Refuses texts longer than `limit` bytes.
pub(crate) fn check_length(text: &str, limit: usize, what: &str) -> Result<(), RecordError> {
    if text.len() > limit {
        return Err(RecordError::whole(format!(
            "the {what} is {} bytes long, more than the {limit} this parser reads",
            text.len()
        )));
    }
    Ok(())
}

/// One `name=value` of a tag list, with byte offsets into the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tag<'a> {
    pub name: &'a str,
    pub value: &'a str,
    /// Byte offset of the name.
    pub name_at: usize,
    /// Byte offset of the value (after leading whitespace).
    pub value_at: usize,
}

fn is_wsp(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits a tag list (RFC 6376 §3.2): `name=value` specs separated by `;`, whitespace around
/// names, `=` and values ignored, a final `;` allowed, empty specs skipped. Tag names are
/// ALPHA followed by ALPHA / DIGIT / `_`; values may not contain `;`. Names are compared
/// case-sensitively by the callers, as the RFCs say. A tag named twice is an error.
pub(crate) fn tag_list(text: &str) -> Result<Vec<Tag<'_>>, RecordError> {
    let mut tags: Vec<Tag<'_>> = Vec::new();
    let mut start = 0usize;
    for spec in text.split(';') {
        let spec_at = start;
        start += spec.len() + 1;
        let leading = spec.len() - spec.trim_start_matches(is_wsp).len();
        let body = spec.trim_matches(is_wsp);
        if body.is_empty() {
            continue;
        }
        let body_at = spec_at + leading;
        let Some(eq) = body.find('=') else {
            return Err(RecordError::at(
                text,
                body_at,
                format!("\"{}\" is not a tag=value pair", shorten(body)),
            ));
        };
        let name = body[..eq].trim_end_matches(is_wsp);
        let raw_value = &body[eq + 1..];
        let value = raw_value.trim_matches(is_wsp);
        let value_at =
            body_at + eq + 1 + (raw_value.len() - raw_value.trim_start_matches(is_wsp).len());
        let mut chars = name.chars();
        let valid_name = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(RecordError::at(
                text,
                body_at,
                format!("\"{}\" is not a valid tag name", shorten(name)),
            ));
        }
        if tags.iter().any(|t| t.name == name) {
            return Err(RecordError::at(
                text,
                body_at,
                format!("the tag \"{name}\" appears twice"),
            ));
        }
        tags.push(Tag {
            name,
            value,
            name_at: body_at,
            value_at,
        });
    }
    Ok(tags)
}

/// At most 40 characters of `text` for a message, with an ellipsis when cut.
pub(crate) fn shorten(text: &str) -> String {
    shorten_to(text, 40)
}

/// At most `keep` characters of `text`, with an ellipsis when cut.
pub(crate) fn shorten_to(text: &str, keep: usize) -> String {
    if text.chars().count() <= keep {
        text.to_string()
    } else {
        let kept: String = text.chars().take(keep).collect();
        format!("{kept}…")
    }
}

/// Checks a domain name as published in a record: labels of letters, digits and hyphens
/// (or `_` for service labels), 1 to 63 characters, 253 in all, not starting or ending
/// with a hyphen. A final dot is allowed. Returns what is wrong.
pub(crate) fn check_domain(domain: &str) -> Result<(), String> {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if name.is_empty() {
        return Err("an empty domain name".to_string());
    }
    if name.len() > 253 {
        return Err(format!(
            "\"{}\" is longer than 253 characters",
            shorten(name)
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!("\"{}\" has an empty label", shorten(name)));
        }
        if label.len() > 63 {
            return Err(format!(
                "\"{}\" has a label longer than 63 characters",
                shorten(name)
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "\"{}\" contains characters not allowed in a host name",
                shorten(name)
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "\"{}\" has a label that starts or ends with a hyphen",
                shorten(name)
            ));
        }
    }
    Ok(())
}

/// A reporting address of DMARC (`rua`, `ruf`) or TLS-RPT (`rua`): the URI and an optional
/// size limit (`!10m`, DMARC only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportUri {
    /// The URI as published (`mailto:dmarc@example.org`, `https://...`).
    pub uri: String,
    /// The size limit in bytes, when one was given.
    pub max_size: Option<u64>,
}

impl ReportUri {
    /// The scheme, lowercase (`mailto`, `https`).
    pub fn scheme(&self) -> String {
        self.uri
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// For a `mailto:` URI, the domain of the address (lowercase), the one that must
    /// authorise external reports (RFC 7489 §7.1).
    pub fn mailto_domain(&self) -> Option<String> {
        let (scheme, rest) = self.uri.split_once(':')?;
        if !scheme.eq_ignore_ascii_case("mailto") {
            return None;
        }
        let address = rest.split('?').next()?;
        let (_, domain) = address.rsplit_once('@')?;
        if domain.is_empty() {
            return None;
        }
        Some(domain.trim_end_matches('.').to_ascii_lowercase())
    }
}

/// Splits a comma-separated URI list (`value` starts at byte offset `value_at` of `text`).
/// With `sizes`, a `!<digits>[kmgt]` suffix is read as a size limit (DMARC). Every URI must
/// have a scheme among `schemes`; the others are reported as diagnostics and left out.
pub(crate) fn report_uris(
    text: &str,
    value: &str,
    value_at: usize,
    tag: &str,
    sizes: bool,
    schemes: &[&str],
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<ReportUri> {
    let mut uris = Vec::new();
    let mut offset = value_at;
    for part in value.split(',') {
        let part_at = offset + (part.len() - part.trim_start_matches(is_wsp).len());
        offset += part.len() + 1;
        let item = part.trim_matches(is_wsp);
        if item.is_empty() {
            diagnostics.push(Diagnostic::at(
                text,
                part_at,
                format!("{tag}: an empty entry in the address list"),
            ));
            continue;
        }
        let (uri, max_size) = match (sizes, item.rsplit_once('!')) {
            (true, Some((uri, size))) => match parse_size(size) {
                Some(bytes) => (uri, Some(bytes)),
                None => {
                    diagnostics.push(Diagnostic::at(
                        text,
                        part_at,
                        format!(
                            "{tag}: \"{}\" is not a size limit (write digits with an optional k, m, g or t)",
                            shorten(size)
                        ),
                    ));
                    (uri, None)
                }
            },
            _ => (item, None),
        };
        let Some((scheme, rest)) = uri.split_once(':') else {
            diagnostics.push(Diagnostic::at(
                text,
                part_at,
                format!(
                    "{tag}: \"{}\" is not a URI (write mailto:address)",
                    shorten(uri)
                ),
            ));
            continue;
        };
        if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            diagnostics.push(Diagnostic::at(
                text,
                part_at,
                format!(
                    "{tag}: the URI scheme \"{}\" is not one of {}",
                    shorten(scheme),
                    schemes.join(", ")
                ),
            ));
            continue;
        }
        if rest.is_empty() || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
            diagnostics.push(Diagnostic::at(
                text,
                part_at,
                format!("{tag}: \"{}\" is not a valid URI", shorten(uri)),
            ));
            continue;
        }
        if scheme.eq_ignore_ascii_case("mailto") {
            let address = rest.split('?').next().unwrap_or("");
            let valid = address
                .rsplit_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && check_domain(domain).is_ok());
            if !valid {
                diagnostics.push(Diagnostic::at(
                    text,
                    part_at,
                    format!("{tag}: \"{}\" is not a mail address", shorten(address)),
                ));
                continue;
            }
        }
        uris.push(ReportUri {
            uri: uri.to_string(),
            max_size,
        });
    }
    uris
}

/// `10`, `10k`, `10m`, `10g`, `10t` in bytes (DMARC size limits use powers of two).
fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, ' '),
    };
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    let shift = match unit {
        ' ' => 0,
        'k' => 10,
        'm' => 20,
        'g' => 30,
        't' => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

/// For tests: a column number, 0 meaning the whole record.
#[cfg(test)]
pub(crate) fn col(n: usize) -> Position {
    if n == 0 {
        Position::Record
    } else {
        Position::Column(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists() {
        let tags = tag_list(" v=DMARC1 ;p = reject; rua=mailto:a@b.example ;").unwrap();
        let pairs: Vec<(&str, &str)> = tags.iter().map(|t| (t.name, t.value)).collect();
        assert_eq!(
            pairs,
            vec![
                ("v", "DMARC1"),
                ("p", "reject"),
                ("rua", "mailto:a@b.example")
            ]
        );
        assert_eq!(tags[1].name_at, 11);
        assert_eq!(tags[1].value_at, 15);
        let err = tag_list("v=DKIM1; k").unwrap_err();
        assert_eq!(err.position(), Position::Column(10));
        assert!(err.message().contains("not a tag=value"));
        assert!(
            tag_list("v=1; v=2")
                .unwrap_err()
                .message()
                .contains("twice")
        );
        assert!(tag_list("1x=2").unwrap_err().message().contains("tag name"));
        assert!(tag_list("").unwrap().is_empty());
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(column("abc", 0), 1);
        assert_eq!(column("éab", 2), 2);
        assert_eq!(column("ab", 99), 3);
        assert_eq!(column("é", 1), 1);
    }

    #[test]
    fn domains() {
        assert!(check_domain("example.org").is_ok());
        assert!(check_domain("_dmarc.example.org.").is_ok());
        assert!(check_domain("").is_err());
        assert!(check_domain("a..b").is_err());
        assert!(check_domain("-a.b").is_err());
        assert!(check_domain("a b.c").is_err());
        assert!(check_domain(&"a".repeat(64)).is_err());
    }

    #[test]
    fn uri_lists() {
        let mut diagnostics = Vec::new();
        let text = "rua=mailto:a@example.org!10m, https://r.example/x,mailto:bad, ,ftp://x";
        let uris = report_uris(
            text,
            &text[4..],
            4,
            "rua",
            true,
            &["mailto", "https"],
            &mut diagnostics,
        );
        assert_eq!(
            uris,
            vec![
                ReportUri {
                    uri: "mailto:a@example.org".to_string(),
                    max_size: Some(10 << 20)
                },
                ReportUri {
                    uri: "https://r.example/x".to_string(),
                    max_size: None
                }
            ]
        );
        assert_eq!(diagnostics.len(), 3, "{diagnostics:?}");
        assert_eq!(uris[0].mailto_domain().as_deref(), Some("example.org"));
        assert_eq!(uris[1].mailto_domain(), None);
        assert_eq!(uris[1].scheme(), "https");
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("99999999999999t"), None);
    }
}
