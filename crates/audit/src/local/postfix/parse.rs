//! Reads main.cf and master.cf the way Postfix does (postconf(5), master(5)).
//!
//! Both files are made of logical lines: a line that starts with whitespace continues the
//! previous one, and a line whose first non-blank character is `#` is a comment (a `#` later
//! in a line is not). main.cf holds `name = value`; a later definition replaces an earlier
//! one, as in Postfix. master.cf holds one service per logical line: name, type, private,
//! unpriv, chroot, wakeup, maxproc, command and its arguments, where `-o name=value` and
//! `-o { name = value }` override a main.cf parameter for that service only.
//!
//! Every setting keeps its [`Origin`] (file, first line, the text as written) so a finding can
//! point at it and quote it. Nothing here fails: a line Postfix would refuse is recorded in
//! `problems` with its line number, and the rest of the file is still read.

use std::collections::BTreeMap;

/// Where a setting is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file as named to the linter (e.g. `/etc/postfix/main.cf`).
    pub file: String,
    /// The physical line (1-based) where the setting starts.
    pub line: usize,
    /// The setting as written, continuation lines joined by one space.
    pub text: String,
}

impl Setting {
    fn new(name: &str, value: &str, file: &str, line: usize, text: String) -> Setting {
        Setting {
            name: name.to_string(),
            value: value.trim().to_string(),
            origin: Origin {
                file: file.to_string(),
                line,
                text,
            },
        }
    }
}

impl Origin {
    /// `FILE:LINE`, the endpoint of a finding about this setting.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// One `name = value` of main.cf, or one `-o name=value` of master.cf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    /// The value as written (not yet `$`-expanded), surrounding blanks removed.
    pub value: String,
    pub origin: Origin,
}

/// The parameters of main.cf.
#[derive(Clone, Debug, Default)]
pub struct MainCf {
    /// The file as named to the linter.
    pub path: String,
    /// The effective (last) definition of each parameter.
    pub settings: BTreeMap<String, Setting>,
    /// Lines Postfix would refuse: (line, what is wrong).
    pub problems: Vec<(usize, String)>,
}

/// One service of master.cf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The service name: `smtp`, `submission`, `127.0.0.1:10025`, `smtpd` (a pass service).
    pub name: String,
    /// `inet`, `unix`, `unix-dgram`, `fifo` or `pass`.
    pub kind: String,
    /// The daemon: `smtpd`, `postscreen`, `qmgr`, ...
    pub command: String,
    /// The `-o` overrides, by parameter name (the last one wins).
    pub overrides: BTreeMap<String, Setting>,
    pub origin: Origin,
}

/// The services of master.cf.
#[derive(Clone, Debug, Default)]
pub struct MasterCf {
    pub path: String,
    pub services: Vec<Service>,
    pub problems: Vec<(usize, String)>,
}

/// One logical line: the physical lines it is made of, with their 1-based numbers.
struct LogicalLine<'a> {
    parts: Vec<(usize, &'a str)>,
}

impl LogicalLine<'_> {
    fn first_line(&self) -> usize {
        self.parts.first().map(|(n, _)| *n).unwrap_or(0)
    }

    /// The physical lines trimmed and joined by one space.
    fn joined(&self) -> String {
        let mut out = String::new();
        for (_, part) in &self.parts {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(part);
        }
        out
    }
}

fn logical_lines(text: &str) -> Vec<LogicalLine<'_>> {
    let mut lines: Vec<LogicalLine<'_>> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let continues = raw.starts_with([' ', '\t']);
        match lines.last_mut() {
            Some(last) if continues => last.parts.push((i + 1, raw)),
            _ => lines.push(LogicalLine {
                parts: vec![(i + 1, raw)],
            }),
        }
    }
    lines
}

/// Whether `name` looks like a Postfix parameter name.
fn is_parameter_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
}

