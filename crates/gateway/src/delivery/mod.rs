//! The delivery agent: hands a spooled message to the next hop over SMTP.
//!
//! [`Delivery::deliver`] takes one message and its recipients and returns one [`Outcome`] per
//! recipient. Recipients whose domain is one of the accepted (local) domains go to the
//! backend route; all others go to the smart host when one is configured, else directly to
//! the recipient domain's mail exchangers ([`Delivery::with_direct`], see [`mx`]), else they
//! are deferred.
//!
//! - [`smtp`]: one SMTP session over one connection (connect, EHLO, STARTTLS under a TLS
//!   plan, the transaction, the body).
//! - [`mx`]: direct delivery: MX lookup, null MX, implicit MX, the order of hosts and
//!   addresses, and the TLS policy of each (DANE, else MTA-STS, else opportunistic).
//! - [`dane`]: the TLSA lookup and the DANE decision for one MX host (RFC 7672).
//! - [`policy`]: the MTA-STS policy of a domain (RFC 8461) and what it asks of each MX host.
//! - [`tlsrpt`]: TLS results per policy domain, written as a daily RFC 8460 aggregate.
//!
//! Settings read: [`DeliverySettings`] (HELO name, timeouts, connections per route), the two
//! [`Route`]s (hosts in order, TLS policy), the list of local domains and, for direct
//! delivery, [`mx::DirectSettings`].
//!
//! Failover: the targets (hosts of a route, or the addresses of the MX hosts) are tried in
//! order. A connection that fails, a greeting other than 2xx, EHLO/HELO refused, a TLS failure
//! where TLS is required, 421, or a connection lost before the body went out moves on to the
//! next target; recipients the previous target already refused permanently keep that answer.
//! Once the body has started, a lost connection defers the recipients still open (the
//! message may have arrived; we do not risk a second copy on another host). When every
//! target fails, every open recipient is deferred with the last error.
//!
//! TLS towards fixed routes follows Postfix's `smtp_tls_security_level`: `none` never sends
//! STARTTLS; `may` uses it when offered without checking the certificate, and when the
//! handshake fails retries the same host in plaintext; `encrypt` requires it without
//! checking the certificate; `verify` requires it and checks the chain (against the
//! configured CA file, or the system roots) and the host name. A TLS configuration that
//! cannot be built fails [`Delivery::new`].
//!
//! Connections of fixed routes are reused: after a completed transaction the connection
//! waits in a per-host idle pool for at most [`DeliverySettings::idle_timeout`] and then is
//! closed with QUIT. A reused connection that turns out dead before the body was sent is
//! replaced by a fresh one to the same host without counting as a failure of that host. At
//! most [`DeliverySettings::max_connections_per_route`] deliveries use a route at once.
//! Direct (MX) connections are not reused: their TLS policy is decided per message.
//!
//! The body is read from the caller's reader in 64 KiB chunks and written through
//! `DotStuffer`; this module never holds it in memory whole. The reader must be seekable: a
//! message is read once per route and again after a failover. Reads block the calling worker
//! thread (on a multi-threaded runtime they are marked with `block_in_place`), except from a
//! spool body the lease already holds in memory. A failure to read the body defers the
//! message.
//!
//! Address probes for recipient validation (a callout: MAIL and RCPT, no DATA) use the same
//! connection code over the backend route: [`Delivery::probe`] (in `delivery/probe.rs`).
//!
//! Logs: `delivery_connect`, `delivery_tls` (policy, verification, protocol and cipher),
//! `delivery_host_failed`, `delivery_tls_fallback`, `delivery_mx`, and one `delivered` /
//! `deferred` / `bounced` line per recipient, each with `queue_id`.

pub mod dane;
pub mod mx;
pub mod policy;
mod probe;
pub mod smtp;
pub mod tlsrpt;

pub use self::probe::Probe;

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ravelin_wire::Reply;
use ravelin_wire::client::{Client, ClientError, RcptOutcome, check_path};
use rustls::ClientConfig;
use tokio::sync::Semaphore;

pub use self::smtp::BODY_CHUNK;
use self::smtp::{Attempt, Body, Conn, Target, TlsPlan};

/// When to use STARTTLS; the names are Postfix's `smtp_tls_security_level` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    None,
    May,
    Encrypt,
    Verify { ca_file: Option<PathBuf> },
}

