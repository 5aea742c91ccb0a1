//! The recipient file (`[recipients] file`): the addresses that exist, one per line.
//!
//! Format: one entry per line, `local@domain` for one address or `@domain` for every
//! address of a domain (a catch-all). Blank lines and lines whose first non-blank character
//! is `#` are ignored. Anything after the first blank on a line is ignored too, so a Postfix
//! `relay_recipient_maps` source file (`alice@example.org OK`) can be used as it is.
//! Matching is Postfix's: the domain without regard to case, the local part too unless
//! `exact_local_part` is set.
//!
//! Limits: the file is at most [`MAX_FILE`] bytes, a line at most [`MAX_LINE`]. The file is
//! read again when its modification time or size changes, checked at most once per
//! [`RECHECK`].
//!
//! How it fails: at start a file that cannot be read or has a bad line stops the gateway
//! with the file and line named. Later, a file that cannot be read or has a bad line is
//! logged (`event = "recipients_file_error"`) and the previous contents stay in force.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::config::is_domain;

/// Largest file read.
pub const MAX_FILE: u64 = 64 * 1024 * 1024;
/// Longest line.
pub const MAX_LINE: usize = 1024;
/// How often the file's modification time is looked at.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The parsed contents of a recipient file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AddressTable {
    addresses: HashSet<String>,
    domains: HashSet<String>,
    exact_local_part: bool,
}

/// A bad line: its number (from 1) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl AddressTable {
    /// Parses the text of a recipient file.
    pub fn parse(text: &str, exact_local_part: bool) -> Result<AddressTable, LineError> {
        let mut table = AddressTable {
            exact_local_part,
            ..AddressTable::default()
        };
        for (i, line) in text.lines().enumerate() {
            let bad = |message: String| LineError {
                line: i + 1,
                message,
            };
            if line.len() > MAX_LINE {
                return Err(bad(format!("line longer than {MAX_LINE} bytes")));
            }
            let entry = first_field(line);
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let Some((local, domain)) = entry.rsplit_once('@') else {
                return Err(bad(format!(
                    "{:?} is neither an address (local@domain) nor @domain",
                    entry
                )));
            };
            let domain = domain.trim_end_matches('.');
            if !is_domain(domain, false) {
                return Err(bad(format!("{domain:?} is not a domain name")));
            }
            if entry.len() > ravelin_wire::client::MAX_ADDRESS
                || local
                    .chars()
                    .any(|c| c.is_control() || c == '<' || c == '>')
            {
                return Err(bad(format!("{entry:?} is not an address")));
            }
            if local.is_empty() {
                table.domains.insert(domain.to_ascii_lowercase());
            } else {
                let key = table.key(local, domain);
                table.addresses.insert(key);
            }
        }
        Ok(table)
    }

    fn key(&self, local: &str, domain: &str) -> String {
        let local = if self.exact_local_part {
            local.to_string()
        } else {
            local.to_lowercase()
        };
        format!("{local}@{}", domain.to_ascii_lowercase())
    }

    /// Whether `address` (`local@domain`) is listed, or its domain is.
    pub fn contains(&self, address: &str) -> bool {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return false;
        };
        let domain = domain.trim_end_matches('.');
        self.domains.contains(&domain.to_ascii_lowercase())
            || self.addresses.contains(&self.key(local, domain))
    }

    /// Entries (addresses and domains).
    pub fn len(&self) -> usize {
        self.addresses.len() + self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The first field of a line: up to the first blank outside a quoted local part.
fn first_field(line: &str) -> &str {
    let line = line.trim_start();
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Reads and parses `path`; errors name the file (and line).
pub fn read(path: &Path, exact_local_part: bool) -> Result<AddressTable, String> {
    use std::io::Read;
    let shown = path.display();
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text))
        .map_err(|e| format!("recipients.file {shown}: {e}"))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!(
            "recipients.file {shown}: larger than {MAX_FILE} bytes"
        ));
    }
    AddressTable::parse(&text, exact_local_part).map_err(|e| {
        format!(
            "recipients.file {shown}:{}: {} — fix: write one address (local@domain) or @domain per line, # for comments",
            e.line, e.message
        )
    })
}

/// What identifies a version of the file.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// When the file was last looked at, and what it was then.
struct Checked {
    stamp: Option<(SystemTime, u64)>,
    at: Instant,
}

/// A recipient file kept up to date with the disk.
pub struct AddressFile {
    path: PathBuf,
    exact_local_part: bool,
    table: RwLock<Arc<AddressTable>>,
    checked: Mutex<Checked>,
}