/// Parses main.cf text; `path` names the file in origins.
pub fn parse_main_cf(text: &str, path: &str) -> MainCf {
    let mut main = MainCf {
        path: path.to_string(),
        ..MainCf::default()
    };
    for logical in logical_lines(text) {
        let line = logical.first_line();
        let joined = logical.joined();
        let Some((name, value)) = joined.split_once('=') else {
            main.problems.push((
                line,
                format!("missing '=' after the parameter name: {joined}"),
            ));
            continue;
        };
        let name = name.trim();
        if !is_parameter_name(name) {
            main.problems
                .push((line, format!("not a parameter name: {name:?}")));
            continue;
        }
        main.settings.insert(
            name.to_string(),
            Setting::new(name, value, path, line, joined.clone()),
        );
    }
    main
}

/// Splits `s` into tokens separated by any of `seps`; a token that starts with `{` runs to
/// the matching `}` (separators and nesting included), as in Postfix 3.0+ lists. Returns each
/// token with its byte offset in `s`.
pub fn split_tokens<'a>(s: &'a str, seps: &[char]) -> Vec<(usize, &'a str)> {
    let mut out = Vec::new();
    let mut iter = s.char_indices().peekable();
    while let Some(&(start, c)) = iter.peek() {
        if seps.contains(&c) || c.is_whitespace() {
            iter.next();
            continue;
        }
        let mut end = s.len();
        if c == '{' {
            let mut depth = 0usize;
            for (i, c) in iter.by_ref() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
        } else {
            while let Some(&(i, c)) = iter.peek() {
                if seps.contains(&c) || c.is_whitespace() {
                    end = i;
                    break;
                }
                iter.next();
            }
        }
        out.push((start, &s[start..end]));
    }
    out
}

/// `{ text }` → `text`, trimmed; anything else unchanged.
pub fn strip_braces(token: &str) -> &str {
    token
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .map(str::trim)
        .unwrap_or(token)
}

