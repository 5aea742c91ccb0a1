//! The header firewall: what header fields may cross the edge of the organisation.
//!
//! Outbound ([`HeaderFirewall::outbound`], mail leaving through submission and relay
//! listeners), in this order for each field:
//! 1. a field covered by a DKIM signature already in the message (forwarded mail) is left as
//!    it is, so that signature still verifies — the bottom instances of each name listed in
//!    `h=`, as many as listed, which is what a verifier reads (internal hops added above a
//!    signed Received field are still removed);
//! 2. names in `header_firewall.outbound_remove` (and, with `remove_mailer`, the software
//!    fields) are removed;
//! 3. Received fields: with `received = "all"` every one is removed; with `"internal"` those
//!    naming an internal address or host (see below) are, and the hops outside the
//!    organisation (forwarded mail) stay, which keeps mail loops countable;
//! 4. Message-ID, Resent-Message-ID, In-Reply-To and References: each message id whose right
//!    side is an internal host or address is rewritten to `left@HOSTNAME` — the left side is
//!    unique already, and the mapping is the same for every message, so replies and threads
//!    still match;
//! 5. address, subject and MIME fields are kept; any other field that names an internal host
//!    or address (an unknown scanner's stamp, a TNEF correlator) is removed.
//!
//! Internal, for an address: private (RFC 1918), loopback, link-local, shared (RFC 6598),
//! "this network", unique local and site-local IPv6 (zone indexes ignored), IPv4-mapped forms
//! of those, and `internal_networks`. For a host name: under `internal_domains`, one of
//! `internal_hosts` (a name without a dot there also matches a first label), a name without a
//! dot after `from` or `by` in a Received field, and any name seen in an internal Received
//! field (learnt until nothing new is, so `Received: by app01.corp (Postfix ...)` is found
//! through the line that names app01's address). Only the run of internal Received fields at
//! the top counts: below the first hop outside lies a forwarded message's history, whose own
//! `localhost` hops are not ours to judge. The gateway's own hostname is never
//! internal. The gateway's own Received line is written by [`crate::cleanup`] separately and
//! names only the hostname.
//!
//! Inbound ([`HeaderFirewall::inbound`]): names in `header_firewall.inbound_remove` are
//! removed, and — always, even with the firewall disabled — every Authentication-Results
//! field that claims our authserv-id or whose authserv-id cannot be read (RFC 8601 5: only
//! results we add may carry our id).
//!
//! Settings read: `[header_firewall]` and `hostname`. Cannot fail: the input is a parsed
//! [`HeaderBlock`]; what is removed or rewritten is reported by field name in [`Filtered`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ravelin_wire::headers::{Field, HeaderBlock};

use crate::config::{Cidr, Config, HeaderFirewallSection, MAILER_FIELDS, ReceivedMode, is_domain};

/// A header field name, or a prefix when the configured pattern ended in `*`.
#[derive(Clone, Debug)]
struct NamePattern {
    name: String,
    prefix: bool,
}

impl NamePattern {
    fn new(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(p) => NamePattern {
                name: p.to_ascii_lowercase(),
                prefix: true,
            },
            None => NamePattern {
                name: pattern.to_ascii_lowercase(),
                prefix: false,
            },
        }
    }

    fn matches(&self, name: &str) -> bool {
        if self.prefix {
            name.len() >= self.name.len()
                && name.as_bytes()[..self.name.len()].eq_ignore_ascii_case(self.name.as_bytes())
        } else {
            name.eq_ignore_ascii_case(&self.name)
        }
    }
}

fn any_matches(patterns: &[NamePattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// Fields that carry addresses, the subject or the MIME structure: never removed for naming
/// an internal host (only by an explicit pattern).
const KEPT_NAMES: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "mime-version",
    "comments",
    "keywords",
    "thread-topic",
    "thread-index",
    "disposition-notification-to",
    "return-receipt-to",
];
const KEPT_PREFIXES: &[&str] = &["content-", "list-", "resent-", "dkim-", "arc-"];

/// Fields holding message ids.
const MSG_ID_FIELDS: &[&str] = &[
    "message-id",
    "resent-message-id",
    "in-reply-to",
    "references",
];

/// The result: the header section to write and what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    /// The fields kept (byte for byte) or rewritten, in their order, followed by the empty
    /// line when the message had one. The body follows it unchanged.
    pub header: Vec<u8>,
    /// Names of the fields removed.
    pub removed: Vec<String>,
    /// Names of the fields rewritten.
    pub rewritten: Vec<String>,
}

