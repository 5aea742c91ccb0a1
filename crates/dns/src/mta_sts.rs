//! MTA-STS policy discovery (RFC 8461 §3, §5): the `_mta-sts` TXT record, the HTTPS fetch of
//! the policy file, and the cache that spares a fetch while the TXT id is unchanged.
//!
//! [`PolicyFetcher::fetch`] gets `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` the way
//! RFC 8461 §3.3 asks: the host's addresses from our resolver, TLS with the certificate
//! validated for `mta-sts.DOMAIN` (against the system roots, or one CA file where the settings
//! name one), HTTP/1.1 with hyper, no redirect followed (a 3xx is a failure), only 200
//! accepted, a body of at most [`MAX_POLICY_LEN`] bytes, and one timeout over the whole
//! exchange. The body is then parsed ([`crate::records::mta_sts::parse_policy`]).
//!
//! [`PolicyCache::lookup`] is what a delivery asks: it reads the TXT record and fetches only
//! when the record's id differs from the cached policy's or the cached policy has expired
//! (`max_age`). When the TXT record is gone or unusable, a cached policy that has not expired
//! is still used (RFC 8461 §5.1); when a fetch fails, an unexpired cached policy is used; an
//! expired one is reported distinctly ([`StsLookup::ExpiredFetchFailed`]) so that the caller
//! can tell "the domain's policy server broke" from "the domain has no policy".
//!
//! [`PolicyCache::saved`] and [`PolicyCache::restore`] let a caller keep the cache across
//! restarts (the gateway saves it in its spool); a restored policy is parsed again and never
//! lives longer than its `max_age` from the time of restoring.
//!
//! Settings ([`FetchSettings`]): timeout (default 10 s), HTTPS port (443; tests use another),
//! CA file (default: the system roots). The cache holds at most [`MAX_CACHED_DOMAINS`]
//! domains; beyond that, the entry that expires first is dropped.
//!
//! How it fails: every fetch problem is a [`FetchError`] saying which step failed (DNS,
//! connection, TLS, HTTP status, redirect, size, timeout, policy syntax); nothing panics on
//! what a server sends.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::records::RecordError;
use crate::records::mta_sts::{MAX_POLICY_LEN, StsPolicy, parse_policy, select_txt};
use crate::resolver::{Failure, LookupError, Resolver};

/// The default time one whole policy fetch may take.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The most domains whose policies are cached.
pub const MAX_CACHED_DOMAINS: usize = 10_000;

/// The most addresses of `mta-sts.DOMAIN` tried.
const MAX_ADDRESSES: usize = 4;

/// The path of the policy file (RFC 8461 §3.3).
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// How policies are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    /// The whole fetch (DNS, connect, TLS, request, body) must finish within this.
    pub timeout: Duration,
    /// The HTTPS port: 443, except in tests.
    pub port: u16,
    /// Trust only the CA certificates in this PEM file instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            timeout: DEFAULT_FETCH_TIMEOUT,
            port: 443,
            ca_file: None,
        }
    }
}

/// Why a policy could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The TLS settings could not be built (the CA file is unreadable, for example).
    Setup(String),
    /// `mta-sts.DOMAIN` has no address, or the lookup failed.
    Dns(LookupError),
    /// No address accepted a TCP connection.
    Connect(String),
    /// The TLS handshake failed: most often the certificate is not valid for the name.
    Tls(String),
    /// The server answered with a redirect, which RFC 8461 §3.3 forbids following.
    Redirect {
        status: u16,
        location: Option<String>,
    },
    /// The server answered with a status other than 200.
    Status(u16),
    /// The policy file is larger than [`MAX_POLICY_LEN`].
    TooLarge,
    /// The fetch did not finish in time.
    Timeout,
    /// The HTTP exchange failed.
    Http(String),
    /// The body is not UTF-8 text.
    NotText,
    /// The policy file does not parse.
    Policy(RecordError),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Setup(why) => write!(f, "cannot set up the policy fetch: {why}"),
            FetchError::Dns(e) => write!(f, "the policy host does not resolve: {e}"),
            FetchError::Connect(why) => write!(f, "cannot connect to the policy host: {why}"),
            FetchError::Tls(why) => write!(f, "TLS with the policy host failed: {why}"),
            FetchError::Redirect { status, location } => write!(
                f,
                "the policy host redirects (HTTP {status}{}); RFC 8461 forbids following redirects",
                location
                    .as_deref()
                    .map(|l| format!(" to {l}"))
                    .unwrap_or_default()
            ),
            FetchError::Status(status) => write!(f, "the policy host answered HTTP {status}"),
            FetchError::TooLarge => {
                write!(f, "the policy file is larger than {MAX_POLICY_LEN} bytes")
            }
            FetchError::Timeout => f.write_str("the policy fetch timed out"),
            FetchError::Http(why) => write!(f, "HTTP error: {why}"),
            FetchError::NotText => f.write_str("the policy file is not UTF-8 text"),
            FetchError::Policy(e) => write!(f, "the policy file is invalid: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// A fetched and parsed policy, with what the server said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedPolicy {
    pub policy: StsPolicy,
    /// The body as served.
    pub body: String,
    /// The Content-Type header, if any (RFC 8461 §3.2 says `text/plain`).
    pub content_type: Option<String>,
}

