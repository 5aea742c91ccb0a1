//! `[recipients]`: which recipients of the accepted domains exist (recipient validation on
//! inbound listeners, after the relay check).
//!
//! `sources` lists, in order, where to look: `"file"` (a list of addresses and `@domain`
//! wildcards, `file = PATH`), `"ldap"` (`[recipients.ldap]`: a search of `mail` and
//! `proxyAddresses` in a directory such as Active Directory) and `"callout"` (an RCPT probe to
//! the inbound backend, cached with `[recipients.callout]` TTLs). With no source (the
//! default) every recipient of an accepted domain is accepted, as before. Read by
//! [`crate::recipients`]. The checks here report file:line errors with a fix.

use std::path::PathBuf;

use serde::Deserialize;

use super::auth::{LdapServerKeys, validate_ldap_server, validate_service_account};
use super::diagnostics::{Locator, toml_path};
use super::values::HumanDuration;

/// One place recipients are looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientSource {
    File,
    Ldap,
    Callout,
}

impl RecipientSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientSource::File => "file",
            RecipientSource::Ldap => "ldap",
            RecipientSource::Callout => "callout",
        }
    }
}

/// `[recipients]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipientsSection {
    /// The sources asked, in order; empty: no validation.
    pub sources: Vec<RecipientSource>,
    /// The file of addresses and `@domain` wildcards (source `"file"`).
    pub file: Option<PathBuf>,
    /// Compare local parts with their case (Postfix folds case in table lookups; so do we
    /// by default).
    pub exact_local_part: bool,
    /// Unknown recipients in one session after which every further RCPT is delayed.
    pub harvest_threshold: u32,
    /// The delay of the first RCPT past the threshold; each further one waits this much more
    /// (at most `[bans] max_delay`).
    pub harvest_delay: HumanDuration,
    pub ldap: Option<RecipientsLdapSection>,
    pub callout: CalloutSection,
}

impl Default for RecipientsSection {
    fn default() -> Self {
        RecipientsSection {
            sources: Vec::new(),
            file: None,
            exact_local_part: false,
            harvest_threshold: 3,
            harvest_delay: HumanDuration::from_secs(1),
            ldap: None,
            callout: CalloutSection::default(),
        }
    }
}

/// `[recipients.ldap]`: a subtree search for the recipient's address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientsLdapSection {
    /// `ldaps://host[:port]` or `ldap://host[:port]`.
    pub url: String,
    #[serde(default)]
    pub starttls: bool,
    /// Where to search (subtree).
    pub base: String,
    /// The filter, `{address}` standing for the recipient (escaped, RFC 4515).
    #[serde(default = "default_filter")]
    pub filter: String,
    /// The service account that searches; without it, the search is anonymous.
    pub bind_dn: Option<String>,
    /// A file holding the service account's password on its first line (mode 0600).
    pub bind_password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Limit on each LDAP operation (connect, bind, search).
    #[serde(default = "default_ldap_timeout")]
    pub timeout: HumanDuration,
}

/// `mail`, or an SMTP entry of Active Directory's `proxyAddresses` (its values are
/// `SMTP:primary@...` and `smtp:alias@...`; the attribute compares without case).
pub const DEFAULT_LDAP_FILTER: &str = "(|(mail={address})(proxyAddresses=smtp:{address}))";

fn default_filter() -> String {
    DEFAULT_LDAP_FILTER.to_string()
}

fn default_ldap_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// `[recipients.callout]`: the RCPT probe to the inbound backend and its cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalloutSection {
    /// Longest a probe may take (connect, EHLO, MAIL, RCPT) before the client is answered
    /// `450 4.1.1`.
    pub timeout: HumanDuration,
    /// How long an address the backend accepted is remembered (Postfix's
    /// address_verify_positive_refresh_time is 7d).
    pub positive_ttl: HumanDuration,
    /// How long an address the backend refused is remembered (Postfix's
    /// address_verify_negative_refresh_time is 3h): a new mailbox is known by then.
    pub negative_ttl: HumanDuration,
}

