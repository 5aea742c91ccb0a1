//! `[dns]`: how the gateway reaches its recursive resolvers, shared by every part that looks
//! something up (delivery's MX, TLSA and MTA-STS lookups; the inbound checks' DNSBL, SPF, DKIM
//! and DMARC queries).
//!
//! [`DnsSection::resolver_settings`] turns it into `ravelin_dns::ResolverSettings`. Errors name
//! the key and what to write instead: a zero timeout, attempts outside 1..=10.

use serde::Deserialize;
use serde::de::{self, Deserializer};

use ravelin_dns::{AdTrust, ResolverSettings};

use super::HumanDuration;
use super::diagnostics::{Locator, toml_path};

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Resolvers to ask; empty = the system's (resolv.conf).
    pub nameservers: Vec<std::net::SocketAddr>,
    /// How long one query waits for an answer.
    pub timeout: HumanDuration,
    /// How many times a query that timed out or failed is sent.
    pub attempts: usize,
    /// When the resolver's AD bit (DNSSEC-validated) is believed.
    #[serde(deserialize_with = "ad_trust")]
    pub ad_trust: AdTrust,
}

impl Default for DnsSection {
    fn default() -> Self {
        let d = ResolverSettings::default();
        DnsSection {
            nameservers: d.nameservers,
            timeout: HumanDuration(d.timeout),
            attempts: d.attempts,
            ad_trust: d.ad_trust,
        }
    }
}

impl DnsSection {
    /// The settings of the resolver every lookup of the gateway goes through.
    pub fn resolver_settings(&self) -> ResolverSettings {
        ResolverSettings {
            nameservers: self.nameservers.clone(),
            timeout: self.timeout.0,
            attempts: self.attempts,
            ad_trust: self.ad_trust,
        }
    }

    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        if self.timeout.is_zero() {
            err(
                loc.line(&toml_path!["dns", "timeout"]),
                "dns.timeout is 0s".into(),
                "write a positive duration, e.g. \"5s\"",
            );
        }
        if !(1..=10).contains(&self.attempts) {
            err(
                loc.line(&toml_path!["dns", "attempts"]),
                format!("dns.attempts is {}, outside 1..=10", self.attempts),
                "write a number from 1 to 10, e.g. attempts = 2",
            );
        }
    }
}

fn ad_trust<'de, D: Deserializer<'de>>(d: D) -> Result<AdTrust, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "loopback" => Ok(AdTrust::Loopback),
        "always" => Ok(AdTrust::Always),
        "never" => Ok(AdTrust::Never),
        other => Err(de::Error::custom(format!(
            "unknown ad_trust \"{}\": write \"loopback\", \"always\" or \"never\"",
            other.escape_debug()
        ))),
    }
}
