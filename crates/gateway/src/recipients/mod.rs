//! Recipient validation on inbound listeners: does the recipient exist?
//!
//! After the relay check has accepted a recipient of one of our domains, [`Recipients::check`]
//! asks the configured sources in `[recipients] sources` order: the recipient file
//! ([`mod@file`]), the directory ([`ldap`]), the backend by callout ([`callout`]). The first source
//! that knows the address accepts it. When none knows it and every source answered, the
//! recipient is unknown: the session answers `550 5.1.1 <addr>: Recipient address rejected:
//! User unknown` (Postfix's words). When a source could not answer (directory down, backend
//! 4xx or silent) and no other source knew the address, the answer is temporary, `450 4.1.1`
//! (Postfix's unverified_recipient_tempfail_action): never accept-then-bounce, never 550 for
//! an address we could not check. Without sources (the default) every recipient of an
//! accepted domain passes.
//!
//! Harvest defence (the session applies it): each unknown recipient is recorded as
//! `harvesting` abuse in the ban mechanism ([`crate::state::bans`], `[bans.harvesting]`:
//! threshold, window, ban), and once a session has had `harvest_threshold` unknown recipients
//! every further RCPT is delayed by [`Recipients::tarpit`], growing by `harvest_delay` each
//! time, at most `[bans] max_delay`.
//!
//! Lookups in the directory and by callout run at most [`MAX_PARALLEL`] at a time; more wait.
//! Reads: `[recipients]`, `[bans] max_delay`. Fails at start (with the setting named) when the
//! file or the LDAP password file cannot be read. The LDAP password file is read before the
//! privileges are dropped; the recipient file is read after, and again on each change, so it
//! must be readable by `[server] user`.

pub mod callout;
pub mod file;
pub mod ldap;

use std::sync::Arc;
use std::time::Duration;

use ravelin_wire::Reply;
use tokio::sync::Semaphore;

use crate::config::{Config, RecipientSource};
use crate::delivery::Delivery;
use crate::state::Store;

use self::callout::Callout;
use self::file::AddressFile;
use self::ldap::Directory;

/// Directory lookups and callouts in progress at once.
pub const MAX_PARALLEL: usize = 16;

/// One source's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Known,
    Unknown,
    /// The source could not answer (why, for the logs; never shown to the client).
    Unavailable(String),
}

/// The answer for a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Known to this source.
    Known { source: &'static str },
    /// No source knows it; the sources asked.
    Unknown { sources: String },
    /// Not known, and this source could not answer.
    Unavailable {
        source: &'static str,
        reason: String,
    },
}

enum Source {
    File(Arc<AddressFile>),
    Ldap(Directory),
    Callout(Callout),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::File(_) => RecipientSource::File.as_str(),
            Source::Ldap(_) => RecipientSource::Ldap.as_str(),
            Source::Callout(_) => RecipientSource::Callout.as_str(),
        }
    }
}

/// The configured sources and the harvest defence settings.
pub struct Recipients {
    sources: Vec<Source>,
    permits: Semaphore,
    harvest_threshold: u32,
    harvest_delay: Duration,
    max_delay: Duration,
}

impl Recipients {
    /// The directory of `[recipients.ldap]` when the sources use it. Called before the
    /// privileges are dropped: the service password file may be readable by root only.
    pub fn directory(config: &Config) -> Result<Option<Directory>, String> {
        let section = &config.recipients;
        match &section.ldap {
            Some(ldap) if section.uses(RecipientSource::Ldap) => Directory::new(ldap).map(Some),
            _ => Ok(None),
        }
    }

    /// The sources of `[recipients]`; `None` when none is configured. `directory` is what
    /// [`Recipients::directory`] made; the callout asks the backend route of `delivery` and
    /// caches in `store`.
    pub fn from_config(
        config: &Config,
        mut directory: Option<Directory>,
        delivery: &Delivery,
        store: &Store,
    ) -> Result<Option<Recipients>, String> {
        let section = &config.recipients;
        if section.sources.is_empty() {
            return Ok(None);
        }
        let mut sources = Vec::new();
        for kind in &section.sources {
            sources.push(match kind {
                RecipientSource::File => {
                    let path = section
                        .file
                        .as_deref()
                        .ok_or("recipients.sources has \"file\" but recipients.file is not set")?;
                    Source::File(Arc::new(AddressFile::open(path, section.exact_local_part)?))
                }
                RecipientSource::Ldap => {
                    Source::Ldap(directory.take().ok_or(
                        "recipients.sources has \"ldap\" but there is no [recipients.ldap]",
                    )?)
                }
                RecipientSource::Callout => Source::Callout(Callout::new(
                    &section.callout,
                    delivery.clone(),
                    store.clone(),
                )),
            });
        }
        Ok(Some(Recipients {
            sources,
            permits: Semaphore::new(MAX_PARALLEL),
            harvest_threshold: section.harvest_threshold,
            harvest_delay: section.harvest_delay.get(),
            max_delay: config.bans.max_delay.get(),
        }))
    }

