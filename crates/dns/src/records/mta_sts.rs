//! MTA-STS (RFC 8461): the `_mta-sts` TXT record and the policy file served at
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
//!
//! [`parse_txt`] reads `v=STSv1; id=...;` (§3.1): the version must come first and be exactly
//! `STSv1`, `id` is 1 to 32 letters and digits; other fields are kept as extensions.
//! [`select_txt`] applies the §3.1 rule to all TXT records of `_mta-sts.DOMAIN`: those not
//! starting with `v=STSv1;` are discarded, and unless exactly one remains and parses, the
//! domain has no MTA-STS.
//!
//! [`parse_policy`] reads the policy file (§3.2): `key: value` lines ended by CRLF or LF, with
//! `version: STSv1`, `mode: enforce | testing | none`, `max_age` (seconds) and one or more
//! `mx` patterns (`mail.example.com` or `*.example.com`), required unless the mode is `none`.
//! Its diagnostics are located by line ([`super::Position::Line`]). A `max_age` above one year
//! (31557600 s, the RFC's maximum) is lowered to it with a diagnostic; a field other than `mx`
//! given twice keeps its first value, with a diagnostic. Unknown fields are kept as
//! extensions. [`StsPolicy::matches_mx`] is the §4.1 host match.
//!
//! Limits: TXT records longer than [`super::MAX_RECORD_LEN`] and policy files larger than
//! [`MAX_POLICY_LEN`] are refused; at most [`MAX_MX_PATTERNS`] patterns are kept.

use std::fmt;

#[cfg(test)]
use super::Position;
use super::{
    Diagnostic, MAX_RECORD_LEN, RecordError, check_domain, check_length, shorten, tag_list,
};

/// The largest policy file read: 64 KiB (RFC 8461 §3.3 lets senders bound it; 64 KiB is
/// what common implementations allow).
pub const MAX_POLICY_LEN: usize = 64 * 1024;

/// The longest `max_age` honoured: one year in seconds (RFC 8461 §3.2).
pub const MAX_MAX_AGE: u32 = 31_557_600;

/// The most `mx` patterns kept.
pub const MAX_MX_PATTERNS: usize = 100;

/// A parsed `_mta-sts` TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy id: changes whenever the policy file changes.
    pub id: String,
    /// Other fields, as `(name, value)`.
    pub extensions: Vec<(String, String)>,
}

/// The mode of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsMode {
    /// Deliver only to matching MX hosts with valid certificates.
    Enforce,
    /// Report failures, deliver anyway.
    Testing,
    /// The domain withdraws its policy.
    None,
}

impl fmt::Display for StsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        })
    }
}

/// A parsed MTA-STS policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsPolicy {
    pub mode: StsMode,
    /// How long the policy may be cached, in seconds (at most [`MAX_MAX_AGE`]).
    pub max_age: u32,
    /// The MX patterns, lowercase, without final dots: `mail.example.com`, `*.example.com`.
    pub mx: Vec<String>,
    /// Unknown fields, as `(name, value)`.
    pub extensions: Vec<(String, String)>,
    /// Problems that left the policy usable; positions are line numbers.
    pub diagnostics: Vec<Diagnostic>,
}

