//! The queue manager: which spooled message is tried when, by whom, and what happens after.
//!
//! One task owns the schedule (message id → when due). Messages are due at once when the
//! SMTP session hands them over after commit ([`QueueHandle::enqueue`]), when recovered at
//! start (at the time their state says), when found by the periodic rescan of `queue/`
//! (released by an operator tool in another process) and when flushed. At most
//! `concurrency` attempts run at a time; each takes a [`Lease`] (the
//! message lock an operator's hold or delete waits for), hands the pending recipients to the
//! [`Transport`] and records the result before releasing the lock:
//!
//! - delivered recipients are never tried again; when none is left the files are removed;
//! - permanent failures, and transient ones once the message is older than `max_lifetime`,
//!   get a DSN (RFC 3464, [`crate::bounce`]) spooled with the null sender to the original
//!   sender, never when that sender is itself null;
//! - transient failures are retried after `retry_initial`, doubling up to `retry_max` (the
//!   last retry is moved forward to the expiry time so expiry is reported on time).
//!
//! Settings read: [`QueueSettings`]. Failures: spool errors are logged with the queue id and
//! the message is retried later (a damaged file is moved to `corrupt/` by the spool and
//! dropped from the schedule); if a DSN cannot be stored, its recipients stay pending so the
//! DSN is built again at the next attempt. A panicking transport is logged and the message
//! retried. Every log line about a message carries `queue_id`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::bounce::{self, Action, DsnRecipient};
use crate::spool::{
    BodyReader, Envelope, Lease, Leased, MAX_DSN_HEADERS, QueueId, QueuedMessage, Spool,
};

/// The delivery agent, as the queue manager sees it.
pub trait Transport: Send + Sync + 'static {
    /// Tries to deliver the message to `recipients` and reports one result per recipient.
    /// A recipient without a result counts as a transient failure.
    fn deliver<'a>(
        &'a self,
        id: &'a QueueId,
        envelope: &'a Envelope,
        recipients: &'a [String],
        body: BodyReader,
    ) -> Pin<Box<dyn Future<Output = Vec<RcptResult>> + Send + 'a>>;
}

/// The outcome for one recipient; `reply` is the next hop's reply on one line
/// (`550 5.1.1 No such user`) or a local reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptResult {
    Delivered { rcpt: String, reply: String },
    Transient { rcpt: String, reply: String },
    Permanent { rcpt: String, reply: String },
}

impl RcptResult {
    pub fn rcpt(&self) -> &str {
        match self {
            RcptResult::Delivered { rcpt, .. }
            | RcptResult::Transient { rcpt, .. }
            | RcptResult::Permanent { rcpt, .. } => rcpt,
        }
    }
}

/// Scheduling settings.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// Most delivery attempts in progress at once (at least 1).
    pub concurrency: usize,
    /// Delay after the first failed attempt; doubled after each further one.
    pub retry_initial: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// Age after which recipients still failing transiently are bounced.
    pub max_lifetime: Duration,
    /// How often `queue/` is rescanned for messages released by an operator tool and for a
    /// flush request.
    pub scan_interval: Duration,
    /// Our hostname, for DSNs.
    pub hostname: String,
}

impl QueueSettings {
    /// The defaults: 20 at once, 5 minutes doubling to 1 hour, 5 days, rescan every minute.
    pub fn new(hostname: impl Into<String>) -> QueueSettings {
        QueueSettings {
            concurrency: 20,
            retry_initial: Duration::from_secs(300),
            retry_max: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(5 * 86_400),
            scan_interval: Duration::from_secs(60),
            hostname: hostname.into(),
        }
    }

    /// Delay before the next attempt after `attempts` failed ones (1 = after the first).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(31);
        self.retry_initial
            .saturating_mul(1u32 << shift)
            .min(self.retry_max)
    }
}

/// How long a message locked by an operator action waits before the next try.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// Longest wait computed from a stored time (guards against absurd stored values).
const MAX_WAIT: Duration = Duration::from_secs(366 * 86_400);

enum Command {
    Enqueue(QueueId),
    Flush,
    Shutdown,
}

/// Starts the queue manager.
pub struct QueueManager;

