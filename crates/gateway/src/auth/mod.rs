//! Authentication of submission clients (SMTP AUTH) and whom they may send as.
//!
//! [`Authenticator::authenticate`] takes the credentials the wire session decoded and answers
//! with an [`Outcome`]: the users file first ([`users`]), then LDAP ([`ldap`]) for login names
//! the file does not know. Checks run at most `auth.max_parallel_checks` at a time (argon2 is
//! slow and memory-hungry by design; an LDAP server should not see a flood of binds); the rest
//! wait. Argon2 runs on a blocking thread. A request to act as someone else (a PLAIN
//! authorization identity other than the login name) is refused: there are no proxy users.
//!
//! [`Authenticator::may_send_as`] is the sender ownership rule: a user may use as envelope
//! sender and From address its own login name, and what `auth.sender_map` lists for it (whole
//! addresses, or `@domain`). Comparison ignores ASCII case. [`Authenticator::foreign_from`]
//! applies it to the From fields of a message's header block (parsed with mail-parser): every
//! From field, if there are several, and every address in it must be the user's, and a From
//! field with no address in it (which nobody can be said to own) is refused too.
//!
//! Reads: `[auth]`. Fails at start (with the setting named) when a source cannot be read; at
//! run time a source that cannot answer is [`Outcome::Unavailable`], never a success.

pub mod ldap;
pub mod users;

use std::collections::BTreeMap;
use std::sync::Arc;

use ravelin_wire::auth::Credentials;
use tokio::sync::Semaphore;

use crate::config::AuthSection;

use self::ldap::{Ldap, LdapCheck};
use self::users::{Check, UsersFile};

/// The answer to one AUTH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The login name (lower case) and where it was verified.
    Accepted { user: String, source: &'static str },
    /// Wrong password, unknown user, or a refused authorization identity.
    Rejected { reason: &'static str },
    /// The check could not be made (directory down); the client may retry later.
    Unavailable { reason: String },
}

/// The configured password sources and sender map.
pub struct Authenticator {
    users: Option<Arc<UsersFile>>,
    ldap: Option<Ldap>,
    permits: Semaphore,
    senders: BTreeMap<String, Vec<String>>,
}

impl Authenticator {
    /// Builds the sources named in `[auth]`; `None` when there are none.
    pub fn from_config(section: &AuthSection) -> Result<Option<Authenticator>, String> {
        if !section.has_source() {
            return Ok(None);
        }
        let users = match &section.users_file {
            Some(path) => Some(Arc::new(UsersFile::open(path).map_err(|e| e.to_string())?)),
            None => None,
        };
        let ldap = section.ldap.as_ref().map(Ldap::new).transpose()?;
        let senders = section
            .sender_map
            .iter()
            .map(|(user, addresses)| {
                (
                    user.to_ascii_lowercase(),
                    addresses.iter().map(|a| a.to_ascii_lowercase()).collect(),
                )
            })
            .collect();
        Ok(Some(Authenticator {
            users,
            ldap,
            permits: Semaphore::new(section.max_parallel_checks.max(1) as usize),
            senders,
        }))
    }

    /// Verifies credentials.
    pub async fn authenticate(&self, credentials: &Credentials) -> Outcome {
        if let Some(authzid) = &credentials.authzid
            && !authzid.eq_ignore_ascii_case(&credentials.authcid)
        {
            return Outcome::Rejected {
                reason: "authorization identity differs from the login name",
            };
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return Outcome::Unavailable {
                reason: "authentication is shutting down".into(),
            };
        };
        let login = credentials.authcid.to_ascii_lowercase();
        if let Some(users) = &self.users {
            let file = users.clone();
            let (name, password) = (login.clone(), credentials.password.clone());
            let check =
                tokio::task::spawn_blocking(move || file.check(&name, password.expose())).await;
            match check {
                Ok(Check::Good) => {
                    return Outcome::Accepted {
                        user: login,
                        source: "users_file",
                    };
                }
                Ok(Check::Bad) => {
                    return Outcome::Rejected {
                        reason: "wrong password",
                    };
                }
                Ok(Check::Unknown) => {}
                Err(e) => {
                    return Outcome::Unavailable {
                        reason: format!("password check failed: {e}"),
                    };
                }
            }
        }
        match &self.ldap {
            None => Outcome::Rejected {
                reason: "unknown user",
            },
            Some(ldap) => match ldap
                .check(&credentials.authcid, &credentials.password)
                .await
            {
                LdapCheck::Good => Outcome::Accepted {
                    user: login,
                    source: "ldap",
                },
                LdapCheck::Bad => Outcome::Rejected {
                    reason: "wrong password",
                },
                LdapCheck::Unknown => Outcome::Rejected {
                    reason: "unknown user",
                },
                LdapCheck::Unavailable(reason) => Outcome::Unavailable { reason },
            },
        }
    }

    /// Whether `user` (an authenticated login name) may send as `address`.
    pub fn may_send_as(&self, user: &str, address: &str) -> bool {
        sender_allowed(&self.senders, user, address)
    }

    /// The first From field of `header` (the header block of a message) that names an address
    /// `user` may not send as, or no address at all; `None` when every From field is the
    /// user's (or there is none).
    pub fn foreign_from(&self, user: &str, header: &[u8]) -> Option<String> {
        foreign_from(&self.senders, user, header)
    }
}

fn foreign_from(map: &BTreeMap<String, Vec<String>>, user: &str, header: &[u8]) -> Option<String> {
    use mail_parser::{HeaderName, HeaderValue, MessageParser};
    let message = MessageParser::new().parse_headers(header)?;
    message
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::From)
        .find_map(|h| {
            let addresses: Vec<&str> = match &h.value {
                HeaderValue::Address(list) => list.iter().filter_map(|a| a.address()).collect(),
                _ => Vec::new(),
            };
            let owned =
                !addresses.is_empty() && addresses.iter().all(|a| sender_allowed(map, user, a));
            (!owned).then(|| {
                let raw = header
                    .get(h.offset_start as usize..h.offset_end as usize)
                    .unwrap_or_default();
                String::from_utf8_lossy(raw)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect::<String>()
                    .trim()
                    .to_string()
            })
        })
}