impl Default for CalloutSection {
    fn default() -> Self {
        CalloutSection {
            timeout: HumanDuration::from_secs(15),
            positive_ttl: HumanDuration::from_secs(7 * 86_400),
            negative_ttl: HumanDuration::from_secs(3 * 3600),
        }
    }
}

impl RecipientsSection {
    /// Whether `source` is listed.
    pub fn uses(&self, source: RecipientSource) -> bool {
        self.sources.contains(&source)
    }

    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        let line = |key: &str| loc.line(&toml_path!["recipients", key]);
        for (i, s) in self.sources.iter().enumerate() {
            if self.sources[..i].contains(s) {
                err(
                    loc.line(&toml_path!["recipients", "sources", i]),
                    format!("recipients.sources lists \"{}\" twice", s.as_str()),
                    "list each source once, in the order to ask them",
                );
            }
        }
        // A source listed needs its settings, and settings without their source would be
        // silently unused.
        let sections = [
            (
                RecipientSource::File,
                self.file.is_some(),
                toml_path!["recipients", "file"],
                "recipients.file",
                "set file = \"/etc/ravelin/recipients\" and list \"file\" in sources = [\"file\"]",
            ),
            (
                RecipientSource::Ldap,
                self.ldap.is_some(),
                toml_path!["recipients", "ldap"],
                "[recipients.ldap]",
                "add [recipients.ldap] with url and base, and list \"ldap\" in sources",
            ),
        ];
        for (source, configured, path, setting, fix) in sections {
            let name = source.as_str();
            match (self.uses(source), configured) {
                (true, false) => err(
                    line("sources"),
                    format!("recipients.sources has \"{name}\" but {setting} is not set"),
                    fix,
                ),
                (false, true) => err(
                    loc.line(&path),
                    format!("{setting} is set but \"{name}\" is not in recipients.sources"),
                    fix,
                ),
                _ => {}
            }
        }
        if !self.harvest_delay.is_zero() && self.harvest_threshold == 0 {
            err(
                line("harvest_threshold"),
                "recipients.harvest_threshold is 0: every recipient would be delayed".into(),
                "write the unknown recipients a session may have before the tarpit, e.g. 3 (harvest_delay = \"0s\" turns it off)",
            );
        }
        let c = &self.callout;
        for (key, value) in [
            ("timeout", c.timeout),
            ("positive_ttl", c.positive_ttl),
            ("negative_ttl", c.negative_ttl),
        ] {
            if value.is_zero() {
                err(
                    loc.line(&toml_path!["recipients", "callout", key]),
                    format!("recipients.callout.{key} is 0s"),
                    "write a positive duration, e.g. \"15s\", \"7d\", \"3h\"",
                );
            }
        }
        let Some(ldap) = &self.ldap else { return };
        let at = |key: &str| loc.line(&toml_path!["recipients", "ldap", key]);
        validate_ldap_server(
            "recipients.ldap",
            LdapServerKeys {
                url: &ldap.url,
                starttls: ldap.starttls,
                allow_plaintext: ldap.allow_plaintext,
                timeout: ldap.timeout,
            },
            at,
            err,
        );
        if !ldap.filter.contains("{address}") {
            err(
                at("filter"),
                "recipients.ldap.filter has no {address}".into(),
                "write e.g. filter = \"(|(mail={address})(proxyAddresses=smtp:{address}))\"",
            );
        }
        if ldap.base.trim().is_empty() {
            err(
                at("base"),
                "recipients.ldap.base is empty".into(),
                "write the subtree to search, e.g. base = \"dc=example,dc=org\"",
            );
        }
        validate_service_account(
            "recipients.ldap",
            ["bind_dn", "bind_password_file"],
            [ldap.bind_dn.is_some(), ldap.bind_password_file.is_some()],
            at,
            err,
        );
    }
}
