//! The effective value of a Postfix parameter for one service: the service's `-o` override,
//! else main.cf, else the Postfix 3.7 default, with `$name` references expanded.
//!
//! Defaults relied on (Postfix 3.7, `postconf -d`; a test compares them with the installed
//! postconf): see [`DEFAULTS`]. Two defaults depend on `compatibility_level` (built-in default
//! 0; Debian's packaged main.cf writes 3.6):
//! - `smtpd_relay_restrictions`: `permit_mynetworks, permit_sasl_authenticated,
//!   defer_unauth_destination` at level 1 and above, empty below.
//! - `mynetworks_style`: `host` at level 2 and above, `subnet` below. `mynetworks` itself has
//!   no fixed default: Postfix derives it from the style and the host's interfaces.
//!
//! Expansion follows postconf(5): `$name`, `${name}`, `$(name)`, `${name?text}` (text when the
//! parameter is not empty), `${name:text}` (text when it is empty), where text may be wrapped
//! in `{}`. An unknown parameter expands to nothing, as in Postfix. Expansion stops at
//! [`MAX_EXPANSION_DEPTH`] levels and [`MAX_EXPANDED_BYTES`] bytes, so a self-referencing
//! value cannot loop.

use super::parse::{MainCf, Service, Setting, strip_braces};

/// Deepest chain of `$name` references followed.
pub const MAX_EXPANSION_DEPTH: usize = 20;
/// Longest expanded value produced; the rest is cut.
pub const MAX_EXPANDED_BYTES: usize = 64 * 1024;

/// The Postfix 3.7 defaults this linter relies on (those not depending on
/// `compatibility_level`).
pub const DEFAULTS: &[(&str, &str)] = &[
    ("compatibility_level", "0"),
    ("mail_name", "Postfix"),
    // Read-only: the running version. Shown as a placeholder when a banner quotes it.
    ("mail_version", "3.x.y"),
    ("smtpd_banner", "$myhostname ESMTP $mail_name"),
    ("smtpd_client_restrictions", ""),
    ("smtpd_helo_restrictions", ""),
    ("smtpd_sender_restrictions", ""),
    ("smtpd_recipient_restrictions", ""),
    ("smtpd_restriction_classes", ""),
    ("smtpd_forbid_bare_newline", "no"),
    ("smtpd_forbid_bare_newline_exclusions", "$mynetworks"),
    ("smtpd_forbid_unauth_pipelining", "no"),
    ("smtpd_tls_security_level", ""),
    ("smtpd_use_tls", "no"),
    ("smtpd_enforce_tls", "no"),
    ("smtpd_tls_wrappermode", "no"),
    ("smtpd_tls_protocols", ">=TLSv1"),
    ("smtpd_tls_mandatory_protocols", ">=TLSv1"),
    ("smtpd_tls_ciphers", "medium"),
    ("smtpd_tls_mandatory_ciphers", "medium"),
    ("smtpd_tls_exclude_ciphers", ""),
    ("smtpd_tls_mandatory_exclude_ciphers", ""),
    ("smtpd_tls_ask_ccert", "no"),
    ("tls_high_cipherlist", "aNULL:-aNULL:HIGH:@STRENGTH"),
    (
        "tls_medium_cipherlist",
        "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
    ),
    ("tls_config_file", "default"),
    ("smtpd_tls_cert_file", ""),
    ("smtpd_tls_chain_files", ""),
    ("smtpd_tls_eccert_file", ""),
    ("smtpd_tls_dcert_file", ""),
    ("smtpd_tls_auth_only", "no"),
    ("smtpd_sasl_auth_enable", "no"),
    ("disable_vrfy_command", "no"),
    ("smtpd_client_connection_rate_limit", "0"),
    ("smtpd_client_message_rate_limit", "0"),
    ("smtpd_client_recipient_rate_limit", "0"),
    ("smtpd_client_new_tls_session_rate_limit", "0"),
    ("smtpd_client_auth_rate_limit", "0"),
    ("smtpd_client_connection_count_limit", "50"),
    ("message_size_limit", "10240000"),
    ("smtpd_helo_required", "no"),
    ("inet_interfaces", "all"),
];

/// Parses a `compatibility_level` such as `2` or `3.6` into (major, minor); 0 when unreadable.
pub fn compat_level(value: &str) -> (u32, u32) {
    let mut parts = value.trim().split('.');
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Where an effective value comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A `-o` override of the service in master.cf.
    Override(&'a Setting),
    /// A line of main.cf.
    Main(&'a Setting),
    /// Not set anywhere: Postfix's default.
    Default,
}

/// One parameter as one service sees it.
#[derive(Clone, Debug)]
pub struct Param<'a> {
    pub name: &'a str,
    /// The value as written (or the default), before expansion.
    pub raw: String,
    pub source: Source<'a>,
}

/// The parameters of main.cf as seen by one service (overrides first).
pub struct View<'a> {
    pub main: &'a MainCf,
    pub service: &'a Service,
    compat: (u32, u32),
}

