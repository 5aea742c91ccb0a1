//! The resolver: typed DNS lookups with outcomes callers can act on.
//!
//! Settings: the gateway's `[dns] nameservers` (a list of `IP:PORT`; empty means the
//! system's `/etc/resolv.conf`), a per-query timeout and a number of attempts, and whether the
//! AD bit of the answers may be believed ([`AdTrust`]).
//!
//! Every query goes to the configured recursive resolvers through hickory's name server pool
//! (server selection, a socket per query, UDP with a TCP retry on truncation, `attempts`
//! rounds) or, for a batch run's resolver towards local name servers, through the multiplexed
//! sockets of `crate::multiplex` (the same retries); the response is interpreted here, so that
//! callers get one of four outcomes:
//!
//! - [`Answer`]: records of the asked type, after following CNAMEs, with the smallest TTL and a
//!   `secure` flag (DNSSEC, see below);
//! - [`LookupError::NxDomain`]: the name does not exist;
//! - [`LookupError::NoRecords`]: the name exists but has no record of that type (NODATA);
//! - [`LookupError::Failed`]: SERVFAIL (which is also what a validating resolver answers for
//!   bogus DNSSEC data), REFUSED, a timeout, a network error or a malformed answer. These are
//!   temporary: mail is deferred, never bounced or accepted because of them.
//!
//! By default there is no cache here: like Postfix, we leave caching to the recursive
//! resolver, which does it per RRset and TTL; callers that want to remember an answer have its
//! TTL. A run that asks many questions, many of them the same (a batch audit), builds its
//! resolver with [`Resolver::for_batch`]: each query's outcome is then kept for its TTL and
//! shared by concurrent callers ([`crate::cache`]), and queries share a few long-lived UDP
//! sockets per name server instead of opening one each (`crate::multiplex`);
//! [`Resolver::with_own_transport`] gives each thread of such a run its own sockets over the
//! one cache.
//!
//! DNSSEC: every query carries the AD bit (RFC 6840 §5.7), which asks a validating resolver to
//! say whether it validated the answer, without the bulk of RRSIG records that the DO bit would
//! bring. `Answer::secure` is true only when every response that built the answer had the AD
//! bit and [`AdTrust`] allows believing it: by default only when every configured name server
//! is on a loopback address, because the AD bit travels unauthenticated over the network
//! (the Postfix `smtp_dns_support_level = dnssec` model). Negative answers carry no secure flag:
//! for DANE a secure and an insecure NODATA lead to the same decision (no TLSA, no DANE).
//!
//! Limits: at most [`MAX_RECORDS`] records of an answer are kept, CNAME chains are followed for
//! at most [`MAX_CNAME_HOPS`] hops, names are checked against the DNS length limits before any
//! query, and a whole lookup (all attempts and CNAME hops) is bounded by a deadline derived
//! from the timeout and attempts.
//!
//! How it fails: [`Resolver::new`] returns a [`ConfigError`] when the system configuration
//! cannot be read or names no server; lookups never panic and report everything else through
//! [`LookupError`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::FirstAnswer;
use hickory_resolver::net::{DnsError, DnsHandle, NetError, RetryDnsHandle};
use hickory_resolver::proto::op::{DnsRequest, DnsRequestOptions, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};

use crate::cache::AnswerCache;
use crate::multiplex::{self, Multiplexer};

/// The most records of one answer that are kept; the rest are ignored.
pub const MAX_RECORDS: usize = 256;

/// The most CNAME hops followed from the queried name.
pub const MAX_CNAME_HOPS: usize = 8;

/// The default time one query waits for an answer from a name server.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default number of attempts of a query that timed out or failed.
pub const DEFAULT_ATTEMPTS: usize = 2;

/// The largest timeout and attempt count accepted; larger values are clamped.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_ATTEMPTS: usize = 10;

/// The EDNS UDP payload size announced (DNS flag day 2020).
const EDNS_PAYLOAD: u16 = 1232;

/// When the AD ("authentic data") bit of an answer is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdTrust {
    /// Believe it only when every configured name server is on a loopback address (a
    /// validating resolver on the same host, such as unbound on 127.0.0.1). The default.
    #[default]
    Loopback,
    /// Always believe it: the name servers are validating resolvers reached over a network
    /// path the operator trusts.
    Always,
    /// Never: every answer is insecure, so DANE is never used.
    Never,
}

