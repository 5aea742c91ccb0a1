//! The embedded state store: one redb table in one file, nothing to install.
//!
//! Each entry is `key → (expires_at_ms, value)`, `expires_at_ms = 0` meaning never. Counters
//! are stored as decimal ASCII, as Redis keeps them. redb is synchronous, so every operation
//! runs on tokio's blocking pool; redb serialises write transactions itself.
//!
//! Durability: ordinary writes commit with `Durability::None` (no fsync: counters change on
//! every connection); [`Embedded::sync`] and [`Embedded::sweep`] commit with
//! `Durability::Immediate`, which makes every earlier commit durable too, and redb persists
//! non-durable commits when the database is closed cleanly. Expired entries are removed when a
//! read meets them and by the sweep.
//!
//! How it fails: redb locks the file for one process; opening a file another process holds
//! gives [`StateError::Locked`]. I/O and storage errors are [`StateError::Unavailable`]; an
//! entry that cannot be read is [`StateError::Invalid`].

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Entry, StateError, now_ms};

const TABLE: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("state");

pub struct Embedded {
    db: Arc<Database>,
}

fn unavailable(e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(e.to_string())
}

fn live(expires: u64, now: u64) -> bool {
    expires == 0 || expires > now
}

impl Embedded {
    /// Opens or creates the database at `path` (the directory is created too, mode 0700).
    pub fn open(path: &Path) -> Result<Embedded, StateError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StateError::Locked(path.display().to_string())
            }
            other => unavailable(format!("cannot open {}: {other}", path.display())),
        })?;
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(TABLE).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(Embedded { db: Arc::new(db) })
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| unavailable(format!("store task failed: {e}")))?
    }

    pub async fn incr(&self, key: &str, by: u64, ttl_ms: u64) -> Result<u64, StateError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let now = now_ms();
            let mut txn = db.begin_write().map_err(unavailable)?;
            txn.set_durability(Durability::None).map_err(unavailable)?;
            let count = {
                let mut table = txn.open_table(TABLE).map_err(unavailable)?;
                let (old, expires) = match table.get(key.as_str()).map_err(unavailable)? {
                    Some(g) => {
                        let (expires, value) = g.value();
                        if live(expires, now) {
                            (super::parse_count(value), expires)
                        } else {
                            (0, now.saturating_add(ttl_ms))
                        }
                    }
                    None => (0, now.saturating_add(ttl_ms)),
                };
                let count = old.saturating_add(by);
                let text = count.to_string();
                table
                    .insert(key.as_str(), (expires, text.as_bytes()))
                    .map_err(unavailable)?;
                count
            };
            txn.commit().map_err(unavailable)?;
            Ok(count)
        })
        .await
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let keys = keys.to_vec();
        self.blocking(move |db| {
            let now = now_ms();
            let mut out = Vec::with_capacity(keys.len());
            let mut expired = Vec::new();
            {
                let txn = db.begin_read().map_err(unavailable)?;
                let table = txn.open_table(TABLE).map_err(unavailable)?;
                for k in &keys {
                    match table.get(k.as_str()).map_err(unavailable)? {
                        Some(g) => {
                            let (expires, value) = g.value();
                            if live(expires, now) {
                                out.push(Some(value.to_vec()));
                            } else {
                                expired.push(k.clone());
                                out.push(None);
                            }
                        }
                        None => out.push(None),
                    }
                }
            }
            if !expired.is_empty() {
                purge(db, &expired, now)?;
            }
            Ok(out)
        })
        .await
    }

    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<(), StateError> {
        let key = key.to_string();
        let value = value.to_vec();
        self.blocking(move |db| {
            let expires = ttl_ms.map_or(0, |t| now_ms().saturating_add(t));
            let mut txn = db.begin_write().map_err(unavailable)?;
            txn.set_durability(Durability::None).map_err(unavailable)?;
            txn.open_table(TABLE)
                .map_err(unavailable)?
                .insert(key.as_str(), (expires, value.as_slice()))
                .map_err(unavailable)?;
            txn.commit().map_err(unavailable)
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let now = now_ms();
            let mut txn = db.begin_write().map_err(unavailable)?;
            txn.set_durability(Durability::None).map_err(unavailable)?;
            let existed = {
                let mut table = txn.open_table(TABLE).map_err(unavailable)?;
                let removed = table.remove(key.as_str()).map_err(unavailable)?;
                removed.is_some_and(|g| live(g.value().0, now))
            };
            txn.commit().map_err(unavailable)?;
            Ok(existed)
        })
        .await
    }

    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<Entry>, StateError> {
        let prefix = prefix.to_string();
        self.blocking(move |db| {
            let now = now_ms();
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(TABLE).map_err(unavailable)?;
            let mut out = Vec::new();
            for item in table.range(prefix.as_str()..).map_err(unavailable)? {
                let (k, v) = item.map_err(unavailable)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) || out.len() >= limit {
                    break;
                }
                let (expires, value) = v.value();
                if live(expires, now) {
                    out.push(Entry {
                        key: key.to_string(),
                        value: value.to_vec(),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// A durable commit: everything committed before is on disk when it returns.
    pub async fn sync(&self) -> Result<(), StateError> {
        self.blocking(|db| {
            let txn = db.begin_write().map_err(unavailable)?;
            txn.commit().map_err(unavailable)
        })
        .await
    }

    /// Removes every expired entry in one durable commit; the number removed.
    pub async fn sweep(&self) -> Result<usize, StateError> {
        self.blocking(|db| {
            let now = now_ms();
            let txn = db.begin_write().map_err(unavailable)?;
            let mut removed = 0;
            {
                let mut table = txn.open_table(TABLE).map_err(unavailable)?;
                table
                    .retain(|_, (expires, _)| {
                        let keep = live(expires, now);
                        if !keep {
                            removed += 1;
                        }
                        keep
                    })
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(removed)
        })
        .await
    }
}

/// Removes those of `keys` that are still expired at `now` (a writer may have renewed one).
fn purge(db: &Database, keys: &[String], now: u64) -> Result<(), StateError> {
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::None).map_err(unavailable)?;
    {
        let mut table = txn.open_table(TABLE).map_err(unavailable)?;
        for k in keys {
            let expired = match table.get(k.as_str()).map_err(unavailable)? {
                Some(g) => !live(g.value().0, now),
                None => false,
            };
            if expired {
                table.remove(k.as_str()).map_err(unavailable)?;
            }
        }
    }
    txn.commit().map_err(unavailable)
}