/// Fetches policy files over HTTPS.
#[derive(Clone)]
pub struct PolicyFetcher {
    resolver: Resolver,
    tls: TlsConnector,
    settings: FetchSettings,
}

impl fmt::Debug for PolicyFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyFetcher")
            .field("settings", &self.settings)
            .finish()
    }
}

impl PolicyFetcher {
    /// A fetcher resolving with `resolver`; fails when the trust anchors cannot be loaded.
    pub fn new(resolver: Resolver, settings: FetchSettings) -> Result<PolicyFetcher, FetchError> {
        let config = PolicyFetcher::tls_config(settings.ca_file.as_deref())?;
        Ok(PolicyFetcher::with_client_config(
            resolver, settings, config,
        ))
    }

    /// The TLS configuration [`PolicyFetcher::new`] uses: the certificate checked against
    /// the CA certificates in `ca_file`, or the system's trusted roots.
    pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, FetchError> {
        ravelin_tls::client_config(&ravelin_tls::Verify::WebPki {
            ca_file: ca_file.map(Path::to_path_buf),
        })
        .map_err(|e| FetchError::Setup(e.to_string()))
    }

    /// A fetcher whose TLS connections use `config` (for trust anchors other than the
    /// system roots or one CA file, e.g. the system roots plus a private CA);
    /// `settings.ca_file` is then not read.
    pub fn with_client_config(
        resolver: Resolver,
        settings: FetchSettings,
        config: Arc<rustls::ClientConfig>,
    ) -> PolicyFetcher {
        PolicyFetcher {
            resolver,
            tls: TlsConnector::from(config),
            settings,
        }
    }

    /// Fetches and parses the policy of `domain`.
    pub async fn fetch(&self, domain: &str) -> Result<FetchedPolicy, FetchError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let host = format!("mta-sts.{domain}");
        match tokio::time::timeout(self.settings.timeout, self.fetch_from(&host)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout),
        }
    }

    async fn fetch_from(&self, host: &str) -> Result<FetchedPolicy, FetchError> {
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| FetchError::Dns(LookupError::InvalidName(e.to_string())))?;
        let addresses = self
            .resolver
            .ips(host, false)
            .await
            .map_err(FetchError::Dns)?;
        let mut last_error = FetchError::Connect("no address".to_string());
        for ip in addresses.records.iter().take(MAX_ADDRESSES) {
            let addr = SocketAddr::new(*ip, self.settings.port);
            let tcp = match TcpStream::connect(addr).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last_error = FetchError::Connect(format!("{addr}: {e}"));
                    continue;
                }
            };
            let tls = match self.tls.connect(server_name.clone(), tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    last_error = FetchError::Tls(format!("{addr}: {e}"));
                    continue;
                }
            };
            return get_policy(tls, host).await;
        }
        Err(last_error)
    }
}

/// One GET of the policy over an established TLS connection.
async fn get_policy(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    host: &str,
) -> Result<FetchedPolicy, FetchError> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let request = hyper::Request::get(POLICY_PATH)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "ravelin")
            .header(hyper::header::ACCEPT, "text/plain")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let location = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| crate::records::shorten_to(l, 200));
            return Err(FetchError::Redirect { status, location });
        }
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_POLICY_LEN as u64) {
            return Err(FetchError::TooLarge);
        }
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| crate::records::shorten_to(v, 200));
        let body = Limited::new(response.into_body(), MAX_POLICY_LEN)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    FetchError::TooLarge
                } else {
                    FetchError::Http(e.to_string())
                }
            })?
            .to_bytes();
        let body = String::from_utf8(body.to_vec()).map_err(|_| FetchError::NotText)?;
        let policy = parse_policy(&body).map_err(FetchError::Policy)?;
        Ok(FetchedPolicy {
            policy,
            body,
            content_type,
        })
    }
    .await;
    driver.abort();
    result
}

