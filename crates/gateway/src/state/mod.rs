//! Shared state: bans, rate-limit windows, greylist triplets and caches behind one store.
//!
//! [`Store`] is the one interface; two implementations sit behind it, chosen by `[state] store`:
//!
//! - **embedded** (the default): a redb file (`[state] path`, default `store.redb` in the spool
//!   directory). Nothing to install. redb locks the file for one process, so the gateway owns
//!   it while it runs and `ravelin ban` reaches it through the admin socket ([`admin`]).
//!   Counters are committed without fsync; every `[state] sweep_interval`, on [`Store::sync`]
//!   (a ban was added) and on [`Store::close`] everything is made durable, so a restart keeps
//!   bans and windows, and a crash loses at most the counts of the last interval.
//! - **redis** (`store = "redis://HOST:PORT/DB"`): for several gateway nodes behind one MX;
//!   every key is prefixed with `[state] key_prefix`. Expiry is Redis's own.
//!
//! Operations: counters in fixed or sliding windows ([`Store::hit`], built on
//! [`Store::incr`], which adds and sets the expiry of a new key), values with an expiry
//! ([`Store::set`], [`Store::get`], [`Store::get_many`]), [`Store::delete`] and a bounded
//! listing by key prefix ([`Store::list`]). Expired entries are never returned; the embedded
//! store purges them when a read meets one and in the periodic sweep.
//!
//! How it fails: every operation is bounded by `[state] timeout` and fails with
//! [`StateError::Unavailable`] when the store cannot answer. Callers fail open (mail keeps
//! flowing without the limit or ban they could not check). The first failure of an outage is
//! logged with `event = "state_unavailable"`, its end with `event = "state_recovered"`; while
//! the store is down, operations fail at once without waiting, and one probe per second tests
//! whether it is back. Keys are at most [`MAX_KEY`] bytes, values [`MAX_VALUE`], listings
//! [`MAX_LIST`] entries.

pub mod admin;
pub mod bans;
mod embedded;
pub mod greylist;
pub mod limits;
mod redis_store;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Cidr, Config, StoreUrl};

pub use self::bans::{Ban, BanReason, Bans, Decision};
pub use self::greylist::Greylist;
pub use self::limits::{ConnectionGuard, ConnectionTracker, Exceeded, RateLimits};

/// The longest key accepted.
pub const MAX_KEY: usize = 512;
/// The largest value accepted.
pub const MAX_VALUE: usize = 64 * 1024;
/// The most entries one [`Store::list`] returns.
pub const MAX_LIST: usize = 100_000;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The store cannot be reached or did not answer in time (Redis down, I/O error, timeout).
    /// Callers go on without it.
    Unavailable(String),
    /// The embedded database file is held by another process (a running gateway).
    Locked(String),
    /// A key, value or stored entry this version cannot use.
    Invalid(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Unavailable(why) => write!(f, "state store unavailable: {why}"),
            StateError::Locked(path) => write!(
                f,
                "the state database {path} is open in another process (a running gateway)"
            ),
            StateError::Invalid(why) => write!(f, "invalid state entry: {why}"),
        }
    }
}

impl std::error::Error for StateError {}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A counting window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Counts restart at each multiple of the duration since the epoch.
    Fixed(Duration),
    /// The last `duration`, estimated from the current and the previous fixed window: the
    /// previous one counts for the part of it that still lies within the last `duration`.
    Sliding(Duration),
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
}

enum Backend {
    Embedded(embedded::Embedded),
    Redis(redis_store::RedisStore),
}

/// Outage bookkeeping: log once per outage, fail fast while it lasts.
#[derive(Default)]
struct Health {
    /// `Some(since, next probe)` while the store is down.
    down: Mutex<Option<(Instant, Instant)>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Instant)>> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The time limit of one [`Store::list`].
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Time between two probes of a store that is down.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

struct Inner {
    backend: Backend,
    timeout: Duration,
    health: Health,
    describe: String,
}

