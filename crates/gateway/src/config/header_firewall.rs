//! `[header_firewall]`: which header fields the gateway removes or rewrites, in each direction.
//!
//! Outbound (mail leaving through `submission`, `submissions` and `relay` listeners): what
//! reveals the inside of the organisation. Inbound (mail arriving on `inbound` listeners):
//! what the backend trusts and an outsider must never set. The defaults cover Exchange
//! (whose own "header firewall" treats `X-MS-Exchange-Organization-*` and
//! `X-MS-Exchange-Forest-*` the same way at the organisation's edge) and the usual leaks of an
//! on-premise mail server; what the module [`crate::firewall`] does with them is described
//! there. Checked here: patterns are field names with at most a trailing `*` and not `*`
//! alone, names and domains are host names.

use serde::Deserialize;

use super::diagnostics::{Locator, toml_path};
use super::{Cidr, Config, is_domain};

/// What happens to the Received fields already in an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceivedMode {
    /// Remove those that name an internal address or host; keep the hops outside.
    Internal,
    /// Remove every one.
    All,
}

impl ReceivedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceivedMode::Internal => "internal",
            ReceivedMode::All => "all",
        }
    }
}

/// `[header_firewall]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderFirewallSection {
    /// Off: header fields pass unchanged (except Authentication-Results claiming our
    /// authserv-id, which are always removed from inbound mail).
    pub enabled: bool,
    /// Field names removed from outbound mail; `Name-*` matches every name starting `Name-`.
    pub outbound_remove: Vec<String>,
    /// Field names removed from inbound mail.
    pub inbound_remove: Vec<String>,
    /// Also remove the fields naming the sender's software (X-Mailer, User-Agent, ...).
    pub remove_mailer: bool,
    /// Which of the Received fields already in outbound mail go.
    pub received: ReceivedMode,
    /// Domains whose hosts are internal (e.g. the Active Directory domain).
    pub internal_domains: Vec<String>,
    /// Host names that are internal (a name without dots also matches as the first label).
    pub internal_hosts: Vec<String>,
    /// Networks that are internal besides the private and local ranges.
    pub internal_networks: Vec<Cidr>,
}

/// Exchange's internal fields: the organisation and forest headers its own firewall guards,
/// hybrid cross-tenant stamps (tenant id), transport bookkeeping, mailbox rule and BCC markers.
const EXCHANGE_INTERNAL: &str = "X-MS-Exchange-*";

/// The outbound default: Exchange's internal fields, the client's address (OWA, Outlook on
/// the web) and the names of the Client Access and Mailbox servers a connection was proxied
/// through.
pub fn default_outbound_remove() -> Vec<String> {
    [EXCHANGE_INTERNAL, "X-Originating-IP", "X-ClientProxiedBy"]
        .map(String::from)
        .to_vec()
}

/// The inbound default: the Exchange fields it trusts when they arrive
/// (`X-MS-Exchange-Organization-AuthAs: Internal` and `...-SCL: -1` skip its checks; in a hybrid
/// organisation the cross-tenant and transport stamps are promoted to organisation fields).
/// Narrower than outbound: Exchange Online signs mail with DKIM over
/// `X-MS-Exchange-SenderADCheck`, which must arrive intact. Also the verdicts of Exchange
/// Online Protection (`X-Forefront-Antispam-Report: SFV:SKN` means "skip filtering") and the
/// SpamAssassin verdicts that Postfix/Dovecot backends and Sieve rules act on.
pub fn default_inbound_remove() -> Vec<String> {
    [
        "X-MS-Exchange-Organization-*",
        "X-MS-Exchange-Forest-*",
        "X-MS-Exchange-CrossTenant-*",
        "X-MS-Exchange-Transport-*",
        "X-Forefront-Antispam-Report*",
        "X-Microsoft-Antispam*",
        "X-Spam-Flag",
        "X-Spam-Status",
    ]
    .map(String::from)
    .to_vec()
}

/// The fields `remove_mailer` adds to the outbound list.
pub const MAILER_FIELDS: &[&str] = &["X-Mailer", "User-Agent", "X-MimeOLE", "X-Newsreader"];

impl Default for HeaderFirewallSection {
    fn default() -> Self {
        HeaderFirewallSection {
            enabled: true,
            outbound_remove: default_outbound_remove(),
            inbound_remove: default_inbound_remove(),
            remove_mailer: false,
            received: ReceivedMode::Internal,
            internal_domains: Vec::new(),
            internal_hosts: Vec::new(),
            internal_networks: Vec::new(),
        }
    }
}

/// Whether `pattern` is a field name, optionally ending in `*`, and not `*` alone.
pub fn is_name_pattern(pattern: &str) -> bool {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b':' && b != b'*')
}

/// The checks of `[header_firewall]`.
pub(super) fn validate(
    config: &Config,
    loc: &Locator<'_>,
    err: &mut impl FnMut(usize, String, &str),
) {
    let section = &config.header_firewall;
    for (key, list) in [
        ("outbound_remove", &section.outbound_remove),
        ("inbound_remove", &section.inbound_remove),
    ] {
        for (i, pattern) in list.iter().enumerate() {
            if !is_name_pattern(pattern) {
                err(
                    loc.line(&toml_path!["header_firewall", key, i]),
                    format!(
                        "header_firewall.{key}: \"{}\" is not a header field name or a name ending in *",
                        pattern.escape_debug()
                    ),
                    "write a field name such as \"X-Originating-IP\", or a prefix such as \"X-MS-Exchange-*\" (not * alone)",
                );
            }
        }
    }
    for (key, list) in [
        ("internal_domains", &section.internal_domains),
        ("internal_hosts", &section.internal_hosts),
    ] {
        for (i, name) in list.iter().enumerate() {
            if !is_domain(name, false) {
                err(
                    loc.line(&toml_path!["header_firewall", key, i]),
                    format!(
                        "header_firewall.{key}: \"{}\" is not a host or domain name",
                        name.escape_debug()
                    ),
                    "write a name without @, brackets or a trailing dot, e.g. \"corp.example.org\" or \"EXCH01\"",
                );
            } else if name.eq_ignore_ascii_case(&config.hostname) {
                err(
                    loc.line(&toml_path!["header_firewall", key, i]),
                    format!(
                        "header_firewall.{key}: \"{name}\" is this gateway's own hostname, the one name the outside sees"
                    ),
                    "list the inside names only (e.g. \"corp.example.org\", \"EXCH01\")",
                );
            }
        }
    }
}