/// Where a policy in a [`StsLookup::Policy`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// Fetched just now.
    Fetched,
    /// From the cache, unexpired, with the TXT id unchanged.
    Cached,
    /// From the cache, because the TXT record was absent or unusable or the fetch failed
    /// (RFC 8461 §5.1 keeps an unexpired policy in force then).
    CachedFallback,
}

/// What a delivery should apply for a domain.
#[derive(Debug, Clone, PartialEq)]
pub enum StsLookup {
    /// A policy is in force.
    Policy {
        policy: Arc<StsPolicy>,
        /// The id of the TXT record the policy was fetched for.
        id: String,
        source: PolicySource,
        /// When the policy stops being usable without a new fetch.
        expires: SystemTime,
    },
    /// The domain has no MTA-STS policy (no usable TXT record, nothing cached).
    NoPolicy,
    /// The TXT record announces a policy that could not be fetched, and nothing is cached.
    FetchFailed { id: String, error: FetchError },
    /// The cached policy has expired and fetching a new one failed.
    ExpiredFetchFailed {
        expired: Arc<StsPolicy>,
        error: FetchError,
    },
    /// The TXT lookup failed temporarily and nothing usable is cached.
    DnsFailed(Failure),
}

#[derive(Debug, Clone)]
struct CachedPolicy {
    id: String,
    policy: Arc<StsPolicy>,
    /// The policy file as served, so the cache can be saved and restored.
    body: Arc<str>,
    expires: SystemTime,
}

/// One cached policy as saved outside the cache: the domain, the TXT id it was fetched for,
/// the policy file as served and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedPolicy {
    pub domain: String,
    pub id: String,
    pub body: String,
    pub expires: SystemTime,
}

/// Policies by domain, fetched when the TXT id changes or `max_age` runs out.
#[derive(Debug)]
pub struct PolicyCache {
    fetcher: PolicyFetcher,
    entries: Mutex<HashMap<String, CachedPolicy>>,
}

impl PolicyCache {
    /// An empty cache fetching with `fetcher` (and resolving TXT records with its resolver).
    pub fn new(fetcher: PolicyFetcher) -> PolicyCache {
        PolicyCache {
            fetcher,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force for `domain` now.
    pub async fn lookup(&self, domain: &str) -> StsLookup {
        self.lookup_at(domain, SystemTime::now()).await
    }

    /// The policy in force for `domain` at `now` (tests use a clock of their own).
    pub async fn lookup_at(&self, domain: &str, now: SystemTime) -> StsLookup {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.cached(&domain);
        let usable = cached.as_ref().filter(|c| c.expires > now).cloned();
        let txt = self
            .fetcher
            .resolver
            .txt(&format!("_mta-sts.{domain}"))
            .await;
        let id = match txt {
            Ok(answer) => match select_txt(&answer.records) {
                Ok(record) => record.id,
                Err(_) => return fallback(usable, StsLookup::NoPolicy),
            },
            Err(LookupError::Failed(failure)) => {
                return fallback(usable, StsLookup::DnsFailed(failure));
            }
            Err(_) => return fallback(usable, StsLookup::NoPolicy),
        };
        if let Some(cached) = &usable
            && cached.id == id
        {
            return in_force(cached, PolicySource::Cached);
        }
        let fetched = self.fetcher.fetch(&domain).await;
        match &fetched {
            Ok(fetched) => tracing::debug!(
                event = "mta_sts_fetch",
                domain = %domain,
                id = %id,
                mode = %fetched.policy.mode,
                max_age = fetched.policy.max_age,
            ),
            Err(error) => tracing::debug!(
                event = "mta_sts_fetch_failed",
                domain = %domain,
                id = %id,
                error = %error,
            ),
        }
        match fetched {
            Ok(fetched) => {
                let max_age = Duration::from_secs(u64::from(fetched.policy.max_age));
                let entry = CachedPolicy {
                    id: id.clone(),
                    policy: Arc::new(fetched.policy),
                    body: Arc::from(fetched.body),
                    expires: now + max_age,
                };
                self.store(&domain, entry.clone());
                in_force(&entry, PolicySource::Fetched)
            }
            Err(error) => match (usable, cached) {
                (Some(usable), _) => in_force(&usable, PolicySource::CachedFallback),
                (None, Some(expired)) => StsLookup::ExpiredFetchFailed {
                    expired: expired.policy,
                    error,
                },
                (None, None) => StsLookup::FetchFailed { id, error },
            },
        }
    }

    /// Every cached policy that has not expired at `now`, for saving.
    pub fn saved(&self, now: SystemTime) -> Vec<SavedPolicy> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.expires > now)
            .map(|(domain, e)| SavedPolicy {
                domain: domain.clone(),
                id: e.id.clone(),
                body: e.body.to_string(),
                expires: e.expires,
            })
            .collect()
    }

