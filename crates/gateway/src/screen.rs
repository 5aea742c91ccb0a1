//! The screen: what a client meets before the SMTP dialogue (Postfix postscreen is the model).
//!
//! At connect, on every listener, a client in the `[screen] block_file` is refused with
//! `554 5.7.1` and closed. On `inbound` listeners a client that is neither in the
//! `allow_file` nor in `[screen] exempt` (default: loopback) nor in `[outbound]
//! trusted_networks` then waits `greet_wait` (default 6 s, as postscreen's
//! `postscreen_greet_wait`) in silence before the banner while its
//! reputation is looked up ([`crate::checks::reputation`], DNS lists and reverse DNS, in
//! parallel); a client that talks during the wait is refused (`554 5.5.1`) and the pregreet is
//! counted by the ban mechanism; one whose score reaches `[dnsbl] threshold` is refused with
//! `554 5.7.1 Service unavailable; client [IP] blocked using ZONE`. A client that waited
//! patiently (neither talked nor hung up) is remembered in the state store for
//! `[screen] cache_ttl` (default 1 day) and not made to wait again; a client that scored
//! below the threshold, with every list answering, has its score remembered for
//! `[dnsbl] cache_ttl` (default 1 hour) and is not looked up again. Allow-listed, exempt
//! and cached clients still get the instant pregreet check (bytes already waiting).
//!
//! The allow and block files hold one network per line (`192.0.2.0/24`, `2001:db8::/32`, a
//! bare address for one host), `#` starts a comment. They are read at start (a bad line stops
//! the start, naming file and line) and read again when their modification time, size or
//! inode changes (looked at no more than once a second, on connect); a file that became
//! unreadable or bad keeps the previous list in force and is logged (`event=screen_list_error`).
//!
//! How it fails: a state store that does not answer means no cached verdict (the client waits
//! again) and nothing remembered; DNS that does not answer adds nothing to the score (a list
//! that times out never blocks mail).

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{info, warn};

use crate::checks::reputation::{Reputation, Score, helo_score};
use crate::config::{Cidr, Config, DnsblSection};
use crate::state::{Store, canonical_ip};

/// The largest allow or block file read.
pub const MAX_LIST_BYTES: u64 = 16 * 1024 * 1024;

/// The most networks in one allow or block file.
pub const MAX_LIST_ENTRIES: usize = 500_000;

/// How often, at most, the files are looked at for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A bad allow or block file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    pub path: PathBuf,
    /// 0 for the whole file.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(
                f,
                "{} line {}: {}",
                self.path.display(),
                self.line,
                self.message
            )
        }
    }
}

/// A set of networks, looked up in one hash probe per distinct prefix length.
#[derive(Debug, Default)]
pub struct CidrList {
    networks: HashSet<Cidr>,
    v4_prefixes: Vec<u8>,
    v6_prefixes: Vec<u8>,
}

