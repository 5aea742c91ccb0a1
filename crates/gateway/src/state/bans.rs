//! One ban mechanism for every kind of abuse: the abuse recorder and the ban list.
//!
//! Where abuse is detected, the code calls [`Bans::record`] with the client address and the
//! [`AbuseKind`]; the answer is a [`Decision`]: go on ([`Decision::Allow`]), delay the reply
//! (a tarpit, [`Decision::Delay`]), or the client is now banned ([`Decision::Ban`]: refuse and
//! close). Each kind counts its events per ban target in a sliding window
//! (`[bans.KIND] window`); `threshold` events ban the target for `duration`, and each earlier
//! ban of the same target within `[bans] remember` doubles it, up to `[bans] max_duration`.
//! The target of an IPv4 client is its address; an IPv6 client is counted and banned with its
//! `[bans] ipv6_prefix` network, so a host that takes a new address of its /64 for each
//! attempt (as privacy addresses do) is counted as the one offender it is.
//!
//! For the AUTH code: after a failed authentication call
//! `defences.bans.record(client_ip, AbuseKind::AuthFailures).await`, sleep for a
//! `Delay(d)`, and on `Ban(_)` answer `554 5.7.1` and close the connection.
//!
//! A ban is a [`Ban`] (target address or prefix, [`BanReason`], created, expires, count) stored
//! under `ban:TARGET` with the ban's remaining time as expiry, so it lasts across restarts
//! (embedded store) and is seen by every node (Redis). [`Bans::check`] finds a ban covering an
//! address in one lookup of the possible targets: every IPv4 prefix from /8 to /32 and every
//! IPv6 prefix from /16 to /128 in steps of 4 (bans added by hand must use such a prefix).
//! Clients in `[bans] exempt` and `[outbound] trusted_networks` are never delayed or banned.
//!
//! Logs: `event = "abuse"` for each recorded event, `"ban_added"` and `"ban_removed"` for
//! changes to the list. How it fails: when the store is unavailable, [`Bans::record`] answers
//! `Allow` and [`Bans::check`] an error the caller treats as "not banned" (fail open).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ravelin_wire::date;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{StateError, Store, Window, canonical_ip};
use crate::config::{BansSection, Cidr};

pub use crate::config::AbuseKind;

/// Why a client is banned: a kind of abuse, or an operator's decision. Written as the
/// kind's name (`relay_probing`, `auth_failures`, ...) or `manual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanReason {
    Abuse(AbuseKind),
    /// Added by an operator.
    Manual,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::Abuse(kind) => kind.as_str(),
            BanReason::Manual => "manual",
        }
    }
}

impl From<AbuseKind> for BanReason {
    fn from(kind: AbuseKind) -> BanReason {
        BanReason::Abuse(kind)
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BanReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "manual" {
            return Ok(BanReason::Manual);
        }
        s.parse::<AbuseKind>().map(BanReason::Abuse).map_err(|_| {
            format!(
                "unknown ban reason {:?}: write manual, relay_probing, harvesting, pregreet, protocol_abuse, too_many_errors or auth_failures",
                s.escape_debug().to_string()
            )
        })
    }
}

impl Serialize for BanReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BanReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The banned address (/32, /128) or prefix.
    pub target: Cidr,
    pub reason: BanReason,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds.
    pub expires: u64,
    /// Which ban of this target this is within `[bans] remember` (1 for the first).
    pub count: u32,
}

impl Ban {
    /// The expiry as RFC 3339 UTC.
    pub fn expires_text(&self) -> String {
        date::rfc3339_millis(self.expires.saturating_mul(1000))
    }
}

/// What to do after an abuse event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Delay the reply by this much (tarpit).
    Delay(Duration),
    /// The client is banned now: refuse with `554 5.7.1` and close.
    Ban(Ban),
}

const BAN_PREFIX: &str = "ban:";

fn ban_key(target: &Cidr) -> String {
    format!("{BAN_PREFIX}{target}")
}

/// Whether `target` is a prefix [`Bans::check`] looks up: IPv4 /8 to /32, IPv6 /16 to /128 in
/// steps of 4. The error says what to write instead.
pub fn check_target(target: &Cidr) -> Result<(), String> {
    let p = target.prefix();
    if target.network().is_ipv4() {
        if p < 8 {
            return Err(format!(
                "{target} is wider than /8: block such ranges in the firewall"
            ));
        }
    } else if p < 16 || !p.is_multiple_of(4) {
        return Err(format!(
            "{target}: an IPv6 ban needs a prefix from /16 to /128 in steps of 4 (e.g. /48, /64, /128)"
        ));
    }
    Ok(())
}

/// The ban list and the abuse recorder.
pub struct Bans {
    store: Store,
    config: BansSection,
    exempt: Vec<Cidr>,
}

impl Bans {
    /// `trusted` (the outbound trusted networks) are exempt, as is `[bans] exempt`.
    pub fn new(store: Store, config: &BansSection, trusted: &[Cidr]) -> Bans {
        let mut exempt = config.exempt.clone();
        exempt.extend_from_slice(trusted);
        Bans {
            store,
            config: config.clone(),
            exempt,
        }
    }