/// Where one class of recipients goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Hosts tried in order; a host name is resolved with the system resolver (no MX lookup).
    pub hosts: Vec<(String, u16)>,
    pub tls: TlsPolicy,
    /// The account to log in with (a smart host that wants AUTH), inside TLS only.
    pub auth: Option<Arc<Credentials>>,
}

/// A login at a next hop: AUTH PLAIN after STARTTLS. The password is never logged.
pub struct Credentials {
    pub user: String,
    pub password: ravelin_wire::auth::Password,
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Credentials) -> bool {
        self.user == other.user && self.password == other.password
    }
}

impl Eq for Credentials {}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverySettings {
    /// The name we give in EHLO (the configured `hostname`).
    pub helo_name: String,
    pub connect_timeout: Duration,
    /// Limit on every read and write once connected, the TLS handshake included.
    pub command_timeout: Duration,
    /// How long a connection may wait unused for the next message to the same host.
    pub idle_timeout: Duration,
    pub max_connections_per_route: usize,
}

/// What became of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Reply),
    /// Try again later; the text says what happened (a server's reply or our error).
    Transient(String),
    Permanent(Reply),
}

/// The delivery agent; cheap to clone (all clones share pools and limits).
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("settings", &self.inner.settings)
            .field("local_domains", &self.inner.local_domains)
            .field("local", &self.inner.local.route)
            .field("remote", &self.inner.remote.as_ref().map(|r| &r.route))
            .field("direct", &self.inner.direct.is_some())
            .finish()
    }
}

struct Inner {
    settings: DeliverySettings,
    local_domains: Vec<String>,
    local: RouteAgent,
    remote: Option<RouteAgent>,
    /// Direct delivery to the MX hosts, when there is no smart host.
    direct: Option<mx::Direct>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteKind {
    Local,
    Remote,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Local => "local",
            RouteKind::Remote => "remote",
        }
    }
}

impl Inner {
    fn agent(&self, kind: RouteKind) -> Option<&RouteAgent> {
        match kind {
            RouteKind::Local => Some(&self.local),
            RouteKind::Remote => self.remote.as_ref(),
        }
    }
}

/// A route with its TLS configuration, its concurrency limit and its idle connections.
struct RouteAgent {
    kind: RouteKind,
    route: Route,
    tls: Option<Arc<ClientConfig>>,
    slots: Semaphore,
    idle: Mutex<HashMap<(String, u16), Vec<IdleConn>>>,
    /// Whether a task closing this route's expired idle connections is running (one per
    /// route, not one per parked connection: a busy route parks one per message).
    reaper: AtomicBool,
}

struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// The rustls client configuration for a policy (`None` for [`TlsPolicy::None`]). `may` and
/// `encrypt` encrypt without authenticating, as Postfix does (handshake signatures are still
/// checked); `verify` checks chain and name against the CA file or the system roots.
fn tls_client_config(policy: &TlsPolicy) -> Result<Option<Arc<ClientConfig>>, String> {
    let verify = match policy {
        TlsPolicy::None => return Ok(None),
        TlsPolicy::May | TlsPolicy::Encrypt => ravelin_tls::Verify::None,
        TlsPolicy::Verify { ca_file } => ravelin_tls::Verify::WebPki {
            ca_file: ca_file.clone(),
        },
    };
    ravelin_tls::client_config(&verify)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn check_route(name: &str, route: &Route) -> Result<(), String> {
    if route.hosts.is_empty() {
        return Err(format!("the {name} route has no hosts"));
    }
    for (host, port) in &route.hosts {
        if host.is_empty() || *port == 0 {
            return Err(format!(
                "the {name} route has an invalid host {host:?}:{port}"
            ));
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes` (written to `.NAME.tmp` beside it, fsynced, renamed), creating
/// its directory when needed; for the TLS-RPT files and the MTA-STS policy cache.
pub(crate) fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One delivery over one route: its name, its concurrency limit, its idle pool (fixed
/// routes), the targets in order and the recipients (indexes).
type Job<'a> = (
    &'static str,
    &'a Semaphore,
    Option<&'a RouteAgent>,
    Vec<Target>,
    Vec<usize>,
);

/// The recipients `which` grouped by domain, in order of first appearance.
fn by_domain(recipients: &[String], which: &[usize]) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for &i in which {
        let domain = domain_of(&recipients[i]).unwrap_or_default();
        match groups.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, list)) => list.push(i),
            None => groups.push((domain, vec![i])),
        }
    }
    groups
}

/// The domain of an address, lower-cased, without a trailing dot (`None` without `@`).
fn domain_of(addr: &str) -> Option<String> {
    let (_, domain) = addr.rsplit_once('@')?;
    Some(domain.trim_end_matches('.').to_ascii_lowercase())
}

impl Delivery {
    /// Checks the settings and builds the TLS configurations; fails with a message naming
    /// what is wrong.
    pub fn new(
        settings: DeliverySettings,
        local_route: Route,
        local_domains: Vec<String>,
        remote_route: Option<Route>,
    ) -> Result<Self, String> {
        Client::new(&settings.helo_name).map_err(|e| format!("helo_name: {e}"))?;
        if settings.max_connections_per_route == 0 {
            return Err("max_connections_per_route must be at least 1".into());
        }
        for (name, d) in [
            ("connect_timeout", settings.connect_timeout),
            ("command_timeout", settings.command_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be more than zero"));
            }
        }
        check_route("local", &local_route)?;
        if let Some(r) = &remote_route {
            check_route("remote", r)?;
        }
        let agent = |kind: RouteKind, route: Route| -> Result<RouteAgent, String> {
            let name = kind.name();
            Ok(RouteAgent {
                kind,
                tls: tls_client_config(&route.tls).map_err(|e| format!("{name} route: {e}"))?,
                route,
                slots: Semaphore::new(settings.max_connections_per_route),
                idle: Mutex::new(HashMap::new()),
                reaper: AtomicBool::new(false),
            })
        };
        let local = agent(RouteKind::Local, local_route)?;
        let remote = remote_route
            .map(|r| agent(RouteKind::Remote, r))
            .transpose()?;
        let local_domains = local_domains
            .iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        Ok(Delivery {
            inner: Arc::new(Inner {
                settings,
                local_domains,
                local,
                remote,
                direct: None,
            }),
        })
    }

    /// Sends mail for other domains directly to their mail exchangers when no smart host
    /// route was given to [`Delivery::new`] (with a smart host, that route wins and this is
    /// ignored). Fails when the TLS configurations cannot be built.
    pub fn with_direct(self, direct: mx::DirectSettings) -> Result<Self, String> {
        let mut inner = Arc::try_unwrap(self.inner)
            .map_err(|_| "with_direct must be called before the agent is shared".to_string())?;
        if inner.remote.is_none() {
            inner.direct = Some(mx::Direct::new(
                direct,
                inner.settings.max_connections_per_route,
            )?);
        }
        Ok(Delivery {
            inner: Arc::new(inner),
        })
    }

    /// Delivers one message to `recipients`; one outcome per recipient, in order.
    ///
    /// `body` is the spooled message (CRLF line endings, not dot-stuffed), read from its
    /// current position; `body_len` is its size in octets, announced with SIZE.
    pub async fn deliver(
        &self,
        sender: &str,
        recipients: &[String],
        body: impl Read + Seek + Send,
        body_len: u64,
        log_id: &str,
    ) -> Vec<(String, Outcome)> {
        self.deliver_from(sender, recipients, body, body_len, true, log_id)
            .await
    }

    /// [`Delivery::deliver`]; `may_block` says whether reading `body` may wait for the disk.
    async fn deliver_from(
        &self,
        sender: &str,
        recipients: &[String],
        body: impl Read + Seek + Send,
        body_len: u64,
        may_block: bool,
        log_id: &str,
    ) -> Vec<(String, Outcome)> {
        let mut results: Vec<Option<Outcome>> = vec![None; recipients.len()];
        let mut body = body;
        let start = match body.stream_position() {
            Ok(p) => p,
            Err(e) => {
                let text = format!("cannot read the message: {e}");
                return Self::finish(recipients, results, &text);
            }
        };
        let mut body = Body {
            reader: body,
            start,
            len: body_len,
            eight_bit: None,
            may_block,
        };
        if let Err(e) = check_path(sender) {
            let reply = Reply::ext(553, (5, 1, 7), format!("invalid sender address: {e}"));
            results.fill(Some(Outcome::Permanent(reply)));
            return Self::finish(recipients, results, "");
        }
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for (i, rcpt) in recipients.iter().enumerate() {
            if let Err(e) = check_path(rcpt).and_then(|()| {
                if rcpt.is_empty() {
                    Err(ClientError::Invalid("empty address".into()))
                } else {
                    Ok(())
                }
            }) {
                let reply = Reply::ext(553, (5, 1, 3), format!("invalid recipient address: {e}"));
                results[i] = Some(Outcome::Permanent(reply));
                continue;
            }
            let is_local = match domain_of(rcpt) {
                Some(d) => self.inner.local_domains.contains(&d),
                // A bare local part (RFC 5321 allows <postmaster>) is ours.
                None => true,
            };
            if is_local {
                local.push(i)
            } else {
                remote.push(i)
            }
        }
        let mut jobs: Vec<Job<'_>> = Vec::new();
        for (agent, which) in [
            (Some(&self.inner.local), local),
            (self.inner.remote.as_ref(), remote.clone()),
        ] {
            if let Some(agent) = agent
                && !which.is_empty()
            {
                jobs.push((
                    agent.kind.name(),
                    &agent.slots,
                    Some(agent),
                    agent.targets(),
                    which,
                ));
            }
        }
        if !remote.is_empty() && self.inner.remote.is_none() {
            match &self.inner.direct {
                Some(direct) => {
                    for (domain, which) in by_domain(recipients, &remote) {
                        match direct.targets(&domain, log_id).await {
                            Ok(targets) => jobs.push(("mx", direct.slots(), None, targets, which)),
                            Err(outcome) => {
                                for &i in &which {
                                    results[i] = Some(outcome.clone());
                                }
                            }
                        }
                    }
                }
                None => {
                    for &i in &remote {
                        results[i] = Some(Outcome::Transient(
                            "no route to remote domains: set outbound.smart_host".into(),
                        ));
                    }
                }
            }
        }
        for (route, slots, pool, targets, which) in jobs {
            self.deliver_targets(
                route,
                slots,
                pool,
                &targets,
                sender,
                recipients,
                &which,
                &mut body,
                &mut results,
                log_id,
            )
            .await;
        }
        Self::finish(recipients, results, "delivery ended without a result")
    }

    /// Fills any open result with `fallback` and pairs them up. The queue manager logs each
    /// recipient's outcome when it records it.
    fn finish(
        recipients: &[String],
        results: Vec<Option<Outcome>>,
        fallback: &str,
    ) -> Vec<(String, Outcome)> {
        recipients
            .iter()
            .zip(results)
            .map(|(rcpt, outcome)| {
                (
                    rcpt.clone(),
                    outcome.unwrap_or_else(|| Outcome::Transient(fallback.to_string())),
                )
            })
            .collect()
    }

    /// Delivers to the recipients `which` (indexes into `recipients`) through `targets` in
    /// order, filling their slots in `results`. `pool` is the route whose idle connections
    /// may be reused (targets with `reuse`).
    #[allow(clippy::too_many_arguments)]
    async fn deliver_targets<R: Read + Seek + Send>(
        &self,
        route: &'static str,
        slots: &Semaphore,
        pool: Option<&RouteAgent>,
        targets: &[Target],
        sender: &str,
        recipients: &[String],
        which: &[usize],
        body: &mut Body<R>,
        results: &mut [Option<Outcome>],
        log_id: &str,
    ) {
        let settings = &self.inner.settings;
        let Ok(_slot) = slots.acquire().await else {
            return;
        };
        let mut last_error = String::from("no host tried");
        for target in targets {
            let (host, port) = (&target.host, &target.port);
            let pool = pool.filter(|_| target.reuse);
            let mut fresh_tried = false;
            loop {
                let open: Vec<usize> = which
                    .iter()
                    .copied()
                    .filter(|&i| results[i].is_none())
                    .collect();
                if open.is_empty() {
                    return;
                }
                let idle = pool.and_then(|p| p.take_idle(host, *port, settings.idle_timeout));
                let (mut conn, reused) = match idle {
                    Some(conn) => {
                        tracing::debug!(event = "delivery_reuse", queue_id = %log_id,
                            host = %host, port = *port);
                        (conn, true)
                    }
                    None if fresh_tried => break,
                    None => {
                        fresh_tried = true;
                        match smtp::open(settings, route, target, log_id).await {
                            Ok(opened) => {
                                if let Some(report) = &target.report {
                                    report.session(&opened, host, target.addr);
                                }
                                (opened.conn, false)
                            }
                            Err(e) => {
                                if let Some(report) = &target.report {
                                    report.failure(e.tls_failure, host, target.addr);
                                }
                                let e = e.message;
                                let addr = target.addr.map(|a| a.to_string()).unwrap_or_default();
                                tracing::warn!(event = "delivery_host_failed", queue_id = %log_id,
                                    route, host = %host, addr = %addr, port = *port, error = %e);
                                last_error = match target.addr {
                                    Some(ip) => format!("{host}[{ip}]:{port}: {e}"),
                                    None => format!("{host}:{port}: {e}"),
                                };
                                break;
                            }
                        }
                    }
                };
                let rcpts: Vec<String> = open.iter().map(|&i| recipients[i].clone()).collect();
                match smtp::transact(settings, &mut conn, sender, rcpts, body).await {
                    Attempt::Done(outcomes) => {
                        let label = conn.label();
                        for (&i, o) in open.iter().zip(outcomes) {
                            results[i] = Some(match o {
                                RcptOutcome::Delivered(r) => Outcome::Delivered(r),
                                RcptOutcome::Permanent(r) => Outcome::Permanent(r),
                                RcptOutcome::Transient(r) => {
                                    Outcome::Transient(format!("{label} said: {r}"))
                                }
                            });
                        }
                        if let Some(pool) = pool
                            && conn.client.is_ready()
                        {
                            self.put_idle(pool, conn);
                        } else {
                            conn.close().await;
                        }
                        return;
                    }
                    Attempt::Failed {
                        error,
                        settled,
                        no_failover,
                    } => {
                        let label = conn.label();
                        drop(conn);
                        tracing::warn!(event = "delivery_host_failed", queue_id = %log_id,
                            route, host = %host, port = *port, reused, no_failover,
                            error = %error);
                        let error = format!("{label}: {error}");
                        for (&i, s) in open.iter().zip(settled) {
                            match s {
                                Some(RcptOutcome::Permanent(r)) => {
                                    results[i] = Some(Outcome::Permanent(r))
                                }
                                Some(RcptOutcome::Delivered(r)) => {
                                    results[i] = Some(Outcome::Delivered(r))
                                }
                                Some(RcptOutcome::Transient(_)) | None => {}
                            }
                        }
                        if no_failover {
                            for &i in &open {
                                if results[i].is_none() {
                                    results[i] = Some(Outcome::Transient(error.clone()));
                                }
                            }
                            return;
                        }
                        last_error = error;
                        if !reused {
                            break;
                        }
                    }
                }
            }
        }
        for &i in which {
            if results[i].is_none() {
                results[i] = Some(Outcome::Transient(last_error.clone()));
            }
        }
    }

    /// Parks a healthy connection for reuse and makes sure the route's reaper will close it
    /// once it has waited `idle_timeout`.
    fn put_idle(&self, agent: &RouteAgent, conn: Conn) {
        let key = (conn.host.clone(), conn.port);
        let extra = {
            let mut idle = agent.idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(key).or_default();
            if list.len() < self.inner.settings.max_connections_per_route {
                list.push(IdleConn {
                    conn,
                    since: Instant::now(),
                });
                None
            } else {
                Some(conn)
            }
        };
        if let Some(conn) = extra {
            tokio::spawn(conn.close());
            return;
        }
        if !agent.reaper.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(reap_idle(
                weak,
                agent.kind,
                self.inner.settings.idle_timeout,
            ));
        }
    }

    /// Closes every idle connection with QUIT (for shutdown).
    pub async fn close_idle(&self) {
        let mut all = self.inner.local.drain_idle(None);
        if let Some(remote) = &self.inner.remote {
            all.extend(remote.drain_idle(None));
        }
        for conn in all {
            conn.close().await;
        }
    }
}

/// The reaper of one route: sleeps until its oldest idle connection has waited `wait`, closes
/// what has expired, and ends when nothing is parked (or the agent is gone). It holds only a
/// weak reference while sleeping, so it never keeps a dropped agent alive.
async fn reap_idle(weak: Weak<Inner>, kind: RouteKind, wait: Duration) {
    loop {
        let (expired, next) = {
            let Some(inner) = weak.upgrade() else { return };
            let Some(agent) = inner.agent(kind) else {
                return;
            };
            let expired = agent.drain_idle(Some(wait));
            let mut next = agent.oldest_idle();
            if next.is_none() {
                agent.reaper.store(false, Ordering::Release);
                // A connection parked after the check saw the flag still set: keep going.
                next = agent.oldest_idle();
                if next.is_some() && agent.reaper.swap(true, Ordering::AcqRel) {
                    next = None;
                }
            }
            (expired, next)
        };
        for conn in expired {
            conn.close().await;
        }
        match next {
            Some(since) => tokio::time::sleep_until((since + wait).into()).await,
            None => return,
        }
    }
}

impl RouteAgent {
    /// The route's hosts as targets, in order, with the route's TLS plan.
    fn targets(&self) -> Vec<Target> {
        let (plan, policy) = match (&self.route.tls, &self.tls) {
            (TlsPolicy::None, _) | (_, None) => (TlsPlan::None, "none"),
            (TlsPolicy::May, Some(c)) => (TlsPlan::May(c.clone()), "may"),
            (TlsPolicy::Encrypt, Some(c)) => (TlsPlan::Require(c.clone()), "encrypt"),
            (TlsPolicy::Verify { .. }, Some(c)) => (TlsPlan::Require(c.clone()), "verify"),
        };
        self.route
            .hosts
            .iter()
            .map(|(host, port)| Target {
                host: host.clone(),
                port: *port,
                addr: None,
                plan: plan.clone(),
                policy,
                reuse: true,
                report: None,
                auth: self.route.auth.clone(),
            })
            .collect()
    }

    /// When the longest-waiting idle connection was parked.
    fn oldest_idle(&self) -> Option<Instant> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.values().flatten().map(|p| p.since).min()
    }

    /// The most recently parked connection to this host that has not waited too long.
    fn take_idle(&self, host: &str, port: u16, max_idle: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&(host.to_string(), port))?;
        while let Some(parked) = list.pop() {
            if parked.since.elapsed() < max_idle {
                return Some(parked.conn);
            }
            // Too old: the server has likely given up on it; dropping closes it.
        }
        None
    }

    /// Removes idle connections older than `older_than` (all of them with `None`).
    fn drain_idle(&self, older_than: Option<Duration>) -> Vec<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for list in idle.values_mut() {
            let (old, keep): (Vec<IdleConn>, Vec<IdleConn>) = std::mem::take(list)
                .into_iter()
                .partition(|p| older_than.is_none_or(|d| p.since.elapsed() >= d));
            *list = keep;
            out.extend(old.into_iter().map(|p| p.conn));
        }
        idle.retain(|_, l| !l.is_empty());
        out
    }
}

/// The queue manager hands messages to the delivery agent through this.
impl crate::queue::Transport for Delivery {
    fn deliver<'a>(
        &'a self,
        id: &'a crate::spool::QueueId,
        envelope: &'a crate::spool::Envelope,
        recipients: &'a [String],
        body: crate::spool::BodyReader,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Vec<crate::queue::RcptResult>> + Send + 'a>,
    > {
        use crate::queue::RcptResult;
        Box::pin(async move {
            let len = body.len();
            let may_block = !body.in_memory();
            let outcomes = self
                .deliver_from(
                    &envelope.sender,
                    recipients,
                    body,
                    len,
                    may_block,
                    &id.to_string(),
                )
                .await;
            outcomes
                .into_iter()
                .map(|(rcpt, outcome)| match outcome {
                    Outcome::Delivered(r) => RcptResult::Delivered {
                        rcpt,
                        reply: r.one_line(),
                    },
                    Outcome::Transient(reply) => RcptResult::Transient { rcpt, reply },
                    Outcome::Permanent(r) => RcptResult::Permanent {
                        rcpt,
                        reply: r.one_line(),
                    },
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pki::{Pki, pki, temp_file};
    use rustls::pki_types::ServerName;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// A real rustls handshake over an in-memory pipe between `client` and a server
    /// presenting `pki`'s certificate; the client asks for `name`.
    async fn handshake(client: Arc<ClientConfig>, name: &str, pki: &Pki) -> Result<String, String> {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(pki.server_config());
        let server = tokio::spawn(async move { acceptor.accept(far).await.map(|_| ()) });
        let name = ServerName::try_from(name.to_string()).unwrap();
        let result = TlsConnector::from(client)
            .connect(name, near)
            .await
            .map(|s| format!("{:?}", s.get_ref().1.protocol_version()))
            .map_err(|e| e.to_string());
        let _ = server.await;
        result
    }

    #[tokio::test]
    async fn verify_checks_the_chain_and_the_name() {
        let good = pki("mx.example.test");
        let file = temp_file(&good.ca_pem);
        let policy = TlsPolicy::Verify {
            ca_file: Some(file.path().to_path_buf()),
        };
        let config = tls_client_config(&policy).unwrap().unwrap();
        assert_eq!(
            handshake(config.clone(), "mx.example.test", &good).await,
            Ok("Some(TLSv1_3)".into())
        );
        let wrong_name = handshake(config.clone(), "other.example.test", &good)
            .await
            .unwrap_err();
        assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
        let stranger = pki("mx.example.test");
        let wrong_ca = handshake(config, "mx.example.test", &stranger)
            .await
            .unwrap_err();
        assert!(wrong_ca.contains("invalid peer certificate"), "{wrong_ca}");
    }

    #[tokio::test]
    async fn encrypt_and_may_accept_any_certificate() {
        let stranger = pki("mx.example.test");
        for policy in [TlsPolicy::Encrypt, TlsPolicy::May] {
            let config = tls_client_config(&policy).unwrap().unwrap();
            assert!(
                handshake(config, "not-the-name.example", &stranger)
                    .await
                    .is_ok()
            );
        }
        assert!(tls_client_config(&TlsPolicy::None).unwrap().is_none());
    }

    #[test]
    fn bad_ca_files_fail_at_start() {
        let empty = temp_file("");
        let missing = PathBuf::from("/nonexistent/ca.pem");
        for path in [empty.path().to_path_buf(), missing] {
            let route = Route {
                hosts: vec![("127.0.0.1".into(), 25)],
                tls: TlsPolicy::Verify {
                    ca_file: Some(path.clone()),
                },
                auth: None,
            };
            let err = Delivery::new(settings(), route, vec![], None)
                .err()
                .unwrap();
            assert!(err.starts_with("local route: "), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }

    fn settings() -> DeliverySettings {
        DeliverySettings {
            helo_name: "gw.example.net".into(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections_per_route: 1,
        }
    }

    #[test]
    fn settings_are_checked() {
        let route = Route {
            hosts: vec![("127.0.0.1".into(), 25)],
            tls: TlsPolicy::None,
            auth: None,
        };
        let no_hosts = Route {
            hosts: vec![],
            tls: TlsPolicy::None,
            auth: None,
        };
        assert!(Delivery::new(settings(), route.clone(), vec![], None).is_ok());
        assert!(Delivery::new(settings(), no_hosts.clone(), vec![], None).is_err());
        assert!(Delivery::new(settings(), route.clone(), vec![], Some(no_hosts)).is_err());
        let mut s = settings();
        s.helo_name = "gw example".into();
        assert!(
            Delivery::new(s, route.clone(), vec![], None)
                .unwrap_err()
                .starts_with("helo_name")
        );
        let mut s = settings();
        s.max_connections_per_route = 0;
        assert!(Delivery::new(s, route.clone(), vec![], None).is_err());
        let mut s = settings();
        s.command_timeout = Duration::ZERO;
        assert!(Delivery::new(s, route, vec![], None).is_err());
    }

    #[test]
    fn deliver_can_be_spawned() {
        fn assert_send<T: Send + 'static>(_: &T) {}
        let route = Route {
            hosts: vec![("127.0.0.1".into(), 25)],
            tls: TlsPolicy::None,
            auth: None,
        };
        let d = Delivery::new(settings(), route, vec![], None).unwrap();
        let fut = async move {
            let body = std::io::Cursor::new(Vec::new());
            d.deliver("", &["a@b.example".to_string()], body, 0, "Q")
                .await
        };
        assert_send(&fut);
    }

    #[test]
    fn domains_compare_without_case_or_trailing_dot() {
        assert_eq!(domain_of("User@Example.ORG."), Some("example.org".into()));
        assert_eq!(domain_of("\"a@b\"@c.example"), Some("c.example".into()));
        assert_eq!(domain_of("postmaster"), None);
    }
}
