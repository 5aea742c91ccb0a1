//! `[checks]`: sender authentication of inbound mail (SPF, DKIM, DMARC, ARC) and what the
//! DMARC verdict does. Read by [`crate::checks::auth`] and the session's end of data.
//!
//! Checked here: a positive deadline, a verification size of at least 64 KiB, an authserv-id
//! that is a host name, and each trusted forwarder an address, a CIDR network or a domain.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::diagnostics::{Locator, toml_path};
use super::{Cidr, HumanDuration, is_domain};

/// `[checks]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksSection {
    /// Verify SPF, DKIM, DMARC and ARC on `inbound` listeners and add Authentication-Results.
    pub enabled: bool,
    /// The authserv-id of our Authentication-Results fields; empty: `hostname`.
    pub authserv_id: String,
    /// Act on the sender domain's DMARC policy: `p=reject` is refused with `550 5.7.1`,
    /// `p=quarantine` goes to the quarantine. Off: results are only recorded.
    pub enforce_dmarc: bool,
    /// Time allowed for all the DNS lookups of one message together; what is not answered by
    /// then is `temperror` (never a reason to refuse).
    pub deadline: HumanDuration,
    /// Largest message (octets) whose DKIM and ARC signatures are verified; larger ones get
    /// `dkim=none` with a comment, DMARC is judged on SPF alone and never enforced.
    pub max_verify_size: u64,
    /// Forwarders whose mail skips DMARC enforcement: an address or CIDR network matches the
    /// client; a domain matches the newest ARC seal's `d=` when the ARC chain passes.
    pub trusted_forwarders: Vec<Forwarder>,
}

impl Default for ChecksSection {
    fn default() -> Self {
        ChecksSection {
            enabled: true,
            authserv_id: String::new(),
            enforce_dmarc: true,
            deadline: HumanDuration::from_secs(15),
            max_verify_size: 10 * 1024 * 1024,
            trusted_forwarders: Vec::new(),
        }
    }
}

/// One entry of `trusted_forwarders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarder {
    /// The client's address is inside.
    Network(Cidr),
    /// The ARC sealer (lower case, no trailing dot).
    Domain(String),
}

impl FromStr for Forwarder {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(cidr) = text.parse::<Cidr>() {
            return Ok(Forwarder::Network(cidr));
        }
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        if is_domain(&name, true) {
            Ok(Forwarder::Domain(name))
        } else {
            Err(format!(
                "\"{}\" is neither an address, a CIDR network nor a domain",
                text.escape_debug()
            ))
        }
    }
}

impl fmt::Display for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forwarder::Network(c) => c.fmt(f),
            Forwarder::Domain(d) => f.write_str(d),
        }
    }
}

impl<'de> Deserialize<'de> for Forwarder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ChecksSection {
    /// The authserv-id in effect.
    pub fn authserv_id<'a>(&'a self, hostname: &'a str) -> &'a str {
        if self.authserv_id.is_empty() {
            hostname
        } else {
            &self.authserv_id
        }
    }

    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        if self.deadline.is_zero() {
            err(
                loc.line(&toml_path!["checks", "deadline"]),
                "checks.deadline is 0s".into(),
                "write a positive duration, e.g. \"15s\"",
            );
        }
        if self.max_verify_size < 64 * 1024 {
            err(
                loc.line(&toml_path!["checks", "max_verify_size"]),
                format!(
                    "checks.max_verify_size = {} is below 65536",
                    self.max_verify_size
                ),
                "write a size in octets of at least 65536, e.g. 10485760 (10 MiB)",
            );
        }
        if !self.authserv_id.is_empty() && !is_domain(&self.authserv_id, true) {
            err(
                loc.line(&toml_path!["checks", "authserv_id"]),
                format!(
                    "checks.authserv_id \"{}\" is not a host name",
                    self.authserv_id.escape_debug()
                ),
                "write this gateway's host name, or leave it out to use `hostname`",
            );
        }
    }
}
