//! Queue ids: unique, sortable by arrival, safe as file names.
//!
//! An id is 80 bits written as 16 characters of Crockford base32 (`0-9`, `A-Z` without
//! `I L O U`): the top 48 bits are the creation time in milliseconds since the Unix epoch, the
//! low 32 bits start at a random value for every new millisecond and count up within it. The
//! generator is monotonic inside a process (a clock that steps back only slows the time part
//! down), so ids sort in creation order and never repeat; the random start keeps two
//! processes or a restart within the same millisecond apart, and the spool creates every file
//! with `O_EXCL` so a collision would be an error, never an overwrite.
//!
//! Parsing accepts exactly that form (16 upper-case alphabet characters) and nothing else, so a
//! parsed id can be joined to a directory path without any further checking.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of the textual form.
pub const ID_LEN: usize = 16;

/// A message's queue id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(u128);

static LAST: Mutex<u128> = Mutex::new(0);

impl QueueId {
    /// A fresh id, greater than every id this process made before.
    pub fn generate() -> QueueId {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            & 0xFFFF_FFFF_FFFF;
        let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let value = if ms > *last >> 32 {
            (ms << 32) | u128::from(random_u32() >> 1)
        } else {
            // Same millisecond (or the clock stepped back): count on from the last id.
            (*last + 1) & ((1u128 << 80) - 1)
        };
        *last = value;
        QueueId(value)
    }

    /// Milliseconds since the Unix epoch at which the id was made.
    pub fn timestamp_ms(&self) -> u64 {
        (self.0 >> 32) as u64
    }
}

fn random_u32() -> u32 {
    // RandomState is seeded from the operating system's generator; hashing the process id and
    // the time through a fresh one yields a value nobody can predict or repeat by accident.
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; ID_LEN];
        for (i, c) in out.iter_mut().enumerate() {
            let shift = 5 * (ID_LEN - 1 - i);
            *c = ALPHABET[((self.0 >> shift) & 31) as usize];
        }
        // The alphabet is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// Why a string is not a queue id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadQueueId;

impl fmt::Display for BadQueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a queue id (expected {ID_LEN} characters of 0-9 A-Z without I L O U)"
        )
    }
}

impl std::error::Error for BadQueueId {}

impl FromStr for QueueId {
    type Err = BadQueueId;
    fn from_str(s: &str) -> Result<QueueId, BadQueueId> {
        if s.len() != ID_LEN {
            return Err(BadQueueId);
        }
        let mut value: u128 = 0;
        for b in s.bytes() {
            let digit = ALPHABET.iter().position(|&a| a == b).ok_or(BadQueueId)?;
            value = (value << 5) | digit as u128;
        }
        Ok(QueueId(value))
    }
}

impl serde::Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<QueueId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        let ids: Vec<QueueId> = (0..10_000).map(|_| QueueId::generate()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1]);
            assert!(
                w[0].to_string() < w[1].to_string(),
                "text order follows id order"
            );
        }
        for id in &ids {
            let s = id.to_string();
            assert_eq!(s.len(), ID_LEN);
            assert_eq!(s.parse::<QueueId>(), Ok(*id));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(now.abs_diff(ids[0].timestamp_ms()) < 60_000);
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "",
            "0123456789ABCDE",
            "0123456789ABCDEFG",
            "0123456789abcdef",
            "0123456789ABCDEI",
            "../../etc/passwd",
            "0123456789ABCD/F",
            "0123456789ABCDÉ",
        ] {
            assert_eq!(bad.parse::<QueueId>(), Err(BadQueueId), "{bad:?}");
        }
    }
}
