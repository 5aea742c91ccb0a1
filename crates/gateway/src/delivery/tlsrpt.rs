//! TLS results of direct delivery per policy domain, kept for TLS-RPT (RFC 8460).
//!
//! Every session direct delivery opens (and every policy failure that kept it from opening
//! one, such as an MX host outside the MTA-STS patterns or a policy that could not be
//! fetched) is counted under its recipient domain and policy type (`tlsa` for DANE, `sts`
//! for MTA-STS, `no-policy-found`). The day's counts are written to
//! `SPOOL/tlsrpt/YYYY-MM-DD.json` (UTC) as an RFC 8460 §4.4 aggregate report document: one
//! entry in `policies` per domain and policy type with the policy strings, the success and
//! failure counts and `failure-details` (result type, receiving MX host and address). The
//! file is replaced atomically (write, fsync, rename) at most once a second; sending the
//! reports to the `rua` of each domain's `_smtp._tls` record is not done yet — an operator
//! can collect the files.
//!
//! Limits: at most [`MAX_DOMAINS`] policy entries per day and [`MAX_DETAILS`] failure-detail
//! rows per entry; beyond that, counts are still kept in the summary.
//!
//! How it fails: a file that cannot be written is logged (`tlsrpt_error`) and retried at the
//! next update; delivery never waits on or fails because of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::smtp::{Opened, TlsResult};

/// The most policy entries (domain and policy type) recorded per day.
pub const MAX_DOMAINS: usize = 10_000;

/// The most failure-detail rows per policy entry.
pub const MAX_DETAILS: usize = 100;

/// How often the day's file is rewritten at most.
const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The policy type of RFC 8460 §4.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyType {
    Tlsa,
    Sts,
    NoPolicy,
}

impl PolicyType {
    fn as_str(self) -> &'static str {
        match self {
            PolicyType::Tlsa => "tlsa",
            PolicyType::Sts => "sts",
            PolicyType::NoPolicy => "no-policy-found",
        }
    }
}

#[derive(Default)]
struct Entry {
    strings: Vec<String>,
    mx_hosts: Vec<String>,
    success: u64,
    failure: u64,
    /// (result type, receiving MX host, receiving address) → sessions.
    details: BTreeMap<(String, String, String), u64>,
}

struct Day {
    date: String,
    entries: BTreeMap<(String, PolicyType), Entry>,
    dirty: bool,
    last_write: Option<Instant>,
    flush_scheduled: bool,
}

/// The TLS-RPT store of one gateway.
pub(crate) struct TlsRpt {
    dir: PathBuf,
    organization: String,
    day: Mutex<Day>,
}

/// Counts the sessions of one domain under one policy.
#[derive(Clone)]
pub(crate) struct Recorder {
    rpt: Arc<TlsRpt>,
    domain: String,
    policy: PolicyType,
    strings: Arc<Vec<String>>,
}

impl Recorder {
    /// A session was opened: success when TLS was negotiated and nothing was tolerated.
    pub(crate) fn session(&self, opened: &Opened, host: &str, addr: Option<IpAddr>) {
        let failure = match (&opened.tls, opened.tolerated) {
            (_, Some(kind)) => Some(kind),
            (TlsResult::Tls { .. }, None) => None,
            (TlsResult::Plaintext, None) => Some("starttls-not-supported"),
        };
        self.add(failure, host, addr);
    }

    /// A session failed to open; counted only when TLS was the cause (`kind`).
    pub(crate) fn failure(&self, kind: Option<&'static str>, host: &str, addr: Option<IpAddr>) {
        if kind.is_some() {
            self.add(kind, host, addr);
        }
    }

    /// A failure of the policy itself (fetch error, MX outside the patterns).
    pub(crate) fn policy_failure(&self, kind: &'static str, host: &str, why: &str) {
        tracing::info!(event = "tlsrpt_failure", domain = %self.domain,
            policy = self.policy.as_str(), result = kind, host = %host, reason = %why);
        self.add(Some(kind), host, None);
    }

    fn add(&self, failure: Option<&'static str>, host: &str, addr: Option<IpAddr>) {
        self.rpt.add(self, failure, host, addr);
    }
}

impl TlsRpt {
    pub(crate) fn new(dir: PathBuf, organization: String) -> TlsRpt {
        TlsRpt {
            dir,
            organization,
            day: Mutex::new(Day {
                date: today(),
                entries: BTreeMap::new(),
                dirty: false,
                last_write: None,
                flush_scheduled: false,
            }),
        }
    }

