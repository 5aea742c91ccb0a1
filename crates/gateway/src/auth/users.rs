//! The users file: login names and their argon2id password hashes (`[auth] users_file`).
//!
//! Format, one user per line; blank lines and lines starting with `#` are ignored:
//!
//! ```text
//! # ravelin users: LOGIN:ARGON2ID-PHC-HASH
//! alice@example.org:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$5kXq...
//! ```
//!
//! A login name is 1 to 255 octets of UTF-8 without `:`, white space or control characters,
//! compared without regard to ASCII case (it is stored in lower case). The hash is a PHC string
//! of argon2id; its cost is bounded ([`MAX_M_COST`], [`MAX_T_COST`], [`MAX_P_COST`]) so a
//! hand-edited line cannot make one login take minutes. `ravelin user add|remove|list`
//! maintains the file; it writes a new file and renames it into place, mode 0600.
//!
//! The file must not be readable or writable by group or others: [`read`] refuses it with an
//! error naming the file and the `chmod` that fixes it, as it refuses a malformed line with
//! `FILE:LINE`, and a file over [`MAX_FILE_BYTES`].
//!
//! [`UsersFile`] serves the gateway: it notices a changed file (inode, size, mtime, ctime)
//! before each check and reads it again; a file that no longer reads cleanly is logged and the
//! users read before are kept. [`UsersFile::check`] is blocking (argon2 is slow by design; the
//! caller runs it on a blocking thread); a login name that is not in the file is checked
//! against a hash made with the same default cost, so it costs the same time as a known one,
//! and the comparison inside argon2 is constant-time.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use argon2::{Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier};
use tracing::{info, warn};

use crate::config::{ConfigError, ConfigErrors};

/// Largest users file read (16 MiB: well over 50 000 users).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Largest argon2 memory cost accepted, in KiB (256 MiB).
pub const MAX_M_COST: u32 = 256 * 1024;
/// Largest argon2 time cost (passes) accepted.
pub const MAX_T_COST: u32 = 16;
/// Largest argon2 parallelism accepted.
pub const MAX_P_COST: u32 = 8;
/// Longest login name, in octets.
pub const MAX_LOGIN: usize = 255;

/// One line of the file.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lower case.
    pub user: String,
    /// The PHC string.
    pub hash: String,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("user", &self.user).finish()
    }
}

/// The canonical form of a login name, or why it is not one.
pub fn login_name(name: &str) -> Result<String, &'static str> {
    if name.is_empty() || name.len() > MAX_LOGIN {
        return Err("a login name has 1 to 255 octets");
    }
    if name
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("a login name has no ':', white space or control characters");
    }
    Ok(name.to_ascii_lowercase())
}

/// Why a PHC string is not a usable argon2id hash, if it is not.
fn check_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC hash string: {e}"))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "the hash is {}, only argon2id is accepted",
            hash.algorithm.as_str()
        ));
    }
    let params = Params::try_from(&hash).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "argon2 cost m={},t={},p={} is above the limit m={MAX_M_COST},t={MAX_T_COST},p={MAX_P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("the hash has no salt or no output".into());
    }
    Ok(())
}

/// The argon2id PHC hash of `password` with the default cost and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Parses the text of a users file; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Entry>, ConfigErrors> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut seen = HashMap::new();
    let mut errors = Vec::new();
    let mut err = |line: usize, message: String, fix: &str| {
        errors.push(ConfigError {
            file: origin.to_string(),
            line,
            message,
            fix: fix.to_string(),
        })
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let Some((name, phc)) = line.split_once(':') else {
            err(
                n,
                "a users line is LOGIN:HASH, this one has no ':'".into(),
                "add users with `ravelin user add LOGIN`",
            );
            continue;
        };
        let user = match login_name(name) {
            Ok(u) => u,
            Err(why) => {
                err(
                    n,
                    format!("login \"{}\": {why}", name.escape_debug()),
                    "use the address the user logs in with, e.g. alice@example.org",
                );
                continue;
            }
        };
        if let Err(why) = check_hash(phc) {
            err(
                n,
                format!("the hash of {user}: {why}"),
                "set the password again with `ravelin user add LOGIN`",
            );
            continue;
        }
        if let Some(first) = seen.insert(user.clone(), n) {
            err(
                n,
                format!("{user} is listed twice (first on line {first})"),
                "remove one of the lines",
            );
            continue;
        }
        entries.push(Entry {
            user,
            hash: phc.to_string(),
        });
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn file_error(path: &Path, message: String, fix: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: path.display().to_string(),
        line: 0,
        message,
        fix,
    }])
}

