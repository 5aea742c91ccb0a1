//! `[bans]`: when abuse from one client address turns into a delay and then a ban.
//!
//! One table per kind of abuse (`[bans.relay_probing]`, `[bans.harvesting]`, `[bans.pregreet]`,
//! `[bans.protocol_abuse]`, `[bans.too_many_errors]`, `[bans.auth_failures]`), each with
//! `threshold` events within `window` → a ban of `duration`, and a tarpit `delay` per event
//! before that. A key left out of a table keeps that kind's default (see [`AbuseKind::defaults`]).
//! Read by [`crate::state::bans`]. Errors name the key and what to write instead.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::diagnostics::{Locator, toml_path};
use super::{Cidr, HumanDuration};

/// A kind of abuse the gateway counts per client address (per `[bans] ipv6_prefix` network
/// for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbuseKind {
    /// A recipient outside our domains was refused (`554 5.7.1` relay access denied).
    RelayProbing,
    /// A recipient that does not exist was refused (`550 5.1.1`).
    Harvesting,
    /// The client talked before the greeting.
    Pregreet,
    /// Bare CR/LF, NUL, pipelining where it is not allowed, BDAT without CHUNKING.
    ProtocolAbuse,
    /// The session was closed for too many errors.
    TooManyErrors,
    /// A failed AUTH attempt.
    AuthFailures,
}

impl AbuseKind {
    pub const ALL: [AbuseKind; 6] = [
        AbuseKind::RelayProbing,
        AbuseKind::Harvesting,
        AbuseKind::Pregreet,
        AbuseKind::ProtocolAbuse,
        AbuseKind::TooManyErrors,
        AbuseKind::AuthFailures,
    ];

    /// The name in the configuration, the logs and `ravelin ban list`.
    pub fn as_str(self) -> &'static str {
        match self {
            AbuseKind::RelayProbing => "relay_probing",
            AbuseKind::Harvesting => "harvesting",
            AbuseKind::Pregreet => "pregreet",
            AbuseKind::ProtocolAbuse => "protocol_abuse",
            AbuseKind::TooManyErrors => "too_many_errors",
            AbuseKind::AuthFailures => "auth_failures",
        }
    }

    /// The defaults, chosen after fail2ban's postfix jails and postscreen:
    ///
    /// | kind | threshold | window | ban | delay per event |
    /// |---|---|---|---|---|
    /// | relay_probing | 5 | 1h | 1h | 0s |
    /// | harvesting | 20 | 1h | 1h | 1s (after the 5th) |
    /// | pregreet | 2 | 1h | 1h | 0s |
    /// | protocol_abuse | 3 | 1h | 1h | 0s |
    /// | too_many_errors | 3 | 1h | 1h | 0s |
    /// | auth_failures | 5 | 10m | 1h | 1s |
    ///
    /// Relay attempts never come from a correctly configured MTA (it sends to our MX only
    /// for our domains); a pregreet is a bot's signature, two rule out a network accident;
    /// harvesting tolerates stale addresses on a mailing list before it bites.
    pub fn defaults(self) -> AbuseRule {
        let m = |n: u64| HumanDuration::from_secs(n * 60);
        let (threshold, window, duration, delay, delay_after) = match self {
            AbuseKind::RelayProbing => (5, m(60), m(60), 0, 0),
            AbuseKind::Harvesting => (20, m(60), m(60), 1, 5),
            AbuseKind::Pregreet => (2, m(60), m(60), 0, 0),
            AbuseKind::ProtocolAbuse => (3, m(60), m(60), 0, 0),
            AbuseKind::TooManyErrors => (3, m(60), m(60), 0, 0),
            AbuseKind::AuthFailures => (5, m(10), m(60), 0, 0),
        };
        AbuseRule {
            threshold,
            window,
            duration,
            delay: HumanDuration::from_secs(delay),
            delay_after,
        }
    }
}

impl fmt::Display for AbuseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AbuseKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AbuseKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown kind of abuse {:?}", s.escape_debug().to_string()))
    }
}

/// The effective rule for one kind of abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbuseRule {
    /// Events within `window` that ban the client; 0: never banned for this kind.
    pub threshold: u32,
    pub window: HumanDuration,
    /// Length of a first ban; each repeat within `[bans] remember` doubles it.
    pub duration: HumanDuration,
    /// Tarpit: each event beyond `delay_after` delays the reply by this much more.
    pub delay: HumanDuration,
    /// Events within `window` before the delay starts.
    pub delay_after: u32,
}

impl AbuseRule {
    /// The delay after the `n`th event in the window (0 before `delay_after`).
    pub fn delay_for(&self, n: u64, cap: Duration) -> Duration {
        let over = n.saturating_sub(u64::from(self.delay_after));
        let over = u32::try_from(over).unwrap_or(u32::MAX);
        self.delay.0.saturating_mul(over).min(cap)
    }
}

