//! Password checks by LDAP / Active Directory simple bind (`[auth.ldap]`), with ldap3 over
//! rustls.
//!
//! A check opens a connection, finds the user's DN and binds as that DN with the password:
//! - with `bind_dn_template`, the DN is the template with `{user}` replaced by the login name
//!   escaped for a DN (RFC 4514), e.g. `uid={user},ou=people,dc=example,dc=org`, or `{user}`
//!   alone for Active Directory, which takes `user@domain` (the UPN) as bind name;
//! - with `search_base`, the service account (`search_bind_dn`, its password read from
//!   `search_bind_password_file`; anonymous without them) searches the subtree with
//!   `search_filter`, `{user}` replaced by the login name escaped for a filter (RFC 4515); no
//!   entry means an unknown user, more than one is refused.
//!
//! TLS: `ldaps://`, or `ldap://` with `starttls = true`, verifies the server's certificate
//! against `ca_file` (default: the system's roots). Clear text is refused by the configuration
//! checks unless the server is on loopback or `allow_plaintext` is set.
//!
//! How it fails: a wrong password (result code 49) or an unknown user is [`LdapCheck::Bad`] or
//! [`LdapCheck::Unknown`]; a server that cannot be reached, a TLS failure, a timeout
//! (`timeout` limits each operation and the whole check) or any other result is
//! [`LdapCheck::Unavailable`], which the session answers with `454 4.7.0`. An empty password is
//! refused before any bind: LDAP would take it as an unauthenticated bind and report success
//! (RFC 4513 section 5.1.2). Passwords never appear in errors or logs.

use std::time::Duration;

use ldap3::{Scope, SearchOptions, dn_escape, ldap_escape};
use ravelin_wire::auth::Password;

use crate::config::LdapSection;
use crate::ldap::LdapServer;
use crate::secret::read_first_line;

/// LDAP result code of a failed bind (RFC 4511 appendix A).
const INVALID_CREDENTIALS: u32 = 49;

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LdapCheck {
    Good,
    Bad,
    Unknown,
    Unavailable(String),
}

enum FindDn {
    Template(String),
    Search {
        base: String,
        filter: String,
        bind: Option<(String, Password)>,
    },
}

/// A configured directory.
pub struct Ldap {
    server: LdapServer,
    find: FindDn,
    timeout: Duration,
}

impl Ldap {
    /// Reads the service password file and prepares TLS; errors name the setting.
    pub fn new(section: &LdapSection) -> Result<Ldap, String> {
        let server = LdapServer::new(
            "auth.ldap",
            &section.url,
            section.starttls,
            section.ca_file.as_deref(),
            section.timeout.get(),
        )?;
        let find = match (&section.bind_dn_template, &section.search_base) {
            (Some(t), _) => FindDn::Template(t.clone()),
            (None, Some(base)) => FindDn::Search {
                base: base.clone(),
                filter: section.search_filter.clone(),
                bind: match (&section.search_bind_dn, &section.search_bind_password_file) {
                    (Some(dn), Some(file)) => Some((
                        dn.clone(),
                        read_first_line(file, "auth.ldap.search_bind_password_file")?,
                    )),
                    _ => None,
                },
            },
            (None, None) => {
                return Err("auth.ldap needs bind_dn_template or search_base".into());
            }
        };
        Ok(Ldap {
            server,
            find,
            timeout: section.timeout.get(),
        })
    }

    /// Checks `password` for `login` by binding as the user.
    pub async fn check(&self, login: &str, password: &Password) -> LdapCheck {
        if password.expose().is_empty() || login.is_empty() {
            return LdapCheck::Bad;
        }
        // Each operation has the timeout; the whole check gets room for four of them.
        match tokio::time::timeout(self.timeout * 4, self.bind_as_user(login, password)).await {
            Ok(Ok(check)) => check,
            Ok(Err(e)) => LdapCheck::Unavailable(e),
            Err(_) => LdapCheck::Unavailable(format!(
                "no answer from {} within {:?}",
                self.server.url(),
                self.timeout * 4
            )),
        }
    }

    async fn bind_as_user(&self, login: &str, password: &Password) -> Result<LdapCheck, String> {
        let mut conn = self.server.connect().await?;
        let outcome = async {
            let dn = match &self.find {
                FindDn::Template(t) => t.replace("{user}", &dn_escape(login)),
                FindDn::Search { base, filter, bind } => {
                    if let Some((service_dn, service_password)) = bind {
                        conn.service_bind(service_dn, service_password).await?;
                    }
                    let filter = filter.replace("{user}", &ldap_escape(login));
                    let result = conn
                        .ldap
                        .with_search_options(SearchOptions::new().sizelimit(2))
                        .with_timeout(self.timeout)
                        .search(base, Scope::Subtree, &filter, vec!["1.1"])
                        .await
                        .map_err(|e| format!("search: {e}"))?;
                    let (entries, r) = (result.0, result.1);
                    if r.rc != 0 && r.rc != 4 {
                        return Err(format!("search refused (result {}: {})", r.rc, r.text));
                    }
                    match entries.len() {
                        0 => return Ok(LdapCheck::Unknown),
                        1 => {}
                        _ => {
                            return Err(format!(
                                "search_filter matches more than one entry for {login:?}"
                            ));
                        }
                    }
                    let entry = entries
                        .into_iter()
                        .next()
                        .map(ldap3::SearchEntry::construct);
                    match entry {
                        Some(e) => e.dn,
                        None => return Ok(LdapCheck::Unknown),
                    }
                }
            };
            Ok(match conn.bind(&dn, password).await? {
                0 => LdapCheck::Good,
                INVALID_CREDENTIALS => LdapCheck::Bad,
                rc => return Err(format!("bind refused (result {rc})")),
            })
        }
        .await;
        conn.close().await;
        outcome
    }
}
