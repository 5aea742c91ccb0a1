//! The LDAP client the gateway's directory users share: password checks for AUTH
//! ([`crate::auth::ldap`]) and recipient lookups ([`crate::recipients::ldap`]).
//!
//! [`LdapServer`] holds one server's URL, its TLS configuration and the time limit of each
//! operation; [`LdapServer::connect`] opens a connection (`ldaps://`, or `ldap://` upgraded
//! with StartTLS when asked; the certificate is verified against a CA file or the system's
//! roots) and [`Connection::bind`] makes a simple bind. Service account passwords are read by
//! [`crate::secret`].
//!
//! How it fails: every error is a `String` naming the server and the operation (never a
//! password); a connection that cannot be made, a TLS failure and a timeout are errors the
//! callers treat as "the directory cannot answer now".

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings};
use ravelin_wire::auth::Password;
use rustls::ClientConfig;

use crate::config::parse_ldap_url;

/// One directory server.
pub struct LdapServer {
    url: String,
    starttls: bool,
    tls: Option<Arc<ClientConfig>>,
    /// The limit of each operation (connect, bind, search).
    pub timeout: Duration,
}

/// An open connection; [`Connection::close`] unbinds and ends it.
pub struct Connection {
    pub ldap: ldap3::Ldap,
    driver: tokio::task::JoinHandle<ldap3::result::Result<()>>,
    timeout: Duration,
}

impl LdapServer {
    /// Prepares TLS for `url`; `setting` names the configuration section in errors.
    pub fn new(
        setting: &str,
        url: &str,
        starttls: bool,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<LdapServer, String> {
        let (ldaps, _, _) = parse_ldap_url(url)
            .ok_or_else(|| format!("{setting}.url {url:?} is not an LDAP URL"))?;
        let tls = if ldaps || starttls {
            Some(
                ravelin_tls::client_config(&ravelin_tls::Verify::WebPki {
                    ca_file: ca_file.map(Path::to_path_buf),
                })
                .map_err(|e| format!("{setting}: {e}"))?,
            )
        } else {
            None
        };
        Ok(LdapServer {
            url: url.to_string(),
            starttls,
            tls,
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects (and StartTLS when configured) within the timeout.
    pub async fn connect(&self) -> Result<Connection, String> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.url))?;
        Ok(Connection {
            ldap,
            driver: tokio::spawn(conn.drive()),
            timeout: self.timeout,
        })
    }
}

impl Connection {
    /// A simple bind; the LDAP result code (0 is success, 49 invalid credentials).
    pub async fn bind(&mut self, dn: &str, password: &Password) -> Result<u32, String> {
        let r = self
            .ldap
            .with_timeout(self.timeout)
            .simple_bind(dn, password.expose())
            .await
            .map_err(|e| format!("bind: {e}"))?;
        Ok(r.rc)
    }

    /// A bind as a service account that must succeed.
    pub async fn service_bind(&mut self, dn: &str, password: &Password) -> Result<(), String> {
        match self.bind(dn, password).await {
            Ok(0) => Ok(()),
            Ok(rc) => Err(format!("service bind as {dn} refused (result {rc})")),
            Err(e) => Err(format!("service {e}")),
        }
    }

    /// Unbinds and ends the connection.
    pub async fn close(mut self) {
        let _ = self.ldap.unbind().await;
        self.driver.abort();
    }
}