impl StsPolicy {
    /// True when `host` (an MX host name) matches one of the patterns (RFC 8461 §4.1): equal
    /// ignoring case and a final dot, or, for `*.example.com`, exactly one more label in
    /// front of `example.com`.
    pub fn matches_mx(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if host.is_empty() {
            return false;
        }
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

/// True when a TXT record is an MTA-STS record: it starts with `v=STSv1;` (RFC 8461 §3.1;
/// whitespace before the `;` is allowed by the grammar).
pub fn is_sts_record(txt: &str) -> bool {
    txt.strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(';'))
}

/// Parses one `_mta-sts` TXT record.
pub fn parse_txt(text: &str) -> Result<StsRecord, RecordError> {
    check_length(text, MAX_RECORD_LEN, "MTA-STS record")?;
    if !text.starts_with("v=STSv1") {
        return Err(RecordError::at(
            text,
            0,
            "an MTA-STS record starts with \"v=STSv1;\"",
        ));
    }
    let tags = tag_list(text)?;
    match tags.first() {
        Some(first) if first.name == "v" && first.value == "STSv1" => {}
        _ => {
            return Err(RecordError::at(
                text,
                0,
                "an MTA-STS record starts with \"v=STSv1;\"",
            ));
        }
    }
    let mut id = None;
    let mut extensions = Vec::new();
    for tag in &tags[1..] {
        if tag.name == "id" {
            let valid = !tag.value.is_empty()
                && tag.value.len() <= 32
                && tag.value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !valid {
                return Err(RecordError::at(
                    text,
                    tag.value_at,
                    format!(
                        "id: \"{}\" is not 1 to 32 letters and digits",
                        shorten(tag.value)
                    ),
                ));
            }
            id = Some(tag.value.to_string());
        } else {
            extensions.push((tag.name.to_string(), tag.value.to_string()));
        }
    }
    match id {
        Some(id) => Ok(StsRecord { id, extensions }),
        None => Err(RecordError::at(
            text,
            0,
            "the required field \"id\" is missing (write v=STSv1; id=20240101T000000;)",
        )),
    }
}

/// Picks the MTA-STS record among all TXT records of `_mta-sts.DOMAIN` (RFC 8461 §3.1):
/// records not starting with `v=STSv1;` are discarded; unless exactly one remains and it
/// parses, the domain has no MTA-STS policy.
pub fn select_txt<S: AsRef<str>>(records: &[S]) -> Result<StsRecord, RecordError> {
    let candidates: Vec<&str> = records
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| is_sts_record(r))
        .collect();
    match candidates.as_slice() {
        [one] => parse_txt(one),
        [] => Err(RecordError::whole(
            "no TXT record starting with \"v=STSv1;\"",
        )),
        many => Err(RecordError::whole(format!(
            "{} TXT records start with \"v=STSv1;\"; with more than one, senders ignore MTA-STS (RFC 8461 §3.1)",
            many.len()
        ))),
    }
}

