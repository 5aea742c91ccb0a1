//! `[auth]`: how submission clients prove who they are, and whom they may send as.
//!
//! Two sources of passwords, used in this order: a users file of argon2id hashes
//! (`users_file`, maintained with `ravelin user add|remove|list`; format in
//! [`crate::auth::users`]), then an LDAP / Active Directory simple bind (`[auth.ldap]`). A user
//! found in the file is decided by the file; one not found there goes to LDAP when configured.
//!
//! Whom a user may send as: the login name itself (when it is an address), plus what
//! `sender_map` lists for it: whole addresses, or `@domain` for any address of a domain.
//!
//! The semantic checks here (see [`validate`]) report file:line errors with a fix: LDAP needs
//! exactly one way to find the user's DN, `{user}` in the template or filter, and TLS (ldaps or
//! StartTLS) unless the server is on loopback or `allow_plaintext` is set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::diagnostics::{ConfigError, Locator, toml_path};
use super::values::HumanDuration;

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// `user:argon2id-hash` lines; mode 0600 (group/world access is refused).
    pub users_file: Option<PathBuf>,
    /// Password checks (argon2 hashing, LDAP binds) running at once; more wait their turn.
    pub max_parallel_checks: u32,
    /// Login name → further addresses (or `@domain`) it may use as sender.
    pub sender_map: BTreeMap<String, Vec<String>>,
    pub ldap: Option<LdapSection>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            users_file: None,
            max_parallel_checks: 4,
            sender_map: BTreeMap::new(),
            ldap: None,
        }
    }
}

impl AuthSection {
    /// Whether any password source is configured.
    pub fn has_source(&self) -> bool {
        self.users_file.is_some() || self.ldap.is_some()
    }
}

/// `[auth.ldap]`: a simple bind as the user, whose DN comes from a template or a search.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSection {
    /// `ldaps://host[:port]` or `ldap://host[:port]`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// The user's DN with `{user}` for the (escaped) login name, e.g.
    /// `uid={user},ou=people,dc=example,dc=org`, or `{user}` alone for Active Directory UPNs.
    pub bind_dn_template: Option<String>,
    /// Where to search for the user's entry (instead of a template).
    pub search_base: Option<String>,
    /// The search filter with `{user}` for the (escaped) login name.
    #[serde(default = "default_filter")]
    pub search_filter: String,
    /// The service account that searches; without it, the search is anonymous.
    pub search_bind_dn: Option<String>,
    /// A file holding the service account's password (mode 0600).
    pub search_bind_password_file: Option<PathBuf>,
    /// CA certificates (PEM) for the server's certificate; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Allow a clear-text connection to a server that is not on loopback.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Limit on each LDAP operation (connect, bind, search).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_filter() -> String {
    "(uid={user})".to_string()
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// Scheme, host and port of an LDAP URL; `None` when it is not one.
pub fn parse_ldap_url(url: &str) -> Option<(bool, String, u16)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("ldaps://") {
        (true, r)
    } else {
        (false, url.strip_prefix("ldap://")?)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (h, p.parse().ok()?),
            None if after.is_empty() => (h, if tls { 636 } else { 389 }),
            None => return None,
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (rest, if tls { 636 } else { 389 }),
        }
    };
    if host.is_empty() || host.contains(['/', '?', ' ', '@']) {
        return None;
    }
    Some((tls, host.to_string(), port))
}

/// Whether an LDAP host name or address is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The checks of `[auth]`.
pub(super) fn validate(auth: &AuthSection, loc: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    if auth.max_parallel_checks == 0 {
        errors.push(loc.error_at(
            &toml_path!["auth", "max_parallel_checks"],
            "auth.max_parallel_checks is 0",
            "write 1 or more, e.g. max_parallel_checks = 4",
        ));
    }
    for (user, addresses) in &auth.sender_map {
        let bad = addresses.iter().find(|a| !is_sender_pattern(a));
        if user.is_empty() || bad.is_some() {
            errors.push(loc.error_at(
                &toml_path!["auth", "sender_map", user.as_str()],
                format!(
                    "auth.sender_map: \"{}\" is not an address or @domain",
                    bad.map(String::as_str).unwrap_or("").escape_debug()
                ),
                "list addresses or @domain patterns, e.g. \"alice@example.org\" = [\"sales@example.org\", \"@example.net\"]",
            ));
        }
    }
    let Some(ldap) = &auth.ldap else { return };
    let at = |key: &str| loc.line(&toml_path!["auth", "ldap", key]);
    let mut err = |line: usize, message: String, fix: &str| {
        errors.push(loc.error(line, message, fix));
    };
    validate_ldap_server(
        "auth.ldap",
        LdapServerKeys {
            url: &ldap.url,
            starttls: ldap.starttls,
            allow_plaintext: ldap.allow_plaintext,
            timeout: ldap.timeout,
        },
        at,
        &mut err,
    );
    match (&ldap.bind_dn_template, &ldap.search_base) {
        (Some(t), None) if !t.contains("{user}") => err(
            at("bind_dn_template"),
            "auth.ldap.bind_dn_template has no {user}".into(),
            "write e.g. bind_dn_template = \"uid={user},ou=people,dc=example,dc=org\"",
        ),
        (Some(_), None) => {}
        (None, Some(_)) if !ldap.search_filter.contains("{user}") => err(
            at("search_filter"),
            "auth.ldap.search_filter has no {user}".into(),
            "write e.g. search_filter = \"(&(objectClass=user)(sAMAccountName={user}))\"",
        ),
        (None, Some(_)) => {}
        _ => err(
            loc.line(&toml_path!["auth", "ldap"]),
            "auth.ldap needs exactly one of bind_dn_template and search_base".into(),
            "set bind_dn_template = \"uid={user},ou=people,dc=example,dc=org\", or search_base (with search_filter)",
        ),
    }
    validate_service_account(
        "auth.ldap",
        ["search_bind_dn", "search_bind_password_file"],
        [
            ldap.search_bind_dn.is_some(),
            ldap.search_bind_password_file.is_some(),
        ],
        at,
        &mut err,
    );
}