/// Parses master.cf text; `path` names the file in origins.
pub fn parse_master_cf(text: &str, path: &str) -> MasterCf {
    let mut master = MasterCf {
        path: path.to_string(),
        ..MasterCf::default()
    };
    for logical in logical_lines(text) {
        // The logical line with newlines kept, so token offsets map back to physical lines.
        let mut joined = String::new();
        let mut starts = Vec::new();
        for (n, part) in &logical.parts {
            starts.push((joined.len(), *n));
            joined.push_str(part);
            joined.push('\n');
        }
        let line_of = |offset: usize| {
            starts
                .iter()
                .rev()
                .find(|(start, _)| *start <= offset)
                .map(|(_, n)| *n)
                .unwrap_or(0)
        };
        let tokens = split_tokens(&joined, &[]);
        let first = logical.first_line();
        if tokens.len() < 8 {
            master.problems.push((
                first,
                format!(
                    "a service needs 8 fields (name type private unpriv chroot wakeup maxproc command): {}",
                    logical.joined()
                ),
            ));
            continue;
        }
        let mut service = Service {
            name: tokens[0].1.to_string(),
            kind: tokens[1].1.to_string(),
            command: tokens[7].1.to_string(),
            overrides: BTreeMap::new(),
            origin: Origin {
                file: path.to_string(),
                line: first,
                text: logical.joined(),
            },
        };
        let mut args = tokens[8..].iter();
        while let Some(&(offset, arg)) = args.next() {
            let (offset, assignment) = if arg == "-o" {
                match args.next() {
                    Some(&(offset, next)) => (offset, next),
                    None => {
                        master
                            .problems
                            .push((line_of(offset), "-o without name=value".to_string()));
                        break;
                    }
                }
            } else if let Some(rest) = arg.strip_prefix("-o") {
                (offset, rest)
            } else {
                continue;
            };
            let Some((name, value)) = strip_braces(assignment).split_once('=') else {
                master.problems.push((
                    line_of(offset),
                    format!("-o {assignment}: expected name=value"),
                ));
                continue;
            };
            let name = name.trim();
            if !is_parameter_name(name) {
                master.problems.push((
                    line_of(offset),
                    format!("-o {assignment}: bad parameter name"),
                ));
                continue;
            }
            let line = line_of(offset);
            service.overrides.insert(
                name.to_string(),
                Setting::new(name, value, path, line, format!("-o {}", assignment.trim())),
            );
        }
        master.services.push(service);
    }
    master
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_cf_continuations_comments_and_last_definition() {
        let text = "# comment\n\
                    myhostname = mx.example.org\n\
                    \n\
                    smtpd_relay_restrictions = permit_mynetworks,\n\
                    \x20   permit_sasl_authenticated,\n\
                    # a comment inside a continued line\n\
                    \treject_unauth_destination\n\
                    smtpd_banner = $myhostname ESMTP # not a comment\n\
                    disable_vrfy_command = no\n\
                    disable_vrfy_command = yes\n\
                    this line has no equals sign\n";
        let main = parse_main_cf(text, "main.cf");
        let relay = &main.settings["smtpd_relay_restrictions"];
        assert_eq!(
            relay.value,
            "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
        );
        assert_eq!(relay.origin.line, 4);
        assert_eq!(relay.origin.endpoint(), "main.cf:4");
        assert_eq!(
            main.settings["smtpd_banner"].value,
            "$myhostname ESMTP # not a comment"
        );
        let vrfy = &main.settings["disable_vrfy_command"];
        assert_eq!((vrfy.value.as_str(), vrfy.origin.line), ("yes", 10));
        assert_eq!(main.problems.len(), 1);
        assert_eq!(main.problems[0].0, 11);
    }

    #[test]
    fn master_cf_services_and_overrides() {
        let text = "smtp      inet  n       -       y       -       -       smtpd\n\
                    submission inet n       -       y       -       -       smtpd\n\
                    \x20 -o syslog_name=postfix/submission\n\
                    \x20 -o smtpd_tls_security_level=encrypt\n\
                    \x20 -o { smtpd_relay_restrictions = permit_sasl_authenticated, reject }\n\
                    \x20 -osmtpd_sasl_auth_enable=yes\n\
                    pickup    unix  n       -       y       60      1       pickup\n\
                    broken inet n\n";
        let master = parse_master_cf(text, "master.cf");
        assert_eq!(master.services.len(), 3);
        let sub = &master.services[1];
        assert_eq!(
            (sub.name.as_str(), sub.kind.as_str()),
            ("submission", "inet")
        );
        assert_eq!(sub.command, "smtpd");
        let level = &sub.overrides["smtpd_tls_security_level"];
        assert_eq!(level.value, "encrypt");
        assert_eq!(level.origin.line, 4);
        assert_eq!(level.origin.text, "-o smtpd_tls_security_level=encrypt");
        assert_eq!(
            sub.overrides["smtpd_relay_restrictions"].value,
            "permit_sasl_authenticated, reject"
        );
        assert_eq!(sub.overrides["smtpd_relay_restrictions"].origin.line, 5);
        assert_eq!(sub.overrides["smtpd_sasl_auth_enable"].value, "yes");
        assert_eq!(master.problems.len(), 1);
        assert_eq!(master.problems[0].0, 8);
    }

    #[test]
    fn tokens_keep_brace_groups_whole() {
        let tokens: Vec<&str> = split_tokens(
            "permit_mynetworks,check_policy_service { inet:127.0.0.1:9998, timeout=10s },reject",
            &[','],
        )
        .into_iter()
        .map(|(_, t)| t)
        .collect();
        assert_eq!(
            tokens,
            [
                "permit_mynetworks",
                "check_policy_service",
                "{ inet:127.0.0.1:9998, timeout=10s }",
                "reject"
            ]
        );
        assert_eq!(strip_braces("{ a = b }"), "a = b");
        // An unclosed brace runs to the end instead of failing.
        assert_eq!(split_tokens("a { b", &[]).len(), 2);
    }
}
