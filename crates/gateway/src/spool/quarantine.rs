//! The quarantine: messages accepted but kept from the backend (a DMARC `p=quarantine`
//! verdict), until an operator releases or deletes them (`ravelin quarantine …`).
//!
//! `quarantine/ID` is a message file in the spool format (module `format`), as durable as one
//! in `queue/`; `quarantine/ID.info` beside it is one JSON line saying why, when and with which
//! verdict ([`QuarantineInfo`]). The info file is written and fsynced first, then the message
//! is renamed in and the directory fsynced, so a listed message always has its reason; an info
//! file without a message (a crash in between) is ignored and removed on release or delete.
//! Release renames the message into `queue/` (the queue manager finds it at its next scan; a
//! flush request makes that prompt) and removes the info; delete unlinks both. Both take the
//! message file's lock like `hold` and `delete` do, and are durable before they return.
//! The queue manager never looks here, and recovery leaves the directory alone.
//!
//! How it fails: `io::Error`s to the caller; `NotFound` names the id. An unreadable info file
//! shows as an empty reason rather than hiding the message.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    BodyReader, Envelope, Incoming, QUEUE, QueueId, Spool, format, read_ids, state, sync_dir,
};

/// The directory under the spool.
pub(super) const QUARANTINE: &str = "quarantine";
/// Largest info file read back.
const MAX_INFO: u64 = 64 * 1024;

/// Why a message is in the quarantine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineInfo {
    /// One line for the operator, e.g. "DMARC policy quarantine for example.com".
    pub reason: String,
    /// When it was quarantined, seconds since the Unix epoch.
    pub time: u64,
    /// The verdict: our Authentication-Results field as added to the message.
    pub verdict: String,
}

/// One line of `ravelin quarantine list`.
#[derive(Clone, Debug, Serialize)]
pub struct QuarantineEntry {
    pub id: QueueId,
    pub envelope: Envelope,
    pub info: QuarantineInfo,
}

impl Spool {
    fn quarantine_dir(&self) -> PathBuf {
        self.inner.root.join(QUARANTINE)
    }

    fn info_path(&self, id: &QueueId) -> PathBuf {
        self.quarantine_dir().join(format!("{id}.info"))
    }

    fn read_info(&self, id: &QueueId) -> QuarantineInfo {
        let read = || -> io::Result<QuarantineInfo> {
            let file = File::open(self.info_path(id))?;
            let mut text = Vec::new();
            io::Read::read_to_end(&mut io::Read::take(file, MAX_INFO), &mut text)?;
            serde_json::from_slice(&text).map_err(io::Error::other)
        };
        read().unwrap_or_else(|e| {
            warn!(event = "quarantine_info_unreadable", queue_id = %id, error = %e);
            QuarantineInfo::default()
        })
    }

    /// Every quarantined message, by id (an old spool without `quarantine/` has none).
    pub fn quarantine_list(&self) -> io::Result<Vec<QuarantineEntry>> {
        let dir = self.quarantine_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for id in read_ids(&dir)?.0 {
            match File::open(dir.join(id.to_string())).and_then(|f| format::read_layout(&f)) {
                Ok(layout) => out.push(QuarantineEntry {
                    id,
                    envelope: layout.envelope,
                    info: self.read_info(&id),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(event = "spool_unreadable", queue_id = %id, error = %e),
            }
        }
        Ok(out)
    }

    /// One quarantined message: envelope, why, and its content.
    pub fn quarantine_read(
        &self,
        id: &QueueId,
    ) -> io::Result<(Envelope, QuarantineInfo, BodyReader)> {
        let file = File::open(self.quarantine_dir().join(id.to_string()))
            .map_err(|e| not_quarantined(id, e))?;
        let layout = format::read_layout(&file)?;
        let info = self.read_info(id);
        let body = BodyReader::new(file, &layout);
        Ok((layout.envelope, info, body))
    }

    /// Sends a quarantined message on to the backend: into `queue/`, due at once, with a
    /// flush requested so that a running gateway picks it up promptly.
    pub fn quarantine_release(&self, id: &QueueId) -> io::Result<()> {
        let dir = self.quarantine_dir();
        let queue = self.inner.root.join(QUEUE);
        let name = id.to_string();
        let Some(_lock) = self.lock_at(&dir, id)? else {
            return Err(not_quarantined(id, io::ErrorKind::NotFound.into()));
        };
        fs::rename(dir.join(&name), queue.join(&name))?;
        sync_dir(&queue)?;
        self.remove_info(id);
        sync_dir(&dir)?;
        info!(event = "quarantine_released", queue_id = %id);
        self.request_flush()
    }

    /// Removes a quarantined message for good.
    pub fn quarantine_delete(&self, id: &QueueId) -> io::Result<()> {
        let dir = self.quarantine_dir();
        let Some(_lock) = self.lock_at(&dir, id)? else {
            return Err(not_quarantined(id, io::ErrorKind::NotFound.into()));
        };
        fs::remove_file(dir.join(id.to_string()))?;
        self.remove_info(id);
        sync_dir(&dir)?;
        info!(event = "quarantine_deleted", queue_id = %id);
        Ok(())
    }

    fn remove_info(&self, id: &QueueId) {
        match fs::remove_file(self.info_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(event = "quarantine_info_remove_failed", queue_id = %id, error = %e),
        }
    }
}

fn not_quarantined(id: &QueueId, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no message {id} in the quarantine"),
        )
    } else {
        e
    }
}

impl Incoming {
    /// Makes the message durable in `quarantine/` with `info` beside it, instead of queueing
    /// it. On any error nothing is left in the quarantine and the incoming file is removed.
    pub async fn commit_quarantined(mut self, info: &QuarantineInfo) -> io::Result<u64> {
        let writer = match (self.failed, self.writer.take()) {
            (false, Some(w)) => w,
            _ => return Err(io::Error::other("an earlier write to this message failed")),
        };
        let trailer = format::encode_trailer(self.len, self.crc.clone().finalize());
        let dir = self.spool.quarantine_dir();
        let name = self.id.to_string();
        let from = self.path.clone();
        let record = info.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let mut writer = writer;
            writer.write_all(&trailer)?;
            let file = writer.into_inner().map_err(|e| e.into_error())?;
            file.sync_data()?;
            let info_path = dir.join(format!("{name}.info"));
            let result = state::store_json(&info_path, &record)
                .and_then(|()| fs::rename(&from, dir.join(&name)))
                .and_then(|()| sync_dir(&dir));
            if result.is_err() {
                let _ = fs::remove_file(dir.join(&name));
                let _ = fs::remove_file(&info_path);
            }
            result
        })
        .await
        .map_err(io::Error::other)??;
        self.armed = false;
        info!(event = "quarantined", queue_id = %self.id, reason = %info.reason);
        Ok(self.len)
    }
}