/// How to reach the recursive resolvers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// The name servers (the pool orders them by speed; a batch run's transport starts at the
    /// one that answered last); empty means those of `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// How long one query waits for a name server's answer (clamped to 60 s, at least 10 ms).
    pub timeout: Duration,
    /// How many times a query that timed out or failed is sent (1 to 10).
    pub attempts: usize,
    /// When the AD bit is believed.
    pub ad_trust: AdTrust,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            nameservers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            ad_trust: AdTrust::default(),
        }
    }
}

impl ResolverSettings {
    /// Settings for the given name servers with the default timeout, attempts and AD trust.
    pub fn with_nameservers(nameservers: Vec<SocketAddr>) -> Self {
        ResolverSettings {
            nameservers,
            ..ResolverSettings::default()
        }
    }
}

/// The resolver configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Records of one type found for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    /// The records (at most [`MAX_RECORDS`]), in the order of the response; MX records are
    /// sorted by preference.
    pub records: Vec<T>,
    /// True when every response that built this answer had the AD bit and the resolver is
    /// trusted to set it (see [`AdTrust`]).
    pub secure: bool,
    /// The smallest TTL of the records and CNAMEs followed, in seconds.
    pub ttl: u32,
    /// The name that owns the records after following CNAMEs: lowercase, without the final dot.
    pub canonical_name: String,
}

/// Why a lookup produced no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// The name exists but has no record of the type asked (NODATA).
    NoRecords,
    /// No usable answer now; try again later.
    Failed(Failure),
    /// The name cannot be queried: too long, an empty label, or not a domain name at all.
    InvalidName(String),
}

impl LookupError {
    /// True for [`LookupError::Failed`]: the answer may be different later.
    pub fn is_temporary(&self) -> bool {
        matches!(self, LookupError::Failed(_))
    }

    /// True for NXDOMAIN and NODATA: the DNS said there is nothing.
    pub fn is_negative(&self) -> bool {
        matches!(self, LookupError::NxDomain | LookupError::NoRecords)
    }
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NxDomain => f.write_str("the name does not exist (NXDOMAIN)"),
            LookupError::NoRecords => f.write_str("no record of that type (NODATA)"),
            LookupError::Failed(failure) => write!(f, "lookup failed: {failure}"),
            LookupError::InvalidName(why) => write!(f, "not a valid domain name: {why}"),
        }
    }
}

impl std::error::Error for LookupError {}

/// A temporary lookup failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// SERVFAIL: the resolver could not get an answer, or (from a validating resolver) the
    /// answer failed DNSSEC validation.
    ServerFailure,
    /// REFUSED: the name server does not serve us.
    Refused,
    /// No answer within the timeout, for every attempt.
    Timeout,
    /// Any other error: network, another response code, a malformed response.
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::ServerFailure => {
                f.write_str("SERVFAIL (the resolver failed, or DNSSEC validation failed)")
            }
            Failure::Refused => f.write_str("REFUSED by the name server"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Other(why) => f.write_str(why),
        }
    }
}

/// An MX record. A null MX (RFC 7505, `0 .`) has an empty exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    /// The mail exchanger: lowercase, without the final dot; empty for a null MX.
    pub exchange: String,
}

impl Mx {
    /// True for the null MX `0 .` (RFC 7505): the domain accepts no mail.
    pub fn is_null(&self) -> bool {
        self.exchange.is_empty()
    }
}

impl Answer<Mx> {
    /// True when the MX set is a null MX (RFC 7505): exactly one record, `0 .`. A null MX
    /// next to other MX records is a misconfiguration; callers see it as records where
    /// [`Mx::is_null`] is true for one of them.
    pub fn is_null_mx(&self) -> bool {
        matches!(self.records.as_slice(), [only] if only.is_null() && only.preference == 0)
    }
}

/// A TLSA record (RFC 6698), as numbers and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// 0 full certificate, 1 SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

/// A CAA record (RFC 8659).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caa {
    /// The issuer-critical flag.
    pub critical: bool,
    /// The property tag (`issue`, `issuewild`, `iodef`, ...), as published.
    pub tag: String,
    /// The property value, as published (lossily decoded from bytes).
    pub value: String,
}

