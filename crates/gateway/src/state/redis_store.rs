//! The Redis state store, shared by several gateway nodes.
//!
//! One multiplexed connection per process (redis' `ConnectionManager`, which reconnects in the
//! background), created lazily so that the gateway starts while Redis is down. Every key gets
//! `[state] key_prefix`. Counters are `INCRBY` plus `PEXPIRE` on a new key in one Lua script,
//! so the expiry is set atomically with the first count; values are `SET … PX`; listings are a
//! bounded `SCAN MATCH` followed by `MGET`.
//!
//! How it fails: connecting and each reply are bounded by `[state] timeout`, with no retries
//! inside one operation; every Redis error is [`StateError::Unavailable`] (the caller fails
//! open, and [`super::Store`] keeps later operations from waiting while Redis is down). The URL
//! may carry a password: it is only ever shown redacted.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Entry, StateError};
use crate::config::redact_url;

/// INCRBY, then an expiry for a counter that has none (it was just created).
static INCR: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) \
         if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
         return v",
    )
});

/// Keys fetched per MGET of a listing.
const MGET_CHUNK: usize = 500;

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    describe: String,
}

fn unavailable(e: redis::RedisError) -> StateError {
    StateError::Unavailable(format!("redis: {e}"))
}

/// `text` with the glob characters of SCAN MATCH escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisStore {
    /// Prepares the connection to `url`; nothing is sent until the first operation. Must be
    /// called inside a tokio runtime.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<RedisStore, StateError> {
        let client = redis::Client::open(url).map_err(|_| {
            StateError::Invalid(format!("cannot read the Redis URL {}", redact_url(url)))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_string(),
            describe: format!("redis {}", redact_url(url)),
        })
    }

    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub async fn incr(&self, key: &str, by: u64, ttl_ms: u64) -> Result<u64, StateError> {
        let mut conn = self.conn.clone();
        INCR.key(self.key(key))
            .arg(by)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let mut conn = self.conn.clone();
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        redis::cmd("MGET")
            .arg(&full)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl_ms {
            cmd.arg("PX").arg(ttl);
        }
        cmd.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    pub async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let n: u64 = redis::cmd("DEL")
            .arg(self.key(key))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<Entry>, StateError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let mut keys = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= limit {
                break;
            }
        }
        let keys: Vec<String> = keys.into_iter().take(limit).collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MGET_CHUNK) {
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            for (k, v) in chunk.iter().zip(values) {
                // A key that expired between SCAN and MGET is left out.
                if let (Some(v), Some(short)) = (v, k.strip_prefix(&self.prefix)) {
                    out.push(Entry {
                        key: short.to_string(),
                        value: v,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_escape() {
        assert_eq!(super::glob_escape("ban:2001:db8::/64"), "ban:2001:db8::/64");
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
