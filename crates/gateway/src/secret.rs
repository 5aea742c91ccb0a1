//! Secrets kept in files (an LDAP service account's password, the metrics token): read the
//! first line of a file that only its owner may read.
//!
//! How it fails: a missing or unreadable file, a file readable by group or others (the fix
//! names the chmod), or an empty first line is an error naming the configuration key and the
//! file. The secret itself never appears in an error or a log line; the text read is zeroed
//! when dropped.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ravelin_wire::auth::Password;

/// At most this much of a secret file is read.
const MAX_SECRET_FILE: u64 = 4096;

/// The first line of `path`, named `key` (e.g. `auth.ldap.search_bind_password_file`) in
/// errors.
pub fn read_first_line(path: &Path, key: &str) -> Result<Password, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{key} {shown}: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("{key} {shown}: {e}"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{key} {shown}: mode {:04o} lets group or others read the secret — fix: chmod 600 {shown}",
            mode & 0o777
        ));
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.take(MAX_SECRET_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("{key} {shown}: {e}"))?;
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        return Err(format!(
            "{key} {shown} is empty — fix: write the secret on its first line"
        ));
    }
    Ok(Password::new(first.to_string()))
}
