//! The spool: durable storage of accepted messages, one file per message.
//!
//! Nothing is acknowledged before it is on disk. A message is received into `incoming/ID`,
//! then [`Incoming::commit`] writes the trailer, fsyncs the file, renames it into `queue/ID` and
//! waits for an fsync of `queue/` (shared between concurrent commits, module `commit`); only then
//! may the SMTP session answer 250. Layout under the spool path (directories 0700, files 0600):
//!
//! - `incoming/`: messages being received. Never acknowledged, so recovery deletes all of it.
//! - `queue/`: acknowledged messages awaiting delivery (file format in module `format`).
//! - `hold/`: messages the operator put on hold; the queue manager does not touch them.
//! - `state/`: per-message delivery state sidecars (module `state`), one per message in `queue/` or
//!   `hold/`, absent until the first attempt. Keeping them apart from the message lets hold and
//!   release be a single rename of the message file.
//! - `quarantine/`: messages kept from the backend by a DMARC verdict, each with an `.info`
//!   of why (module `quarantine`); released into `queue/` or deleted by the operator.
//! - `corrupt/`: files recovery or delivery found damaged, moved aside and logged, never
//!   silently dropped.
//! - `free/`: empty files kept for reuse. A delivered message's file is renamed here and, once
//!   that rename is durable, truncated to zero; a new message takes a file from here (renamed
//!   into `incoming/` and opened with `O_TRUNC`) instead of creating one. Creating and deleting
//!   one file per message costs far more than two renames on some filesystems (ext4 without a
//!   journal scans every recently freed inode on each create). At most [`MAX_FREE`] files are
//!   kept; recovery truncates any that are not empty.
//! - `lock`: held (flock) by the one process running the queue ([`Spool::open`]); operator
//!   tools use [`Spool::open_admin`], which neither recovers nor takes it.
//! - `flush`: a marker an operator tool leaves to ask the running queue manager to retry all
//!   deferred messages now ([`Spool::request_flush`]).
//!
//! Delivery and operator actions exclude each other with an exclusive lock on the message
//! file (`File::lock`, i.e. flock). A delivery [`Lease`] holds it for the whole attempt and,
//! after locking, checks that `queue/ID` still names the file it locked; `hold` and `delete`
//! take the same lock before renaming or unlinking. So an operator's delete either happens
//! before a delivery starts (which then finds nothing) or waits for the attempt in progress to
//! finish; it is never followed by a delivery.
//!
//! Recovery checks the structure of every file (magic, envelope, trailer, length); the body's
//! CRC is checked before each delivery, where the body is read anyway. A body of at most
//! [`MEMORY_BODY`] octets is kept from that check for the attempt, so delivery reads it from
//! memory instead of the file a second time. `hold` and `delete`
//! wait for the delivery attempt in progress (at most the delivery timeouts).
//!
//! Settings read: only the spool path. Failures are `io::Error`s returned to the caller: a
//! write error or full disk surfaces from [`Incoming::write`] or [`Incoming::commit`], and the
//! incoming file is removed, so nothing is half-stored (the session answers 452 4.3.1).
//! Durability assumes a filesystem where rename is atomic and fsync of a directory makes its
//! entries durable (ext4, xfs, btrfs, tmpfs for tests).

mod commit;
mod format;
mod id;
mod quarantine;
mod state;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use commit::{Committer, Counters};
use format::Layout;
pub use id::{BadQueueId, QueueId};
pub use quarantine::{QuarantineEntry, QuarantineInfo};
pub use state::DeliveryState;

const INCOMING: &str = "incoming";
const QUEUE: &str = "queue";
const HOLD: &str = "hold";
const STATE: &str = "state";
const CORRUPT: &str = "corrupt";
const FREE: &str = "free";
const LOCK: &str = "lock";
const FLUSH: &str = "flush";

/// Largest body a [`Lease`] keeps in memory for the delivery attempt (read once, when its
/// checksum is verified); larger ones are read from the file as they are sent.
pub const MEMORY_BODY: u64 = 128 * 1024;
/// Most empty files kept in `free/` for reuse.
pub const MAX_FREE: usize = 1024;
/// Write buffer of an incoming message.
const WRITE_BUFFER: usize = 64 * 1024;
/// Most header octets returned by [`Lease::headers`] (for DSNs).
pub const MAX_DSN_HEADERS: usize = 64 * 1024;

