//! `[metrics]`: the HTTP endpoint serving Prometheus metrics (`/metrics`) and a liveness
//! check (`/health`).
//!
//! Off unless `listen` is set: nothing listens that is not configured. On a loopback address
//! it may go without a token; anywhere else `token_file` is required, and every request must
//! then carry `Authorization: Bearer TOKEN`. Errors name the key and what to write instead.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::diagnostics::{Locator, toml_path};

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Where the endpoint listens; `None`: no endpoint.
    pub listen: Option<SocketAddr>,
    /// A file (mode 0600) whose first line is the bearer token every request must present.
    pub token_file: Option<PathBuf>,
}

impl MetricsSection {
    pub(super) fn validate(&self, loc: &Locator<'_>, err: &mut impl FnMut(usize, String, &str)) {
        if let Some(addr) = self.listen
            && !addr.ip().is_loopback()
            && self.token_file.is_none()
        {
            err(
                loc.line(&toml_path!["metrics", "listen"]),
                format!(
                    "metrics.listen {addr} is not a loopback address and metrics.token_file is not set"
                ),
                "listen on 127.0.0.1 (and scrape through a proxy), or set token_file = \"/etc/ravelin/metrics.token\" (mode 0600) and give the token to the scraper",
            );
        }
    }
}
