//! `[rate_limits]`: how much one client address, one network prefix or one sender domain may
//! send, and how many connections one address or prefix may hold and open.
//!
//! Message and recipient counts are kept per `window` (sliding) in the state store, so they
//! are shared by every node of a cluster and survive a restart; exceeding one answers
//! `451 4.7.1`. Concurrent connections are counted by each node in memory (a crashed node
//! cannot leave stale counts behind), connection rates in the store; exceeding either
//! answers `421 4.7.0` at connect. 0 turns a limit off. Read by [`crate::state::limits`].

use serde::Deserialize;

use super::diagnostics::{Locator, toml_path};
use super::{Cidr, HumanDuration};

/// `[rate_limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsSection {
    /// The sliding window of the message and recipient limits.
    pub window: HumanDuration,
    /// MAIL FROM commands per client address per window.
    pub messages_per_address: u32,
    /// RCPT TO commands per client address per window.
    pub recipients_per_address: u32,
    /// MAIL FROM commands per sender domain (all clients together) per window.
    pub messages_per_sender_domain: u32,
    /// RCPT TO commands per sender domain per window.
    pub recipients_per_sender_domain: u32,
    /// MAIL FROM / RCPT TO per authenticated user per window, whatever the client address.
    pub messages_per_user: u32,
    pub recipients_per_user: u32,
    /// Connections one address may hold at once (per node).
    pub connections_per_address: u32,
    /// Connections one prefix (`ipv4_prefix`, `ipv6_prefix`) may hold at once (per node).
    pub connections_per_prefix: u32,
    /// New connections per address per `connection_window`.
    pub connection_rate_per_address: u32,
    /// New connections per prefix per `connection_window`.
    pub connection_rate_per_prefix: u32,
    pub connection_window: HumanDuration,
    /// The prefix lengths that group IPv4 and IPv6 clients into one network.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Clients no rate limit applies to (in addition to `[outbound] trusted_networks`);
    /// default: loopback.
    pub exempt: Vec<Cidr>,
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        RateLimitsSection {
            window: HumanDuration::from_secs(3600),
            messages_per_address: 3000,
            recipients_per_address: 10_000,
            messages_per_sender_domain: 0,
            recipients_per_sender_domain: 0,
            messages_per_user: 500,
            recipients_per_user: 2000,
            connections_per_address: 50,
            connections_per_prefix: 200,
            connection_rate_per_address: 300,
            connection_rate_per_prefix: 0,
            connection_window: HumanDuration::from_secs(60),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            exempt: super::loopback(),
        }
    }
}

/// Checks the prefix lengths of `section` (`[rate_limits]` or `[greylist]`).
pub(super) fn validate_prefixes(
    section: &str,
    v4: u8,
    v6: u8,
    loc: &Locator<'_>,
    err: &mut impl FnMut(usize, String, &str),
) {
    if !(8..=32).contains(&v4) {
        err(
            loc.line(&toml_path![section, "ipv4_prefix"]),
            format!("{section}.ipv4_prefix = {v4} is outside 8 to 32"),
            "write ipv4_prefix = 24",
        );
    }
    if !(16..=128).contains(&v6) {
        err(
            loc.line(&toml_path![section, "ipv6_prefix"]),
            format!("{section}.ipv6_prefix = {v6} is outside 16 to 128"),
            "write ipv6_prefix = 64",
        );
    }
}

impl RateLimitsSection {
    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        for (key, value) in [
            ("window", self.window),
            ("connection_window", self.connection_window),
        ] {
            if value.is_zero() {
                err(
                    loc.line(&toml_path!["rate_limits", key]),
                    format!("rate_limits.{key} is 0s"),
                    "write a positive duration, e.g. \"1h\" (turn a limit off with 0 instead)",
                );
            }
        }
        validate_prefixes("rate_limits", self.ipv4_prefix, self.ipv6_prefix, loc, err);
    }
}