/// A DNS stub resolver over the configured recursive resolvers. Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    nameservers: Vec<SocketAddr>,
    trust_ad: bool,
    deadline: Duration,
    /// The answer cache of a batch resolver ([`Resolver::for_batch`]); none otherwise.
    cache: Option<Arc<AnswerCache<Exchanged>>>,
    /// What the resolver was built from, for [`Resolver::with_own_transport`].
    settings: ResolverSettings,
}

/// How queries reach the name servers.
enum Transport {
    /// hickory's name server pool: a new socket (and source port) per query.
    Pool(RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>),
    /// A few long-lived sockets per name server, for batch runs.
    Multiplexed(Multiplexer),
}

/// The outcome of one query: the answer records and the AD bit.
type Exchanged = Result<(Vec<Record>, bool), LookupError>;

/// Whether a lookup's answer may serve other lookups of the run (through the answer cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Shared,
    Unshared,
}

/// A TXT record's text: its strings joined, as UTF-8 with invalid bytes replaced.
fn txt_text(rdata: &RData) -> Option<String> {
    match rdata {
        RData::TXT(txt) => {
            let bytes: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => None,
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("nameservers", &self.inner.nameservers)
            .field("trust_ad", &self.inner.trust_ad)
            .finish()
    }
}

/// The records of one type for a name, before conversion to a typed answer.
struct Resolved {
    records: Vec<RData>,
    secure: bool,
    ttl: u32,
    canonical: Name,
}

impl Resolver {
    /// A resolver for the settings. With no name servers, `/etc/resolv.conf` is read now.
    pub fn new(settings: &ResolverSettings) -> Result<Resolver, ConfigError> {
        Self::build(settings, None)
    }

    /// A resolver for runs that ask many questions, many of them the same, such as a batch
    /// audit. It keeps the outcome of up to `capacity` questions for their TTL (at most
    /// [`crate::cache::MAX_TTL`]; temporary failures are not kept), sends one query for
    /// concurrent callers of the same question, and, when every name server is on loopback or
    /// a private network, sends its queries over a few long-lived UDP sockets per name server
    /// (random query IDs, answers matched by ID and question) instead of a new socket each.
    /// The gateway does not use it.
    pub fn for_batch(
        settings: &ResolverSettings,
        capacity: usize,
    ) -> Result<Resolver, ConfigError> {
        Self::build(settings, Some(Arc::new(AnswerCache::new(capacity))))
    }

    /// A resolver with the same settings and the same answer cache (its outcomes and the
    /// questions in flight), but a transport of its own. A batch run spread over several
    /// threads, each with a runtime of its own, gives each its resolver this way: a batch
    /// transport's sockets are served by tasks of the runtime that opened them, and a thread's
    /// queries then wait on another thread only for a question that thread is already asking
    /// (the cache's one query per question).
    pub fn with_own_transport(&self) -> Result<Resolver, ConfigError> {
        Self::build(&self.inner.settings, self.inner.cache.clone())
    }

    /// A resolver for `settings`; with a `cache`, a batch resolver ([`Resolver::for_batch`]).
    fn build(
        settings: &ResolverSettings,
        cache: Option<Arc<AnswerCache<Exchanged>>>,
    ) -> Result<Resolver, ConfigError> {
        let batch = cache.is_some();
        let (nameservers, options) = effective(settings)?;
        let (timeout, attempts) = (options.timeout, options.attempts);
        let transport = if batch && nameservers.iter().all(|a| multiplex::is_local(a.ip())) {
            Transport::Multiplexed(Multiplexer::new(
                nameservers.clone(),
                timeout,
                attempts,
                EDNS_PAYLOAD,
            ))
        } else {
            let configs = nameservers.iter().map(|addr| name_server(*addr));
            let tls = TlsConfig::new().map_err(|e| ConfigError(format!("resolver set-up: {e}")))?;
            let context = Arc::new(PoolContext::new(options, tls));
            let pool =
                NameServerPool::from_config(configs, context, TokioRuntimeProvider::default());
            // The retry handle counts the first try as an attempt too.
            Transport::Pool(RetryDnsHandle::new(pool, attempts.saturating_sub(1)))
        };

        let trust_ad = match settings.ad_trust {
            AdTrust::Always => true,
            AdTrust::Never => false,
            AdTrust::Loopback => nameservers.iter().all(|a| a.ip().is_loopback()),
        };
        // Each attempt may take up to `timeout`; a CNAME hop repeats the query. The deadline
        // is a backstop against anything slower than that.
        let deadline = timeout * (attempts as u32) * 2 + Duration::from_secs(1);
        Ok(Resolver {
            inner: Arc::new(Inner {
                transport,
                nameservers,
                trust_ad,
                deadline,
                cache,
                settings: settings.clone(),
            }),
        })
    }

    /// The name servers queried.
    pub fn nameservers(&self) -> &[SocketAddr] {
        &self.inner.nameservers
    }

    /// Whether queries go over the multiplexed sockets of a batch run (see
    /// [`Resolver::for_batch`]) rather than a socket each.
    pub fn multiplexed(&self) -> bool {
        matches!(self.inner.transport, Transport::Multiplexed(_))
    }

    /// Whether the AD bit of answers is believed, so that [`Answer::secure`] can be true.
    pub fn trusts_ad(&self) -> bool {
        self.inner.trust_ad
    }

    /// TXT records, each record's strings joined without separator (RFC 7208 §3.3), decoded
    /// as UTF-8 with invalid bytes replaced.
    pub async fn txt(&self, name: &str) -> Result<Answer<String>, LookupError> {
        self.typed(name, RecordType::TXT, txt_text).await
    }

    /// [`Resolver::txt`] for a name that no other lookup of the run asks (a DKIM selector under
    /// one domain): its question goes past a batch resolver's answer cache, which then holds
    /// only answers that are asked again (the targets of its CNAMEs still go through it).
    pub async fn txt_unshared(&self, name: &str) -> Result<Answer<String>, LookupError> {
        self.typed_sharing(name, RecordType::TXT, Sharing::Unshared, txt_text)
            .await
    }

    /// MX records sorted by preference (stable among equal preferences: callers that want
    /// RFC 5321's random order among equals shuffle them). See [`Answer::is_null_mx`].
    pub async fn mx(&self, domain: &str) -> Result<Answer<Mx>, LookupError> {
        let mut answer = self
            .typed(domain, RecordType::MX, |rdata| match rdata {
                RData::MX(mx) => Some(Mx {
                    preference: mx.preference,
                    exchange: name_text(&mx.exchange),
                }),
                _ => None,
            })
            .await?;
        answer.records.sort_by_key(|mx| mx.preference);
        Ok(answer)
    }

    /// IPv4 addresses (A records).
    pub async fn ipv4(&self, name: &str) -> Result<Answer<Ipv4Addr>, LookupError> {
        self.typed(name, RecordType::A, |rdata| match rdata {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .await
    }

    /// IPv6 addresses (AAAA records).
    pub async fn ipv6(&self, name: &str) -> Result<Answer<Ipv6Addr>, LookupError> {
        self.typed(name, RecordType::AAAA, |rdata| match rdata {
            RData::AAAA(aaaa) => Some(aaaa.0),
            _ => None,
        })
        .await
    }

    /// IPv4 and IPv6 addresses, both queried at once; IPv6 addresses come first when
    /// `prefer_ipv6`. When one family fails and the other has addresses, the addresses are
    /// returned (a delivery can use them), but the answer is then not secure: it is secure
    /// only when every family with addresses was answered securely and none failed. When
    /// neither family has addresses, a failure wins over NODATA, and NXDOMAIN is returned
    /// only when both said so.
    pub async fn ips(&self, name: &str, prefer_ipv6: bool) -> Result<Answer<IpAddr>, LookupError> {
        let (v4, v6) = tokio::join!(self.ipv4(name), self.ipv6(name));
        let mut parts: Vec<Answer<IpAddr>> = Vec::new();
        let mut errors: Vec<LookupError> = Vec::new();
        let mut add = |part: Result<Answer<IpAddr>, LookupError>| match part {
            Ok(answer) => parts.push(answer),
            Err(e) => errors.push(e),
        };
        let v4 = v4.map(|a| map_answer(a, IpAddr::V4));
        let v6 = v6.map(|a| map_answer(a, IpAddr::V6));
        if prefer_ipv6 {
            add(v6);
            add(v4);
        } else {
            add(v4);
            add(v6);
        }
        if parts.is_empty() {
            return Err(
                if let Some(failed) = errors.iter().find(|e| e.is_temporary()) {
                    failed.clone()
                } else if let Some(invalid) = errors
                    .iter()
                    .find(|e| matches!(e, LookupError::InvalidName(_)))
                {
                    invalid.clone()
                } else if errors.iter().all(|e| *e == LookupError::NxDomain) {
                    LookupError::NxDomain
                } else {
                    LookupError::NoRecords
                },
            );
        }
        let complete = errors.iter().all(|e| e.is_negative());
        let mut merged = Answer {
            records: Vec::new(),
            secure: complete && parts.iter().all(|p| p.secure),
            ttl: parts.iter().map(|p| p.ttl).min().unwrap_or(0),
            canonical_name: parts[0].canonical_name.clone(),
        };
        for part in parts {
            merged.records.extend(part.records);
        }
        merged.records.truncate(MAX_RECORDS);
        Ok(merged)
    }

    /// PTR names of an address (`in-addr.arpa` / `ip6.arpa`), lowercase without the final dot.
    pub async fn ptr(&self, ip: IpAddr) -> Result<Answer<String>, LookupError> {
        self.typed(&reverse_name(ip), RecordType::PTR, |rdata| match rdata {
            RData::PTR(ptr) => Some(name_text(&ptr.0)),
            _ => None,
        })
        .await
    }

    /// The CNAME record of a name itself (not followed): one target.
    pub async fn cname(&self, name: &str) -> Result<Answer<String>, LookupError> {
        self.typed(name, RecordType::CNAME, |rdata| match rdata {
            RData::CNAME(cname) => Some(name_text(&cname.0)),
            _ => None,
        })
        .await
    }

    /// TLSA records of a service: `_PORT._tcp.HOST` (RFC 6698, RFC 7672 for SMTP).
    pub async fn tlsa(&self, host: &str, port: u16) -> Result<Answer<Tlsa>, LookupError> {
        let host = host.trim_end_matches('.');
        let name = format!("_{port}._tcp.{host}");
        self.typed(&name, RecordType::TLSA, |rdata| match rdata {
            RData::TLSA(tlsa) => Some(Tlsa {
                usage: tlsa.cert_usage.into(),
                selector: tlsa.selector.into(),
                matching: tlsa.matching.into(),
                data: tlsa.cert_data.clone(),
            }),
            _ => None,
        })
        .await
    }

    /// CAA records of exactly this name (no climbing to the parent domains).
    pub async fn caa(&self, name: &str) -> Result<Answer<Caa>, LookupError> {
        self.typed(name, RecordType::CAA, |rdata| match rdata {
            RData::CAA(caa) => Some(Caa {
                critical: caa.issuer_critical,
                tag: caa.tag.clone(),
                value: String::from_utf8_lossy(&caa.value).into_owned(),
            }),
            _ => None,
        })
        .await
    }

    /// Looks up `name`/`rtype` and converts the records with `convert`.
    async fn typed<T>(
        &self,
        name: &str,
        rtype: RecordType,
        convert: impl Fn(&RData) -> Option<T>,
    ) -> Result<Answer<T>, LookupError> {
        self.typed_sharing(name, rtype, Sharing::Shared, convert)
            .await
    }

    /// [`Resolver::typed`], saying whether the answer may serve other lookups.
    async fn typed_sharing<T>(
        &self,
        name: &str,
        rtype: RecordType,
        sharing: Sharing,
        convert: impl Fn(&RData) -> Option<T>,
    ) -> Result<Answer<T>, LookupError> {
        let name = parse_name(name)?;
        let resolved =
            match tokio::time::timeout(self.inner.deadline, self.resolve(name, rtype, sharing))
                .await
            {
                Ok(result) => result?,
                Err(_) => return Err(LookupError::Failed(Failure::Timeout)),
            };
        let records: Vec<T> = resolved.records.iter().filter_map(convert).collect();
        if records.is_empty() {
            return Err(LookupError::NoRecords);
        }
        Ok(Answer {
            records,
            secure: resolved.secure,
            ttl: resolved.ttl,
            canonical_name: name_text(&resolved.canonical),
        })
    }

    /// Queries `name`/`rtype`, following CNAMEs within the answer and, where a recursive
    /// resolver returned only part of a chain, with further queries.
    async fn resolve(
        &self,
        name: Name,
        rtype: RecordType,
        sharing: Sharing,
    ) -> Result<Resolved, LookupError> {
        let mut current = name;
        let mut secure = true;
        let mut ttl = u32::MAX;
        let mut hops = 0usize;
        // Only the name asked may be the caller's own: the targets of its CNAMEs (a mail
        // provider's key, say) are shared as any other name.
        let mut sharing = sharing;
        loop {
            let (records, ad) = self.exchange(&current, rtype, sharing).await?;
            sharing = Sharing::Shared;
            secure &= ad;
            let hops_before = hops;
            // Follow the chain inside this response.
            loop {
                if rtype == RecordType::CNAME {
                    break;
                }
                let next = records.iter().find_map(|r| match &r.data {
                    RData::CNAME(target) if r.name == current => Some((target.0.clone(), r.ttl)),
                    _ => None,
                });
                match next {
                    Some((target, cname_ttl)) => {
                        hops += 1;
                        if hops > MAX_CNAME_HOPS {
                            return Err(LookupError::Failed(Failure::Other(format!(
                                "CNAME chain longer than {MAX_CNAME_HOPS} hops"
                            ))));
                        }
                        ttl = ttl.min(cname_ttl);
                        current = target;
                    }
                    None => break,
                }
            }
            let found: Vec<&Record> = records
                .iter()
                .filter(|r| r.name == current && r.record_type() == rtype)
                .take(MAX_RECORDS)
                .collect();
            if !found.is_empty() {
                let min_ttl = found.iter().map(|r| r.ttl).min().unwrap_or(0);
                return Ok(Resolved {
                    records: found.into_iter().map(|r| r.data.clone()).collect(),
                    secure: secure && self.inner.trust_ad,
                    ttl: ttl.min(min_ttl),
                    canonical: current,
                });
            }
            if hops == hops_before {
                // Neither the records nor a CNAME for the name asked.
                return Err(LookupError::NoRecords);
            }
            // The chain ended at a name this response had no records for: ask for it.
        }
    }

    /// One question: through the answer cache when there is one and the answer may be shared.
    async fn exchange(&self, name: &Name, rtype: RecordType, sharing: Sharing) -> Exchanged {
        match &self.inner.cache {
            Some(cache) if sharing == Sharing::Shared => {
                cache
                    .get_or_query(name, rtype, || self.query(name, rtype))
                    .await
            }
            _ => self.query(name, rtype).await.0,
        }
    }

    /// One query: the answer records and the AD bit, or the outcome; and how long the outcome
    /// may be kept (zero for temporary failures).
    async fn query(&self, name: &Name, rtype: RecordType) -> (Exchanged, Duration) {
        let (outcome, ttl) = match self.query_transport(name, rtype).await {
            Ok((records, ad, ttl)) => (Ok((records, ad)), ttl),
            Err((e, ttl)) => (Err(e), ttl),
        };
        (outcome, Duration::from_secs(u64::from(ttl)))
    }

    async fn query_transport(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<(Vec<Record>, bool, u32), (LookupError, u32)> {
        let response = match &self.inner.transport {
            // Boxed: hickory's futures are large, and a batch run's should not carry them.
            Transport::Pool(handle) => Box::pin(Self::query_pool(handle, name, rtype)).await?,
            Transport::Multiplexed(multiplexer) => multiplexer
                .ask(&Query::query(name.clone(), rtype))
                .await
                .map_err(|failure| (LookupError::Failed(failure), 0))?,
        };
        interpret(response, rtype)
    }

    /// One query through hickory's pool. Negative answers come back as errors there.
    async fn query_pool(
        handle: &RetryDnsHandle<NameServerPool<TokioRuntimeProvider>>,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Message, (LookupError, u32)> {
        let mut options = DnsRequestOptions::default();
        options.recursion_desired = true;
        options.use_edns = true;
        options.edns_payload_len = EDNS_PAYLOAD;
        let mut request = DnsRequest::from_query(Query::query(name.clone(), rtype), options);
        // RFC 6840 §5.7: ask the resolver to tell whether it validated the answer.
        request.metadata.authentic_data = true;
        match handle.send(request).first_answer().await {
            Ok(response) => Ok(response.into_message()),
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => {
                let ttl = no_records.negative_ttl.unwrap_or(0);
                let error = classify(NetError::Dns(DnsError::NoRecordsFound(no_records)));
                let ttl = if error.is_negative() { ttl } else { 0 };
                Err((error, ttl))
            }
            Err(e) => Err((classify(e), 0)),
        }
    }
}

/// A response as an outcome: the answer records, the AD bit and how long they may be kept;
/// NXDOMAIN with its negative TTL; SERVFAIL, REFUSED and other codes as temporary failures.
fn interpret(
    response: Message,
    rtype: RecordType,
) -> Result<(Vec<Record>, bool, u32), (LookupError, u32)> {
    let negative_ttl = negative_ttl(&response.authorities);
    match response.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain if response.answers.is_empty() => {
            return Err((LookupError::NxDomain, negative_ttl));
        }
        // NXDOMAIN after a CNAME: the target does not exist.
        ResponseCode::NXDomain => {}
        ResponseCode::ServFail => {
            return Err((LookupError::Failed(Failure::ServerFailure), 0));
        }
        ResponseCode::Refused => return Err((LookupError::Failed(Failure::Refused), 0)),
        other => {
            return Err((
                LookupError::Failed(Failure::Other(format!("response code {other}"))),
                0,
            ));
        }
    }
    let ad = response.metadata.authentic_data;
    let nxdomain = response.metadata.response_code == ResponseCode::NXDomain;
    let records: Vec<Record> = response.answers;
    let has_target = records.iter().any(|r| r.record_type() == rtype);
    let mut ttl = records.iter().map(|r| r.ttl).min().unwrap_or(negative_ttl);
    if !has_target {
        // Only CNAMEs (or nothing): what the chain ends in is a negative answer, kept no
        // longer than the SOA allows, and not at all without one (a partial chain).
        ttl = ttl.min(negative_ttl);
    }
    if nxdomain && !has_target {
        // Only CNAMEs can be in an NXDOMAIN answer; the chain's end does not exist.
        return Err((LookupError::NxDomain, ttl));
    }
    Ok((records, ad, ttl))
}

/// How long a negative answer may be kept (RFC 2308 §5): the smaller of the SOA record's TTL
/// and its MINIMUM field, from the authority section; zero without an SOA.
fn negative_ttl(authorities: &[Record]) -> u32 {
    authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(0)
}

/// Maps hickory's errors onto our outcomes.
fn classify(error: NetError) -> LookupError {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no_records)) => match no_records.response_code {
            ResponseCode::NXDomain => LookupError::NxDomain,
            ResponseCode::ServFail => LookupError::Failed(Failure::ServerFailure),
            ResponseCode::Refused => LookupError::Failed(Failure::Refused),
            _ => LookupError::NoRecords,
        },
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            LookupError::Failed(Failure::ServerFailure)
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            LookupError::Failed(Failure::Refused)
        }
        NetError::Dns(DnsError::DnssecBogus) => LookupError::Failed(Failure::ServerFailure),
        NetError::Timeout => LookupError::Failed(Failure::Timeout),
        other => LookupError::Failed(Failure::Other(other.to_string())),
    }
}

