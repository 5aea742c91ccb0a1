//! An answer cache for runs that ask the same questions many times (a batch audit: thousands
//! of domains share the same MX hosts, SPF includes and report domains).
//!
//! What it keeps: the outcome of one query (`name`, `type`) — the answer records with their AD
//! bit, NXDOMAIN or NODATA — for the time the DNS allows: the smallest TTL of the records,
//! the negative TTL of RFC 2308 (the SOA of the authority section) for NXDOMAIN and NODATA,
//! never longer than [`MAX_TTL`]. Temporary failures (timeouts, SERVFAIL, REFUSED) are never
//! kept: the next caller asks again.
//!
//! Concurrent callers of one question share one query in flight (the first asks, the others
//! wait for its outcome, failures included); when the asking caller is cancelled, a waiting
//! one asks instead.
//!
//! Limits: at most `capacity` questions are remembered; when full, expired entries (and
//! queries whose every caller was cancelled) are dropped, at most once a second, and until
//! that frees room new questions are asked without being remembered. An answer keeps the TTL
//! it arrived with: callers that pass it on (the auditor's evidence) show the TTL of the
//! first lookup, not a countdown. The
//! gateway does not use it (like Postfix, it leaves caching to the recursive resolver, which
//! caches per RRset); the auditor does, for one run.
//!
//! How it fails: it cannot; a poisoned lock is taken over (the map holds no invariant a
//! panic could break).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::proto::rr::{Name, RecordType};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The longest an answer is kept, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// One question: the name in lowercase wire form (each label after its length, then the root
/// label's zero for a fully qualified name) and the type. One byte string hashes and compares
/// faster than a `Name`, which hashes byte by byte.
type Key = (Box<[u8]>, RecordType);

/// The key of `name`/`rtype`: equal for names equal ignoring ASCII case, as `Name`s compare.
fn key(name: &Name, rtype: RecordType) -> Key {
    let mut bytes = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        // A label is at most 63 bytes (RFC 1035 §2.3.4); `Name` refuses longer ones.
        bytes.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
        bytes.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    if name.is_fqdn() {
        bytes.push(0);
    }
    (bytes.into_boxed_slice(), rtype)
}

/// An outcome and until when it may be used.
type Slot<T> = Arc<OnceCell<(T, Instant)>>;

/// How often at most a full cache looks for entries to drop (each look reads them all).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A bounded cache of query outcomes of type `T`, with one query in flight per question.
pub struct AnswerCache<T> {
    capacity: usize,
    max_ttl: Duration,
    state: Mutex<State<T>>,
}

struct State<T> {
    slots: HashMap<Key, Slot<T>>,
    /// When a full cache last looked for entries to drop.
    last_sweep: Option<Instant>,
}