/// The state store (cheap to clone; clones share the connection or database).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens the store `config` names. The embedded database is created if missing; a Redis
    /// store connects lazily, so the gateway starts (and fails open) while Redis is down.
    pub fn open(config: &Config) -> Result<Store, StateError> {
        let state = &config.state;
        let (backend, describe) = match &state.store {
            StoreUrl::Embedded => {
                let path = state.embedded_path(&config.spool.path);
                let e = embedded::Embedded::open(&path)?;
                (Backend::Embedded(e), format!("embedded {}", path.display()))
            }
            StoreUrl::Redis(url) => {
                let r = redis_store::RedisStore::open(url, &state.key_prefix, state.timeout.0)?;
                let d = r.describe();
                (Backend::Redis(r), d)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                timeout: state.timeout.0,
                health: Health::default(),
                describe,
            }),
        })
    }

    /// An embedded store at `path` (tests, tools).
    pub fn open_embedded(path: &Path) -> Result<Store, StateError> {
        let e = embedded::Embedded::open(path)?;
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Embedded(e),
                timeout: Duration::from_secs(5),
                health: Health::default(),
                describe: format!("embedded {}", path.display()),
            }),
        })
    }

    /// A Redis store at `url` with `prefix` before every key (tests, tools).
    pub fn open_redis(url: &str, prefix: &str, timeout: Duration) -> Result<Store, StateError> {
        let r = redis_store::RedisStore::open(url, prefix, timeout)?;
        let describe = r.describe();
        Ok(Store {
            inner: Arc::new(Inner {
                backend: Backend::Redis(r),
                timeout,
                health: Health::default(),
                describe,
            }),
        })
    }

    /// What the store is, for logs and tools (never a password).
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    /// Whether this is the embedded store.
    pub fn is_embedded(&self) -> bool {
        matches!(self.inner.backend, Backend::Embedded(_))
    }

    /// Runs one operation with `[state] timeout` and the outage bookkeeping.
    async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        self.run_for(op, self.inner.timeout, fut).await
    }

    /// Runs one operation with the time limit `limit` and the outage bookkeeping.
    async fn run_for<T>(
        &self,
        op: &'static str,
        limit: Duration,
        fut: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let now = Instant::now();
        {
            let mut down = self.inner.health.lock();
            if let Some((since, next_probe)) = down.as_mut() {
                if now < *next_probe {
                    return Err(StateError::Unavailable(format!(
                        "down for {}s",
                        since.elapsed().as_secs()
                    )));
                }
                *next_probe = now + PROBE_INTERVAL;
            }
        }
        let result = match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Unavailable(format!(
                "no answer within {limit:?}"
            ))),
        };
        let mut down = self.inner.health.lock();
        match &result {
            Err(StateError::Unavailable(why)) => {
                if down.is_none() {
                    *down = Some((now, now + PROBE_INTERVAL));
                    warn!(event = "state_unavailable", store = %self.inner.describe, operation = op, reason = %why, decision = "fail_open");
                }
            }
            _ => {
                if let Some((since, _)) = down.take() {
                    info!(event = "state_recovered", store = %self.inner.describe, down_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX));
                }
            }
        }
        result
    }

    fn check_key(key: &str) -> Result<(), StateError> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(StateError::Invalid(format!(
                "key of {} bytes (1 to {MAX_KEY} allowed)",
                key.len()
            )));
        }
        Ok(())
    }

    /// Adds `by` to the counter `key` and returns the new count. A new (or expired) counter
    /// starts from 0 and expires `ttl` after this call.
    pub async fn incr(&self, key: &str, by: u64, ttl: Duration) -> Result<u64, StateError> {
        Self::check_key(key)?;
        let ttl = millis(ttl);
        self.run("incr", async {
            match &self.inner.backend {
                Backend::Embedded(e) => e.incr(key, by, ttl).await,
                Backend::Redis(r) => r.incr(key, by, ttl).await,
            }
        })
        .await
    }

    /// The value of `key`, unless missing or expired.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let mut v = self.get_many(&[key.to_string()]).await?;
        Ok(v.pop().flatten())
    }

    /// The values of `keys`, in order, in one round trip.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        for k in keys {
            Self::check_key(k)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run("get", async {
            match &self.inner.backend {
                Backend::Embedded(e) => e.get_many(keys).await,
                Backend::Redis(r) => r.get_many(keys).await,
            }
        })
        .await
    }

    /// Sets `key` to `value`, expiring after `ttl` (`None`: never).
    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        Self::check_key(key)?;
        if value.len() > MAX_VALUE {
            return Err(StateError::Invalid(format!(
                "value of {} bytes (at most {MAX_VALUE})",
                value.len()
            )));
        }
        let ttl = ttl.map(millis);
        self.run("set", async {
            match &self.inner.backend {
                Backend::Embedded(e) => e.set(key, value, ttl).await,
                Backend::Redis(r) => r.set(key, value, ttl).await,
            }
        })
        .await
    }

    /// Removes `key`; whether it existed (and had not expired).
    pub async fn delete(&self, key: &str) -> Result<bool, StateError> {
        Self::check_key(key)?;
        self.run("delete", async {
            match &self.inner.backend {
                Backend::Embedded(e) => e.delete(key).await,
                Backend::Redis(r) => r.delete(key).await,
            }
        })
        .await
    }

    /// At most `limit` (capped at [`MAX_LIST`]) live entries whose key starts with `prefix`,
    /// ordered by key.
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<Entry>, StateError> {
        Self::check_key(prefix)?;
        let limit = limit.min(MAX_LIST);
        // A listing may take longer than a single lookup; it is an operator's action.
        self.run_for("list", LIST_TIMEOUT, async {
            match &self.inner.backend {
                Backend::Embedded(e) => e.list(prefix, limit).await,
                Backend::Redis(r) => r.list(prefix, limit).await,
            }
        })
        .await
    }

    /// Makes every change so far durable (embedded; Redis persists as it is configured to).
    pub async fn sync(&self) -> Result<(), StateError> {
        match &self.inner.backend {
            Backend::Embedded(e) => self.run("sync", e.sync()).await,
            Backend::Redis(_) => Ok(()),
        }
    }

    /// Purges expired entries (embedded) and makes everything durable; the number purged.
    pub async fn sweep(&self) -> Result<usize, StateError> {
        match &self.inner.backend {
            Backend::Embedded(e) => self.run("sweep", e.sweep()).await,
            Backend::Redis(_) => Ok(0),
        }
    }

    /// Makes everything durable before the process ends.
    pub async fn close(&self) {
        if let Err(e) = self.sync().await {
            warn!(event = "state_error", store = %self.inner.describe, reason = %e, operation = "close");
        }
    }

    /// Sweeps every `interval` until `shutdown` turns true.
    pub fn spawn_sweeper(
        &self,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        match store.sweep().await {
                            Ok(0) => {}
                            Ok(n) => info!(event = "state_sweep", store = %store.describe(), purged = n),
                            Err(_) => {} // logged by the outage bookkeeping
                        }
                    }
                    r = shutdown.changed() => {
                        if r.is_err() || *shutdown.borrow() {
                            return;
                        }
                    }
                }
            }
        })
    }

    /// Counts `n` events under `key` in `window` and returns the count including them.
    pub async fn hit(&self, key: &str, n: u64, window: Window) -> Result<u64, StateError> {
        match window {
            Window::Fixed(w) => {
                let wm = millis(w);
                let bucket = now_ms() / wm;
                self.incr(&format!("{key}@{bucket}"), n, w).await
            }
            Window::Sliding(w) => {
                let wm = millis(w);
                let now = now_ms();
                let bucket = now / wm;
                let current = self
                    .incr(&format!("{key}@{bucket}"), n, w.saturating_mul(2))
                    .await?;
                let previous = self
                    .get(&format!("{key}@{}", bucket.saturating_sub(1)))
                    .await?
                    .as_deref()
                    .map(parse_count)
                    .unwrap_or(0);
                let left = wm - (now % wm);
                Ok(current + previous.saturating_mul(left) / wm)
            }
        }
    }

    /// Forgets the counts under `key` in `window` (the current and previous buckets).
    pub async fn reset(&self, key: &str, window: Window) -> Result<(), StateError> {
        let (Window::Fixed(w) | Window::Sliding(w)) = window;
        let bucket = now_ms() / millis(w);
        self.delete(&format!("{key}@{bucket}")).await?;
        self.delete(&format!("{key}@{}", bucket.saturating_sub(1)))
            .await?;
        Ok(())
    }
}

