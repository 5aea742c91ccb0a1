//! Recipients in a directory (`[recipients.ldap]`): OpenLDAP, or Active Directory with its
//! `proxyAddresses`.
//!
//! A lookup connects with the shared LDAP client ([`crate::ldap`]), binds as the service
//! account when one is configured (anonymous otherwise), and searches the subtree of `base`
//! with `filter`, `{address}` replaced by the recipient escaped for a filter (RFC 4515), for
//! at most one entry and no attributes. The default filter,
//! `(|(mail={address})(proxyAddresses=smtp:{address}))`, finds a user, group or contact by
//! its `mail` or by any SMTP address of Active Directory's `proxyAddresses` (`SMTP:` marks
//! the primary one; the attribute compares without regard to case, so `smtp:` finds both).
//!
//! How it fails: an entry found is [`Lookup::Known`], none [`Lookup::Unknown`]; a server that
//! cannot be reached, a refused bind, a failed search or the time limit (three operations'
//! worth of `timeout`) is [`Lookup::Unavailable`]. The service password is never logged.

use std::time::Duration;

use ldap3::{Scope, SearchOptions, ldap_escape};
use ravelin_wire::auth::Password;

use super::Lookup;
use crate::config::RecipientsLdapSection;
use crate::ldap::LdapServer;
use crate::secret::read_first_line;

/// LDAP result code "size limit exceeded": more than the one entry asked for exists.
const SIZE_LIMIT_EXCEEDED: u32 = 4;

/// A configured directory of recipients.
pub struct Directory {
    server: LdapServer,
    base: String,
    filter: String,
    bind: Option<(String, Password)>,
}

impl Directory {
    /// Reads the service password file and prepares TLS; errors name the setting.
    pub fn new(section: &RecipientsLdapSection) -> Result<Directory, String> {
        let server = LdapServer::new(
            "recipients.ldap",
            &section.url,
            section.starttls,
            section.ca_file.as_deref(),
            section.timeout.get(),
        )?;
        let bind = match (&section.bind_dn, &section.bind_password_file) {
            (Some(dn), Some(file)) => Some((
                dn.clone(),
                read_first_line(file, "recipients.ldap.bind_password_file")?,
            )),
            _ => None,
        };
        Ok(Directory {
            server,
            base: section.base.clone(),
            filter: section.filter.clone(),
            bind,
        })
    }

    /// Whether the directory has an entry for `address`.
    pub async fn lookup(&self, address: &str) -> Lookup {
        let limit: Duration = self.server.timeout * 3;
        match tokio::time::timeout(limit, self.search(address)).await {
            Ok(Ok(true)) => Lookup::Known,
            Ok(Ok(false)) => Lookup::Unknown,
            Ok(Err(e)) => Lookup::Unavailable(e),
            Err(_) => Lookup::Unavailable(format!(
                "no answer from {} within {limit:?}",
                self.server.url()
            )),
        }
    }

    async fn search(&self, address: &str) -> Result<bool, String> {
        let mut conn = self.server.connect().await?;
        let outcome = async {
            if let Some((dn, password)) = &self.bind {
                conn.service_bind(dn, password).await?;
            }
            let filter = self.filter.replace("{address}", &ldap_escape(address));
            let found = conn
                .ldap
                .with_search_options(SearchOptions::new().sizelimit(1))
                .with_timeout(self.server.timeout)
                .search(&self.base, Scope::Subtree, &filter, vec!["1.1"])
                .await
                .map_err(|e| format!("search: {e}"))?;
            let (entries, result) = (found.0, found.1);
            match result.rc {
                0 | SIZE_LIMIT_EXCEEDED => Ok(!entries.is_empty()),
                rc => Err(format!("search refused (result {rc}: {})", result.text)),
            }
        }
        .await;
        conn.close().await;
        outcome
    }
}
