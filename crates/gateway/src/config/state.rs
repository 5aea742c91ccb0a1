//! `[state]`: where bans, rate-limit windows, greylist triplets and caches are kept.
//!
//! `store = "embedded"` (the default) keeps them in a redb file, `path` or `store.redb` in the
//! spool directory; nothing to install. `store = "redis://HOST:PORT/DB"` keeps them in Redis,
//! so that several gateway nodes behind one MX share them. Read by [`crate::state::Store`].
//! Errors name the key and what to write instead; a Redis URL is never echoed back, since it
//! may carry a password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::HumanDuration;
use super::diagnostics::{Locator, toml_path};
use super::values::FIX_SEPARATOR;

/// Which store holds the state.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreUrl {
    /// A redb file on this host.
    #[default]
    Embedded,
    /// A Redis server, as `redis://[:PASSWORD@]HOST[:PORT][/DB]`.
    Redis(String),
}

impl fmt::Debug for StoreUrl {
    /// Never shows a Redis password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Embedded => f.write_str("Embedded"),
            StoreUrl::Redis(url) => write!(f, "Redis({})", redact_url(url)),
        }
    }
}

/// `url` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "embedded" {
            return Ok(StoreUrl::Embedded);
        }
        let fix = "write store = \"embedded\" or store = \"redis://HOST:PORT/DB\"";
        if text.starts_with("redis://") {
            return match redis::Client::open(text) {
                Ok(_) => Ok(StoreUrl::Redis(text.to_string())),
                Err(_) => Err(format!(
                    "the Redis URL cannot be read{FIX_SEPARATOR}{fix}, e.g. \"redis://10.0.0.7:6379/0\""
                )),
            };
        }
        Err(format!(
            "\"{}\" is neither \"embedded\" nor a redis:// URL{FIX_SEPARATOR}{fix}",
            redact_url(text).escape_debug()
        ))
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StoreUrl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"embedded\" or a \"redis://HOST:PORT/DB\" string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StoreUrl, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    pub store: StoreUrl,
    /// The embedded database file; default `store.redb` in the spool directory.
    pub path: Option<PathBuf>,
    /// Prepended to every Redis key, so one Redis can serve several clusters.
    pub key_prefix: String,
    /// Longest wait for one store operation before the caller goes on without it.
    pub timeout: HumanDuration,
    /// How often expired entries are purged and the embedded store is made durable.
    pub sweep_interval: HumanDuration,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            store: StoreUrl::Embedded,
            path: None,
            key_prefix: "ravelin:".to_string(),
            timeout: HumanDuration(std::time::Duration::from_millis(500)),
            sweep_interval: HumanDuration::from_secs(30),
        }
    }
}

impl StateSection {
    /// The embedded database file for a spool at `spool`.
    pub fn embedded_path(&self, spool: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| spool.join("store.redb"))
    }

    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        let line = |key: &str| loc.line(&toml_path!["state", key]);
        for (key, value) in [
            ("timeout", self.timeout),
            ("sweep_interval", self.sweep_interval),
        ] {
            if value.is_zero() {
                err(
                    line(key),
                    format!("state.{key} is 0s"),
                    "write a positive duration, e.g. \"500ms\" or \"30s\"",
                );
            }
        }
        if self.key_prefix.len() > 64 || self.key_prefix.chars().any(|c| c.is_control()) {
            err(
                line("key_prefix"),
                "state.key_prefix is longer than 64 characters or holds control characters".into(),
                "write a short prefix, e.g. key_prefix = \"ravelin:\"",
            );
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            err(
                line("path"),
                "state.path is empty".into(),
                "name a file, e.g. path = \"/var/lib/ravelin/store.redb\", or leave it out",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!("embedded".parse::<StoreUrl>(), Ok(StoreUrl::Embedded));
        assert!(matches!(
            "redis://127.0.0.1:6379/2".parse::<StoreUrl>(),
            Ok(StoreUrl::Redis(_))
        ));
        let err = "redis://:secret@host:notaport/0"
            .parse::<StoreUrl>()
            .unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        let err = "memcached://:secret@host".parse::<StoreUrl>().unwrap_err();
        assert!(!err.contains("secret") && err.contains("***"), "{err}");
        let url = StoreUrl::Redis("redis://:secret@10.0.0.7:6379/0".into());
        assert_eq!(format!("{url:?}"), "Redis(redis://***@10.0.0.7:6379/0)");
    }
}
