//! `ravelin user add|remove|list`: maintains the users file named by `[auth] users_file`.
//!
//! The password is never an argument (it would show in `ps` and shell history): `add` prompts
//! for it twice on the terminal with echo off, or, when standard input is not a terminal, reads
//! its first line. The file is rewritten whole (new file, mode 0600, renamed into place); when
//! run as root, the new file keeps the owner of the old one, or, for a new file, goes to
//! `[server] user` so the gateway can read it after dropping privileges. The running gateway
//! notices the change by itself.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use ravelin_gateway::auth::users::{self, Entry};
use ravelin_gateway::config::Config;
use ravelin_wire::auth::MAX_FIELD;
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub enum UserAction {
    /// Add a user, or set a new password for one (read from the terminal or standard input).
    Add {
        login: String,
        #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove a user.
    Remove {
        login: String,
        #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// List the login names.
    List {
        #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(action: UserAction) -> ExitCode {
    match execute(action) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ravelin: {e}");
            ExitCode::from(1)
        }
    }
}

fn users_file(config: &Config, path: &Path) -> Result<PathBuf, String> {
    config.auth.users_file.clone().ok_or_else(|| {
        format!(
            "{}: there is no [auth] users_file — fix: add [auth] with users_file = \"/etc/ravelin/users\"",
            path.display()
        )
    })
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path).map_err(|e| e.to_string())
}

/// The entries of an existing file, or none for a file that does not exist yet.
fn existing(file: &Path) -> Result<Vec<Entry>, String> {
    if !file.exists() {
        return Ok(Vec::new());
    }
    users::read(file).map_err(|e| e.to_string())
}

fn execute(action: UserAction) -> Result<(), String> {
    match action {
        UserAction::List { config, json } => {
            let file = users_file(&load(&config)?, &config)?;
            let entries = existing(&file)?;
            if json {
                let names: Vec<&str> = entries.iter().map(|e| e.user.as_str()).collect();
                println!("{}", serde_json::json!({ "users": names }));
            } else {
                for e in &entries {
                    println!("{}", e.user);
                }
            }
            Ok(())
        }
        UserAction::Add { login, config } => {
            let mut edit = Edit::open(&config, &login)?;
            let user = edit.user.clone();
            let password = read_password(&user)?;
            let hash = users::hash_password(&password)?;
            let replaced = match edit.entries.iter_mut().find(|e| e.user == user) {
                Some(e) => {
                    e.hash = hash;
                    true
                }
                None => {
                    edit.entries.push(Entry {
                        user: user.clone(),
                        hash,
                    });
                    false
                }
            };
            edit.save(if replaced {
                "password changed in"
            } else {
                "added to"
            })
        }
        UserAction::Remove { login, config } => {
            let mut edit = Edit::open(&config, &login)?;
            let before = edit.entries.len();
            edit.entries.retain(|e| e.user != edit.user);
            if edit.entries.len() == before {
                return Err(format!("{} is not in {}", edit.user, edit.file.display()));
            }
            edit.save("removed from")
        }
    }
}

/// What `add` and `remove` start from.
struct Edit {
    cfg: Config,
    file: PathBuf,
    /// The login name in its canonical form.
    user: String,
    entries: Vec<Entry>,
}

impl Edit {
    fn open(config: &Path, login: &str) -> Result<Edit, String> {
        let cfg = load(config)?;
        let file = users_file(&cfg, config)?;
        let user = users::login_name(login).map_err(|why| format!("{login:?}: {why}"))?;
        let entries = existing(&file)?;
        Ok(Edit {
            cfg,
            file,
            user,
            entries,
        })
    }

    /// Writes the entries and says what was done (`what` the file).
    fn save(&self, what: &str) -> Result<(), String> {
        save(&self.file, &self.entries, &self.cfg)?;
        println!("{}: {what} {}", self.user, self.file.display());
        Ok(())
    }
}

/// Writes the file; as root, with the owner it should have.
fn save(file: &Path, entries: &[Entry], config: &Config) -> Result<(), String> {
    use nix::unistd::{Gid, Group, Uid, User};
    use std::os::unix::fs::MetadataExt;
    let owner = if Uid::effective().is_root() {
        match std::fs::metadata(file) {
            Ok(m) => Some((Uid::from_raw(m.uid()), Gid::from_raw(m.gid()))),
            Err(_) => match User::from_name(&config.server.user) {
                Ok(Some(u)) => {
                    let gid = config
                        .server
                        .group
                        .as_deref()
                        .and_then(|g| Group::from_name(g).ok().flatten())
                        .map_or(u.gid, |g| g.gid);
                    Some((u.uid, gid))
                }
                _ => None,
            },
        }
    } else {
        None
    };
    users::write(file, entries, owner).map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// The new password: asked twice on a terminal without echo, else the first line of stdin.
fn read_password(user: &str) -> Result<Zeroizing<String>, String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt(&format!("Password for {user}: "))?;
        let second = prompt("Again: ")?;
        if *first != *second {
            return Err("the passwords differ; nothing changed".into());
        }
        first
    } else {
        let mut line = Zeroizing::new(String::new());
        stdin
            .lock()
            .take_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        line
    };
    if password.is_empty() {
        return Err("the password is empty; nothing changed".into());
    }
    if password.len() > MAX_FIELD {
        return Err(format!(
            "the password is longer than {MAX_FIELD} bytes, which SMTP AUTH cannot carry"
        ));
    }
    Ok(password)
}

/// Reads one line without its line ending, at most a few KiB.
trait TakeLine {
    fn take_line(&mut self, out: &mut String) -> std::io::Result<()>;
}

impl<R: BufRead> TakeLine for R {
    fn take_line(&mut self, out: &mut String) -> std::io::Result<()> {
        use std::io::Read;
        self.take(4096).read_line(out)?;
        while out.ends_with('\n') || out.ends_with('\r') {
            out.pop();
        }
        Ok(())
    }
}

/// Prompts on the terminal with echo off, restoring it afterwards.
fn prompt(text: &str) -> Result<Zeroizing<String>, String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{text}");
    let _ = stderr.flush();
    let saved = tcgetattr(&stdin).map_err(|e| format!("cannot read the terminal settings: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| format!("cannot turn off echo: {e}"))?;
    let mut line = Zeroizing::new(String::new());
    let read = stdin.lock().take_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line)
}
