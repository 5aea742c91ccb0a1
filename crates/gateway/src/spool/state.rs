//! Per-message delivery state: the `state/ID` sidecar.
//!
//! The message file is never rewritten after it is acknowledged; what changes (attempts, the
//! next attempt time, which recipients are finished, the last error per recipient) lives in a
//! small JSON file replaced atomically: written to `state/ID.tmp`, fsynced, renamed over
//! `state/ID`, and the directory fsynced. A crash leaves the old or the new state, and at most a
//! `.tmp` file that recovery removes. A missing state file means "never tried, due now".
//! Files over [`MAX_STATE`] octets are refused as corrupt rather than read.
//!
//! A state file always belongs to the owner of `state/` (the gateway's `server.user`), also
//! when an operator tool running as root writes it (`queue release`): otherwise the gateway
//! could not read it, would move it to `corrupt/` and forget the message's attempts and
//! delivered recipients.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Envelope, sync_dir};

/// Largest state file read back.
pub(crate) const MAX_STATE: u64 = 4 << 20;

/// What has happened to a queued message so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryState {
    /// Delivery attempts made (each attempt covers all recipients still pending).
    pub attempts: u32,
    /// When the next attempt is due, in milliseconds since the Unix epoch; 0 = now.
    pub next_attempt_ms: u64,
    /// Recipients accepted by the next hop.
    pub delivered: Vec<String>,
    /// Recipients given up on (permanent failure or expiry); a DSN was queued for them unless
    /// the sender was null.
    pub failed: Vec<String>,
    /// The last transient reply per recipient still pending.
    pub last_error: BTreeMap<String, String>,
}

impl DeliveryState {
    /// True when `rcpt` needs no further attempt.
    pub fn is_done(&self, rcpt: &str) -> bool {
        self.delivered.iter().any(|r| r == rcpt) || self.failed.iter().any(|r| r == rcpt)
    }

    /// The envelope's recipients that still need an attempt, in envelope order, without
    /// duplicates.
    pub fn pending(&self, envelope: &Envelope) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &envelope.recipients {
            if !self.is_done(r) && !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }
}

/// Reads a state file; `Ok(None)` when there is none.
pub(crate) fn load(path: &Path) -> io::Result<Option<DeliveryState>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "state file exceeds the size limit",
        ));
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("state file does not parse: {e}"),
        )
    })
}

/// Replaces the state file at `path` durably (tmp + fsync + rename + fsync of the directory).
pub(crate) fn store(path: &Path, state: &DeliveryState) -> io::Result<()> {
    store_json(path, state)
}

/// Replaces the file at `path` with `value` as JSON, durably (tmp + fsync + rename + fsync of
/// the directory), owned like its directory.
pub(crate) fn store_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    let json = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)?;
        match_dir_owner(&f, tmp)?;
        f.write_all(&json)?;
        f.sync_data()?;
        fs::rename(tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Gives a new file the owner and group of the directory it is in, when they differ (which
/// only root can change; anyone else could not have written into the 0700 directory).
fn match_dir_owner(file: &File, path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let want = fs::metadata(dir)?;
    let have = file.metadata()?;
    if (have.uid(), have.gid()) != (want.uid(), want.gid()) {
        std::os::unix::fs::fchown(file, Some(want.uid()), Some(want.gid()))?;
    }
    Ok(())
}