impl<'a> View<'a> {
    pub fn new(main: &'a MainCf, service: &'a Service) -> View<'a> {
        let mut view = View {
            main,
            service,
            compat: (0, 0),
        };
        view.compat = compat_level(&view.value("compatibility_level"));
        view
    }

    /// The built-in default of `name` at this configuration's compatibility level.
    pub fn default_of(&self, name: &str) -> Option<&'static str> {
        match name {
            "smtpd_relay_restrictions" if self.compat >= (1, 0) => {
                Some("permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination")
            }
            "smtpd_relay_restrictions" => Some(""),
            "mynetworks_style" if self.compat >= (2, 0) => Some("host"),
            "mynetworks_style" => Some("subnet"),
            _ => DEFAULTS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
        }
    }

    /// The setting of `name`, if written anywhere for this service.
    fn setting(&self, name: &str) -> Option<Source<'a>> {
        if let Some(s) = self.service.overrides.get(name) {
            return Some(Source::Override(s));
        }
        self.main.settings.get(name).map(Source::Main)
    }

    /// `name` as this service sees it, unexpanded.
    pub fn param<'n>(&self, name: &'n str) -> Param<'n>
    where
        'a: 'n,
    {
        match self.setting(name) {
            Some(source @ (Source::Override(s) | Source::Main(s))) => Param {
                name,
                raw: s.value.clone(),
                source,
            },
            _ => Param {
                name,
                raw: self.default_of(name).unwrap_or_default().to_string(),
                source: Source::Default,
            },
        }
    }

    /// Whether `name` is written somewhere (override or main.cf).
    pub fn is_set(&self, name: &str) -> bool {
        self.setting(name).is_some()
    }

    /// `name` as this service sees it, expanded.
    pub fn value(&self, name: &str) -> String {
        let raw = self.param(name).raw;
        self.expand(&raw)
    }

    /// A yes/no parameter (Postfix accepts yes/no, true/false case-insensitively).
    pub fn flag(&self, name: &str) -> bool {
        matches!(
            self.value(name).trim().to_ascii_lowercase().as_str(),
            "yes" | "true"
        )
    }

    /// Expands `$name` references in `text`.
    pub fn expand(&self, text: &str) -> String {
        let mut out = String::new();
        self.expand_into(text, 0, &mut out);
        out
    }

    fn expand_into(&self, text: &str, depth: usize, out: &mut String) {
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            push_limited(out, &rest[..pos]);
            let after = &rest[pos + 1..];
            let (reference, consumed) = match after.chars().next() {
                Some(open @ ('{' | '(')) => {
                    let close = if open == '{' { '}' } else { ')' };
                    match matching(after, open, close) {
                        Some(end) => (&after[1..end], end + 1),
                        None => (&after[1..], after.len()),
                    }
                }
                _ => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], end)
                }
            };
            rest = &after[consumed..];
            if reference.is_empty() {
                push_limited(out, "$");
                continue;
            }
            if depth >= MAX_EXPANSION_DEPTH {
                continue;
            }
            let (name, op, alt) = match reference.find(['?', ':']) {
                Some(i) => (
                    &reference[..i],
                    reference[i..].chars().next(),
                    strip_braces(&reference[i + 1..]),
                ),
                None => (reference, None, ""),
            };
            let mut value = String::new();
            self.expand_into(&self.param(name.trim()).raw, depth + 1, &mut value);
            match op {
                Some('?') if !value.trim().is_empty() => self.expand_into(alt, depth + 1, out),
                Some(':') if value.trim().is_empty() => self.expand_into(alt, depth + 1, out),
                Some(_) => {}
                None => push_limited(out, &value),
            }
        }
        push_limited(out, rest);
    }
}

/// The index in `s` (which starts with `open`) of the matching `close`.
fn matching(s: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

fn push_limited(out: &mut String, s: &str) {
    let room = MAX_EXPANDED_BYTES.saturating_sub(out.len());
    if s.len() <= room {
        out.push_str(s);
    } else {
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&s[..end]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::{parse_main_cf, parse_master_cf};
    use super::*;

    fn with<T>(main: &str, master: &str, f: impl FnOnce(&View<'_>) -> T) -> T {
        let main = parse_main_cf(main, "main.cf");
        let master = parse_master_cf(master, "master.cf");
        let view = View::new(&main, &master.services[0]);
        f(&view)
    }

    const SMTP: &str = "smtp inet n - y - - smtpd\n";

    #[test]
    fn expands_references_and_conditionals() {
        let main = "myhostname = mx.example.org\n\
                    a = ${myhostname}/$(mail_name)/$myhostname\n\
                    b = ${myhostname?{set}}${nothing?{unset}}\n\
                    c = ${nothing:fallback}${myhostname:not used}\n\
                    loop = x$loop\n\
                    dollar = costs $ 5\n";
        with(main, SMTP, |v| {
            assert_eq!(v.value("a"), "mx.example.org/Postfix/mx.example.org");
            assert_eq!(v.value("b"), "set");
            assert_eq!(v.value("c"), "fallback");
            assert_eq!(v.value("smtpd_banner"), "mx.example.org ESMTP Postfix");
            // A self-reference stops at the depth limit instead of looping.
            assert_eq!(v.value("loop"), "x".repeat(MAX_EXPANSION_DEPTH + 1));
            assert_eq!(v.value("dollar"), "costs $ 5");
        });
    }

    #[test]
    fn overrides_win_and_defaults_follow_the_compatibility_level() {
        let master = "submission inet n - y - - smtpd\n  -o smtpd_tls_security_level=encrypt\n";
        with("smtpd_tls_security_level = may\n", master, |v| {
            assert_eq!(v.value("smtpd_tls_security_level"), "encrypt");
            assert!(matches!(
                v.param("smtpd_tls_security_level").source,
                Source::Override(_)
            ));
            assert_eq!(v.value("smtpd_relay_restrictions"), "");
            assert_eq!(v.value("mynetworks_style"), "subnet");
        });
        with("compatibility_level = 3.6\n", SMTP, |v| {
            assert_eq!(
                v.value("smtpd_relay_restrictions"),
                "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"
            );
            assert_eq!(v.value("mynetworks_style"), "host");
            assert!(matches!(
                v.param("mynetworks_style").source,
                Source::Default
            ));
        });
        assert_eq!(compat_level("3.6"), (3, 6));
        assert_eq!(compat_level("2"), (2, 0));
        assert_eq!(compat_level("junk"), (0, 0));
    }
}