/// Parses an MTA-STS policy file; diagnostic positions are 1-based line numbers.
pub fn parse_policy(text: &str) -> Result<StsPolicy, RecordError> {
    check_length(text, MAX_POLICY_LEN, "MTA-STS policy")?;
    let mut version: Option<(usize, String)> = None;
    let mut mode: Option<StsMode> = None;
    let mut max_age: Option<u32> = None;
    let mut mx: Vec<String> = Vec::new();
    let mut extensions = Vec::new();
    let mut diagnostics = Vec::new();
    let line_error = |line: usize, message: String| RecordError(Diagnostic::line(line, message));

    let body = text.strip_suffix('\n').unwrap_or(text);
    let body = body.strip_suffix('\r').unwrap_or(body);
    for (index, raw) in body.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.contains('\r') {
            return Err(line_error(
                line_no,
                "a carriage return in the middle of a line (lines end with CRLF or LF)".to_string(),
            ));
        }
        if line.trim().is_empty() {
            diagnostics.push(Diagnostic::line(
                line_no,
                "an empty line; the policy format has none".to_string(),
            ));
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(line_error(
                line_no,
                format!("\"{}\" is not a \"key: value\" line", shorten(line)),
            ));
        };
        let value = value.trim_matches([' ', '\t']);
        let valid_key = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.len() <= 32
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid_key {
            return Err(line_error(
                line_no,
                format!("\"{}\" is not a field name", shorten(key)),
            ));
        }
        let duplicate = |d: &mut Vec<Diagnostic>| {
            d.push(Diagnostic::line(
                line_no,
                format!("\"{key}\" appears again; the first value is used"),
            ))
        };
        match key {
            "version" => {
                if version.is_some() {
                    duplicate(&mut diagnostics);
                } else {
                    version = Some((line_no, value.to_string()));
                }
            }
            "mode" => {
                if mode.is_some() {
                    duplicate(&mut diagnostics);
                    continue;
                }
                mode = Some(match value {
                    "enforce" => StsMode::Enforce,
                    "testing" => StsMode::Testing,
                    "none" => StsMode::None,
                    other => {
                        return Err(line_error(
                            line_no,
                            format!(
                                "mode: \"{}\" is not enforce, testing or none",
                                shorten(other)
                            ),
                        ));
                    }
                });
            }
            "max_age" => {
                if max_age.is_some() {
                    duplicate(&mut diagnostics);
                    continue;
                }
                let digits_ok = !value.is_empty()
                    && value.len() <= 10
                    && value.bytes().all(|b| b.is_ascii_digit());
                let seconds = if digits_ok {
                    value.parse::<u64>().ok()
                } else {
                    None
                };
                let Some(seconds) = seconds else {
                    return Err(line_error(
                        line_no,
                        format!(
                            "max_age: \"{}\" is not a number of seconds (1 to 10 digits)",
                            shorten(value)
                        ),
                    ));
                };
                if seconds > u64::from(MAX_MAX_AGE) {
                    diagnostics.push(Diagnostic::line(line_no, format!(
                            "max_age {seconds} is more than the maximum of {MAX_MAX_AGE} (one year); {MAX_MAX_AGE} is used"
                        )));
                }
                max_age = Some(seconds.min(u64::from(MAX_MAX_AGE)) as u32);
            }
            "mx" => {
                let pattern = value.to_ascii_lowercase();
                let pattern = pattern.strip_suffix('.').unwrap_or(&pattern).to_string();
                let domain = pattern.strip_prefix("*.").unwrap_or(&pattern);
                if domain.contains('*') {
                    return Err(line_error(
                        line_no,
                        "mx: a wildcard is allowed only as the whole first label (\"*.example.com\")"
                            .to_string(),
                    ));
                }
                if let Err(why) = check_domain(domain) {
                    return Err(line_error(line_no, format!("mx: {why}")));
                }
                if mx.len() >= MAX_MX_PATTERNS {
                    diagnostics.push(Diagnostic::line(
                        line_no,
                        format!("more than {MAX_MX_PATTERNS} mx patterns; this one is ignored"),
                    ));
                } else if !mx.contains(&pattern) {
                    mx.push(pattern);
                }
            }
            other => extensions.push((other.to_string(), value.to_string())),
        }
    }

    match version {
        Some((_, v)) if v == "STSv1" => {}
        Some((line, v)) => {
            return Err(line_error(
                line,
                format!("version: \"{}\" is not STSv1", shorten(&v)),
            ));
        }
        None => {
            return Err(RecordError::whole(
                "the required field \"version: STSv1\" is missing",
            ));
        }
    }
    let Some(mode) = mode else {
        return Err(RecordError::whole(
            "the required field \"mode\" (enforce, testing or none) is missing",
        ));
    };
    let Some(max_age) = max_age else {
        return Err(RecordError::whole(
            "the required field \"max_age\" is missing",
        ));
    };
    if mx.is_empty() && mode != StsMode::None {
        return Err(RecordError::whole(format!(
            "mode {mode} needs at least one \"mx\" pattern"
        )));
    }
    Ok(StsPolicy {
        mode,
        max_age,
        mx,
        extensions,
        diagnostics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        let record = parse_txt("v=STSv1; id=20160831085700Z;").unwrap();
        assert_eq!(record.id, "20160831085700Z");
        let record = parse_txt("v=STSv1 ;id=abc; ext=1").unwrap();
        assert_eq!(
            record.extensions,
            vec![("ext".to_string(), "1".to_string())]
        );
        for (text, words) in [
            ("v=STSv2; id=1", "starts with"),
            ("id=1; v=STSv1", "starts with"),
            ("v=STSv1;", "missing"),
            ("v=STSv1; id=", "letters and digits"),
            ("v=STSv1; id=2024-01-01", "letters and digits"),
            (
                "v=STSv1; id=123456789012345678901234567890123",
                "letters and digits",
            ),
        ] {
            let err = parse_txt(text).unwrap_err();
            assert!(err.message().contains(words), "{text}: {err}");
        }
    }

    #[test]
    fn txt_selection() {
        let picked = select_txt(&["v=spf1 -all", "v=STSv1; id=1"]).unwrap();
        assert_eq!(picked.id, "1");
        assert!(
            select_txt(&["v=STSv1; id=1", "v=STSv1; id=2"])
                .unwrap_err()
                .message()
                .contains("more than one")
        );
        assert!(select_txt::<&str>(&[]).is_err());
        assert!(select_txt(&["v=STSv1; id=bad-id"]).is_err());
    }

    const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n";

    #[test]
    fn a_policy_with_crlf_and_one_with_lf() {
        let policy = parse_policy(POLICY).unwrap();
        assert_eq!(policy.mode, StsMode::Enforce);
        assert_eq!(policy.max_age, 604800);
        assert_eq!(policy.mx, vec!["mail.example.com", "*.example.net"]);
        assert!(policy.diagnostics.is_empty());
        let lf = parse_policy(&POLICY.replace("\r\n", "\n")).unwrap();
        assert_eq!(lf, policy);
        let no_final_newline = parse_policy(POLICY.trim_end()).unwrap();
        assert_eq!(no_final_newline, policy);
    }

    #[test]
    fn mx_matching() {
        let policy = parse_policy(POLICY).unwrap();
        assert!(policy.matches_mx("mail.example.com"));
        assert!(policy.matches_mx("MAIL.example.com."));
        assert!(policy.matches_mx("mx1.example.net"));
        assert!(
            !policy.matches_mx("example.net"),
            "the wildcard needs a label"
        );
        assert!(!policy.matches_mx("a.b.example.net"), "one label only");
        assert!(!policy.matches_mx("mail.example.com.evil.test"));
        assert!(!policy.matches_mx("xmail.example.com"));
        assert!(!policy.matches_mx(""));
        assert!(!policy.matches_mx(".example.net"));
    }

    #[test]
    fn policy_errors_name_the_line() {
        let cases = [
            (
                "version: STSv1\nmode: enforce\nmax_age: 86400\n",
                0,
                "at least one",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
                2,
                "not enforce",
            ),
            ("version: STSv2\nmode: none\nmax_age: 1\n", 1, "not STSv1"),
            ("mode: none\nmax_age: 1\n", 0, "version"),
            ("version: STSv1\nmax_age: 1\n", 0, "mode"),
            ("version: STSv1\nmode: none\n", 0, "max_age"),
            (
                "version: STSv1\nmode: none\nmax_age: -1\n",
                3,
                "number of seconds",
            ),
            (
                "version: STSv1\nmode: none\nmax_age: 12345678901\n",
                3,
                "number of seconds",
            ),
            (
                "version: STSv1\nmode: none\nmax_age: 1\nthis is text\n",
                4,
                "key: value",
            ),
            (
                "version: STSv1\nmode: testing\nmax_age: 1\nmx: a..example\n",
                4,
                "empty label",
            ),
            (
                "version: STSv1\nmode: testing\nmax_age: 1\nmx: mail.*.example\n",
                4,
                "wildcard",
            ),
            (
                "version: STSv1\rmode: none\nmax_age: 1\n",
                1,
                "carriage return",
            ),
            (" version: STSv1\nmode: none\nmax_age: 1\n", 1, "field name"),
        ];
        for (text, line, words) in cases {
            let err = parse_policy(text).unwrap_err();
            assert!(err.message().contains(words), "{text:?}: {err}");
            let expected = if line == 0 {
                Position::Record
            } else {
                Position::Line(line)
            };
            assert_eq!(err.position(), expected, "{text:?}: {err}");
        }
    }

    #[test]
    fn policy_diagnostics() {
        let policy = parse_policy(
            "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\n\nmax_age: 99999999\nfoo: bar\n",
        )
        .unwrap();
        assert_eq!(policy.mode, StsMode::Testing);
        assert_eq!(policy.max_age, MAX_MAX_AGE);
        assert_eq!(
            policy.extensions,
            vec![("foo".to_string(), "bar".to_string())]
        );
        let lines: Vec<Position> = policy.diagnostics.iter().map(|d| d.position).collect();
        assert_eq!(
            lines,
            vec![Position::Line(3), Position::Line(5), Position::Line(6)]
        );
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        assert_eq!(none.mode, StsMode::None);
        assert!(!none.matches_mx("anything.example"));
    }

    #[test]
    fn size_limit() {
        let big = format!("version: STSv1\n{}", "x".repeat(MAX_POLICY_LEN));
        assert!(
            parse_policy(&big)
                .unwrap_err()
                .message()
                .contains("bytes long")
        );
    }
}