impl<T: Clone> AnswerCache<T> {
    /// A cache remembering at most `capacity` questions.
    pub fn new(capacity: usize) -> Self {
        AnswerCache {
            capacity,
            max_ttl: MAX_TTL,
            state: Mutex::new(State {
                slots: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// The outcome of `name`/`rtype`: a remembered one that has not expired, the one of a
    /// query in flight, or that of the query `ask` starts, which returns the outcome and how
    /// long it may be kept (zero: only shared with the callers already waiting). `ask` is a
    /// function so that a caller answered from the cache never holds the query's state.
    pub async fn get_or_query<F>(
        &self,
        name: &Name,
        rtype: RecordType,
        ask: impl FnOnce() -> F,
    ) -> T
    where
        F: Future<Output = (T, Duration)>,
    {
        let key = key(name, rtype);
        let Some(slot) = self.slot(&key) else {
            return ask().await.0;
        };
        let (outcome, expires) = slot
            .get_or_init(|| async {
                let (outcome, ttl) = ask().await;
                (outcome, Instant::now() + ttl.min(self.max_ttl))
            })
            .await;
        let outcome = outcome.clone();
        if *expires <= Instant::now() {
            // Not to be kept (a failure, a TTL of zero): forget it unless already replaced.
            let slots = &mut self.lock().slots;
            if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(&key);
            }
        }
        outcome
    }

    /// How many questions are remembered (expired ones included until dropped).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot of a question: its live or in-flight one, or a new one; `None` when the cache
    /// is full of live entries.
    fn slot(&self, key: &Key) -> Option<Slot<T>> {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(slot) = state.slots.get(key) {
            match slot.get() {
                Some((_, expires)) if *expires <= now => {}
                _ => return Some(slot.clone()),
            }
        }
        if state.slots.len() >= self.capacity && !state.slots.contains_key(key) {
            if state
                .last_sweep
                .is_some_and(|last| now.duration_since(last) < SWEEP_INTERVAL)
            {
                return None;
            }
            state.last_sweep = Some(now);
            // Expired answers go, and so do queries whose every caller gave up (nobody holds
            // the slot but the map).
            state.slots.retain(|_, s| match s.get() {
                Some((_, expires)) => *expires > now,
                None => Arc::strong_count(s) > 1,
            });
            if state.slots.len() >= self.capacity {
                return None;
            }
        }
        let slot: Slot<T> = Arc::new(OnceCell::new());
        state.slots.insert(key.clone(), slot.clone());
        Some(slot)
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    /// A query that counts how often it runs and returns `value` with `ttl`.
    async fn counted(
        count: &AtomicUsize,
        value: u32,
        ttl: Duration,
        delay: Duration,
    ) -> (u32, Duration) {
        count.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        (value, ttl)
    }

    /// Asks `cache` for the TXT records of `n`, with a query that answers `value` at once
    /// with `ttl`.
    async fn ask_txt(
        cache: &AnswerCache<u32>,
        count: &AtomicUsize,
        n: &str,
        value: u32,
        ttl: Duration,
    ) -> u32 {
        cache
            .get_or_query(&name(n), RecordType::TXT, || {
                counted(count, value, ttl, Duration::ZERO)
            })
            .await
    }

    #[test]
    fn keys_tell_names_apart_as_names_compare() {
        let k = |n: &str| key(&name(n), RecordType::TXT);
        assert_eq!(k("Example.ORG."), k("example.org."));
        assert_ne!(k("a.bc."), k("ab.c."));
        assert_ne!(k("example.org"), k("example.org."));
        assert_ne!(
            k("example.org."),
            key(&name("example.org."), RecordType::MX)
        );
    }

    #[tokio::test]
    async fn answers_are_kept_for_their_ttl_and_names_compare_without_case() {
        let cache = AnswerCache::new(10);
        let count = AtomicUsize::new(0);
        let ttl = Duration::from_secs(60);
        let (cache, count) = (&cache, &count);
        assert_eq!(ask_txt(cache, count, "example.org.", 1, ttl).await, 1);
        assert_eq!(ask_txt(cache, count, "EXAMPLE.org.", 1, ttl).await, 1);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Another type is another question.
        cache
            .get_or_query(&name("example.org."), RecordType::MX, || {
                counted(count, 2, ttl, Duration::ZERO)
            })
            .await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        let short = Duration::from_secs(1);
        let ask_short = || ask_txt(cache, count, "short.example.org.", 3, short);
        ask_short().await;
        ask_short().await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        tokio::time::sleep(short + Duration::from_millis(500)).await;
        ask_short().await;
        assert_eq!(count.load(Ordering::SeqCst), 4, "expired: asked again");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_query_and_failures_are_not_kept() {
        let cache = AnswerCache::new(10);
        let count = AtomicUsize::new(0);
        let slow = Duration::from_millis(50);
        let q = name("mx1.example.org.");
        let (a, b, c) = tokio::join!(
            cache.get_or_query(&q, RecordType::A, || counted(
                &count,
                7,
                Duration::ZERO,
                slow
            )),
            cache.get_or_query(&q, RecordType::A, || counted(
                &count,
                8,
                Duration::ZERO,
                slow
            )),
            cache.get_or_query(&q, RecordType::A, || counted(
                &count,
                9,
                Duration::ZERO,
                slow
            )),
        );
        assert_eq!((a, b, c), (7, 7, 7));
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "one query for three callers"
        );
        // TTL zero (a failure): forgotten once answered.
        assert!(cache.is_empty());
        cache
            .get_or_query(&q, RecordType::A, || {
                counted(&count, 10, Duration::ZERO, slow)
            })
            .await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cancelled_asker_hands_the_query_to_a_waiting_caller() {
        let cache = AnswerCache::new(10);
        let count = AtomicUsize::new(0);
        let q = name("example.org.");
        let ttl = Duration::from_secs(60);
        let first = cache.get_or_query(&q, RecordType::TXT, || {
            counted(&count, 1, ttl, Duration::from_secs(10))
        });
        let second = cache.get_or_query(&q, RecordType::TXT, || {
            counted(&count, 2, ttl, Duration::from_millis(10))
        });
        let (cancelled, answer) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(5), first),
            second
        );
        assert!(cancelled.is_err());
        assert_eq!(answer, 2);
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_full_cache_drops_expired_entries_then_stops_remembering() {
        let cache = AnswerCache::new(2);
        let count = AtomicUsize::new(0);
        let (cache, count) = (&cache, &count);
        let ask = |n, ttl| ask_txt(cache, count, n, 1, Duration::from_millis(ttl));
        ask("a.", 50).await;
        ask("b.", 100_000).await;
        assert_eq!(cache.len(), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        ask("c.", 100_000).await; // a. expired: dropped to make room
        assert_eq!(cache.len(), 2);
        ask("d.", 100_000).await; // full of live entries: asked, not remembered
        assert_eq!(cache.len(), 2);
        let before = count.load(Ordering::SeqCst);
        ask("d.", 100_000).await;
        ask("b.", 100_000).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            before + 1,
            "d. asked again, b. kept"
        );
    }

    #[tokio::test]
    async fn no_answer_is_kept_longer_than_max_ttl() {
        let mut cache = AnswerCache::new(10);
        assert_eq!(cache.max_ttl, MAX_TTL);
        cache.max_ttl = Duration::from_secs(1);
        let count = AtomicUsize::new(0);
        let (cache, count) = (&cache, &count);
        let ask = || ask_txt(cache, count, "example.org.", 1, Duration::from_secs(86_400));
        ask().await;
        ask().await;
        assert_eq!(count.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ask().await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_query_every_caller_gave_up_does_not_hold_room() {
        let cache = AnswerCache::new(1);
        let count = AtomicUsize::new(0);
        let ttl = Duration::from_secs(60);
        let slow = name("slow.example.");
        let abandoned = cache.get_or_query(&slow, RecordType::TXT, || {
            counted(&count, 1, ttl, Duration::from_secs(10))
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(5), abandoned)
                .await
                .is_err()
        );
        assert_eq!(cache.len(), 1, "the abandoned question's slot");
        let ask = || ask_txt(&cache, &count, "next.example.", 2, ttl);
        ask().await;
        ask().await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "next.example. asked once, then kept"
        );
        assert_eq!(cache.len(), 1);
    }
}