    /// Whether bans are enforced at all (`[bans] enabled`).
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|n| n.contains(ip))
    }

    /// The target an abuse ban of `ip` covers.
    fn target_of(&self, ip: IpAddr) -> Cidr {
        let ip = canonical_ip(ip);
        match ip {
            IpAddr::V4(_) => Cidr::around(ip, 32),
            IpAddr::V6(_) => Cidr::around(ip, self.config.ipv6_prefix),
        }
    }

    /// The ban covering `ip`, if any (the most specific one).
    pub async fn check(&self, ip: IpAddr) -> Result<Option<Ban>, StateError> {
        if !self.config.enabled || self.is_exempt(ip) {
            return Ok(None);
        }
        let ip = canonical_ip(ip);
        let prefixes: Vec<u8> = match ip {
            IpAddr::V4(_) => (8..=32).rev().collect(),
            IpAddr::V6(_) => (16..=128).rev().step_by(4).collect(),
        };
        let keys: Vec<String> = prefixes
            .iter()
            .map(|p| ban_key(&Cidr::around(ip, *p)))
            .collect();
        let now = date::now_secs();
        let values = self.store.get_many(&keys).await?;
        for (key, value) in keys.iter().zip(values) {
            let Some(bytes) = value else { continue };
            match serde_json::from_slice::<Ban>(&bytes) {
                Ok(ban) if ban.expires > now => return Ok(Some(ban)),
                Ok(_) => {}
                Err(e) => {
                    warn!(event = "state_error", key = %key, reason = %e, decision = "ignore")
                }
            }
        }
        Ok(None)
    }

    /// Records one abuse event of `kind` from `client` and says what to do now. Fails open.
    pub async fn record(&self, client: IpAddr, kind: AbuseKind) -> Decision {
        if !self.config.enabled || self.is_exempt(client) {
            return Decision::Allow;
        }
        let rule = self.config.rule(kind);
        if rule.threshold == 0 && rule.delay.is_zero() {
            return Decision::Allow;
        }
        let ip = canonical_ip(client);
        let target = self.target_of(ip);
        let key = format!("abuse:{}:{target}", kind.as_str());
        let window = Window::Sliding(rule.window.0);
        let Ok(n) = self.store.hit(&key, 1, window).await else {
            return Decision::Allow;
        };
        info!(event = "abuse", client = %ip, target = %target, kind = kind.as_str(), count = n, threshold = rule.threshold);
        if rule.threshold > 0 && n >= u64::from(rule.threshold) {
            if let Ok(Some(existing)) = self.check(ip).await {
                return Decision::Ban(existing);
            }
            return match self.impose(target, kind.into(), None).await {
                Ok(ban) => {
                    let _ = self.store.reset(&key, window).await;
                    Decision::Ban(ban)
                }
                Err(_) => Decision::Allow,
            };
        }
        match rule.delay_for(n, self.config.max_delay.0) {
            d if d.is_zero() => Decision::Allow,
            d => Decision::Delay(d),
        }
    }

    /// Bans `target` for `duration`, or, when `None`, for the duration the reason's rule (or
    /// `[bans] manual_duration`) gives, doubled for each earlier ban of the target within
    /// `[bans] remember`, at most `[bans] max_duration`. Durable before it returns.
    pub async fn add(
        &self,
        target: Cidr,
        reason: BanReason,
        duration: Option<Duration>,
    ) -> Result<Ban, StateError> {
        check_target(&target).map_err(StateError::Invalid)?;
        self.impose(target, reason, duration).await
    }

    async fn impose(
        &self,
        target: Cidr,
        reason: BanReason,
        duration: Option<Duration>,
    ) -> Result<Ban, StateError> {
        let offences = self
            .store
            .incr(&format!("offences:{target}"), 1, self.config.remember.0)
            .await?;
        let count = u32::try_from(offences).unwrap_or(u32::MAX);
        let duration = match duration {
            Some(d) => d,
            None => {
                let base = match reason {
                    BanReason::Manual => self.config.manual_duration.0,
                    BanReason::Abuse(kind) => self.config.rule(kind).duration.0,
                };
                let factor = 1u32
                    .checked_shl(count.saturating_sub(1))
                    .unwrap_or(u32::MAX);
                base.saturating_mul(factor).min(self.config.max_duration.0)
            }
        };
        let duration = duration.max(Duration::from_secs(1));
        let created = date::now_secs();
        let ban = Ban {
            target,
            reason,
            created,
            expires: created.saturating_add(duration.as_secs().max(1)),
            count,
        };
        let json = serde_json::to_vec(&ban).map_err(|e| StateError::Invalid(e.to_string()))?;
        self.store
            .set(&ban_key(&target), &json, Some(duration))
            .await?;
        self.store.sync().await?;
        warn!(
            event = "ban_added",
            client = %target,
            reason = reason.as_str(),
            expires = %ban.expires_text(),
            duration_s = duration.as_secs(),
            count
        );
        Ok(ban)
    }

    /// Lifts the ban of exactly `target`; whether there was one. Earlier offences are still
    /// remembered.
    pub async fn remove(&self, target: Cidr) -> Result<bool, StateError> {
        let removed = self.store.delete(&ban_key(&target)).await?;
        self.store.sync().await?;
        if removed {
            info!(event = "ban_removed", client = %target);
        }
        Ok(removed)
    }

    /// At most `limit` bans in force, by target.
    pub async fn list(&self, limit: usize) -> Result<Vec<Ban>, StateError> {
        let now = date::now_secs();
        let entries = self.store.list(BAN_PREFIX, limit).await?;
        Ok(entries
            .into_iter()
            .filter_map(|e| serde_json::from_slice::<Ban>(&e.value).ok())
            .filter(|b| b.expires > now)
            .collect())
    }
}