/// The SMTP envelope and where the message came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse-path without angle brackets; "" is the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    /// Arrival time, seconds since the Unix epoch.
    pub received_at: u64,
    /// The client's address (`ip:port`), if it came over the network.
    pub client: Option<String>,
    /// The HELO/EHLO name the client gave.
    pub helo: Option<String>,
    /// Name of the listener it arrived on.
    pub listener: String,
    /// The SMTP session (connection) id.
    pub session: String,
    /// Octets of message data; filled in from the file when read back.
    #[serde(default)]
    pub size: u64,
    /// Where the message is headed: to our backend, or out to the world. Later stages (header
    /// firewall, DKIM signing, delivery) act on outbound mail only.
    #[serde(default)]
    pub direction: Direction,
    /// The login name of the submission client that sent it (AUTH), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
}

/// Where a message is headed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the world to our domains (an `inbound` listener).
    #[default]
    Inbound,
    /// From our users or trusted networks to the world (`submission`, `submissions`, `relay`
    /// listeners).
    Outbound,
}

impl Direction {
    /// The direction of a reply to a message going this way (a bounce goes back).
    pub fn reverse(self) -> Direction {
        match self {
            Direction::Inbound => Direction::Outbound,
            Direction::Outbound => Direction::Inbound,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A message found in `queue/` when the spool was opened.
#[derive(Clone, Debug)]
pub struct QueuedMessage {
    pub id: QueueId,
    pub envelope: Envelope,
    pub state: DeliveryState,
}

/// One line of `ravelin queue list`.
#[derive(Clone, Debug, Serialize)]
pub struct QueueEntry {
    pub id: QueueId,
    /// In `hold/` rather than `queue/`.
    pub held: bool,
    pub envelope: Envelope,
    pub state: DeliveryState,
}

/// Counters of the group commit (for tests and metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolStats {
    /// fsyncs of `queue/` done by the committer.
    pub dir_syncs: u64,
    /// Commits and removals those fsyncs made durable.
    pub commits: u64,
}

/// Messages in the spool, by place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolCounts {
    /// In `queue/`: waiting for delivery or being delivered.
    pub queued: usize,
    /// In `hold/`: held by the operator.
    pub held: usize,
}

/// Handle to a spool directory; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    incoming: PathBuf,
    queue: PathBuf,
    hold: PathBuf,
    state: PathBuf,
    corrupt: PathBuf,
    free: PathBuf,
    /// Names of the empty files in `free/` that this handle may reuse.
    free_names: Mutex<Vec<String>>,
    committer: Committer,
    counters: Arc<Counters>,
    /// The flock on `lock`, held as long as the spool is open for the queue.
    _queue_lock: Option<File>,
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match fs::metadata(path) {
        Ok(m) => Ok(m.dev() == held.dev() && m.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn not_found(id: &QueueId) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no message {id} in the queue"),
    )
}

/// Names in a directory that are queue ids, and the other names.
fn read_ids(dir: &Path) -> io::Result<(Vec<QueueId>, Vec<String>)> {
    let mut ids = Vec::new();
    let mut other = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        match name.parse::<QueueId>() {
            Ok(id) => ids.push(id),
            Err(_) => other.push(name),
        }
    }
    ids.sort();
    Ok((ids, other))
}