impl AddressFile {
    /// Reads the file; an error stops the start.
    pub fn open(path: &Path, exact_local_part: bool) -> Result<AddressFile, String> {
        let stamp = stamp(path);
        let table = read(path, exact_local_part)?;
        info!(event = "recipients_file", path = %path.display(), entries = table.len());
        Ok(AddressFile {
            path: path.to_path_buf(),
            exact_local_part,
            table: RwLock::new(Arc::new(table)),
            checked: Mutex::new(Checked {
                stamp,
                at: Instant::now(),
            }),
        })
    }

    /// Whether it is time to look at the file again (true for one caller per [`RECHECK`]).
    fn due(&self) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.at.elapsed() < RECHECK {
            return false;
        }
        checked.at = Instant::now();
        true
    }

    /// Reads the file again if it changed (blocking I/O); lookups meanwhile use the old
    /// contents.
    fn refresh(&self) {
        let now = stamp(&self.path);
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            if now == checked.stamp {
                return;
            }
            checked.stamp = now;
        }
        match read(&self.path, self.exact_local_part) {
            Ok(table) => {
                info!(event = "recipients_file_reloaded", path = %self.path.display(), entries = table.len());
                *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
            }
            Err(e) => {
                warn!(event = "recipients_file_error", path = %self.path.display(), reason = %e, decision = "keep the previous contents");
            }
        }
    }

    /// Whether `address` is listed, in the file as it is now (read again first, on a
    /// blocking thread, when it changed).
    pub async fn contains(self: &Arc<Self>, address: &str) -> bool {
        if self.due() {
            let file = self.clone();
            let _ = tokio::task::spawn_blocking(move || file.refresh()).await;
        }
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        table.contains(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_wildcards_and_comments() {
        let t = AddressTable::parse(
            "# people\n\
             Alice@Example.ORG\n\
             \n\
             \t bob@example.org   OK  # Postfix map style\n\
             @Sales.example.org\n\
             \"john doe\"@example.org\n\
             # @example.net is not listed\n",
            false,
        )
        .unwrap();
        assert_eq!(t.len(), 4);
        assert!(t.contains("alice@example.org"));
        assert!(t.contains("ALICE@example.org"));
        assert!(t.contains("Bob@EXAMPLE.org."));
        assert!(t.contains("anyone@sales.example.org"));
        assert!(t.contains("\"John Doe\"@example.org"));
        assert!(!t.contains("carol@example.org"));
        assert!(!t.contains("anyone@example.net"));
        assert!(!t.contains("anyone@sub.sales.example.org"));
        assert!(!t.contains("no-at-sign"));
    }

    #[test]
    fn exact_local_parts_keep_their_case_but_domains_never_do() {
        let t = AddressTable::parse("Alice@Example.org\n", true).unwrap();
        assert!(t.contains("Alice@example.ORG"));
        assert!(!t.contains("alice@example.org"));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line) in [
            ("ok@example.org\nnot-an-address\n", 2),
            ("a@\n", 1),
            ("a@[127.0.0.1]\n", 1),
            ("\n\na@-bad-.org\n", 3),
            ("a<b@example.org\n", 1),
        ] {
            let e = AddressTable::parse(text, false).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e:?}");
        }
        let long = format!("{}@example.org\n", "a".repeat(MAX_LINE));
        assert_eq!(AddressTable::parse(&long, false).unwrap_err().line, 1);
        let over = format!("{}@example.org\n", "a".repeat(300));
        assert!(AddressTable::parse(&over, false).is_err());
    }

    #[tokio::test]
    async fn the_file_is_read_again_when_it_changes_and_kept_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients");
        std::fs::write(&path, "alice@example.org\n").unwrap();
        let file = Arc::new(AddressFile::open(&path, false).unwrap());
        assert!(file.contains("alice@example.org").await);
        std::fs::write(&path, "alice@example.org\nbob@example.org\n").unwrap();
        assert!(!file.contains("bob@example.org").await, "not yet looked at");
        file.checked.lock().unwrap().at -= RECHECK;
        assert!(file.contains("bob@example.org").await);
        std::fs::write(&path, "this line is wrong\n").unwrap();
        file.checked.lock().unwrap().at -= RECHECK;
        assert!(
            file.contains("bob@example.org").await,
            "the old contents stay"
        );
        assert!(read(&path, false).unwrap_err().contains(":1:"));
        std::fs::remove_file(&path).unwrap();
        assert!(AddressFile::open(&path, false).is_err());
    }
}