/// One `[bans.KIND]` table as written: keys left out keep the kind's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbuseRuleSetting {
    pub threshold: Option<u32>,
    pub window: Option<HumanDuration>,
    pub duration: Option<HumanDuration>,
    pub delay: Option<HumanDuration>,
    pub delay_after: Option<u32>,
}

/// `[bans]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BansSection {
    /// Whether abuse is counted and bans enforced at all.
    pub enabled: bool,
    /// Clients never banned or delayed (in addition to `[outbound] trusted_networks`);
    /// default: loopback.
    pub exempt: Vec<Cidr>,
    /// An IPv6 client is banned with its whole prefix of this length (one host usually holds
    /// a /64).
    pub ipv6_prefix: u8,
    /// The longest a repeated ban grows to.
    pub max_duration: HumanDuration,
    /// How long past bans count as previous offences (each one doubles the next ban).
    pub remember: HumanDuration,
    /// The longest tarpit delay of one reply.
    pub max_delay: HumanDuration,
    /// Duration of `ravelin ban add` without `--duration`.
    pub manual_duration: HumanDuration,
    pub relay_probing: AbuseRuleSetting,
    pub harvesting: AbuseRuleSetting,
    pub pregreet: AbuseRuleSetting,
    pub protocol_abuse: AbuseRuleSetting,
    pub too_many_errors: AbuseRuleSetting,
    pub auth_failures: AbuseRuleSetting,
}

impl Default for BansSection {
    fn default() -> Self {
        BansSection {
            enabled: true,
            exempt: super::loopback(),
            ipv6_prefix: 64,
            max_duration: HumanDuration::from_secs(7 * 86_400),
            remember: HumanDuration::from_secs(30 * 86_400),
            max_delay: HumanDuration::from_secs(10),
            manual_duration: HumanDuration::from_secs(86_400),
            relay_probing: AbuseRuleSetting::default(),
            harvesting: AbuseRuleSetting::default(),
            pregreet: AbuseRuleSetting::default(),
            protocol_abuse: AbuseRuleSetting::default(),
            too_many_errors: AbuseRuleSetting::default(),
            auth_failures: AbuseRuleSetting::default(),
        }
    }
}

impl BansSection {
    fn setting(&self, kind: AbuseKind) -> &AbuseRuleSetting {
        match kind {
            AbuseKind::RelayProbing => &self.relay_probing,
            AbuseKind::Harvesting => &self.harvesting,
            AbuseKind::Pregreet => &self.pregreet,
            AbuseKind::ProtocolAbuse => &self.protocol_abuse,
            AbuseKind::TooManyErrors => &self.too_many_errors,
            AbuseKind::AuthFailures => &self.auth_failures,
        }
    }

    /// The effective rule of `kind`: what the table sets, the kind's defaults for the rest.
    pub fn rule(&self, kind: AbuseKind) -> AbuseRule {
        let d = kind.defaults();
        let s = self.setting(kind);
        AbuseRule {
            threshold: s.threshold.unwrap_or(d.threshold),
            window: s.window.unwrap_or(d.window),
            duration: s.duration.unwrap_or(d.duration),
            delay: s.delay.unwrap_or(d.delay),
            delay_after: s.delay_after.unwrap_or(d.delay_after),
        }
    }

    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        if !(16..=128).contains(&self.ipv6_prefix) || !self.ipv6_prefix.is_multiple_of(4) {
            err(
                loc.line(&toml_path!["bans", "ipv6_prefix"]),
                format!(
                    "bans.ipv6_prefix = {} is not a multiple of 4 from 16 to 128",
                    self.ipv6_prefix
                ),
                "write ipv6_prefix = 64 (one customer network) or 128 (single addresses)",
            );
        }
        for (key, value) in [
            ("max_duration", self.max_duration),
            ("remember", self.remember),
            ("manual_duration", self.manual_duration),
        ] {
            if value.is_zero() {
                err(
                    loc.line(&toml_path!["bans", key]),
                    format!("bans.{key} is 0s"),
                    "write a positive duration, e.g. \"1d\"",
                );
            }
        }
        for kind in AbuseKind::ALL {
            let rule = self.rule(kind);
            let name = kind.as_str();
            if rule.window.is_zero() {
                err(
                    loc.line(&toml_path!["bans", name, "window"]),
                    format!("bans.{name}.window is 0s"),
                    "write the period events are counted in, e.g. \"10m\"",
                );
            }
            if rule.threshold > 0 && rule.duration.is_zero() {
                err(
                    loc.line(&toml_path!["bans", name, "duration"]),
                    format!("bans.{name}.duration is 0s"),
                    "write how long a ban lasts, e.g. \"1h\", or threshold = 0 to never ban",
                );
            }
        }
    }
}
