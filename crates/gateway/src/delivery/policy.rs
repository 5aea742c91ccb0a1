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
//! The cache is kept in memory and saved to `SPOOL/mta-sts/cache.json` after every fetch
//! (domain, TXT id, policy file, expiry), and read back at start, so a restart neither
//! forgets an `enforce` policy nor fetches every policy again. Entries that have expired,
//! do not parse, or exceed [`MAX_CACHE_FILE`] in total are dropped with a warning.
//!
//! How it fails: [`StsPolicies::new`] fails when the trust anchors cannot be loaded (the
//! extra CA file is unreadable, or no roots at all); lookups never fail delivery by
//! themselves.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ravelin_dns::Resolver;
use ravelin_dns::mta_sts::{
    FetchSettings, PolicyCache, PolicyFetcher, PolicySource, SavedPolicy, StsLookup,
};
use ravelin_dns::records::mta_sts::{StsMode, StsPolicy};
use rustls::ClientConfig;

/// The largest cache file read at start.
pub const MAX_CACHE_FILE: u64 = 16 * 1024 * 1024;

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
    /// Where the cache is saved.
    file: PathBuf,
    /// Serialises saves, so an older snapshot never replaces a newer one.
    saving: std::sync::Mutex<()>,
}

impl StsPolicies {
    pub(crate) fn new(
        resolver: Resolver,
        fetch: FetchSettings,
        extra_ca_file: Option<PathBuf>,
        file: PathBuf,
    ) -> Result<StsPolicies, String> {
        let verify = ravelin_tls::client_config(&ravelin_tls::Verify::WebPkiPlus {
            extra_ca_file: extra_ca_file.clone(),
        })
        .map_err(|e| format!("MTA-STS trust anchors ([outbound] extra_ca_file): {e}"))?;
        let fetcher = PolicyFetcher::with_client_config(resolver, fetch, verify.clone());
        let cache = PolicyCache::new(fetcher);
        load(&cache, &file);
        Ok(StsPolicies {
            cache,
            verify,
            file,
            saving: std::sync::Mutex::new(()),
        })
    }

    /// Writes the unexpired cached policies to the cache file.
    fn save(&self) {
        let _guard = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let entries: Vec<serde_json::Value> = self
            .cache
            .saved(SystemTime::now())
            .into_iter()
            .map(|p| {
                let expires = p.expires.duration_since(UNIX_EPOCH).unwrap_or_default();
                serde_json::json!({
                    "domain": p.domain,
                    "id": p.id,
                    "policy": p.body,
                    "expires": expires.as_secs(),
                })
            })
            .collect();
        let text = serde_json::Value::Array(entries).to_string();
        if let Err(e) = super::replace_file(&self.file, text.as_bytes()) {
            tracing::warn!(event = "mta_sts_cache_error", path = %self.file.display(), error = %e);
        }
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
        if source == PolicySource::Fetched {
            self.save();
        }
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

/// Reads the saved cache into `cache`; problems are logged, never fatal.
fn load(cache: &PolicyCache, file: &Path) {
    let mut text = String::new();
    let read = std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CACHE_FILE + 1).read_to_string(&mut text));
    match read {
        Ok(n) if n as u64 > MAX_CACHE_FILE => {
            tracing::warn!(event = "mta_sts_cache_error", path = %file.display(),
                error = "larger than the limit; starting with an empty cache");
            return;
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(event = "mta_sts_cache_error", path = %file.display(), error = %e);
            return;
        }
    }
    let entries: Vec<serde_json::Value> = match serde_json::from_str(&text) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(event = "mta_sts_cache_error", path = %file.display(), error = %e);
            return;
        }
    };
    let now = SystemTime::now();
    let mut restored = 0usize;
    for entry in entries {
        let field = |name: &str| entry[name].as_str().unwrap_or_default().to_string();
        let saved = SavedPolicy {
            domain: field("domain"),
            id: field("id"),
            body: field("policy"),
            expires: UNIX_EPOCH + Duration::from_secs(entry["expires"].as_u64().unwrap_or(0)),
        };
        let domain = saved.domain.clone();
        match cache.restore(saved, now) {
            Ok(()) => restored += 1,
            Err(why) => {
                tracing::debug!(event = "mta_sts_cache_skipped", domain = %domain, reason = %why)
            }
        }
    }
    tracing::info!(event = "mta_sts_cache_loaded", path = %file.display(), policies = restored);
}
