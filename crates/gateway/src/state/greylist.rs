//! Greylisting: the first attempt of an unknown (client network, sender, recipient) triplet
//! is refused with `450 4.7.1`; real MTAs retry, most spam engines do not.
//!
//! A triplet's first attempt is stored under `grey:t:NET|HASH` (the client's
//! `[greylist] ipv4_prefix`/`ipv6_prefix` network, a hash of the lower-cased sender and
//! recipient) with the time it was seen, expiring after `retry_window`. A retry at least
//! `delay` later passes, and the client network is put on the automatic allowlist
//! (`grey:ok:NET`, for `allow_ttl`), so its later mail is never greylisted again. Clients in
//! `exempt` and `[outbound] trusted_networks` pass. Logs `event = "greylist"` with the
//! decision. How it fails: when the store is unavailable, mail passes (fail open).

use std::net::IpAddr;
use std::time::Duration;

use tracing::info;

use super::{Store, network_of, now_ms, parse_count};
use crate::config::{Cidr, GreylistSection};

/// What greylisting says about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreyVerdict {
    Pass,
    /// Refuse for now; a retry after this long will pass.
    Defer(Duration),
}

pub struct Greylist {
    store: Store,
    config: GreylistSection,
    exempt: Vec<Cidr>,
}

/// FNV-1a over the sender and the recipient (lower-cased, separated by a NUL).
fn pair_hash(sender: &str, recipient: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = sender
        .bytes()
        .chain(std::iter::once(0))
        .chain(recipient.bytes());
    for b in bytes {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Greylist {
    pub fn new(store: Store, config: &GreylistSection, trusted: &[Cidr]) -> Greylist {
        let mut exempt = config.exempt.clone();
        exempt.extend_from_slice(trusted);
        Greylist {
            store,
            config: config.clone(),
            exempt,
        }
    }

    /// The verdict for `recipient` in a transaction from `sender` by `client`.
    pub async fn check(&self, client: IpAddr, sender: &str, recipient: &str) -> GreyVerdict {
        if self.exempt.iter().any(|n| n.contains(client)) {
            return GreyVerdict::Pass;
        }
        let net = network_of(client, self.config.ipv4_prefix, self.config.ipv6_prefix);
        let allow_key = format!("grey:ok:{net}");
        let triplet_key = format!("grey:t:{net}|{:016x}", pair_hash(sender, recipient));
        let Ok(found) = self
            .store
            .get_many(&[allow_key.clone(), triplet_key.clone()])
            .await
        else {
            return GreyVerdict::Pass;
        };
        let (allowed, first_seen) = match found.as_slice() {
            [a, t] => (a.is_some(), t.as_deref().map(parse_count)),
            _ => return GreyVerdict::Pass,
        };
        if allowed {
            return GreyVerdict::Pass;
        }
        let now = now_ms();
        let delay = u64::try_from(self.config.delay.0.as_millis()).unwrap_or(u64::MAX);
        match first_seen {
            None => {
                let stamp = now.to_string();
                let _ = self
                    .store
                    .set(
                        &triplet_key,
                        stamp.as_bytes(),
                        Some(self.config.retry_window.0),
                    )
                    .await;
                info!(event = "greylist", client = %client, from = %sender, to = %recipient, decision = "defer", reason = "new triplet");
                GreyVerdict::Defer(self.config.delay.0)
            }
            Some(first) if now.saturating_sub(first) < delay => {
                let left = delay - now.saturating_sub(first);
                info!(event = "greylist", client = %client, from = %sender, to = %recipient, decision = "defer", reason = "retry too early");
                GreyVerdict::Defer(Duration::from_millis(left))
            }
            Some(_) => {
                let _ = self
                    .store
                    .set(&allow_key, b"1", Some(self.config.allow_ttl.0))
                    .await;
                let _ = self.store.delete(&triplet_key).await;
                info!(event = "greylist", client = %client, from = %sender, to = %recipient, decision = "pass", reason = "retried; client network allowlisted");
                GreyVerdict::Pass
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pair_hash_ignores_case_and_separates_fields() {
        use super::pair_hash;
        assert_eq!(
            pair_hash("A@x.org", "b@Y.org"),
            pair_hash("a@x.org", "B@y.org")
        );
        assert_ne!(pair_hash("ab", "c"), pair_hash("a", "bc"));
    }
}