/// The configured firewall; cheap to share.
#[derive(Clone, Debug)]
pub struct HeaderFirewall {
    enabled: bool,
    hostname: String,
    outbound: Vec<NamePattern>,
    inbound: Vec<NamePattern>,
    received: ReceivedMode,
    internal_domains: Vec<String>,
    internal_hosts: Vec<String>,
    internal_networks: Vec<Cidr>,
}

impl HeaderFirewall {
    /// The firewall of `section` for a gateway named `hostname`.
    pub fn new(section: &HeaderFirewallSection, hostname: &str) -> Self {
        let mut outbound: Vec<NamePattern> = section
            .outbound_remove
            .iter()
            .map(|p| NamePattern::new(p))
            .collect();
        if section.remove_mailer {
            outbound.extend(MAILER_FIELDS.iter().map(|p| NamePattern::new(p)));
        }
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        HeaderFirewall {
            enabled: section.enabled,
            hostname: hostname.to_ascii_lowercase(),
            outbound,
            inbound: section
                .inbound_remove
                .iter()
                .map(|p| NamePattern::new(p))
                .collect(),
            received: section.received,
            internal_domains: lower(&section.internal_domains),
            internal_hosts: lower(&section.internal_hosts),
            internal_networks: section.internal_networks.clone(),
        }
    }

    pub fn from_config(config: &Config) -> Self {
        HeaderFirewall::new(&config.header_firewall, &config.hostname)
    }

    /// Removes and rewrites what reveals the inside (see the module documentation).
    pub fn outbound(&self, block: &HeaderBlock<'_>) -> Filtered {
        let mut out = Filtered::default();
        if !self.enabled {
            for f in block.fields() {
                out.header.extend_from_slice(f.raw());
            }
            finish(block, &mut out);
            return out;
        }
        let signed = dkim_signed_counts(block);
        let mut remaining: HashMap<String, usize> = HashMap::new();
        for f in block.fields() {
            *remaining.entry(f.name().to_ascii_lowercase()).or_default() += 1;
        }
        let (internal_received, learned) = self.classify_received(block);
        for (i, f) in block.fields().enumerate() {
            let name = f.name().to_ascii_lowercase();
            // Instances of this name from here to the bottom, this one included.
            let below = remaining.get_mut(&name).map_or(0, |n| {
                *n -= 1;
                *n + 1
            });
            if below <= signed.get(&name).copied().unwrap_or(0) {
                out.header.extend_from_slice(f.raw());
                continue;
            }
            let remove = if any_matches(&self.outbound, &name) {
                true
            } else if name == "received" {
                self.received == ReceivedMode::All || internal_received.contains(&i)
            } else if MSG_ID_FIELDS.contains(&name.as_str()) {
                match self.rewrite_msg_ids(&f, &learned) {
                    Some(raw) => {
                        out.header.extend_from_slice(&raw);
                        out.rewritten.push(f.name().to_string());
                        continue;
                    }
                    None => false,
                }
            } else if is_kept(&name) {
                false
            } else {
                self.mentions_internal(&String::from_utf8_lossy(f.value()), &learned)
            };
            if remove {
                out.removed.push(f.name().to_string());
            } else {
                out.header.extend_from_slice(f.raw());
            }
        }
        finish(block, &mut out);
        out
    }

    /// Removes what an outsider must not set (see the module documentation); `authserv_id`
    /// is the one our Authentication-Results fields carry.
    pub fn inbound(&self, block: &HeaderBlock<'_>, authserv_id: &str) -> Filtered {
        let mut out = Filtered::default();
        for f in block.fields() {
            let listed = self.enabled && any_matches(&self.inbound, f.name());
            let claims_ours = f.is("Authentication-Results")
                && authserv_id_of(f.value()).is_none_or(|id| same_authserv_id(&id, authserv_id));
            if listed || claims_ours {
                out.removed.push(f.name().to_string());
            } else {
                out.header.extend_from_slice(f.raw());
            }
        }
        finish(block, &mut out);
        out
    }