fn map_answer<T, U>(answer: Answer<T>, f: impl Fn(T) -> U) -> Answer<U> {
    Answer {
        records: answer.records.into_iter().map(f).collect(),
        secure: answer.secure,
        ttl: answer.ttl,
        canonical_name: answer.canonical_name,
    }
}

/// Parses a query name: absolute (a final dot is added), within the DNS length limits.
fn parse_name(text: &str) -> Result<Name, LookupError> {
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    if trimmed.is_empty() {
        return Err(LookupError::InvalidName("empty name".to_string()));
    }
    if trimmed.len() > 253 {
        return Err(LookupError::InvalidName(format!(
            "{} characters, more than the 253 a domain name may have",
            trimmed.len()
        )));
    }
    if let Some(label) = trimmed.split('.').find(|l| l.is_empty() || l.len() > 63) {
        return Err(LookupError::InvalidName(if label.is_empty() {
            format!("{trimmed:?} has an empty label")
        } else {
            format!("{trimmed:?} has a label longer than 63 characters")
        }));
    }
    if trimmed
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(LookupError::InvalidName(format!(
            "{trimmed:?} contains spaces or control characters"
        )));
    }
    let mut name = Name::from_ascii(trimmed)
        .map_err(|e| LookupError::InvalidName(format!("{trimmed:?}: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

/// A name as callers see it: lowercase, without the final dot (the root is empty).
fn name_text(name: &Name) -> String {
    let text = name.to_ascii().to_ascii_lowercase();
    text.strip_suffix('.').unwrap_or(&text).to_string()
}

/// The reverse-lookup name of an address: `4.3.2.1.in-addr.arpa` or the nibble form under
/// `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    format!(
        "{}.{}",
        reversed_ip(ip),
        if ip.is_ipv4() {
            "in-addr.arpa"
        } else {
            "ip6.arpa"
        }
    )
}

/// The address as DNS reverse zones and DNSBLs write it: IPv4 octets reversed (`1.2.0.192`),
/// IPv6 as 32 reversed nibbles (`1.0.0.0.…`).
pub fn reversed_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(32);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.join(".")
        }
    }
}