    /// Asks the sources in order about `address` (`local@domain` as the relay check gave
    /// it); `session` is for the logs.
    pub async fn check(&self, address: &str, session: &str) -> Verdict {
        let mut unavailable = None;
        for source in &self.sources {
            let lookup = match source {
                Source::File(f) => {
                    if f.contains(address).await {
                        Lookup::Known
                    } else {
                        Lookup::Unknown
                    }
                }
                Source::Ldap(d) => match self.permits.acquire().await {
                    Ok(_permit) => d.lookup(address).await,
                    Err(_) => Lookup::Unavailable("shutting down".into()),
                },
                Source::Callout(c) => match self.permits.acquire().await {
                    Ok(_permit) => c.lookup(address, session).await,
                    Err(_) => Lookup::Unavailable("shutting down".into()),
                },
            };
            match lookup {
                Lookup::Known => {
                    return Verdict::Known {
                        source: source.name(),
                    };
                }
                Lookup::Unknown => {}
                Lookup::Unavailable(reason) => {
                    unavailable.get_or_insert((source.name(), reason));
                }
            }
        }
        match unavailable {
            Some((source, reason)) => Verdict::Unavailable { source, reason },
            None => Verdict::Unknown {
                sources: self
                    .sources
                    .iter()
                    .map(Source::name)
                    .collect::<Vec<_>>()
                    .join(","),
            },
        }
    }

    /// The delay of an RCPT in a session that has had `unknown` unknown recipients so far.
    pub fn tarpit(&self, unknown: u32) -> Duration {
        tarpit_delay(
            unknown,
            self.harvest_threshold,
            self.harvest_delay,
            self.max_delay,
        )
    }
}

fn tarpit_delay(unknown: u32, threshold: u32, step: Duration, cap: Duration) -> Duration {
    if threshold == 0 || unknown < threshold {
        return Duration::ZERO;
    }
    step.saturating_mul(unknown - threshold + 1).min(cap)
}

/// `550 5.1.1 <addr>: Recipient address rejected: User unknown`.
pub fn unknown_reply(address: &str) -> Reply {
    Reply::ext(
        550,
        (5, 1, 1),
        format!("<{address}>: Recipient address rejected: User unknown"),
    )
}

/// `450 4.1.1 <addr>: Recipient address rejected: unverified address ...`.
pub fn unavailable_reply(address: &str) -> Reply {
    Reply::ext(
        450,
        (4, 1, 1),
        format!(
            "<{address}>: Recipient address rejected: unverified address: recipient lookup failed, try again later"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tarpit_grows_after_the_threshold_up_to_the_cap() {
        let s = Duration::from_secs(1);
        let cap = Duration::from_secs(10);
        let d = |n| tarpit_delay(n, 3, s, cap).as_secs();
        assert_eq!([d(0), d(2), d(3), d(4), d(5), d(50)], [0, 0, 1, 2, 3, 10]);
        assert_eq!(tarpit_delay(9, 0, s, cap), Duration::ZERO);
    }

    #[test]
    fn replies_use_postfix_wording() {
        assert_eq!(
            unknown_reply("nobody@example.org").one_line(),
            "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"
        );
        let r = unavailable_reply("a@example.org");
        assert_eq!(
            (
                r.code,
                r.one_line().starts_with("450 4.1.1 <a@example.org>")
            ),
            (450, true)
        );
    }

    fn with_sources(sources: Vec<Source>) -> Recipients {
        Recipients {
            sources,
            permits: Semaphore::new(1),
            harvest_threshold: 3,
            harvest_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        }
    }

    /// A directory that cannot be reached: the file still accepts what it knows, but an
    /// address it does not know is unverified (a temporary answer), never unknown.
    #[tokio::test]
    async fn a_source_that_cannot_answer_makes_unknown_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        std::fs::write(&path, "alice@example.org\n").unwrap();
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let ldap = crate::config::RecipientsLdapSection {
            url: format!("ldap://127.0.0.1:{port}"),
            starttls: false,
            base: "dc=example,dc=org".into(),
            filter: crate::config::DEFAULT_LDAP_FILTER.into(),
            bind_dn: None,
            bind_password_file: None,
            ca_file: None,
            allow_plaintext: false,
            timeout: crate::config::HumanDuration::from_secs(2),
        };
        let r = with_sources(vec![
            Source::Ldap(Directory::new(&ldap).unwrap()),
            Source::File(Arc::new(AddressFile::open(&path, false).unwrap())),
        ]);
        assert_eq!(
            r.check("alice@example.org", "t").await,
            Verdict::Known { source: "file" }
        );
        match r.check("bob@example.org", "t").await {
            Verdict::Unavailable { source, reason } => {
                assert_eq!(source, "ldap");
                assert!(reason.contains("cannot connect"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// File sources in order, without I/O beyond the temporary file.
    #[tokio::test]
    async fn first_source_that_knows_wins_and_unknown_needs_every_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        std::fs::write(&path, "alice@example.org\n@shared.example.org\n").unwrap();
        let r = with_sources(vec![Source::File(Arc::new(
            AddressFile::open(&path, false).unwrap(),
        ))]);
        assert_eq!(
            r.check("Alice@example.org", "t").await,
            Verdict::Known { source: "file" }
        );
        assert_eq!(
            r.check("x@shared.example.org", "t").await,
            Verdict::Known { source: "file" }
        );
        assert_eq!(
            r.check("bob@example.org", "t").await,
            Verdict::Unknown {
                sources: "file".into()
            }
        );
    }
}