    /// A recorder for `domain` under `policy`, whose policy is `strings`.
    pub(crate) fn recorder(
        self: &Arc<Self>,
        domain: &str,
        policy: PolicyType,
        strings: Vec<String>,
    ) -> Recorder {
        Recorder {
            rpt: self.clone(),
            domain: domain.to_string(),
            policy,
            strings: Arc::new(strings),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Day> {
        self.day.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(
        self: &Arc<Self>,
        rec: &Recorder,
        failure: Option<&'static str>,
        host: &str,
        addr: Option<IpAddr>,
    ) {
        let write_now = {
            let mut day = self.lock();
            let date = today();
            if day.date != date {
                // A new day: the old one's file is complete; write it once more, then start.
                if day.dirty {
                    let _ = self.write(&day);
                }
                day.date = date;
                day.entries.clear();
                day.dirty = false;
            }
            let key = (rec.domain.clone(), rec.policy);
            if !day.entries.contains_key(&key) && day.entries.len() >= MAX_DOMAINS {
                return;
            }
            let entry = day.entries.entry(key).or_default();
            if entry.strings.is_empty() {
                entry.strings = rec.strings.as_ref().clone();
            }
            if !host.is_empty()
                && !entry.mx_hosts.iter().any(|h| h == host)
                && entry.mx_hosts.len() < MAX_DETAILS
            {
                entry.mx_hosts.push(host.to_string());
            }
            match failure {
                None => entry.success += 1,
                Some(kind) => {
                    entry.failure += 1;
                    let detail = (
                        kind.to_string(),
                        host.to_string(),
                        addr.map(|a| a.to_string()).unwrap_or_default(),
                    );
                    if entry.details.contains_key(&detail) || entry.details.len() < MAX_DETAILS {
                        *entry.details.entry(detail).or_default() += 1;
                    }
                }
            }
            day.dirty = true;
            let due = day.last_write.is_none_or(|t| t.elapsed() >= WRITE_INTERVAL);
            if due {
                self.flush(&mut day);
                false
            } else if !day.flush_scheduled {
                day.flush_scheduled = true;
                true
            } else {
                false
            }
        };
        if write_now {
            let me = self.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    tokio::time::sleep(WRITE_INTERVAL).await;
                    let mut day = me.lock();
                    day.flush_scheduled = false;
                    if day.dirty {
                        me.flush(&mut day);
                    }
                });
            }
        }
    }

    fn flush(&self, day: &mut Day) {
        day.last_write = Some(Instant::now());
        match self.write(day) {
            Ok(()) => day.dirty = false,
            Err(e) => tracing::warn!(event = "tlsrpt_error", dir = %self.dir.display(), error = %e),
        }
    }

    /// Writes the day's report document, replacing the file atomically.
    fn write(&self, day: &Day) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = self.document(day).to_string();
        let path = self.dir.join(format!("{}.json", day.date));
        let tmp = self.dir.join(format!(".{}.json.tmp", day.date));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    /// The RFC 8460 §4.4 document of a day.
    fn document(&self, day: &Day) -> serde_json::Value {
        let policies: Vec<serde_json::Value> = day
            .entries
            .iter()
            .map(|((domain, policy), e)| {
                let details: Vec<serde_json::Value> = e
                    .details
                    .iter()
                    .map(|((kind, host, ip), n)| {
                        let mut d = serde_json::json!({
                            "result-type": kind,
                            "failed-session-count": n,
                        });
                        if !host.is_empty() {
                            d["receiving-mx-hostname"] = host.clone().into();
                        }
                        if !ip.is_empty() {
                            d["receiving-ip"] = ip.clone().into();
                        }
                        d
                    })
                    .collect();
                serde_json::json!({
                    "policy": {
                        "policy-type": policy.as_str(),
                        "policy-string": e.strings,
                        "policy-domain": domain,
                        "mx-host": e.mx_hosts,
                    },
                    "summary": {
                        "total-successful-session-count": e.success,
                        "total-failure-session-count": e.failure,
                    },
                    "failure-details": details,
                })
            })
            .collect();
        serde_json::json!({
            "organization-name": self.organization,
            "date-range": {
                "start-datetime": format!("{}T00:00:00Z", day.date),
                "end-datetime": format!("{}T23:59:59Z", day.date),
            },
            "contact-info": format!("postmaster@{}", self.organization),
            "report-id": format!("{}@{}", day.date, self.organization),
            "policies": policies,
        })
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`.
fn today() -> String {
    let c = ravelin_wire::date::civil(ravelin_wire::date::now_secs());
    format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)
}