/// The name servers of `/etc/resolv.conf`, with their ports.
/// The name servers (resolv.conf's when none are configured) and the hickory options of
/// `settings`: timeout and attempts clamped, EDNS payload, no cache.
fn effective(settings: &ResolverSettings) -> Result<(Vec<SocketAddr>, ResolverOpts), ConfigError> {
    let nameservers = if settings.nameservers.is_empty() {
        system_nameservers()?
    } else {
        settings.nameservers.clone()
    };
    let mut options = ResolverOpts::default();
    options.timeout = settings
        .timeout
        .clamp(Duration::from_millis(10), MAX_TIMEOUT);
    options.attempts = settings.attempts.clamp(1, MAX_ATTEMPTS);
    options.edns_payload_len = EDNS_PAYLOAD;
    options.cache_size = 0;
    Ok((nameservers, options))
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut config = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut config.connections {
        connection.port = addr.port();
    }
    config
}

/// The same name servers, timeout and attempts as a hickory `ResolverConfig` and
/// `ResolverOpts`, for libraries that build their own hickory resolver (mail-auth's SPF, DKIM,
/// DMARC and ARC lookups), so that every lookup of the gateway follows `[dns]`.
pub fn hickory_config(
    settings: &ResolverSettings,
) -> Result<(ResolverConfig, ResolverOpts), ConfigError> {
    let (nameservers, options) = effective(settings)?;
    let config = ResolverConfig::from_parts(
        None,
        Vec::new(),
        nameservers.into_iter().map(name_server).collect(),
    );
    Ok((config, options))
}

