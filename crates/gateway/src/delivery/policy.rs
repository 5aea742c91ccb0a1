//! The MTA-STS policy of a recipient domain (RFC 8461) as direct delivery applies it.
//!
//! [`StsPolicies::decide`] asks the policy cache of `ravelin_dns::mta_sts` (TXT record
//! `_mta-sts.DOMAIN`, policy fetched over HTTPS from `mta-sts.DOMAIN` when the TXT id changed
//! or the cached policy's `max_age` ran out) and says what the domain's MX hosts must do:
//! `enforce` — match one of the policy's `mx` patterns and present a certificate valid for
//! their name under WebPKI (the system roots plus `[outbound] extra_ca_file`); `testing` —
//! the same checks, but failures are only reported; `none`, no policy, or a policy that
//! cannot be fetched with nothing usable cached — opportunistic TLS (RFC 8461 §5.1). A fetch
//! failure is reported (TLS-RPT `sts-policy-fetch-error`).
//!
//! The cache lives in memory: after a restart policies are fetched again on first use.
//!
//! How it fails: [`StsPolicies::new`] fails when the trust anchors cannot be loaded (the
//! extra CA file is unreadable, or no roots at all); lookups never fail delivery by
//! themselves.

use std::path::PathBuf;
use std::sync::Arc;

use ravelin_dns::Resolver;
use ravelin_dns::mta_sts::{FetchSettings, PolicyCache, PolicyFetcher, StsLookup};
use ravelin_dns::records::mta_sts::{StsMode, StsPolicy};
use rustls::ClientConfig;

/// A policy in force, with what delivery needs to apply it.
pub(crate) struct ActivePolicy {
    pub(crate) policy: Arc<StsPolicy>,
    /// The policy as lines, for TLS-RPT's `policy-string`.
    pub(crate) strings: Vec<String>,
    /// The WebPKI configuration MX certificates are checked with.
    pub(crate) verify: Arc<ClientConfig>,
}

/// What MTA-STS asks for one domain.
pub(crate) enum StsDecision {
    /// No policy (or mode `none`): opportunistic TLS.
    None,
    /// A policy is announced but could not be fetched and nothing usable is cached:
    /// opportunistic TLS, and the failure is reported.
    FetchFailed(String),
    Enforce(Arc<ActivePolicy>),
    Testing(Arc<ActivePolicy>),
}

impl StsDecision {
    /// The mode for logs.
    pub(crate) fn mode(&self) -> &'static str {
        match self {
            StsDecision::None => "none",
            StsDecision::FetchFailed(_) => "fetch-failed",
            StsDecision::Enforce(_) => "enforce",
            StsDecision::Testing(_) => "testing",
        }
    }
}

/// The policy cache and the verification configuration of MTA-STS.
pub(crate) struct StsPolicies {
    cache: PolicyCache,
    verify: Arc<ClientConfig>,
}

impl StsPolicies {
    pub(crate) fn new(
        resolver: Resolver,
        fetch: FetchSettings,
        extra_ca_file: Option<PathBuf>,
    ) -> Result<StsPolicies, String> {
        let verify = ravelin_tls::client_config(&ravelin_tls::Verify::WebPkiPlus {
            extra_ca_file: extra_ca_file.clone(),
        })
        .map_err(|e| format!("MTA-STS trust anchors ([outbound] extra_ca_file): {e}"))?;
        let fetcher = PolicyFetcher::with_client_config(resolver, fetch, verify.clone());
        Ok(StsPolicies {
            cache: PolicyCache::new(fetcher),
            verify,
        })
    }

    /// The policy of `domain` now.
    pub(crate) async fn decide(&self, domain: &str, log_id: &str) -> StsDecision {
        let lookup = self.cache.lookup(domain).await;
        let (policy, source) = match lookup {
            StsLookup::Policy { policy, source, .. } => (policy, source),
            StsLookup::NoPolicy => return StsDecision::None,
            StsLookup::DnsFailed(failure) => {
                tracing::info!(event = "mta_sts", queue_id = %log_id, domain = %domain,
                    decision = "no policy", reason = %failure);
                return StsDecision::None;
            }
            StsLookup::FetchFailed { error, .. } | StsLookup::ExpiredFetchFailed { error, .. } => {
                tracing::warn!(event = "mta_sts", queue_id = %log_id, domain = %domain,
                    decision = "no policy", reason = %error);
                return StsDecision::FetchFailed(error.to_string());
            }
        };
        tracing::info!(event = "mta_sts", queue_id = %log_id, domain = %domain,
            mode = %policy.mode, source = ?source, max_age = policy.max_age);
        let active = |policy: Arc<StsPolicy>| {
            Arc::new(ActivePolicy {
                strings: policy_strings(&policy),
                policy,
                verify: self.verify.clone(),
            })
        };
        match policy.mode {
            StsMode::Enforce => StsDecision::Enforce(active(policy)),
            StsMode::Testing => StsDecision::Testing(active(policy)),
            StsMode::None => StsDecision::None,
        }
    }
}

/// The policy's fields as the lines of a policy file.
fn policy_strings(policy: &StsPolicy) -> Vec<String> {
    let mut lines = vec![
        "version: STSv1".to_string(),
        format!("mode: {}", policy.mode),
    ];
    lines.extend(policy.mx.iter().map(|mx| format!("mx: {mx}")));
    lines.push(format!("max_age: {}", policy.max_age));
    lines
}
