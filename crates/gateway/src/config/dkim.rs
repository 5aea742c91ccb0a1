//! `[dkim]`: the keys outbound mail is signed with.
//!
//! One `[[dkim.keys]]` entry per domain and selector; two entries for one domain (an RSA and
//! an Ed25519 key, RFC 8463 5) sign each message twice. Checked here: domain and selector are
//! DNS names, no domain and selector pair is listed twice, and — when the file is loaded with
//! [`super::Config::load`] — every key file reads as an RSA key of at least 2048 bits or an
//! Ed25519 key (the reading is done by [`crate::dkim::load_key`]).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::diagnostics::{ConfigError, Locator, toml_path};
use super::{Config, is_domain};

/// `[dkim]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimSection {
    pub keys: Vec<DkimKeyConfig>,
}

/// `[[dkim.keys]]`: one signing key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`), lower-cased: mail whose From is in this domain is signed.
    pub domain: String,
    /// The selector (`s=`): the key's public half is published at
    /// `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The private key, PEM (PKCS#8, or PKCS#1 for RSA), readable only by the gateway.
    pub key_file: PathBuf,
}

/// The checks that need no files.
pub(super) fn validate(
    config: &Config,
    loc: &Locator<'_>,
    err: &mut impl FnMut(usize, String, &str),
) {
    let mut seen = HashSet::new();
    for (i, key) in config.dkim.keys.iter().enumerate() {
        if !is_domain(&key.domain, true) {
            err(
                loc.line(&toml_path!["dkim", "keys", i, "domain"]),
                format!(
                    "dkim.keys[{i}].domain \"{}\" is not a domain name",
                    key.domain.escape_debug()
                ),
                "write the domain of the From addresses to sign, e.g. domain = \"example.org\"",
            );
        }
        if !is_domain(&key.selector, false) {
            err(
                loc.line(&toml_path!["dkim", "keys", i, "selector"]),
                format!(
                    "dkim.keys[{i}].selector \"{}\" is not a DNS label",
                    key.selector.escape_debug()
                ),
                "write letters, digits and hyphens, e.g. selector = \"rsa2026\"",
            );
        } else if !seen.insert((key.domain.clone(), key.selector.to_ascii_lowercase())) {
            err(
                loc.line(&toml_path!["dkim", "keys", i, "selector"]),
                format!(
                    "dkim.keys[{i}]: selector \"{}\" of {} is listed twice",
                    key.selector, key.domain
                ),
                "give every key of a domain its own selector",
            );
        }
        if key.key_file.as_os_str().is_empty() {
            err(
                loc.line(&toml_path!["dkim", "keys", i, "key_file"]),
                format!("dkim.keys[{i}].key_file is empty"),
                "name the PEM file written by: ravelin dkim keygen --domain D --selector S",
            );
        }
    }
}

/// `load` only: every key file reads as a signing key.
pub(super) fn check_files(config: &Config, loc: &Locator<'_>) -> Vec<ConfigError> {
    config
        .dkim
        .keys
        .iter()
        .enumerate()
        .filter(|(_, key)| !key.key_file.as_os_str().is_empty())
        .filter_map(|(i, key)| {
            let problem = crate::dkim::load_key(&key.key_file).err()?;
            Some(loc.error_at(
                &toml_path!["dkim", "keys", i, "key_file"],
                format!("dkim.keys[{i}].key_file: {problem}"),
                "name a PEM private key (RSA of 2048 bits or more, or Ed25519), e.g. one written by: ravelin dkim keygen --domain D --selector S",
            ))
        })
        .collect()
}
