//! `[screen]` and `[dnsbl]`: what a client of an `inbound` listener meets before the SMTP
//! dialogue (Postfix postscreen is the model) and how its reputation is scored.
//!
//! `[screen]`: CIDR allow and block files, the greet wait (pregreet detection) and the cache
//! of clients that passed. `[dnsbl]`: DNS block and allow lists with weights and return-code
//! filters written as Postfix's `postscreen_dnsbl_sites` (`zen.spamhaus.org=127.0.0.[2..11]*3`),
//! the threshold, the deadline, and the weights of the reverse-DNS and HELO checks. Read by
//! [`crate::screen`] and [`crate::checks::reputation`]. Errors name the key and what to write.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::diagnostics::{Locator, toml_path};
use super::values::{FIX_SEPARATOR, from_toml_string};
use super::{Cidr, HumanDuration, is_domain};

/// `[screen]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScreenSection {
    /// How long an inbound client waits for the banner; one that talks first is refused.
    pub greet_wait: HumanDuration,
    /// Clients the greet wait and the reputation scoring never apply to (default: loopback).
    pub exempt: Vec<Cidr>,
    /// A file of networks (one CIDR per line, `#` comments) that skip the greet wait and the
    /// reputation scoring; reloaded when it changes.
    pub allow_file: Option<PathBuf>,
    /// A file of networks refused at connect with `554 5.7.1`; reloaded when it changes.
    pub block_file: Option<PathBuf>,
    /// How long a client that waited for the banner is not made to wait again.
    pub cache_ttl: HumanDuration,
}

impl Default for ScreenSection {
    fn default() -> Self {
        ScreenSection {
            greet_wait: HumanDuration::from_secs(6),
            exempt: super::loopback(),
            allow_file: None,
            block_file: None,
            cache_ttl: HumanDuration::from_secs(86_400),
        }
    }
}

/// The longest greet wait accepted (postscreen allows up to a few tens of seconds; SMTP
/// clients wait 5 minutes for the banner, RFC 5321 §4.5.3.2.1).
pub const MAX_GREET_WAIT: Duration = Duration::from_secs(60);

impl ScreenSection {
    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        if self.greet_wait.0 > MAX_GREET_WAIT {
            err(
                loc.line(&toml_path!["screen", "greet_wait"]),
                format!(
                    "screen.greet_wait = \"{}\" is longer than {}s",
                    self.greet_wait,
                    MAX_GREET_WAIT.as_secs()
                ),
                "write a few seconds, e.g. greet_wait = \"6s\" (postscreen's default)",
            );
        }
        if self.cache_ttl.is_zero() {
            err(
                loc.line(&toml_path!["screen", "cache_ttl"]),
                "screen.cache_ttl is 0s".into(),
                "write a positive duration, e.g. cache_ttl = \"1d\"",
            );
        }
    }
}

/// `[dnsbl]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsblSection {
    /// The lists asked, each `zone[=filter][*weight]` (default: none).
    pub sites: Vec<DnsblSite>,
    /// A score at or above this refuses the client.
    pub threshold: i32,
    /// How long after connect the lists may answer; later answers are ignored.
    pub timeout: HumanDuration,
    /// How long a client that scored below the threshold is not looked up again.
    pub cache_ttl: HumanDuration,
    /// Added when the client's address has no PTR record.
    pub no_ptr: i32,
    /// Added when no PTR name of the client resolves back to its address.
    pub ptr_not_confirmed: i32,
    /// Added when the HELO name is our host name.
    pub helo_our_name: i32,
    /// Added when the HELO is our address (as a literal or a bare address).
    pub helo_our_address: i32,
    /// Added when the HELO name is not a fully qualified domain name.
    pub helo_not_fqdn: i32,
    /// Added when the HELO is an address literal that is not the client's address.
    pub helo_literal_mismatch: i32,
}

impl Default for DnsblSection {
    fn default() -> Self {
        DnsblSection {
            sites: Vec::new(),
            threshold: 3,
            timeout: HumanDuration::from_secs(5),
            cache_ttl: HumanDuration::from_secs(3600),
            no_ptr: 1,
            ptr_not_confirmed: 1,
            helo_our_name: 3,
            helo_our_address: 3,
            helo_not_fqdn: 1,
            helo_literal_mismatch: 2,
        }
    }
}

impl DnsblSection {
    /// Whether the reverse-DNS checks can change a score (otherwise they are not made).
    pub fn checks_ptr(&self) -> bool {
        self.no_ptr != 0 || self.ptr_not_confirmed != 0
    }

    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        for (key, value) in [("timeout", self.timeout), ("cache_ttl", self.cache_ttl)] {
            if value.is_zero() {
                err(
                    loc.line(&toml_path!["dnsbl", key]),
                    format!("dnsbl.{key} is 0s"),
                    "write a positive duration, e.g. \"5s\" for timeout, \"1h\" for cache_ttl",
                );
            }
        }
        if self.threshold < 1 {
            err(
                loc.line(&toml_path!["dnsbl", "threshold"]),
                format!(
                    "dnsbl.threshold = {} would refuse every client",
                    self.threshold
                ),
                "write a positive score, e.g. threshold = 3",
            );
        }
        if self.sites.len() > ravelin_dns::dnsbl::MAX_LISTS {
            err(
                loc.line(&toml_path!["dnsbl", "sites"]),
                format!(
                    "dnsbl.sites names {} lists, more than {}",
                    self.sites.len(),
                    ravelin_dns::dnsbl::MAX_LISTS
                ),
                "keep the few lists you trust",
            );
        }
    }
}