impl QueueManager {
    /// Spawns the manager on the current tokio runtime and schedules `recovered`.
    pub fn start(
        spool: Spool,
        recovered: Vec<QueuedMessage>,
        transport: Arc<dyn Transport>,
        settings: QueueSettings,
    ) -> QueueHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut scheduler = Scheduler {
            ctx: Arc::new(Ctx {
                spool,
                transport,
                settings,
            }),
            due: BTreeSet::new(),
            when: HashMap::new(),
            in_flight: HashSet::new(),
            flushed_in_flight: HashSet::new(),
            tasks: JoinSet::new(),
            task_ids: HashMap::new(),
        };
        for m in &recovered {
            scheduler.schedule(m.id, instant_at(m.state.next_attempt_ms));
        }
        info!(event = "queue_started", recovered = recovered.len());
        let task = tokio::spawn(scheduler.run(rx));
        QueueHandle {
            tx,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }
}

/// Talks to the running queue manager; cheap to clone.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Command>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl QueueHandle {
    /// A message was just committed to `queue/`: try it now.
    pub fn enqueue(&self, id: QueueId) {
        if self.tx.send(Command::Enqueue(id)).is_err() {
            warn!(event = "queue_stopped", queue_id = %id, "queue manager not running; delivery at next start");
        }
    }

    /// Makes every deferred message due now.
    pub fn flush(&self) {
        let _ = self.tx.send(Command::Flush);
    }

    /// Stops starting deliveries and waits for the ones in progress.
    pub async fn shutdown(self) {
        let _ = self.tx.send(Command::Shutdown);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            error!(event = "queue_manager_failed", error = %e);
        }
    }
}

struct Ctx {
    spool: Spool,
    transport: Arc<dyn Transport>,
    settings: QueueSettings,
}

/// What an attempt leaves for the scheduler.
#[derive(Default)]
struct Outcome {
    /// When to try again; `None` when the message is gone (delivered, bounced, held, deleted).
    retry_at: Option<Instant>,
    /// A DSN spooled by the attempt, to be delivered next.
    dsn: Option<QueueId>,
}

struct Scheduler {
    ctx: Arc<Ctx>,
    due: BTreeSet<(Instant, QueueId)>,
    when: HashMap<QueueId, Instant>,
    in_flight: HashSet<QueueId>,
    /// In flight when a flush came: due at once if the attempt defers them.
    flushed_in_flight: HashSet<QueueId>,
    tasks: JoinSet<Outcome>,
    task_ids: HashMap<tokio::task::Id, QueueId>,
}

impl Scheduler {
    /// Makes `id` due at `at` (or earlier if it already is); ignored while an attempt on it
    /// runs, since that attempt decides what comes next.
    fn schedule(&mut self, id: QueueId, at: Instant) {
        if self.in_flight.contains(&id) {
            return;
        }
        if let Some(&old) = self.when.get(&id) {
            if old <= at {
                return;
            }
            self.due.remove(&(old, id));
        }
        self.when.insert(id, at);
        self.due.insert((at, id));
    }

    fn flush(&mut self) {
        let now = Instant::now();
        let ids: Vec<QueueId> = self.when.keys().copied().collect();
        info!(
            event = "queue_flush",
            count = ids.len() + self.in_flight.len()
        );
        self.flushed_in_flight
            .extend(self.in_flight.iter().copied());
        for id in ids {
            self.schedule(id, now);
        }
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        while self.in_flight.len() < self.ctx.settings.concurrency.max(1) {
            let Some(&(at, id)) = self.due.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.due.remove(&(at, id));
            self.when.remove(&id);
            self.in_flight.insert(id);
            let handle = self.tasks.spawn(attempt(self.ctx.clone(), id));
            self.task_ids.insert(handle.id(), id);
        }
    }

    fn finished(&mut self, joined: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let (task, outcome) = match joined {
            Ok((task, outcome)) => (task, outcome),
            Err(e) => {
                let task = e.id();
                if let Some(id) = self.task_ids.get(&task) {
                    error!(event = "delivery_failed", queue_id = %id, error = %e, "attempt panicked; will retry");
                }
                (
                    task,
                    Outcome {
                        retry_at: Some(Instant::now() + self.ctx.settings.retry_initial),
                        dsn: None,
                    },
                )
            }
        };
        let Some(id) = self.task_ids.remove(&task) else {
            return;
        };
        self.in_flight.remove(&id);
        let flushed = self.flushed_in_flight.remove(&id);
        if let Some(at) = outcome.retry_at {
            self.schedule(id, if flushed { Instant::now() } else { at });
        }
        if let Some(dsn) = outcome.dsn {
            self.schedule(dsn, Instant::now());
        }
    }

