//! `[monitor]`: the gateway watching its own exposure — its public addresses on the DNS
//! blocklists receivers consult (PRODUCT.md: "daily check of own outbound IPs").
//!
//! Off unless `addresses` is set: nothing is looked up that was not asked for. Read by
//! [`crate::monitor`]. Errors name the key and what to write instead: a list that is not a
//! DNS zone name, a retired list (it may answer "listed" for every address), a duplicate
//! list, more lists than one check asks, an interval under a minute (the lists rate-limit
//! their users).

use std::net::IpAddr;
use std::time::Duration;

use ravelin_dns::dnsbl::{DEFAULT_ZONES, MAX_LISTS, is_ipv4_only, is_retired};
use serde::Deserialize;

use super::diagnostics::{Locator, toml_path};
use super::{HumanDuration, is_domain};

/// The shortest `interval` accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// `[monitor]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSection {
    /// The gateway's own public addresses (those it sends from and receives on); empty: the
    /// monitor is off.
    pub addresses: Vec<IpAddr>,
    /// The blocklists asked about them (default: those of `ravelin audit`).
    pub blocklists: Vec<String>,
    /// How often they are asked; the first check runs at start.
    pub interval: HumanDuration,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            addresses: Vec::new(),
            blocklists: DEFAULT_ZONES.iter().map(|z| z.to_string()).collect(),
            interval: HumanDuration::from_secs(24 * 3600),
        }
    }
}

impl MonitorSection {
    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        let line = |key: &str| loc.line(&toml_path!["monitor", key]);
        if self.addresses.iter().any(|a| a.is_ipv6())
            && !self.blocklists.is_empty()
            && self.blocklists.iter().all(|z| is_ipv4_only(z))
        {
            err(
                line("addresses"),
                "monitor.addresses has IPv6 addresses but every list of monitor.blocklists lists IPv4 addresses only: they would never be checked".into(),
                "add a list that lists IPv6 addresses, e.g. \"zen.spamhaus.org\"",
            );
        }
        if self.interval.0 < MIN_INTERVAL {
            err(
                line("interval"),
                format!("monitor.interval = \"{}\" is under a minute", self.interval),
                "write interval = \"24h\" (blocklists limit how often one client may ask)",
            );
        }
        if !self.addresses.is_empty() && self.blocklists.is_empty() {
            err(
                line("blocklists"),
                "monitor.blocklists is empty while monitor.addresses is set".into(),
                "remove blocklists to use the default lists, or name at least one",
            );
        }
        if self.blocklists.len() > MAX_LISTS {
            err(
                line("blocklists"),
                format!(
                    "monitor.blocklists names {} lists, more than the {MAX_LISTS} one check asks",
                    self.blocklists.len()
                ),
                "keep the lists your receivers use",
            );
        }
        let entry = |i: usize| loc.line(&toml_path!["monitor", "blocklists", i]);
        let normal = |z: &str| z.trim_end_matches('.').to_ascii_lowercase();
        for (i, zone) in self.blocklists.iter().enumerate() {
            if !is_domain(&normal(zone), true) {
                err(
                    entry(i),
                    format!(
                        "monitor.blocklists names \"{}\", which is not a DNS zone",
                        zone.escape_debug()
                    ),
                    "write the list's zone, e.g. \"zen.spamhaus.org\"",
                );
                continue;
            }
            if is_retired(zone) {
                err(
                    entry(i),
                    format!("monitor.blocklists names {zone:?}, a list that has shut down"),
                    "remove it: a retired list may answer \"listed\" for every address",
                );
            }
            if self.blocklists[..i]
                .iter()
                .any(|z| normal(z) == normal(zone))
            {
                err(
                    entry(i),
                    format!("monitor.blocklists names {zone:?} twice"),
                    "name each list once",
                );
            }
        }
    }
}