/// An inclusive range of one octet of a return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OctetRange(u8, u8);

/// One DNS list: its zone, the return codes that count, and the weight they add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblSite {
    /// The zone, lower case, no final dot.
    pub zone: String,
    /// Per octet, the values that match; `None`: every code in 127.0.0.0/8 matches.
    filter: Option<[Vec<OctetRange>; 4]>,
    /// Added to the score when listed (negative for allow lists).
    pub weight: i32,
    /// The text as written, for logs.
    text: String,
}

impl DnsblSite {
    /// Whether a return code counts as a listing on this site.
    pub fn matches(&self, code: Ipv4Addr) -> bool {
        let Some(filter) = &self.filter else {
            return true;
        };
        code.octets()
            .iter()
            .zip(filter)
            .all(|(o, ranges)| ranges.iter().any(|r| (r.0..=r.1).contains(o)))
    }
}

impl fmt::Display for DnsblSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One octet of a filter: `N`, or `[N..M;K;...]`.
fn octet(text: &str) -> Result<Vec<OctetRange>, String> {
    let number = |s: &str| {
        s.parse::<u8>()
            .map_err(|_| format!("\"{}\" is not a number from 0 to 255", s.escape_debug()))
    };
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        let n = number(text)?;
        return Ok(vec![OctetRange(n, n)]);
    };
    inner
        .split(';')
        .map(|part| match part.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("the range {a}..{b} is empty"));
                }
                Ok(OctetRange(a, b))
            }
            None => number(part).map(|n| OctetRange(n, n)),
        })
        .collect()
}

/// Splits a filter at the dots outside brackets: `127.0.0.[2..11]` → 4 octets.
fn split_octets(filter: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in filter.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                parts.push(&filter[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&filter[start..]);
    parts
}

impl FromStr for DnsblSite {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: String| {
            format!(
                "invalid DNS list \"{}\": {why}{FIX_SEPARATOR}write zone[=filter][*weight], e.g. \
                 \"zen.spamhaus.org=127.0.0.[2..11]*3\" or \"list.dnswl.org=127.0.[0..255].[1..3]*-4\"",
                text.escape_debug()
            )
        };
        if text.len() > 300 {
            return Err(bad("longer than 300 characters".into()));
        }
        let (rest, weight) = match text.rsplit_once('*') {
            Some((rest, w)) => (
                rest,
                w.parse::<i32>()
                    .ok()
                    .filter(|w| w.abs() <= 1000)
                    .ok_or_else(|| {
                        bad(format!(
                            "weight \"{}\" is not a number from -1000 to 1000",
                            w.escape_debug()
                        ))
                    })?,
            ),
            None => (text, 1),
        };
        let (zone, filter) = match rest.split_once('=') {
            Some((zone, filter)) => {
                let octets = split_octets(filter);
                if octets.len() != 4 {
                    return Err(bad(format!(
                        "the filter \"{}\" does not have 4 octets",
                        filter.escape_debug()
                    )));
                }
                let mut parsed: [Vec<OctetRange>; 4] = Default::default();
                for (slot, o) in parsed.iter_mut().zip(octets) {
                    *slot = octet(o).map_err(bad)?;
                }
                (zone, Some(parsed))
            }
            None => (rest, None),
        };
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        if !is_domain(&zone, true) {
            return Err(bad(format!(
                "\"{}\" is not a DNS zone",
                zone.escape_debug()
            )));
        }
        Ok(DnsblSite {
            zone,
            filter,
            weight,
            text: text.to_string(),
        })
    }
}

impl<'de> Deserialize<'de> for DnsblSite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_toml_string(
            d,
            "a DNS list such as \"zen.spamhaus.org=127.0.0.[2..11]*3\"",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_parse_like_postscreen() {
        let s: DnsblSite = "zen.spamhaus.org=127.0.0.[2..11]*3".parse().unwrap();
        assert_eq!((s.zone.as_str(), s.weight), ("zen.spamhaus.org", 3));
        assert!(s.matches(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(s.matches(Ipv4Addr::new(127, 0, 0, 11)));
        assert!(!s.matches(Ipv4Addr::new(127, 0, 0, 12)));
        assert!(!s.matches(Ipv4Addr::new(127, 0, 1, 2)));
        let s: DnsblSite = "list.dnswl.org=127.0.[0..255].[1;3]*-4".parse().unwrap();
        assert_eq!(s.weight, -4);
        assert!(s.matches(Ipv4Addr::new(127, 0, 9, 3)));
        assert!(!s.matches(Ipv4Addr::new(127, 0, 9, 2)));
        let s: DnsblSite = "bl.spamcop.net.".parse().unwrap();
        assert_eq!((s.zone.as_str(), s.weight), ("bl.spamcop.net", 1));
        assert!(s.matches(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(s.to_string(), "bl.spamcop.net.");
        for bad in [
            "",
            "zen",
            "zen.example=127.0.0*2",
            "zen.example=127.0.0.[5..2]",
            "zen.example=127.0.0.300",
            "zen.example*x",
            "zen.example*5000",
            "bad zone.example",
        ] {
            let e = bad.parse::<DnsblSite>().unwrap_err();
            assert!(e.contains(FIX_SEPARATOR), "{bad}: {e}");
        }
    }
}