    /// Picks up messages in `queue/` we do not know (released from hold by another process,
    /// or committed by a session that has not called `enqueue` yet) and a flush request.
    async fn scan(&mut self) {
        let spool = self.ctx.spool.clone();
        let known: HashSet<QueueId> = self
            .when
            .keys()
            .chain(self.in_flight.iter())
            .copied()
            .collect();
        let found = blocking(move || {
            let flush = spool.take_flush_request()?;
            let new: Vec<(QueueId, u64)> = spool
                .scan_queue()?
                .into_iter()
                .filter(|id| !known.contains(id))
                .map(|id| (id, spool.load_state(&id).next_attempt_ms))
                .collect();
            Ok((flush, new))
        })
        .await;
        match found {
            Ok((flush, new)) => {
                for (id, next_ms) in new {
                    debug!(event = "queue_found", queue_id = %id);
                    self.schedule(id, instant_at(next_ms));
                }
                if flush {
                    self.flush();
                }
            }
            Err(e) => error!(event = "queue_scan_failed", error = %e),
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut scan = tokio::time::interval_at(
            Instant::now() + self.ctx.settings.scan_interval,
            self.ctx
                .settings
                .scan_interval
                .max(Duration::from_millis(10)),
        );
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.start_due();
            let next = if self.in_flight.len() < self.ctx.settings.concurrency.max(1) {
                self.due.first().map(|&(at, _)| at)
            } else {
                None
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Enqueue(id)) => self.schedule(id, Instant::now()),
                    Some(Command::Flush) => self.flush(),
                    Some(Command::Shutdown) | None => break,
                },
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => self.finished(joined),
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
                _ = scan.tick() => self.scan().await,
            }
        }
        info!(event = "queue_stopping", in_flight = self.in_flight.len());
        while let Some(joined) = self.tasks.join_next_with_id().await {
            self.finished(joined);
        }
        info!(event = "queue_stopped");
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The instant corresponding to a Unix time in milliseconds (now if it is past).
fn instant_at(unix_ms_at: u64) -> Instant {
    let wait = Duration::from_millis(unix_ms_at.saturating_sub(unix_ms())).min(MAX_WAIT);
    Instant::now() + wait
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// One delivery attempt of message `id`.
async fn attempt(ctx: Arc<Ctx>, id: QueueId) -> Outcome {
    let spool = ctx.spool.clone();
    let retry_later = || Outcome {
        retry_at: Some(Instant::now() + ctx.settings.retry_initial),
        dsn: None,
    };
    let lease = match blocking(move || spool.lease(&id)).await {
        Ok(Leased::Ready(lease)) => lease,
        Ok(Leased::Gone) => {
            debug!(event = "queue_gone", queue_id = %id, "no longer in the queue (delivered, held or deleted)");
            return Outcome::default();
        }
        Ok(Leased::Busy) => {
            debug!(event = "queue_busy", queue_id = %id, "locked by an operator action");
            return Outcome {
                retry_at: Some(Instant::now() + BUSY_RETRY),
                dsn: None,
            };
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            // The spool moved it to corrupt/ and logged it.
            error!(event = "delivery_abandoned", queue_id = %id, error = %e);
            return Outcome::default();
        }
        Err(e) => {
            error!(event = "spool_error", queue_id = %id, error = %e);
            return retry_later();
        }
    };
    match deliver_leased(&ctx, *lease).await {
        Ok(outcome) => outcome,
        Err(e) => {
            error!(event = "spool_error", queue_id = %id, error = %e);
            retry_later()
        }
    }
}

async fn deliver_leased(ctx: &Ctx, lease: Lease) -> io::Result<Outcome> {
    let id = *lease.id();
    let envelope = lease.envelope().clone();
    let mut state = lease.state().clone();
    let pending = state.pending(&envelope);
    if pending.is_empty() {
        // A crash after the last result was recorded: just clean up.
        remove(id, lease).await?;
        return Ok(Outcome::default());
    }
    let body = lease.body()?;
    let results = ctx.transport.deliver(&id, &envelope, &pending, body).await;
    let now_ms = unix_ms();
    let expires_ms = envelope
        .received_at
        .saturating_mul(1000)
        .saturating_add(ctx.settings.max_lifetime.as_millis() as u64);
    let expired = now_ms >= expires_ms;
    let mut bounces = Vec::new();
    for r in &results {
        if !pending.iter().any(|p| p == r.rcpt()) {
            warn!(event = "delivery_unexpected_result", queue_id = %id, rcpt = %r.rcpt());
        }
    }
    for rcpt in &pending {
        match results.iter().find(|r| r.rcpt() == rcpt) {
            Some(RcptResult::Delivered { reply, .. }) => {
                info!(event = "delivered", queue_id = %id, rcpt = %rcpt, reply = %reply);
                state.delivered.push(rcpt.clone());
                state.last_error.remove(rcpt);
            }
            Some(RcptResult::Permanent { reply, .. }) => {
                info!(event = "bounced", queue_id = %id, rcpt = %rcpt, reply = %reply);
                bounces.push(DsnRecipient {
                    rcpt: rcpt.clone(),
                    reply: reply.clone(),
                    action: Action::Failed,
                });
            }
            transient => {
                let reply = match transient {
                    Some(RcptResult::Transient { reply, .. }) => reply.clone(),
                    _ => "451 4.3.0 delivery agent reported no result".to_string(),
                };
                if expired {
                    info!(event = "expired", queue_id = %id, rcpt = %rcpt, reply = %reply);
                    bounces.push(DsnRecipient {
                        rcpt: rcpt.clone(),
                        reply,
                        action: Action::Failed,
                    });
                } else {
                    info!(event = "deferred", queue_id = %id, rcpt = %rcpt, reply = %reply, attempts = state.attempts + 1);
                    state.last_error.insert(rcpt.clone(), reply);
                }
            }
        }
    }
    let mut dsn = None;
    if !bounces.is_empty() {
        if envelope.sender.is_empty() {
            info!(event = "dsn_suppressed", queue_id = %id, reason = "null sender");
            mark_failed(&mut state, &bounces);
        } else {
            match spool_dsn(ctx, &lease, &envelope, &bounces, now_ms / 1000).await {
                Ok(dsn_id) => {
                    info!(event = "dsn_queued", queue_id = %id, dsn_queue_id = %dsn_id, to = %envelope.sender);
                    mark_failed(&mut state, &bounces);
                    dsn = Some(dsn_id);
                }
                Err(e) => {
                    // Leave the recipients pending: the DSN is built again next time.
                    error!(event = "dsn_failed", queue_id = %id, error = %e);
                    for b in &bounces {
                        state.last_error.insert(b.rcpt.clone(), b.reply.clone());
                    }
                }
            }
        }
    }
    if !state.pending(&envelope).is_empty() {
        state.attempts = state.attempts.saturating_add(1);
        let delay_ms = ctx.settings.backoff(state.attempts).as_millis() as u64;
        // Never later than expiry (when expiry is still ahead), so it is reported on time.
        let mut next_ms = now_ms.saturating_add(delay_ms);
        if expires_ms > now_ms {
            next_ms = next_ms.min(expires_ms);
        }
        state.next_attempt_ms = next_ms;
        // The lease (and the lock) ends with the blocking call.
        blocking(move || {
            let mut lease = lease;
            lease.record(&state)
        })
        .await?;
        return Ok(Outcome {
            retry_at: Some(instant_at(next_ms)),
            dsn,
        });
    }
    remove(id, lease).await?;
    Ok(Outcome {
        retry_at: None,
        dsn,
    })
}

async fn remove(id: QueueId, lease: Lease) -> io::Result<()> {
    blocking(move || lease.remove_delivered()).await?;
    info!(event = "removed", queue_id = %id);
    Ok(())
}

fn mark_failed(state: &mut crate::spool::DeliveryState, bounces: &[DsnRecipient]) {
    for b in bounces {
        state.failed.push(b.rcpt.clone());
        state.last_error.remove(&b.rcpt);
    }
}

/// Builds the DSN for `bounces` and spools it with the null sender to the original sender.
async fn spool_dsn(
    ctx: &Ctx,
    lease: &Lease,
    original: &Envelope,
    bounces: &[DsnRecipient],
    now: u64,
) -> io::Result<QueueId> {
    let headers = lease.headers(MAX_DSN_HEADERS)?;
    let text = bounce::build_dsn(
        &ctx.settings.hostname,
        original,
        lease.id(),
        bounces,
        &headers,
        now,
    );
    let envelope = Envelope {
        sender: String::new(),
        recipients: vec![original.sender.clone()],
        received_at: now,
        client: None,
        helo: None,
        listener: "bounce".into(),
        session: lease.id().to_string(),
        size: 0,
        direction: original.direction.reverse(),
        auth_user: None,
    };
    let mut incoming = ctx.spool.create(envelope)?;
    let dsn_id = *incoming.id();
    incoming.write(&text)?;
    incoming.commit().await?;
    Ok(dsn_id)
}

#[cfg(test)]
mod tests {
    //! Scheduler tests: a real spool on disk and a scripted in-test transport that decides each
    //! recipient's result from the recipient and the attempt number.

    use super::*;
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    type Decide = dyn Fn(&str, usize) -> RcptResult + Send + Sync;

    #[derive(Clone, Debug)]
    struct Call {
        id: QueueId,
        sender: String,
        recipients: Vec<String>,
        body: Vec<u8>,
        at: Instant,
    }

    struct Scripted {
        calls: Mutex<Vec<Call>>,
        decide: Box<Decide>,
        hold_for: Duration,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }

    impl Scripted {
        fn new(
            decide: impl Fn(&str, usize) -> RcptResult + Send + Sync + 'static,
        ) -> Arc<Scripted> {
            Arc::new(Scripted {
                calls: Mutex::new(Vec::new()),
                decide: Box::new(decide),
                hold_for: Duration::ZERO,
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
            })
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn calls_for(&self, id: QueueId) -> Vec<Call> {
            self.calls().into_iter().filter(|c| c.id == id).collect()
        }
    }

    impl Transport for Scripted {
        fn deliver<'a>(
            &'a self,
            id: &'a QueueId,
            env: &'a Envelope,
            recipients: &'a [String],
            mut body: BodyReader,
        ) -> Pin<Box<dyn Future<Output = Vec<RcptResult>> + Send + 'a>> {
            Box::pin(async move {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_running.fetch_max(now, Ordering::SeqCst);
                let mut bytes = Vec::new();
                body.read_to_end(&mut bytes).unwrap();
                let attempt = self.calls_for(*id).len() + 1;
                self.calls.lock().unwrap().push(Call {
                    id: *id,
                    sender: env.sender.clone(),
                    recipients: recipients.to_vec(),
                    body: bytes,
                    at: Instant::now(),
                });
                tokio::time::sleep(self.hold_for).await;
                self.running.fetch_sub(1, Ordering::SeqCst);
                recipients
                    .iter()
                    .map(|r| (self.decide)(r, attempt))
                    .collect()
            })
        }
    }

    fn ok(rcpt: &str) -> RcptResult {
        RcptResult::Delivered {
            rcpt: rcpt.into(),
            reply: "250 2.0.0 Ok: queued".into(),
        }
    }
    fn later(rcpt: &str) -> RcptResult {
        RcptResult::Transient {
            rcpt: rcpt.into(),
            reply: "451 4.3.0 try again later".into(),
        }
    }
    fn never(rcpt: &str) -> RcptResult {
        RcptResult::Permanent {
            rcpt: rcpt.into(),
            reply: "550 5.1.1 no such user".into(),
        }
    }

    fn settings() -> QueueSettings {
        QueueSettings {
            concurrency: 4,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_millis(500),
            max_lifetime: Duration::from_secs(3600),
            scan_interval: Duration::from_millis(100),
            hostname: "mx1.example.org".into(),
        }
    }

    /// A fresh spool in a temporary directory, with a queue manager delivering through `t`.
    fn start(
        t: &Arc<Scripted>,
        settings: QueueSettings,
    ) -> (tempfile::TempDir, Spool, QueueHandle) {
        let dir = tempfile::tempdir().unwrap();
        let (spool, recovered) = Spool::open(dir.path()).unwrap();
        let q = QueueManager::start(spool.clone(), recovered, t.clone(), settings);
        (dir, spool, q)
    }

    /// An envelope received just now.
    fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
        Envelope {
            received_at: unix_ms() / 1000,
            ..crate::spool::tests::envelope(sender, rcpts)
        }
    }

    const BODY: &[u8] = b"Subject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\n";

    async fn store(spool: &Spool, env: Envelope) -> QueueId {
        let mut inc = spool.create(env).unwrap();
        inc.write(BODY).unwrap();
        let id = *inc.id();
        inc.commit().await.unwrap();
        id
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn queue_empty(spool: &Spool) -> bool {
        spool.list().unwrap().is_empty()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_at_once_and_removes_the_files() {
        let t = Scripted::new(|r, _| ok(r));
        let (dir, spool, q) = start(
            &t,
            QueueSettings {
                scan_interval: Duration::from_secs(3600),
                ..settings()
            },
        );
        let id = store(
            &spool,
            envelope("a@example.org", &["b@example.net", "c@example.net"]),
        )
        .await;
        let enqueued = Instant::now();
        q.enqueue(id);
        eventually("message removed", || queue_empty(&spool)).await;
        let calls = t.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].recipients, vec!["b@example.net", "c@example.net"]);
        assert_eq!(calls[0].body, BODY);
        assert!(
            calls[0].at - enqueued < Duration::from_secs(1),
            "not waiting for a scan"
        );
        assert!(fs_names(&dir.path().join("state")).is_empty());
        q.shutdown().await;
    }

    fn fs_names(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_with_exponential_backoff_up_to_the_maximum() {
        let t = Scripted::new(|r, attempt| if attempt < 5 { later(r) } else { ok(r) });
        let (_dir, spool, q) = start(&t, settings());
        let id = store(&spool, envelope("a@example.org", &["b@example.net"])).await;
        q.enqueue(id);
        eventually("first attempt recorded", || {
            spool
                .read(&id)
                .map(|(_, s, _)| s.attempts == 1)
                .unwrap_or(false)
        })
        .await;
        let (_, state, _) = spool.read(&id).unwrap();
        assert_eq!(
            state.last_error.get("b@example.net").map(String::as_str),
            Some("451 4.3.0 try again later")
        );
        assert!(state.next_attempt_ms > unix_ms());
        eventually("five attempts", || queue_empty(&spool)).await;
        let at: Vec<Instant> = t.calls_for(id).iter().map(|c| c.at).collect();
        assert_eq!(at.len(), 5);
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        let expected = [200, 400, 500, 500].map(Duration::from_millis);
        for (gap, want) in gaps.iter().zip(expected) {
            assert!(*gap >= want, "gaps {gaps:?} shorter than {expected:?}");
            assert!(
                *gap < want + Duration::from_millis(350),
                "gaps {gaps:?} much longer than {expected:?}"
            );
        }
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_delivery_never_retries_done_recipients() {
        let t = Scripted::new(|r, attempt| {
            if r == "slow@example.net" && attempt == 1 {
                later(r)
            } else {
                ok(r)
            }
        });
        let (_dir, spool, q) = start(&t, settings());
        let id = store(
            &spool,
            envelope("a@example.org", &["fast@example.net", "slow@example.net"]),
        )
        .await;
        q.enqueue(id);
        eventually("delivered to both", || queue_empty(&spool)).await;
        let calls = t.calls_for(id);
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0].recipients,
            vec!["fast@example.net", "slow@example.net"]
        );
        assert_eq!(calls[1].recipients, vec!["slow@example.net"]);
        q.shutdown().await;
    }

    /// The DSN the transport was handed for message `id`'s sender.
    fn dsn_calls(t: &Scripted) -> Vec<Call> {
        t.calls()
            .into_iter()
            .filter(|c| c.sender.is_empty())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn permanent_failure_bounces_to_the_sender_with_null_sender() {
        let t = Scripted::new(|r, _| {
            if r == "gone@example.net" {
                never(r)
            } else {
                ok(r)
            }
        });
        let (_dir, spool, q) = start(&t, settings());
        let id = store(
            &spool,
            envelope(
                "alice@example.org",
                &["gone@example.net", "bob@example.net"],
            ),
        )
        .await;
        q.enqueue(id);
        eventually("DSN delivered", || {
            dsn_calls(&t).len() == 1 && queue_empty(&spool)
        })
        .await;
        assert_eq!(
            t.calls_for(id).len(),
            1,
            "a permanent failure is not retried"
        );
        let dsn = &dsn_calls(&t)[0];
        assert_eq!(dsn.recipients, vec!["alice@example.org"]);
        let text = String::from_utf8_lossy(&dsn.body);
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains(
            "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(
            !text.contains("Final-Recipient: rfc822; bob@example.net"),
            "only failed recipients are reported"
        );
        assert!(
            text.contains("Message-ID: <m1@example.org>\r\n"),
            "original headers attached"
        );
        assert!(text.contains(&format!("X-Ravelin-Queue-ID: {id}")));
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expiry_bounces_remaining_recipients() {
        let t = Scripted::new(|r, _| {
            if r == "alice@example.org" {
                ok(r)
            } else {
                later(r)
            }
        });
        let (_dir, spool, q) = start(
            &t,
            QueueSettings {
                max_lifetime: Duration::from_secs(60),
                ..settings()
            },
        );
        let mut env = envelope("alice@example.org", &["stuck@example.net"]);
        env.received_at = unix_ms() / 1000 - 61;
        let id = store(&spool, env).await;
        q.enqueue(id);
        eventually("expired and bounced", || {
            dsn_calls(&t).len() == 1 && queue_empty(&spool)
        })
        .await;
        assert_eq!(t.calls_for(id).len(), 1);
        let text = String::from_utf8_lossy(&dsn_calls(&t)[0].body).into_owned();
        assert!(
            text.contains(
                "Final-Recipient: rfc822; stuck@example.net\r\nAction: failed\r\nStatus: 4.3.0\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("Diagnostic-Code: smtp; 451 4.3.0 try again later"));
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn next_retry_is_not_later_than_expiry() {
        let t = Scripted::new(|r, _| {
            if r == "alice@example.org" {
                ok(r)
            } else {
                later(r)
            }
        });
        let s = QueueSettings {
            max_lifetime: Duration::from_secs(2),
            retry_initial: Duration::from_secs(3600),
            retry_max: Duration::from_secs(3600),
            ..settings()
        };
        let (_dir, spool, q) = start(&t, s);
        let env = envelope("alice@example.org", &["stuck@example.net"]);
        let id = store(&spool, env).await;
        q.enqueue(id);
        eventually("bounced at expiry, not after an hour", || {
            dsn_calls(&t).len() == 1
        })
        .await;
        assert_eq!(t.calls_for(id).len(), 2);
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn null_sender_is_never_bounced() {
        let t = Scripted::new(|r, _| never(r));
        let (_dir, spool, q) = start(&t, settings());
        let id = store(&spool, envelope("", &["gone@example.net"])).await;
        q.enqueue(id);
        eventually("given up", || queue_empty(&spool)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let calls = t.calls();
        assert_eq!(
            calls.len(),
            1,
            "only the original attempt, no DSN: {calls:?}"
        );
        assert!(queue_empty(&spool));
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_messages_wait_until_released() {
        let t = Scripted::new(|r, _| ok(r));
        let (dir, spool, q) = start(&t, settings());
        let id = store(&spool, envelope("a@example.org", &["b@example.net"])).await;
        // The operator's tool is another process with its own handle.
        let admin = Spool::open_admin(dir.path()).unwrap();
        admin.hold(&id).unwrap();
        q.enqueue(id);
        q.flush();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(t.calls().is_empty(), "held message was delivered");
        admin.release(&id).unwrap();
        eventually("released message delivered by the rescan", || {
            queue_empty(&spool)
        })
        .await;
        assert_eq!(t.calls_for(id).len(), 1);
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleted_messages_are_not_delivered() {
        let t = Scripted::new(|r, _| later(r));
        let s = QueueSettings {
            retry_initial: Duration::from_secs(3600),
            retry_max: Duration::from_secs(3600),
            ..settings()
        };
        let (dir, spool, q) = start(&t, s);
        let admin = Spool::open_admin(dir.path()).unwrap();
        // Deleted before its first attempt.
        let first = store(&spool, envelope("a@example.org", &["b@example.net"])).await;
        admin.delete(&first).unwrap();
        q.enqueue(first);
        // Deleted while deferred, then flushed (by the operator's tool, through the spool).
        let second = store(&spool, envelope("a@example.org", &["b@example.net"])).await;
        q.enqueue(second);
        eventually("first attempt of the second message", || {
            t.calls_for(second).len() == 1
        })
        .await;
        eventually("deferral recorded", || {
            spool
                .read(&second)
                .map(|(_, s, _)| s.attempts == 1)
                .unwrap_or(false)
        })
        .await;
        admin.delete(&second).unwrap();
        admin.request_flush().unwrap();
        eventually("flush request consumed", || {
            !dir.path().join("flush").exists()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(t.calls_for(first).is_empty());
        assert_eq!(t.calls_for(second).len(), 1);
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_makes_deferred_messages_due_now() {
        let t = Scripted::new(|r, attempt| if attempt == 1 { later(r) } else { ok(r) });
        let s = QueueSettings {
            retry_initial: Duration::from_secs(3600),
            retry_max: Duration::from_secs(3600),
            ..settings()
        };
        let (_dir, spool, q) = start(&t, s);
        let id = store(&spool, envelope("a@example.org", &["b@example.net"])).await;
        q.enqueue(id);
        eventually("deferred", || {
            spool
                .read(&id)
                .map(|(_, s, _)| s.attempts == 1)
                .unwrap_or(false)
        })
        .await;
        q.flush();
        eventually("delivered after flush", || queue_empty(&spool)).await;
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovered_messages_are_resumed_with_their_state() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let id = store(
            &spool,
            envelope("a@example.org", &["done@example.net", "todo@example.net"]),
        )
        .await;
        let Leased::Ready(mut lease) = spool.lease(&id).unwrap() else {
            panic!("not leased")
        };
        let mut state = lease.state().clone();
        state.attempts = 1;
        state.delivered.push("done@example.net".into());
        lease.record(&state).unwrap();
        drop(lease);
        drop(spool);

        let (spool, recovered) = Spool::open(dir.path()).unwrap();
        let t = Scripted::new(|r, _| ok(r));
        let q = QueueManager::start(spool.clone(), recovered, t.clone(), settings());
        eventually("delivered without enqueue", || queue_empty(&spool)).await;
        assert_eq!(t.calls_for(id)[0].recipients, vec!["todo@example.net"]);
        q.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_limit_and_shutdown_waits_for_deliveries() {
        let t = Arc::new(Scripted {
            hold_for: Duration::from_millis(150),
            ..Arc::into_inner(Scripted::new(|r, _| ok(r))).unwrap()
        });
        let (_dir, spool, q) = start(
            &t,
            QueueSettings {
                concurrency: 2,
                ..settings()
            },
        );
        for _ in 0..6 {
            let id = store(&spool, envelope("a@example.org", &["b@example.net"])).await;
            q.enqueue(id);
        }
        eventually("all delivered", || queue_empty(&spool)).await;
        assert_eq!(t.calls().len(), 6);
        assert_eq!(t.max_running.load(Ordering::SeqCst), 2);

        let id = store(&spool, envelope("a@example.org", &["b@example.net"])).await;
        q.enqueue(id);
        eventually("delivery started", || t.calls().len() == 7).await;
        q.shutdown().await;
        assert_eq!(
            t.running.load(Ordering::SeqCst),
            0,
            "shutdown returned with a delivery running"
        );
        assert!(queue_empty(&spool), "the delivery in progress completed");
    }

    #[test]
    fn backoff_doubles_to_the_maximum() {
        let s = QueueSettings::new("mx.example.org");
        let mins: Vec<u64> = (1..=6).map(|a| s.backoff(a).as_secs() / 60).collect();
        assert_eq!(mins, vec![5, 10, 20, 40, 60, 60]);
        assert_eq!(s.backoff(u32::MAX), Duration::from_secs(3600));
        assert_eq!(s.max_lifetime, Duration::from_secs(5 * 86_400));
    }
}
