//! `[greylist]`: temporary refusal of mail from a client network, sender and recipient never
//! seen together before (off by default).
//!
//! The first attempt of a triplet (client network, sender, recipient) is answered `450 4.7.1`;
//! a retry after `delay` and within `retry_window` passes, and the client network is then
//! allowed without delay for `allow_ttl` (automatic allowlist of clients that retry, as real
//! MTAs do). Read by [`crate::state::greylist`].

use serde::Deserialize;

use super::diagnostics::{Locator, toml_path};
use super::rate_limits::validate_prefixes;
use super::{Cidr, HumanDuration};

/// `[greylist]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GreylistSection {
    pub enabled: bool,
    /// How long a new triplet is refused.
    pub delay: HumanDuration,
    /// How long after the first attempt a retry still counts.
    pub retry_window: HumanDuration,
    /// How long a client network that retried is let through without greylisting.
    pub allow_ttl: HumanDuration,
    /// The part of the client address that forms the triplet (a retry may come from another
    /// host of the same farm).
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Clients never greylisted (in addition to `[outbound] trusted_networks`); default:
    /// loopback.
    pub exempt: Vec<Cidr>,
}

impl Default for GreylistSection {
    fn default() -> Self {
        GreylistSection {
            enabled: false,
            delay: HumanDuration::from_secs(300),
            retry_window: HumanDuration::from_secs(2 * 86_400),
            allow_ttl: HumanDuration::from_secs(35 * 86_400),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            exempt: super::loopback(),
        }
    }
}

impl GreylistSection {
    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        for (key, value) in [
            ("retry_window", self.retry_window),
            ("allow_ttl", self.allow_ttl),
        ] {
            if value.is_zero() {
                err(
                    loc.line(&toml_path!["greylist", key]),
                    format!("greylist.{key} is 0s"),
                    "write a positive duration, e.g. \"2d\"",
                );
            }
        }
        if self.retry_window <= self.delay {
            err(
                loc.line(&toml_path!["greylist", "retry_window"]),
                format!(
                    "greylist.retry_window = \"{}\" is not longer than delay = \"{}\": no retry could pass",
                    self.retry_window, self.delay
                ),
                "make retry_window longer than delay, e.g. delay = \"5m\", retry_window = \"2d\"",
            );
        }
        validate_prefixes("greylist", self.ipv4_prefix, self.ipv6_prefix, loc, err);
    }
}