fn sender_allowed(map: &BTreeMap<String, Vec<String>>, user: &str, address: &str) -> bool {
    let address = address.to_ascii_lowercase();
    let user = user.to_ascii_lowercase();
    if address == user {
        return true;
    }
    let domain = address.rsplit_once('@').map(|(_, d)| d);
    map.get(&user).is_some_and(|allowed| {
        allowed
            .iter()
            .any(|pattern| match pattern.strip_prefix('@') {
                Some(d) => domain == Some(d),
                None => *pattern == address,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_ownership() {
        let mut map = BTreeMap::new();
        map.insert(
            "alice@example.org".to_string(),
            vec!["sales@example.org".to_string(), "@example.net".to_string()],
        );
        map.insert("bob".to_string(), vec!["bob@example.org".to_string()]);
        let ok = |u: &str, a: &str| sender_allowed(&map, u, a);
        assert!(ok("alice@example.org", "Alice@Example.org"));
        assert!(ok("alice@example.org", "sales@example.org"));
        assert!(ok("alice@example.org", "anyone@example.net"));
        assert!(!ok("alice@example.org", "anyone@sub.example.net"));
        assert!(!ok("alice@example.org", "ceo@example.org"));
        assert!(ok("bob", "bob@example.org"));
        assert!(!ok("bob", "bob@example.net"));
        assert!(!ok("carol@example.org", "alice@example.org"));

        let from = |header: &str| foreign_from(&map, "alice@example.org", header.as_bytes());
        assert_eq!(
            from("From: Alice <alice@example.org>\r\nTo: b@example.net\r\n\r\n"),
            None
        );
        assert_eq!(from("Subject: no from\r\n\r\n"), None);
        assert_eq!(
            from("From: \"Sales\" <SALES@example.org>, x@example.net\r\n\r\n"),
            None
        );
        assert_eq!(
            from("From: \"alice@example.org\" <ceo@example.org>\r\n\r\n").as_deref(),
            Some("\"alice@example.org\" <ceo@example.org>")
        );
        assert!(from("From: alice@example.org\r\nFrom: ceo@example.org\r\n\r\n").is_some());
        assert!(from("From: undisclosed\r\n\r\n").is_some());
        assert!(from("From: alice@example.org,\r\n ceo@example.org\r\n\r\n").is_some());
    }
}