impl CidrList {
    /// Reads a list file.
    pub fn load(path: &Path) -> Result<CidrList, ListError> {
        let whole = |message: String| ListError {
            path: path.to_path_buf(),
            line: 0,
            message,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_LIST_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| whole(format!("cannot be read: {e}")))?;
        if bytes.len() as u64 > MAX_LIST_BYTES {
            return Err(whole(format!("larger than {MAX_LIST_BYTES} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| whole("not UTF-8 text".into()))?;
        Self::parse(&text).map_err(|(line, message)| ListError {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses list text; `Err((line, message))` at the first bad line.
    pub fn parse(text: &str) -> Result<CidrList, (usize, String)> {
        let mut list = CidrList::default();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let cidr: Cidr = line.parse().map_err(|e: String| {
                (
                    n + 1,
                    e.split(crate::config::FIX_SEPARATOR)
                        .next()
                        .unwrap_or("")
                        .to_string(),
                )
            })?;
            if list.networks.len() >= MAX_LIST_ENTRIES {
                return Err((n + 1, format!("more than {MAX_LIST_ENTRIES} networks")));
            }
            let prefixes = if cidr.network().is_ipv4() {
                &mut list.v4_prefixes
            } else {
                &mut list.v6_prefixes
            };
            if !prefixes.contains(&cidr.prefix()) {
                prefixes.push(cidr.prefix());
            }
            list.networks.insert(cidr);
        }
        Ok(list)
    }

    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        let prefixes = if ip.is_ipv4() {
            &self.v4_prefixes
        } else {
            &self.v6_prefixes
        };
        prefixes
            .iter()
            .any(|p| self.networks.contains(&Cidr::around(ip, *p)))
    }

    pub fn len(&self) -> usize {
        self.networks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// What identifies one version of a file.
type Stamp = (SystemTime, u64, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len(), m.ino()))
}

struct Watched {
    list: Arc<CidrList>,
    stamp: Option<Stamp>,
    checked: Instant,
}

/// A list file, read again when it changes.
struct WatchedList {
    path: PathBuf,
    key: &'static str,
    state: Mutex<Watched>,
}

impl WatchedList {
    fn open(path: &Path, key: &'static str) -> Result<WatchedList, ListError> {
        let stamp = stamp(path).ok();
        let list = CidrList::load(path)?;
        info!(event = "screen_list", list = key, path = %path.display(), networks = list.len());
        Ok(WatchedList {
            path: path.to_path_buf(),
            key,
            state: Mutex::new(Watched {
                list: Arc::new(list),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The current list, read again first if the file changed.
    fn current(&self) -> Arc<CidrList> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.checked.elapsed() >= RELOAD_CHECK {
            w.checked = Instant::now();
            let now = stamp(&self.path).ok();
            if now != w.stamp {
                w.stamp = now;
                match CidrList::load(&self.path) {
                    Ok(list) => {
                        info!(event = "screen_list", list = self.key, path = %self.path.display(), networks = list.len(), reason = "reloaded");
                        w.list = Arc::new(list);
                    }
                    Err(e) => {
                        warn!(event = "screen_list_error", list = self.key, reason = %e, decision = "keep the previous list");
                    }
                }
            }
        }
        w.list.clone()
    }
}

/// Where a client stands with the screen before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// In the block file: refused.
    Blocked,
    /// In the allow file or `[screen] exempt`: no greet wait, no reputation score.
    Allowed,
    /// Everyone else.
    Screened,
}

/// How the screen ended for a connection of an inbound listener.
#[derive(Debug)]
pub enum Outcome {
    /// Go on to the banner; the score of the connect-time checks (`None`: not scored).
    Pass(Option<Score>),
    /// The client talked before the banner.
    Pregreet,
    /// The reputation score reached the threshold.
    Refuse(Score),
}

/// The screen of one gateway.
pub struct Screen {
    allow: Option<WatchedList>,
    block: Option<WatchedList>,
    exempt: Vec<Cidr>,
    greet_wait: Duration,
    greet_ttl: Duration,
    score_ttl: Duration,
    store: Store,
    reputation: Option<Arc<Reputation>>,
    /// The weights and threshold, for the HELO checks.
    dnsbl: DnsblSection,
    hostname: String,
}

impl Screen {
    /// Reads the allow and block files; `Err` names the file and line.
    pub fn new(
        config: &Config,
        store: Store,
        reputation: Option<Arc<Reputation>>,
    ) -> Result<Screen, String> {
        let s = &config.screen;
        let mut exempt = s.exempt.clone();
        exempt.extend_from_slice(&config.outbound.trusted_networks);
        let open = |path: &Option<PathBuf>, key| {
            path.as_deref()
                .map(|p| WatchedList::open(p, key))
                .transpose()
                .map_err(|e| format!("[screen] {key}: {e}"))
        };
        Ok(Screen {
            allow: open(&s.allow_file, "allow_file")?,
            block: open(&s.block_file, "block_file")?,
            exempt,
            greet_wait: s.greet_wait.0,
            greet_ttl: s.cache_ttl.0,
            score_ttl: config.dnsbl.cache_ttl.0,
            store,
            reputation,
            dnsbl: config.dnsbl.clone(),
            hostname: config.hostname.clone(),
        })
    }

    /// The score at or above which a client is refused.
    pub fn threshold(&self) -> i32 {
        self.dnsbl.threshold
    }

    /// The score of a HELO name (see [`crate::checks::reputation::helo_score`]).
    pub fn helo_score(&self, helo: &str, client: IpAddr, local: IpAddr) -> Score {
        helo_score(&self.dnsbl, &self.hostname, helo, client, local)
    }

    /// Whether `ip` is blocked, allowed or screened.
    pub fn standing(&self, ip: IpAddr) -> Standing {
        if self
            .block
            .as_ref()
            .is_some_and(|b| b.current().contains(ip))
        {
            return Standing::Blocked;
        }
        if self.exempt.iter().any(|n| n.contains(ip))
            || self
                .allow
                .as_ref()
                .is_some_and(|a| a.current().contains(ip))
        {
            return Standing::Allowed;
        }
        Standing::Screened
    }

    fn greet_key(ip: IpAddr) -> String {
        format!("screen:greet:{}", canonical_ip(ip))
    }

    fn score_key(ip: IpAddr) -> String {
        format!("screen:score:{}", canonical_ip(ip))
    }

    /// Screens a client of an inbound listener until the banner may be sent.
    pub async fn run(&self, tcp: &TcpStream, ip: IpAddr, session: &str) -> Outcome {
        if self.standing(ip) != Standing::Screened {
            return instant_check(tcp).await;
        }
        let keys = [Self::greet_key(ip), Self::score_key(ip)];
        let cached = self.store.get_many(&keys).await.unwrap_or_default();
        let greet_passed = cached.first().is_some_and(Option::is_some);
        let cached_score = cached
            .get(1)
            .and_then(|v| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i32>().ok());
        let lookup = match (&self.reputation, cached_score) {
            (Some(r), None) => {
                let r = r.clone();
                Some(tokio::spawn(async move { r.connect(ip).await }))
            }
            _ => None,
        };
        let wait = if greet_passed {
            Duration::ZERO
        } else {
            self.greet_wait
        };
        let greet = listen_before_greeting(tcp, wait).await;
        if greet != Greet::Quiet {
            if let Some(task) = lookup {
                task.abort();
            }
            return match greet {
                Greet::Talked => Outcome::Pregreet,
                // Not a pass: nothing remembered; the session ends at its first read.
                _ => Outcome::Pass(None),
            };
        }
        if !wait.is_zero() {
            info!(event = "screen", session = %session, client = %ip, test = "greet_wait", wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), decision = "pass");
            let _ = self.store.set(&keys[0], b"1", Some(self.greet_ttl)).await;
        }
        let Some(reputation) = &self.reputation else {
            // Nothing to look up; the HELO name is still scored.
            return Outcome::Pass(Some(Score::default()));
        };
        let score = match (lookup, cached_score) {
            (Some(task), _) => task.await.unwrap_or_default(),
            (None, Some(total)) => Score::cached(total),
            (None, None) => Score::default(),
        };
        let refuse = score.total >= reputation.threshold();
        reputation.log_connect(session, ip, &score, refuse);
        if refuse {
            return Outcome::Refuse(score);
        }
        // A score with lists that did not answer is not remembered: they are asked again.
        if !score.cached && score.unanswered.is_empty() {
            let _ = self
                .store
                .set(
                    &keys[1],
                    score.total.to_string().as_bytes(),
                    Some(self.score_ttl),
                )
                .await;
        }
        Outcome::Pass(Some(score))
    }
}

/// What a client did while it waited for the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greet {
    /// Nothing: it waited.
    Quiet,
    /// It sent bytes.
    Talked,
    /// It closed the connection (or the connection failed).
    HungUp,
}

/// Watches the connection for `pause` (only what is already there when `pause` is zero).
async fn listen_before_greeting(tcp: &TcpStream, pause: Duration) -> Greet {
    let mut probe = [0u8; 1];
    let seen = if pause.is_zero() {
        use std::os::fd::AsRawFd;
        let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        match nix::sys::socket::recv(tcp.as_raw_fd(), &mut probe, flags) {
            Ok(n) => Some(Ok(n)),
            Err(nix::errno::Errno::EAGAIN) => None,
            Err(e) => Some(Err(std::io::Error::from(e))),
        }
    } else {
        timeout(pause, tcp.peek(&mut probe)).await.ok()
    };
    match seen {
        None => Greet::Quiet,
        Some(Ok(n)) if n > 0 => Greet::Talked,
        Some(_) => Greet::HungUp,
    }
}

/// The pregreet check of clients that are not made to wait: bytes already waiting.
pub async fn instant_check(tcp: &TcpStream) -> Outcome {
    match listen_before_greeting(tcp, Duration::ZERO).await {
        Greet::Talked => Outcome::Pregreet,
        _ => Outcome::Pass(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lists_match_networks_and_hosts() {
        let list = CidrList::parse(
            "# blocked\n192.0.2.0/24\n  198.51.100.7 # one host\n\n2001:db8::/32\n10.0.0.0/8\n",
        )
        .unwrap();
        assert_eq!(list.len(), 4);
        for yes in ["192.0.2.200", "198.51.100.7", "2001:db8:1::5", "10.9.9.9"] {
            assert!(list.contains(ip(yes)), "{yes}");
        }
        for no in ["192.0.3.1", "198.51.100.8", "2001:db9::1", "11.0.0.1"] {
            assert!(!list.contains(ip(no)), "{no}");
        }
        assert!(list.contains(ip("::ffff:192.0.2.9")));
    }

    #[test]
    fn bad_lines_are_named() {
        let (line, message) = CidrList::parse("192.0.2.0/24\n\n192.0.2.1/24\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(message.contains("192.0.2.1/24"), "{message}");
        let (line, _) = CidrList::parse("# x\nexample.org\n").unwrap_err();
        assert_eq!(line, 2);
    }

    #[test]
    fn files_reload_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("block");
        std::fs::write(&path, "192.0.2.0/24\n").unwrap();
        let w = WatchedList::open(&path, "block_file").unwrap();
        assert!(w.current().contains(ip("192.0.2.1")));
        std::fs::write(&path, "198.51.100.0/24\n").unwrap();
        // Not looked at again within a second of the last look.
        w.state.lock().unwrap().checked = Instant::now() - RELOAD_CHECK;
        assert!(w.current().contains(ip("198.51.100.1")));
        assert!(!w.current().contains(ip("192.0.2.1")));
        // A bad file keeps the previous list.
        std::fs::write(&path, "not a network\n").unwrap();
        w.state.lock().unwrap().checked = Instant::now() - RELOAD_CHECK;
        assert!(w.current().contains(ip("198.51.100.1")));
        let e = CidrList::load(&path).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