    /// The indexes of the Received fields that are internal, and the host names learnt from
    /// them. Received fields are newest first, so the organisation's own hops are the run at
    /// the top; the first hop outside ends it, and what lies below (a forwarded message's
    /// history, including its sender's own internal hops) is neither removed nor learnt from.
    fn classify_received(&self, block: &HeaderBlock<'_>) -> (HashSet<usize>, HashSet<String>) {
        let received: Vec<(usize, String)> = block
            .fields()
            .enumerate()
            .filter(|(_, f)| f.is("Received"))
            .map(|(i, f)| (i, String::from_utf8_lossy(&f.unfolded()).into_owned()))
            .collect();
        let mut learned = HashSet::new();
        // The run grows from the top; what is learnt from the fields added may make the next
        // one internal too. Each pass adds a field or ends, and looks at each field once more
        // at most, so this is linear in the header.
        let mut run = 0;
        loop {
            let start = run;
            while let Some((_, text)) = received.get(run)
                && (self.mentions_internal(text, &learned) || has_dotless_hop(text))
            {
                run += 1;
            }
            if run == start {
                return (received[..run].iter().map(|(i, _)| *i).collect(), learned);
            }
            for (_, text) in &received[start..run] {
                learned.extend(host_names(text).into_iter().filter(|n| *n != self.hostname));
            }
        }
    }

    /// Whether free text names an internal address or host.
    fn mentions_internal(&self, text: &str, learned: &HashSet<String>) -> bool {
        tokens(text).any(|t| match parse_ip(t) {
            Some(ip) => self.is_internal_ip(ip),
            None => {
                let host = t.rsplit('@').next().unwrap_or(t);
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                name != self.hostname && (learned.contains(&name) || self.is_internal_name(&name))
            }
        })
    }

    fn is_internal_ip(&self, ip: IpAddr) -> bool {
        !is_public(ip) || self.internal_networks.iter().any(|n| n.contains(ip))
    }

    /// `name` is lower case.
    fn is_internal_name(&self, name: &str) -> bool {
        if name == self.hostname || name.is_empty() {
            return false;
        }
        self.internal_domains.iter().any(|d| {
            name == d
                || name
                    .strip_suffix(d.as_str())
                    .is_some_and(|p| p.ends_with('.'))
        }) || self
            .internal_hosts
            .iter()
            .any(|h| name == h || (!h.contains('.') && name.split('.').next() == Some(h.as_str())))
    }

    /// The right side of a message id, lower case and without brackets, is internal.
    fn is_internal_id_host(&self, right: &str, learned: &HashSet<String>) -> bool {
        let host = right.trim_end_matches('.').to_ascii_lowercase();
        if host == self.hostname {
            return false;
        }
        if let Some(literal) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return parse_ip(literal).is_none_or(|ip| self.is_internal_ip(ip));
        }
        !host.contains('.') || learned.contains(&host) || self.is_internal_name(&host)
    }

    /// The field with every internal message id rewritten, or `None` when none is.
    fn rewrite_msg_ids(&self, f: &Field<'_>, learned: &HashSet<String>) -> Option<Vec<u8>> {
        let raw = f.raw();
        let value_at = raw.len() - 2 - f.value().len();
        let mut out = raw[..value_at].to_vec();
        let mut changed = false;
        let mut rest = f.value();
        while let Some(open) = rest.iter().position(|&b| b == b'<') {
            let Some(close) = rest[open..].iter().position(|&b| b == b'>') else {
                break;
            };
            let id = &rest[open + 1..open + close];
            out.extend_from_slice(&rest[..=open]);
            match std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.rsplit_once('@'))
            {
                Some((left, right)) if self.is_internal_id_host(right, learned) => {
                    out.extend_from_slice(left.as_bytes());
                    out.push(b'@');
                    out.extend_from_slice(self.hostname.as_bytes());
                    changed = true;
                }
                _ => out.extend_from_slice(id),
            }
            out.push(b'>');
            rest = &rest[open + close + 1..];
        }
        out.extend_from_slice(rest);
        out.extend_from_slice(b"\r\n");
        changed.then_some(out)
    }
}

/// Appends the empty line when the message had one.
fn finish(block: &HeaderBlock<'_>, out: &mut Filtered) {
    if block.body_start().is_some() {
        out.header.extend_from_slice(b"\r\n");
    }
}

