//! Group commit of the `queue/` directory.
//!
//! A message is durable once its file is fsynced *and* the rename into `queue/` is: the latter
//! needs an fsync of the directory. One fsync covers every rename done before it started, so
//! concurrent commits share one: each committer renames its file, then asks this thread for a
//! directory sync and waits. The thread takes the first request, drains every other request
//! already waiting, syncs once and answers them all; requests arriving during the sync form the
//! next batch. No timer, no added latency when idle. If the sync fails, every waiter of that
//! batch gets the error (and undoes its rename; see `Incoming::commit`).
//!
//! Removals use the same batches: a delivered message's unlink is made durable by waiting for
//! a sync that started after it ([`Committer::sync_blocking`], from a blocking thread), so a
//! busy queue pays one directory fsync for a batch of arrivals and departures together.
//!
//! The thread ends when the spool (the last sender) is dropped.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

type Answer = Result<(), (io::ErrorKind, String)>;

/// Who waits for a sync: a task or a blocking thread.
enum Waiter {
    Task(oneshot::Sender<Answer>),
    Thread(mpsc::Sender<Answer>),
}

impl Waiter {
    /// A waiter that gave up (its future was dropped) needs no answer.
    fn answer(self, answer: Answer) {
        let _ = match self {
            Waiter::Task(tx) => tx.send(answer),
            Waiter::Thread(tx) => tx.send(answer).map_err(|e| e.0),
        };
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub dir_syncs: AtomicU64,
    pub commits: AtomicU64,
}

pub(crate) struct Committer {
    tx: mpsc::Sender<Waiter>,
}

impl Committer {
    pub fn start(dir: PathBuf, counters: Arc<Counters>) -> io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        // Opened once: an fsync of this descriptor covers every later rename in the directory.
        let dir = File::open(&dir)?;
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let result = dir.sync_all();
                    counters.dir_syncs.fetch_add(1, Ordering::Relaxed);
                    counters
                        .commits
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for waiter in batch {
                        let answer = result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| (e.kind(), e.to_string()));
                        waiter.answer(answer);
                    }
                }
            })?;
        Ok(Committer { tx })
    }

    /// Waits until a directory sync that started after this call has completed.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.request(Waiter::Task(tx))?;
        answer(rx.await.ok())
    }

    /// [`Committer::sync`] for a thread that may block (not a runtime worker).
    pub fn sync_blocking(&self) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.request(Waiter::Thread(tx))?;
        answer(rx.recv().ok())
    }

    fn request(&self, waiter: Waiter) -> io::Result<()> {
        self.tx
            .send(waiter)
            .map_err(|_| io::Error::other("spool commit thread is gone"))
    }
}

fn answer(received: Option<Answer>) -> io::Result<()> {
    match received {
        Some(Ok(())) => Ok(()),
        Some(Err((kind, msg))) => Err(io::Error::new(
            kind,
            format!("fsync of queue directory: {msg}"),
        )),
        None => Err(io::Error::other("spool commit thread is gone")),
    }
}