/// Reads a users file: permissions, size, then every line.
pub fn read(path: &Path) -> Result<Vec<Entry>, ConfigErrors> {
    let mut file = std::fs::File::open(path).map_err(|e| {
        file_error(
            path,
            format!("cannot read the users file: {e}"),
            "create it with `ravelin user add LOGIN --config FILE`, or correct [auth] users_file"
                .into(),
        )
    })?;
    let meta = file
        .metadata()
        .map_err(|e| file_error(path, format!("cannot stat: {e}"), "check the path".into()))?;
    if !meta.is_file() {
        return Err(file_error(
            path,
            "the users file is not a regular file".into(),
            "name a file in [auth] users_file".into(),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(file_error(
            path,
            format!("mode {mode:04o} lets group or others at the password hashes"),
            format!("chmod 600 {}", path.display()),
        ));
    }
    let mut bytes = Vec::new();
    Read::by_ref(&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(path, format!("cannot read: {e}"), "check the file".into()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(file_error(
            path,
            format!("the users file is larger than {MAX_FILE_BYTES} bytes"),
            "name the users file, not another file".into(),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        file_error(
            path,
            format!(
                "the file is not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            "save it as UTF-8".into(),
        )
    })?;
    parse(&text, &path.display().to_string())
}

/// Writes `entries` to `path`: a new file (mode 0600, owned by `owner` when given) renamed
/// over the old one, then the directory synced, so a crash leaves the old or the new file.
pub fn write(
    path: &Path,
    entries: &[Entry],
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the users file has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut text =
        String::from("# ravelin users (LOGIN:ARGON2ID-HASH); edit with `ravelin user`\n");
    for e in entries {
        text.push_str(&e.user);
        text.push(':');
        text.push_str(&e.hash);
        text.push('\n');
    }
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Some((uid, gid)) = owner {
            nix::unistd::fchown(&f, Some(uid), Some(gid)).map_err(std::io::Error::from)?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Good,
    Bad,
    /// No such login in the file (the same time was spent as for a known one).
    Unknown,
}

/// What identifies one version of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

struct Loaded {
    stamp: Option<Stamp>,
    users: HashMap<String, String>,
}

/// The users file as the gateway uses it: read at start, read again when it changes.
pub struct UsersFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    /// Checked for unknown logins, so they cost what known ones cost.
    decoy: String,
}

impl UsersFile {
    /// Reads the file; errors name the file (and line).
    pub fn open(path: &Path) -> Result<UsersFile, ConfigErrors> {
        let stamp = Stamp::of(path);
        let entries = read(path)?;
        let decoy = hash_password("ravelin decoy password")
            .map_err(|e| file_error(path, e, "report this as a bug".into()))?;
        info!(event = "users_loaded", path = %path.display(), users = entries.len());
        Ok(UsersFile {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp,
                users: entries.into_iter().map(|e| (e.user, e.hash)).collect(),
            }),
            decoy,
        })
    }

    /// The number of users known now.
    pub fn len(&self) -> usize {
        self.lock().users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the file again if it changed since it was last read.
    fn refresh(&self) {
        let now = Stamp::of(&self.path);
        if now == self.lock().stamp {
            return;
        }
        match read(&self.path) {
            Ok(entries) => {
                info!(event = "users_loaded", path = %self.path.display(), users = entries.len(), reason = "file changed");
                let mut l = self.lock();
                l.stamp = now;
                l.users = entries.into_iter().map(|e| (e.user, e.hash)).collect();
            }
            Err(e) => {
                warn!(event = "users_reload_failed", path = %self.path.display(), reason = %e, decision = "keep the users read before");
                self.lock().stamp = now;
            }
        }
    }

    /// Checks a password (blocking, slow on purpose: run it on a blocking thread).
    pub fn check(&self, login: &str, password: &str) -> Check {
        self.refresh();
        let known = login_name(login)
            .ok()
            .and_then(|name| self.lock().users.get(&name).cloned());
        let phc = known.as_deref().unwrap_or(&self.decoy);
        let matches = PasswordHash::new(phc).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        match (known.is_some(), matches) {
            (false, _) => Check::Unknown,
            (true, true) => Check::Good,
            (true, false) => Check::Bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_mode(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("users");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn lines_are_checked_with_their_numbers() {
        let good = hash_password("pw").unwrap();
        let text = format!(
            "# comment\n\nAlice@Example.org:{good}\nbob\nbad name:{good}\ncarol:$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA\nalice@example.org:{good}\ndave:$argon2id$v=19$m=2000000,t=2,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA\n"
        );
        let errors = parse(&text, "users").unwrap_err().0;
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5, 6, 7, 8], "{errors:#?}");
        assert!(errors[2].message.contains("only argon2id"));
        assert!(errors[3].message.contains("listed twice (first on line 3)"));
        assert!(errors[4].message.contains("above the limit"));
        assert!(errors[0].to_string().starts_with("users:4: "));
        let ok = parse(&format!("Alice@Example.org:{good}\n"), "users").unwrap();
        assert_eq!(ok[0].user, "alice@example.org");
    }

    #[test]
    fn group_or_world_access_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_mode(dir.path(), "", 0o640);
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&p).unwrap(), vec![]);
    }

    #[test]
    fn check_reload_and_unknown_users() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |u: &str, pw: &str| Entry {
            user: u.into(),
            hash: hash_password(pw).unwrap(),
        };
        let p = dir.path().join("users");
        write(&p, &[entry("alice@example.org", "right")], None).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let users = UsersFile::open(&p).unwrap();
        assert_eq!(users.check("ALICE@example.org", "right"), Check::Good);
        assert_eq!(users.check("alice@example.org", "wrong"), Check::Bad);
        assert_eq!(users.check("bob@example.org", "right"), Check::Unknown);
        assert_eq!(users.check("bad:name", "right"), Check::Unknown);
        write(
            &p,
            &[
                entry("alice@example.org", "new"),
                entry("bob@example.org", "b"),
            ],
            None,
        )
        .unwrap();
        assert_eq!(users.check("alice@example.org", "new"), Check::Good);
        assert_eq!(users.check("bob@example.org", "b"), Check::Good);
        // A broken file keeps the users read before.
        let broken = write_mode(dir.path(), "garbage\n", 0o600);
        assert_eq!(users.check("bob@example.org", "b"), Check::Good);
        assert_eq!(broken, p);
        assert_eq!(users.len(), 2);
    }
}