fn is_kept(name: &str) -> bool {
    KEPT_NAMES.contains(&name) || KEPT_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// For each name (lower case) in the `h=` tags of the message's DKIM signatures, how many of
/// its instances one signature covers at most. A verifier takes instances from the bottom
/// (RFC 6376 5.4.2), so those are the bottom ones; instances above them are not signed.
fn dkim_signed_counts(block: &HeaderBlock<'_>) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for f in block.all("DKIM-Signature") {
        let value = String::from_utf8_lossy(&f.unfolded()).into_owned();
        let mut this: HashMap<String, usize> = HashMap::new();
        for tag in value.split(';') {
            if let Some((k, v)) = tag.split_once('=')
                && k.trim() == "h"
            {
                for n in v.split(':').map(|n| n.trim().to_ascii_lowercase()) {
                    if !n.is_empty() {
                        *this.entry(n).or_default() += 1;
                    }
                }
            }
        }
        for (name, n) in this {
            let c = counts.entry(name).or_default();
            *c = (*c).max(n);
        }
    }
    counts
}

/// The words of a header value: split at white space and the punctuation around addresses,
/// comments and literals.
fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '(' | ')' | '[' | ']' | ';' | ',' | '<' | '>' | '"' | '\'' | '='
            )
    })
    .filter(|t| !t.is_empty())
}

/// An address as Received fields write it: plain, `IPv6:` prefixed, with a zone index.
fn parse_ip(token: &str) -> Option<IpAddr> {
    let t = token
        .strip_prefix("IPv6:")
        .or_else(|| token.strip_prefix("ipv6:"))
        .unwrap_or(token);
    let t = t.split_once('%').map_or(t, |(addr, _zone)| addr);
    t.parse().ok()
}

/// Whether an address can be reached from the Internet (not private, local or reserved for
/// internal use). Documentation ranges count as public: they stand for public hosts.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0)
}

/// The text without its comments (RFC 5322 3.2.2, nested, with quoted pairs), each replaced by
/// a space.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, depth) {
            ('\\', d) if d > 0 => {
                chars.next();
            }
            ('(', _) => depth += 1,
            (')', d) if d > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(' ');
                }
            }
            (c, 0) => out.push(c),
            _ => {}
        }
    }
    out
}

/// Whether a Received field names a host without a dot after `from` or `by` (outside
/// comments): such a name exists only inside a network.
fn has_dotless_hop(text: &str) -> bool {
    let plain = without_comments(text);
    let words: Vec<&str> = plain.split_whitespace().collect();
    words.windows(2).any(|w| {
        (w[0].eq_ignore_ascii_case("from") || w[0].eq_ignore_ascii_case("by")) && {
            let host = w[1].trim_end_matches([';', ',']);
            !host.starts_with('[') && !host.contains('.') && is_domain(host, false)
        }
    })
}

/// The host names in a Received field (lower case): every word that is a domain name with a
/// dot, and the names without one after `from` and `by`.
fn host_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = tokens(text)
        .filter(|t| !t.contains('@') && parse_ip(t).is_none())
        .map(|t| t.trim_end_matches('.').to_ascii_lowercase())
        .filter(|t| is_domain(t, true))
        .collect();
    let plain = without_comments(text);
    let words: Vec<&str> = plain.split_whitespace().collect();
    for w in words.windows(2) {
        if w[0].eq_ignore_ascii_case("from") || w[0].eq_ignore_ascii_case("by") {
            let host = w[1].trim_end_matches([';', ',']).to_ascii_lowercase();
            if !host.contains('.') && is_domain(&host, false) {
                names.push(host);
            }
        }
    }
    names
}

/// The authserv-id of an Authentication-Results value (RFC 8601 2.2: a token or quoted
/// string after optional comments), or `None` when it cannot be read.
pub fn authserv_id_of(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let mut chars = text.chars().peekable();
    // Leading white space and comments.
    loop {
        match chars.peek() {
            Some(c) if c.is_whitespace() => {
                chars.next();
            }
            Some('(') => {
                let mut depth = 0usize;
                loop {
                    match chars.next()? {
                        '\\' => {
                            chars.next()?;
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => break,
        }
    }
    let mut id = String::new();
    if chars.peek() == Some(&'"') {
        chars.next();
        loop {
            match chars.next()? {
                '\\' => id.push(chars.next()?),
                '"' => break,
                c => id.push(c),
            }
        }
    } else {
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == ';' || c == '(' {
                break;
            }
            id.push(c);
            chars.next();
        }
    }
    (!id.is_empty()).then_some(id)
}

/// Two authserv-ids name the same service (case and a final dot ignored).
fn same_authserv_id(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

#[cfg(test)]
mod tests;
