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
//! The thread ends when the spool (the last sender) is dropped.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<(), (io::ErrorKind, String)>>;

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
        std::thread::Builder::new()
            .name("spool-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let result = File::open(&dir).and_then(|d| d.sync_all());
                    counters.dir_syncs.fetch_add(1, Ordering::Relaxed);
                    counters
                        .commits
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for waiter in batch {
                        let answer = result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| (e.kind(), e.to_string()));
                        // A waiter that gave up (its future was dropped) needs no answer.
                        let _ = waiter.send(answer);
                    }
                }
            })?;
        Ok(Committer { tx })
    }

    /// Waits until a directory sync that started after this call has completed.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| io::Error::other("spool commit thread is gone"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, msg))) => Err(io::Error::new(
                kind,
                format!("fsync of queue directory: {msg}"),
            )),
            Err(_) => Err(io::Error::other("spool commit thread is gone")),
        }
    }
}