/// A service account's DN and password file (`keys`, whether each is `set`) go together.
pub(super) fn validate_service_account(
    section: &str,
    keys: [&str; 2],
    set: [bool; 2],
    at: impl Fn(&str) -> usize,
    err: &mut impl FnMut(usize, String, &str),
) {
    if set[0] != set[1] {
        err(
            at(if set[0] { keys[0] } else { keys[1] }),
            format!("{section}: {} and {} go together", keys[0], keys[1]),
            "set both (the service account and the file with its password), or neither for an anonymous search",
        );
    }
}

/// The connection keys of an LDAP section.
pub(super) struct LdapServerKeys<'a> {
    pub url: &'a str,
    pub starttls: bool,
    pub allow_plaintext: bool,
    pub timeout: HumanDuration,
}

/// The checks of an LDAP server's URL, TLS and timeout; `section` is how the section is
/// named in messages (`auth.ldap`), `at` gives the line of one of its keys.
pub(super) fn validate_ldap_server(
    section: &str,
    keys: LdapServerKeys<'_>,
    at: impl Fn(&str) -> usize,
    err: &mut impl FnMut(usize, String, &str),
) {
    match parse_ldap_url(keys.url) {
        None => err(
            at("url"),
            format!(
                "{section}.url \"{}\" is not an LDAP URL",
                keys.url.escape_debug()
            ),
            "write ldaps://HOST[:PORT] or ldap://HOST[:PORT]",
        ),
        Some((tls, host, _)) => {
            if tls && keys.starttls {
                err(
                    at("starttls"),
                    format!("{section}: starttls = true with an ldaps:// URL"),
                    "ldaps:// is TLS already; remove starttls",
                );
            }
            if !tls && !keys.starttls && !keys.allow_plaintext && !is_loopback_host(&host) {
                err(
                    at("url"),
                    format!(
                        "{section}.url {}: passwords would cross the network in clear text",
                        keys.url
                    ),
                    "use ldaps://, or set starttls = true (allow_plaintext = true only on a trusted network)",
                );
            }
        }
    }
    if keys.timeout.is_zero() {
        err(
            at("timeout"),
            format!("{section}.timeout is 0s"),
            "write a positive duration, e.g. \"10s\"",
        );
    }
}

/// `local@domain` or `@domain`.
fn is_sender_pattern(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !domain.is_empty()
                && !local.contains(['@', ' '])
                && super::values::is_domain(domain, false)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldap_urls() {
        assert_eq!(
            parse_ldap_url("ldaps://dc1.example.org"),
            Some((true, "dc1.example.org".into(), 636))
        );
        assert_eq!(
            parse_ldap_url("ldap://127.0.0.1:3389/"),
            Some((false, "127.0.0.1".into(), 3389))
        );
        assert_eq!(
            parse_ldap_url("ldap://[::1]:3389"),
            Some((false, "::1".into(), 3389))
        );
        for bad in [
            "http://x",
            "ldap://",
            "ldap://h:x",
            "ldap://h/dc=x",
            "ldap://[::1",
        ] {
            assert_eq!(parse_ldap_url(bad), None, "{bad}");
        }
        assert!(is_loopback_host("127.0.0.5") && is_loopback_host("::1"));
        assert!(!is_loopback_host("10.0.0.1") && !is_loopback_host("dc1"));
    }

    #[test]
    fn sender_patterns() {
        assert!(is_sender_pattern("a@example.org") && is_sender_pattern("@example.org"));
        assert!(!is_sender_pattern("example.org") && !is_sender_pattern("a@b@c.org"));
    }
}