fn system_nameservers() -> Result<Vec<SocketAddr>, ConfigError> {
    let (config, _options) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
        ConfigError(format!(
            "cannot read the system resolver configuration: {e}"
        ))
    })?;
    let mut servers = Vec::new();
    for server in config.name_servers() {
        let port = server.connections.first().map(|c| c.port).unwrap_or(53);
        let addr = SocketAddr::new(server.ip, port);
        if !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    if servers.is_empty() {
        return Err(ConfigError(
            "the system resolver configuration (/etc/resolv.conf) names no name server; \
             set [dns] nameservers"
                .to_string(),
        ));
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversal_of_ipv4_and_ipv6() {
        assert_eq!(reversed_ip("192.0.2.1".parse().unwrap()), "1.2.0.192");
        assert_eq!(
            reverse_name("192.0.2.1".parse().unwrap()),
            "1.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reversed_ip("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
        assert!(reverse_name("::1".parse().unwrap()).ends_with(".ip6.arpa"));
    }

    #[test]
    fn names_are_checked_before_any_query() {
        assert!(parse_name("example.org").is_ok());
        assert!(parse_name("example.org.").is_ok());
        assert!(matches!(parse_name(""), Err(LookupError::InvalidName(_))));
        assert!(matches!(parse_name("."), Err(LookupError::InvalidName(_))));
        assert!(matches!(
            parse_name("a..b"),
            Err(LookupError::InvalidName(_))
        ));
        assert!(matches!(
            parse_name(&"a".repeat(64)),
            Err(LookupError::InvalidName(_))
        ));
        let long = ["abcdefghij"; 26].join(".");
        assert!(matches!(
            parse_name(&long),
            Err(LookupError::InvalidName(_))
        ));
        assert!(matches!(
            parse_name("a b.example"),
            Err(LookupError::InvalidName(_))
        ));
    }

    #[test]
    fn null_mx_is_recognised() {
        let answer = |records: Vec<Mx>| Answer {
            records,
            secure: false,
            ttl: 60,
            canonical_name: "example.org".to_string(),
        };
        let null = Mx {
            preference: 0,
            exchange: String::new(),
        };
        let real = Mx {
            preference: 10,
            exchange: "mx.example.org".to_string(),
        };
        assert!(answer(vec![null.clone()]).is_null_mx());
        assert!(!answer(vec![null, real.clone()]).is_null_mx());
        assert!(!answer(vec![real]).is_null_mx());
    }
}