impl Spool {
    /// Opens the spool for the process that runs the queue: creates the directories, takes the
    /// spool lock (failing with `WouldBlock` if another process has it), deletes everything in
    /// `incoming/`, moves damaged files to `corrupt/`, and returns the messages in `queue/`.
    pub fn open(path: &Path) -> io::Result<(Spool, Vec<QueuedMessage>)> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(path)?;
        // A root made before us (the privilege drop creates it with the umask's mode, or a
        // package did) is tightened to 0700 like every directory below it.
        if fs::metadata(path)?.mode() & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        }
        for sub in [
            INCOMING,
            QUEUE,
            HOLD,
            STATE,
            CORRUPT,
            FREE,
            quarantine::QUARANTINE,
        ] {
            builder.create(path.join(sub))?;
        }
        sync_dir(path)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path.join(LOCK))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("spool {} is in use by another process", path.display()),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        let spool = Spool::with_lock(path, Some(lock))?;
        let recovered = spool.recover()?;
        Ok((spool, recovered))
    }

    /// Opens an existing spool for operator tools (list, show, hold, release, delete, flush)
    /// while the queue may be running in another process: no recovery, no spool lock.
    pub fn open_admin(path: &Path) -> io::Result<Spool> {
        for sub in [QUEUE, HOLD, STATE, CORRUPT] {
            if !path.join(sub).is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no spool at {} (missing {sub}/)", path.display()),
                ));
            }
        }
        Spool::with_lock(path, None)
    }

    fn with_lock(path: &Path, lock: Option<File>) -> io::Result<Spool> {
        let counters = Arc::new(Counters::default());
        let queue = path.join(QUEUE);
        let committer = Committer::start(queue.clone(), counters.clone())?;
        Ok(Spool {
            inner: Arc::new(Inner {
                root: path.to_path_buf(),
                incoming: path.join(INCOMING),
                queue,
                hold: path.join(HOLD),
                state: path.join(STATE),
                corrupt: path.join(CORRUPT),
                free: path.join(FREE),
                free_names: Mutex::new(Vec::new()),
                committer,
                counters,
                _queue_lock: lock,
            }),
        })
    }

    /// The spool directory.
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// Where data held before it becomes a message (an outbound body until it is signed) may
    /// be kept, in unnamed files only (`O_TMPFILE`), which vanish when closed and which
    /// recovery never sees: `incoming/`, on the spool's filesystem and as private as it.
    pub fn scratch_dir(&self) -> &Path {
        &self.inner.incoming
    }

    /// How many messages are in `queue/` and in `hold/` (directory entries, nothing read).
    pub fn counts(&self) -> io::Result<SpoolCounts> {
        let count = |dir: &Path| -> io::Result<usize> { Ok(fs::read_dir(dir)?.count()) };
        Ok(SpoolCounts {
            queued: count(&self.inner.queue)?,
            held: count(&self.inner.hold)?,
        })
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            dir_syncs: self.inner.counters.dir_syncs.load(Ordering::Relaxed),
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
        }
    }

    fn state_path(&self, id: &QueueId) -> PathBuf {
        self.inner.state.join(id.to_string())
    }

    fn recover(&self) -> io::Result<Vec<QueuedMessage>> {
        let inner = &self.inner;
        let mut discarded = 0usize;
        for entry in fs::read_dir(&inner.incoming)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    discarded += 1;
                    info!(event = "spool_discard_incoming", queue_id = %name, "unacknowledged message removed");
                }
                Err(e) => warn!(event = "spool_discard_failed", queue_id = %name, error = %e),
            }
        }
        let reusable = self.recover_free()?;
        let mut corrupt = 0usize;
        let held: Vec<QueueId> = self
            .recover_dir(&inner.hold, &mut corrupt)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut recovered = Vec::new();
        for (id, layout) in self.recover_dir(&inner.queue, &mut corrupt)? {
            if held.binary_search(&id).is_ok() {
                // A hold interrupted between link and unlink (not possible with rename on a
                // sane filesystem, but cheap to settle): the operator's hold wins.
                warn!(event = "spool_duplicate", queue_id = %id, "in queue/ and hold/; keeping the held copy");
                fs::remove_file(inner.queue.join(id.to_string()))?;
                continue;
            }
            let state = self.load_state(&id);
            recovered.push(QueuedMessage {
                id,
                envelope: layout.envelope,
                state,
            });
        }
        // State files: drop leftovers of interrupted writes and of messages no longer there.
        let live: HashSet<QueueId> = held
            .iter()
            .copied()
            .chain(recovered.iter().map(|m| m.id))
            .collect();
        let mut orphans = 0usize;
        for entry in fs::read_dir(&inner.state)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let live = name
                .parse::<QueueId>()
                .map(|id| live.contains(&id))
                .unwrap_or(false);
            if !live {
                fs::remove_file(entry.path())?;
                orphans += 1;
                debug!(event = "spool_state_removed", queue_id = %name, "state without a message");
            }
        }
        for dir in [&inner.queue, &inner.hold, &inner.state, &inner.corrupt] {
            sync_dir(dir)?;
        }
        info!(
            event = "spool_recovered",
            queued = recovered.len(),
            held = held.len(),
            discarded,
            corrupt,
            orphan_states = orphans,
            reusable,
            path = %inner.root.display()
        );
        Ok(recovered)
    }

    /// Takes stock of `free/`: every regular file is truncated to zero (a crash may have come
    /// between a removal and its truncation) and kept for reuse, up to [`MAX_FREE`]; other
    /// files and symlinks are removed, directories left alone. Returns how many are kept.
    fn recover_free(&self) -> io::Result<usize> {
        let inner = &self.inner;
        let mut keep = Vec::new();
        for entry in fs::read_dir(&inner.free)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                warn!(event = "spool_free_unexpected", file = %name, "a directory in free/; left alone");
                continue;
            }
            let reusable =
                keep.len() < MAX_FREE && kind.is_file() && nix::unistd::truncate(&path, 0).is_ok();
            if reusable {
                keep.push(name);
            } else if let Err(e) = fs::remove_file(&path) {
                warn!(event = "spool_free_remove_failed", file = %name, error = %e);
            }
        }
        let kept = keep.len();
        *self.free_names() = keep;
        Ok(kept)
    }

    fn free_names(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.inner
            .free_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a file from `free/` as `incoming/ID` (empty, for writing); `None` when there is
    /// none or it cannot be used (then a new file is created instead).
    fn reuse_free(&self, incoming: &Path) -> Option<File> {
        let name = self.free_names().pop()?;
        let from = self.inner.free.join(&name);
        let opened = fs::rename(&from, incoming).and_then(|()| {
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(incoming)
        });
        match opened {
            Ok(file) => Some(file),
            Err(e) => {
                debug!(event = "spool_free_unusable", file = %name, error = %e);
                let _ = fs::remove_file(&from);
                let _ = fs::remove_file(incoming);
                None
            }
        }
    }

    /// Empties `free/NAME` (its removal from `queue/` is already durable) and keeps it for
    /// reuse, or deletes it when enough are kept.
    fn keep_free(&self, name: String) {
        let path = self.inner.free.join(&name);
        let mut names = self.free_names();
        if names.len() < MAX_FREE && nix::unistd::truncate(&path, 0).is_ok() {
            names.push(name);
            return;
        }
        drop(names);
        if let Err(e) = fs::remove_file(&path) {
            warn!(event = "spool_free_remove_failed", file = %name, error = %e);
        }
    }

    /// Checks the structure of every file in `dir`, moving what is not a complete message file
    /// to `corrupt/`; returns the good ones by id.
    fn recover_dir(&self, dir: &Path, corrupt: &mut usize) -> io::Result<Vec<(QueueId, Layout)>> {
        let (ids, other) = read_ids(dir)?;
        for name in other {
            self.quarantine(&dir.join(&name), &name, "not a queue id");
            *corrupt += 1;
        }
        let mut good = Vec::with_capacity(ids.len());
        for id in ids {
            match File::open(dir.join(id.to_string())).and_then(|f| format::read_layout(&f)) {
                Ok(layout) => good.push((id, layout)),
                Err(e) => {
                    self.quarantine_message(dir, &id, &e.to_string());
                    *corrupt += 1;
                }
            }
        }
        Ok(good)
    }

    /// The delivery state of a message; a missing file is the initial state, a damaged one is
    /// moved to `corrupt/` and replaced by the initial state (recipients already done may then
    /// be tried again: a duplicate rather than a loss).
    pub fn load_state(&self, id: &QueueId) -> DeliveryState {
        self.stored_state(id).unwrap_or_default()
    }

    /// The state file's content, `None` when there is none (a damaged one is moved aside).
    fn stored_state(&self, id: &QueueId) -> Option<DeliveryState> {
        let path = self.state_path(id);
        match state::load(&path) {
            Ok(state) => state,
            Err(e) => {
                self.quarantine(&path, &format!("{id}.state"), &e.to_string());
                None
            }
        }
    }

    /// Moves a message file and its state to `corrupt/`.
    fn quarantine_message(&self, dir: &Path, id: &QueueId, reason: &str) {
        self.quarantine(&dir.join(id.to_string()), &id.to_string(), reason);
        let state = self.state_path(id);
        if state.exists() {
            self.quarantine(&state, &format!("{id}.state"), reason);
        }
    }

    /// Moves one file to `corrupt/` (under a fresh name if taken) and logs why.
    fn quarantine(&self, from: &Path, name: &str, reason: &str) {
        let corrupt = &self.inner.corrupt;
        let mut target = corrupt.join(name);
        let mut n = 1;
        while target.exists() && n < 1000 {
            target = corrupt.join(format!("{name}.{n}"));
            n += 1;
        }
        let result = fs::rename(from, &target).and_then(|()| {
            sync_dir(corrupt)?;
            match from.parent() {
                Some(dir) => sync_dir(dir),
                None => Ok(()),
            }
        });
        match result {
            Ok(()) => {
                error!(event = "spool_corrupt", queue_id = %name, reason, moved_to = %target.display())
            }
            Err(e) => {
                error!(event = "spool_corrupt", queue_id = %name, reason, error = %e, "could not move aside")
            }
        }
    }

    /// Starts a new message in `incoming/` under a fresh queue id.
    pub fn create(&self, envelope: Envelope) -> io::Result<Incoming> {
        let header = format::encode_header(&envelope)?;
        let id = QueueId::generate();
        let path = self.inner.incoming.join(id.to_string());
        let file = match self.reuse_free(&path) {
            Some(file) => file,
            None => OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?,
        };
        let mut incoming = Incoming {
            spool: self.clone(),
            id,
            path,
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            crc: crc32fast::Hasher::new(),
            len: 0,
            failed: false,
            armed: true,
        };
        if let Some(w) = incoming.writer.as_mut() {
            w.write_all(&header)?;
        }
        Ok(incoming)
    }

    /// Finds a message in `queue/` or `hold/`: its path and whether it is held.
    fn locate(&self, id: &QueueId) -> io::Result<(PathBuf, bool)> {
        let name = id.to_string();
        for (dir, held) in [(&self.inner.queue, false), (&self.inner.hold, true)] {
            let path = dir.join(&name);
            if path.exists() {
                return Ok((path, held));
            }
        }
        Err(not_found(id))
    }

    /// Reads a queued or held message without locking it (for `queue show`).
    pub fn read(&self, id: &QueueId) -> io::Result<(Envelope, DeliveryState, BodyReader)> {
        let (path, _) = self.locate(id)?;
        let file = File::open(&path)?;
        let layout = format::read_layout(&file)?;
        let state = state::load(&self.state_path(id))?.unwrap_or_default();
        let body = BodyReader::new(file, &layout);
        Ok((layout.envelope, state, body))
    }

    /// Every message in `queue/` and `hold/`, by id. Files that vanish meanwhile (delivered)
    /// are skipped; damaged ones are logged and skipped (recovery moves them aside).
    pub fn list(&self) -> io::Result<Vec<QueueEntry>> {
        let mut out = Vec::new();
        for (dir, held) in [(&self.inner.queue, false), (&self.inner.hold, true)] {
            for id in read_ids(dir)?.0 {
                let layout = match File::open(dir.join(id.to_string()))
                    .and_then(|f| format::read_layout(&f))
                {
                    Ok(l) => l,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        warn!(event = "spool_unreadable", queue_id = %id, error = %e);
                        continue;
                    }
                };
                let state = match state::load(&self.state_path(&id)) {
                    Ok(s) => s.unwrap_or_default(),
                    Err(e) => {
                        warn!(event = "spool_state_unreadable", queue_id = %id, error = %e);
                        DeliveryState::default()
                    }
                };
                out.push(QueueEntry {
                    id,
                    held,
                    envelope: layout.envelope,
                    state,
                });
            }
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Ids of the messages in `queue/` (the queue manager's rescan).
    pub fn scan_queue(&self) -> io::Result<Vec<QueueId>> {
        Ok(read_ids(&self.inner.queue)?.0)
    }

    /// Opens and locks `dir/ID` (waiting for a delivery in progress), returning the locked
    /// file if `dir/ID` still names it afterwards.
    fn lock_at(&self, dir: &Path, id: &QueueId) -> io::Result<Option<File>> {
        let path = dir.join(id.to_string());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        file.lock()?;
        Ok(same_file(&file, &path)?.then_some(file))
    }

    /// Moves a message from `queue/` to `hold/` (durably). Waits for a delivery in progress.
    /// Holding a held message succeeds.
    pub fn hold(&self, id: &QueueId) -> io::Result<()> {
        if self.move_message(id, &self.inner.queue, &self.inner.hold, || Ok(()))? {
            info!(event = "held", queue_id = %id);
        }
        Ok(())
    }

    /// Moves a message from `hold/` back to `queue/`, due at once (durably). Releasing a
    /// message that is not held succeeds.
    pub fn release(&self, id: &QueueId) -> io::Result<()> {
        let due_now = || {
            let mut state = self.load_state(id);
            if state.next_attempt_ms == 0 {
                return Ok(());
            }
            state.next_attempt_ms = 0;
            state::store(&self.state_path(id), &state)
        };
        if self.move_message(id, &self.inner.hold, &self.inner.queue, due_now)? {
            info!(event = "released", queue_id = %id);
        }
        Ok(())
    }

    /// Moves `id` from `from/` to `to/` under its lock, running `prepare` first, with both
    /// directories fsynced. `Ok(false)` when it is already in `to/`.
    fn move_message(
        &self,
        id: &QueueId,
        from: &Path,
        to: &Path,
        prepare: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<bool> {
        let name = id.to_string();
        let Some(_lock) = self.lock_at(from, id)? else {
            return if to.join(&name).exists() {
                Ok(false)
            } else {
                Err(not_found(id))
            };
        };
        prepare()?;
        fs::rename(from.join(&name), to.join(&name))?;
        sync_dir(to)?;
        sync_dir(from)?;
        Ok(true)
    }

    /// Removes a queued or held message for good (durably). Waits for a delivery in progress;
    /// once this returns, the message is never delivered.
    pub fn delete(&self, id: &QueueId) -> io::Result<()> {
        let name = id.to_string();
        for dir in [&self.inner.queue, &self.inner.hold] {
            if let Some(_lock) = self.lock_at(dir, id)? {
                fs::remove_file(dir.join(&name))?;
                sync_dir(dir)?;
                self.remove_state(id);
                info!(event = "deleted", queue_id = %id);
                return Ok(());
            }
        }
        Err(not_found(id))
    }

    /// Removes a state file; a leftover is harmless (recovery removes orphans), so failures
    /// are only logged.
    fn remove_state(&self, id: &QueueId) {
        match fs::remove_file(self.state_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(event = "spool_state_remove_failed", queue_id = %id, error = %e),
        }
    }

    /// Takes a message in `queue/` for a delivery attempt: locks it without waiting and checks
    /// it completely (checksum included). A damaged file is moved to `corrupt/` and reported
    /// as `InvalidData`.
    pub fn lease(&self, id: &QueueId) -> io::Result<Leased> {
        let path = self.inner.queue.join(id.to_string());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Leased::Gone),
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(Leased::Busy),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        if !same_file(&file, &path)? {
            return Ok(Leased::Gone);
        }
        let (layout, body) = match format::read_layout(&file)
            .and_then(|l| format::verify_body(&file, &l, MEMORY_BODY).map(|b| (l, b)))
        {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.quarantine_message(&self.inner.queue, id, &e.to_string());
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let stored = self.stored_state(id);
        Ok(Leased::Ready(Box::new(Lease {
            spool: self.clone(),
            id: *id,
            file,
            layout,
            body: body.map(Arc::from),
            state_on_disk: stored.is_some(),
            state: stored.unwrap_or_default(),
        })))
    }

    /// Asks the running queue manager (possibly another process) to retry every deferred
    /// message now; it notices at its next scan.
    pub fn request_flush(&self) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.inner.root.join(FLUSH))?;
        Ok(())
    }

    /// True (once) if a flush was requested since the last call.
    pub fn take_flush_request(&self) -> io::Result<bool> {
        match fs::remove_file(self.inner.root.join(FLUSH)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A message being received. Dropping it without [`Incoming::commit`] removes the file.
pub struct Incoming {
    spool: Spool,
    id: QueueId,
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    crc: crc32fast::Hasher,
    len: u64,
    /// A write failed: the file is incomplete and can only be thrown away.
    failed: bool,
    /// The file in `incoming/` is ours to remove on drop.
    armed: bool,
}

impl Incoming {
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Message octets written so far.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// Appends message bytes (buffered; a write error surfaces here or at commit, and every
    /// later call fails too).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let writer = match (self.failed, self.writer.as_mut()) {
            (false, Some(w)) => w,
            _ => return Err(io::Error::other("an earlier write to this message failed")),
        };
        if let Err(e) = writer.write_all(bytes) {
            self.failed = true;
            return Err(e);
        }
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes the message durable in `queue/` and returns its size. Returns only after the
    /// file and its directory entry are fsynced; on any error the message is not in the queue.
    pub async fn commit(mut self) -> io::Result<u64> {
        let writer = match (self.failed, self.writer.take()) {
            (false, Some(w)) => w,
            _ => return Err(io::Error::other("an earlier write to this message failed")),
        };
        let trailer = format::encode_trailer(self.len, self.crc.clone().finalize());
        let from = self.path.clone();
        let to = self.spool.inner.queue.join(self.id.to_string());
        let to_blocking = to.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut writer = writer;
            writer.write_all(&trailer)?;
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            file.sync_data()?;
            fs::rename(&from, &to_blocking)
        })
        .await
        .map_err(io::Error::other)??;
        // The file is in queue/ now; from here on an error must take it out again.
        self.armed = false;
        if let Err(e) = self.spool.inner.committer.sync().await {
            if let Err(e2) = fs::remove_file(&to) {
                error!(event = "spool_commit_undo_failed", queue_id = %self.id, error = %e2);
            }
            return Err(e);
        }
        debug!(event = "spool_committed", queue_id = %self.id, size = self.len);
        Ok(self.len)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.armed {
            self.writer = None;
            if let Err(e) = fs::remove_file(&self.path)
                && e.kind() != io::ErrorKind::NotFound
            {
                warn!(event = "spool_discard_failed", queue_id = %self.id, error = %e);
            }
        }
    }
}

/// The message data of a spooled message: reads exactly the body, from its own position,
/// out of the file or out of memory (see [`MEMORY_BODY`]).
#[derive(Debug)]
pub struct BodyReader {
    source: Source,
    len: u64,
    pos: u64,
}

#[derive(Debug)]
enum Source {
    File { file: File, start: u64 },
    Memory(Arc<[u8]>),
}

impl BodyReader {
    fn new(file: File, layout: &Layout) -> BodyReader {
        BodyReader {
            source: Source::File {
                file,
                start: layout.body_start,
            },
            len: layout.body_len,
            pos: 0,
        }
    }

    fn memory(body: Arc<[u8]>) -> BodyReader {
        BodyReader {
            len: body.len() as u64,
            source: Source::Memory(body),
            pos: 0,
        }
    }

    /// Whether reads come from memory (they never block).
    pub fn in_memory(&self) -> bool {
        matches!(self.source, Source::Memory(_))
    }

    /// Body length in octets.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts reading from the beginning again (for a retry to another next hop).
    pub fn rewind(&mut self) {
        self.pos = 0;
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.len - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = match &self.source {
            Source::File { file, start } => file.read_at(&mut buf[..want], start + self.pos)?,
            Source::Memory(body) => {
                let from = self.pos as usize;
                buf[..want].copy_from_slice(&body[from..from + want]);
                want
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file shorter than its trailer says",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for BodyReader {
    /// Positions within the body (offset 0 is the first body octet).
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let target = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(t) if t <= self.len => {
                self.pos = t;
                Ok(t)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the message body",
            )),
        }
    }
}

/// The result of [`Spool::lease`].
pub enum Leased {
    Ready(Box<Lease>),
    /// No longer in `queue/` (delivered, held or deleted).
    Gone,
    /// Locked by an operator action in progress; try again shortly.
    Busy,
}

/// A message locked for a delivery attempt. Dropping it releases the lock.
pub struct Lease {
    spool: Spool,
    id: QueueId,
    file: File,
    layout: Layout,
    /// The body, when it is small enough to keep (checksum verified).
    body: Option<Arc<[u8]>>,
    state: DeliveryState,
    /// Whether `state/ID` exists (a first attempt that succeeds never writes one).
    state_on_disk: bool,
}

impl Lease {
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    pub fn envelope(&self) -> &Envelope {
        &self.layout.envelope
    }

    pub fn state(&self) -> &DeliveryState {
        &self.state
    }

    /// A reader over the body: from memory when the lease keeps it, otherwise over its own
    /// open file (and position), so the lock lives exactly as long as the lease, whatever
    /// happens to the reader.
    pub fn body(&self) -> io::Result<BodyReader> {
        if let Some(body) = &self.body {
            return Ok(BodyReader::memory(body.clone()));
        }
        let path = self.spool.inner.queue.join(self.id.to_string());
        let file = File::open(&path)?;
        // We hold the lock, so nobody renamed or unlinked the file; check anyway.
        let (opened, locked) = (file.metadata()?, self.file.metadata()?);
        if (opened.dev(), opened.ino()) != (locked.dev(), locked.ino()) {
            return Err(io::Error::other("spool file replaced while leased"));
        }
        Ok(BodyReader::new(file, &self.layout))
    }

    /// The message's header section (up to and including the CRLF before the empty line), at
    /// most `limit` octets, cut at a line end.
    pub fn headers(&self, limit: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.body()?.take(limit as u64).read_to_end(&mut buf)?;
        Ok(header_section(&buf).to_vec())
    }

    /// Stores a new delivery state durably.
    pub fn record(&mut self, state: &DeliveryState) -> io::Result<()> {
        state::store(&self.spool.state_path(&self.id), state)?;
        self.state = state.clone();
        self.state_on_disk = true;
        Ok(())
    }

    /// Removes a message that needs no further attempt (durably: the rename out of `queue/`
    /// is covered by a group sync of `queue/`, shared with concurrent commits and removals),
    /// then its state. The file is emptied only after that sync and kept in `free/` for reuse.
    /// Blocks; call it from a blocking thread.
    pub fn remove_delivered(self) -> io::Result<()> {
        let Lease {
            spool,
            id,
            file,
            state_on_disk,
            ..
        } = self;
        let name = id.to_string();
        fs::rename(spool.inner.queue.join(&name), spool.inner.free.join(&name))?;
        // Gone from queue/: nobody else can lease it, so the lock need not wait for the sync.
        drop(file);
        spool.inner.committer.sync_blocking()?;
        spool.keep_free(name);
        if state_on_disk {
            spool.remove_state(&id);
        }
        Ok(())
    }
}

/// Checks a message file as recovery and delivery do (magic, envelope, trailer and length,
/// then the body's checksum) and returns its envelope, with `size` the body's length. Only
/// reads the file; every defect is an `io::ErrorKind::InvalidData` error. The fuzzer feeds it
/// arbitrary files.
pub fn check_file(file: &File) -> io::Result<Envelope> {
    let layout = format::read_layout(file)?;
    format::verify_body(file, &layout, MEMORY_BODY)?;
    Ok(layout.envelope)
}

/// The header section at the start of `message`: everything up to and including the CRLF
/// that precedes the first empty line; if there is none, up to the last complete line.
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    if let Some(pos) = message.windows(4).position(|w| w == b"\r\n\r\n") {
        return &message[..pos + 2];
    }
    match message.windows(2).rposition(|w| w == b"\r\n") {
        Some(pos) => &message[..pos + 2],
        None => &[],
    }
}
