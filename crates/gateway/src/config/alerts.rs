//! `[alerts]`: every error line of the log also sent to a webhook (Slack, Mattermost, Teams
//! through a workflow, or any HTTP endpoint that takes JSON), for the sites without a SIEM or
//! Prometheus alerting.
//!
//! Off unless `webhook` is set. The URL must be `https://`, or `http://` to a loopback
//! address (a local relay); `webhook_token_file` (mode 0600, first line) is sent as a bearer
//! token; `webhook_ca_file` trusts a private CA instead of the system's. Errors name the key
//! and what to write instead, and never repeat the URL's path (Slack's and others' carry
//! their secret there).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::diagnostics::{Locator, toml_path};

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Where alerts are POSTed; `None`: no alerts but the log.
    pub webhook: Option<String>,
    /// A file whose first line is sent as `Authorization: Bearer TOKEN`.
    pub webhook_token_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted for the webhook instead of the system's.
    pub webhook_ca_file: Option<PathBuf>,
    /// The most alerts sent in an hour; the rest are counted and the count sent with the next.
    pub max_per_hour: u32,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            webhook: None,
            webhook_token_file: None,
            webhook_ca_file: None,
            max_per_hour: 30,
        }
    }
}

/// A webhook URL, split: `https://host[:port]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub tls: bool,
    /// The host name or address, without brackets.
    pub host: String,
    pub port: u16,
    /// The path and query, at least `/`.
    pub path: String,
}

impl WebhookUrl {
    /// Parses and checks a webhook URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("the URL does not start with https:// or http://".to_string());
        };
        if rest.contains('#') {
            return Err("the URL has a #fragment, which is never sent".to_string());
        }
        // The authority ends at the first of / ? (a query may follow the host directly).
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = (&rest[..end], &rest[end..]);
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if authority.contains('@') {
            return Err(
                "the URL carries credentials; put a token in webhook_token_file".to_string(),
            );
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| "unclosed [ in the URL's host".to_string())?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err("text after the ] of the URL's host".to_string());
            }
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("the port {p:?} is not a number from 1 to 65535"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() || rustls::pki_types::ServerName::try_from(host.to_string()).is_err() {
            return Err("the URL's host is not a host name or an address".to_string());
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("spaces or control characters in the URL's path".to_string());
        }
        if !tls && !host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            return Err(format!(
                "plain http to {host}, which is not a loopback address: alerts would cross the network unencrypted"
            ));
        }
        Ok(WebhookUrl {
            tls,
            host: host.to_string(),
            port,
            path,
        })
    }
}

impl AlertsSection {
    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        if let Some(url) = &self.webhook
            && let Err(why) = WebhookUrl::parse(url)
        {
            err(
                loc.line(&toml_path!["alerts", "webhook"]),
                format!("alerts.webhook: {why}"),
                "write an https:// URL (http:// only to 127.0.0.1 or [::1]), e.g. webhook = \"https://hooks.example.org/ravelin\"",
            );
        }
        if self.max_per_hour == 0 {
            err(
                loc.line(&toml_path!["alerts", "max_per_hour"]),
                "alerts.max_per_hour is 0".into(),
                "remove webhook to send no alerts, or allow at least 1 an hour",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        let u = WebhookUrl::parse("https://hooks.example.org/services/T0/B0?x=1").unwrap();
        assert_eq!(
            u,
            WebhookUrl {
                tls: true,
                host: "hooks.example.org".into(),
                port: 443,
                path: "/services/T0/B0?x=1".into()
            }
        );
        let u = WebhookUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 8080, "/"));
        // A query straight after the host is the path's, never the host's.
        let u = WebhookUrl::parse("https://h.example?token=secret").unwrap();
        assert_eq!(
            (u.host.as_str(), u.path.as_str()),
            ("h.example", "/?token=secret")
        );
        let u = WebhookUrl::parse("https://[2001:db8::1]:8443/h").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 8443));
        assert!(WebhookUrl::parse("http://[::1]:9/h").is_ok());
        for bad in [
            "ftp://x.example/",
            "http://hooks.example.org/h",
            "https://user:pw@hooks.example.org/",
            "https://:443/",
            "https://h.example:0/",
            "https://h.example:99999/",
            "https://h.example/a b",
            "https://h.example/h#frag",
            "https://[::1]x/h",
            "https://h_bad!.example/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