    /// Puts a saved policy back (after a restart). The body is parsed again; a policy that
    /// does not parse, has expired at `now` or whose id is not a valid MTA-STS id is
    /// refused with the reason.
    pub fn restore(&self, saved: SavedPolicy, now: SystemTime) -> Result<(), String> {
        if saved.expires <= now {
            return Err("expired".to_string());
        }
        let id_ok = !saved.id.is_empty()
            && saved.id.len() <= 32
            && saved.id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok {
            return Err(format!("invalid id {:?}", saved.id));
        }
        let domain = saved.domain.trim_end_matches('.').to_ascii_lowercase();
        let policy = parse_policy(&saved.body).map_err(|e| e.to_string())?;
        // Never longer than the policy itself allows from now.
        let limit = now + Duration::from_secs(u64::from(policy.max_age));
        let entry = CachedPolicy {
            id: saved.id,
            policy: Arc::new(policy),
            body: Arc::from(saved.body),
            expires: saved.expires.min(limit),
        };
        self.store(&domain, entry);
        Ok(())
    }

    /// Forgets every cached policy.
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedPolicy>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cached(&self, domain: &str) -> Option<CachedPolicy> {
        self.lock().get(domain).cloned()
    }

    fn store(&self, domain: &str, entry: CachedPolicy) {
        let mut entries = self.lock();
        if entries.len() >= MAX_CACHED_DOMAINS && !entries.contains_key(domain) {
            let first_to_expire = entries
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(d, _)| d.clone());
            if let Some(victim) = first_to_expire {
                entries.remove(&victim);
            }
        }
        entries.insert(domain.to_string(), entry);
    }
}

fn in_force(entry: &CachedPolicy, source: PolicySource) -> StsLookup {
    StsLookup::Policy {
        policy: entry.policy.clone(),
        id: entry.id.clone(),
        source,
        expires: entry.expires,
    }
}

/// The unexpired cached policy if there is one, else `otherwise`.
fn fallback(usable: Option<CachedPolicy>, otherwise: StsLookup) -> StsLookup {
    match usable {
        Some(entry) => in_force(&entry, PolicySource::CachedFallback),
        None => otherwise,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::ResolverSettings;

    fn cache() -> PolicyCache {
        let resolver = Resolver::new(&ResolverSettings::with_nameservers(vec![
            "127.0.0.1:9".parse().unwrap(),
        ]))
        .unwrap();
        let tls = ravelin_tls::client_config(&ravelin_tls::Verify::None).unwrap();
        PolicyCache::new(PolicyFetcher::with_client_config(
            resolver,
            FetchSettings::default(),
            tls,
        ))
    }

    const BODY: &str = "version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 600\n";

    fn saved(id: &str, body: &str, expires: SystemTime) -> SavedPolicy {
        SavedPolicy {
            domain: "Example.TEST.".into(),
            id: id.into(),
            body: body.into(),
            expires,
        }
    }

    #[test]
    fn saved_policies_are_restored_checked_and_clamped() {
        let now = SystemTime::now();
        let cache = cache();
        let far = now + Duration::from_secs(86_400);
        cache.restore(saved("abc1", BODY, far), now).unwrap();
        let out = cache.saved(now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].domain, "example.test");
        assert_eq!(out[0].body, BODY);
        // Never longer than max_age from now, whatever the file said.
        assert_eq!(out[0].expires, now + Duration::from_secs(600));
        assert!(cache.saved(now + Duration::from_secs(601)).is_empty());

        let soon = now + Duration::from_secs(60);
        assert!(cache.restore(saved("abc1", BODY, now), now).is_err());
        assert!(cache.restore(saved("a-b", BODY, soon), now).is_err());
        assert!(cache.restore(saved("", BODY, soon), now).is_err());
        assert!(
            cache
                .restore(saved("abc2", "mode: enforce\n", soon), now)
                .is_err()
        );
        assert_eq!(cache.saved(now).len(), 1);
    }
}