/// A counter's stored value (decimal ASCII, as Redis keeps it); 0 when unreadable.
pub fn parse_count(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The network of `prefix` bits around `ip` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn network_of(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Cidr {
    let ip = canonical_ip(ip);
    let prefix = if ip.is_ipv4() { v4_prefix } else { v6_prefix };
    Cidr::around(ip, prefix)
}

/// `ip` itself as a host network (/32 or /128).
pub fn host_of(ip: IpAddr) -> Cidr {
    let ip = canonical_ip(ip);
    Cidr::around(ip, if ip.is_ipv4() { 32 } else { 128 })
}

/// IPv4-mapped IPv6 addresses (as a dual-stack socket reports them) as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Everything the session and the listeners ask of the state: bans, rate limits, connection
/// counts and greylisting, sharing one store.
pub struct Defences {
    pub store: Store,
    pub bans: Arc<Bans>,
    pub limits: RateLimits,
    pub connections: ConnectionTracker,
    pub greylist: Option<Greylist>,
}

impl Defences {
    /// Builds every part from the configuration over `store`.
    pub fn new(config: &Config, store: Store) -> Defences {
        let trusted = &config.outbound.trusted_networks;
        Defences {
            bans: Arc::new(Bans::new(store.clone(), &config.bans, trusted)),
            limits: RateLimits::new(store.clone(), &config.rate_limits, trusted),
            connections: ConnectionTracker::new(&config.rate_limits, trusted),
            greylist: config
                .greylist
                .enabled
                .then(|| Greylist::new(store.clone(), &config.greylist, trusted)),
            store,
        }
    }
}

#[cfg(test)]
mod tests;
