//! Recipients verified by the backend (`"callout"`): an RCPT probe, its answer cached.
//!
//! A lookup first reads the cache in the state store (`callout:ADDRESS`, the address in
//! lower case; embedded or Redis, so every node of a cluster shares it): `known` or
//! `unknown`. Otherwise [`Delivery::probe`] asks the inbound backend (connect, EHLO,
//! `MAIL FROM:<>`, `RCPT TO`, QUIT) within `[recipients.callout] timeout`. A 2xx answer is
//! cached for `positive_ttl` (default 7 days), a 5xx one for `negative_ttl` (default 3
//! hours, so a new mailbox is not refused for long); anything else (4xx, no answer, MAIL
//! refused, the timeout) is [`Lookup::Unavailable`] and not cached.
//!
//! How it fails: a store that cannot answer is skipped (the probe is made, its result not
//! kept); a backend that cannot answer makes the lookup unavailable, which the session turns
//! into `450 4.1.1`. Logs: `event = "callout"` with the address, the result and whether it
//! came from the cache.

use std::time::Duration;

use tracing::info;

use super::Lookup;
use crate::config::CalloutSection;
use crate::delivery::{Delivery, Probe};
use crate::state::Store;

const KNOWN: &[u8] = b"known";
const UNKNOWN: &[u8] = b"unknown";

/// The callout source.
pub struct Callout {
    delivery: Delivery,
    store: Store,
    timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
}

impl Callout {
    pub fn new(section: &CalloutSection, delivery: Delivery, store: Store) -> Callout {
        Callout {
            delivery,
            store,
            timeout: section.timeout.get(),
            positive_ttl: section.positive_ttl.get(),
            negative_ttl: section.negative_ttl.get(),
        }
    }

    fn key(address: &str) -> String {
        format!("callout:{}", address.to_lowercase())
    }

    /// The cached answer, or the backend's.
    pub async fn lookup(&self, address: &str, session: &str) -> Lookup {
        let key = Self::key(address);
        match self.store.get(&key).await {
            Ok(Some(v)) if v == KNOWN || v == UNKNOWN => {
                let known = v == KNOWN;
                info!(event = "callout", session = %session, to = %address, result = if known { "known" } else { "unknown" }, cached = true);
                return if known {
                    Lookup::Known
                } else {
                    Lookup::Unknown
                };
            }
            // Unreadable, missing, or the store is down (logged there): ask the backend.
            _ => {}
        }
        let probe = match tokio::time::timeout(self.timeout, self.delivery.probe(address)).await {
            Ok(p) => p,
            Err(_) => Probe::Failed(format!("no answer within {:?}", self.timeout)),
        };
        let (lookup, value, ttl, reply) = match probe {
            Probe::Accepted(r) => (Lookup::Known, KNOWN, self.positive_ttl, r.one_line()),
            Probe::Refused(r) => (Lookup::Unknown, UNKNOWN, self.negative_ttl, r.one_line()),
            Probe::Failed(why) => {
                info!(event = "callout", session = %session, to = %address, result = "unavailable", cached = false, reason = %why);
                return Lookup::Unavailable(why);
            }
        };
        let result = if value == KNOWN { "known" } else { "unknown" };
        info!(event = "callout", session = %session, to = %address, result, cached = false, reply = %reply);
        // A store that cannot keep it only costs another probe next time.
        let _ = self.store.set(&key, value, Some(ttl)).await;
        lookup
    }
}
