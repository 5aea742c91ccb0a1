//! The delivery agent: hands a spooled message to the next hop over SMTP.
//!
//! [`Delivery::deliver`] takes one message and its recipients and returns one [`Outcome`] per
//! recipient. Recipients whose domain is one of the accepted (local) domains go to the
//! backend route, all others to the smart host; without a smart host they are deferred. The
//! protocol is `ravelin_wire::client`; this module only moves its bytes, with a timeout on
//! the connect ([`DeliverySettings::connect_timeout`]) and on every read and write
//! ([`DeliverySettings::command_timeout`]).
//!
//! Settings read: [`DeliverySettings`] (HELO name, timeouts, connections per route), the two
//! [`Route`]s (hosts in order, TLS policy) and the list of local domains.
//!
//! Failover: the hosts of a route are tried in order. A connection that fails, a greeting
//! other than 2xx, EHLO/HELO refused, a TLS failure where TLS is required, 421, or a
//! connection lost before the body went out moves on to the next host; recipients the
//! previous host already refused permanently keep that answer. Once the body has started,
//! a lost connection defers the recipients still open (the message may have arrived; we do
//! not risk a second copy on another host). When every host fails, every open recipient is
//! deferred with the last error.
//!
//! TLS follows Postfix's `smtp_tls_security_level`: `none` never sends STARTTLS; `may` uses
//! it when offered without checking the certificate, and when the handshake fails retries the
//! same host in plaintext; `encrypt` requires it without checking the certificate; `verify`
//! requires it and checks the chain (against the configured CA file, or the system roots)
//! and the host name. A TLS configuration that cannot be built fails [`Delivery::new`].
//!
//! Connections are reused: after a completed transaction the connection waits in a per-host
//! idle pool for at most [`DeliverySettings::idle_timeout`] and then is closed with QUIT. A
//! reused connection that turns out dead before the body was sent is replaced by a fresh
//! one to the same host without counting as a failure of that host. At most
//! [`DeliverySettings::max_connections_per_route`] deliveries use a route at once.
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
//! Logs: `delivery_connect`, `delivery_tls` (protocol and cipher), `delivery_host_failed`,
//! `delivery_tls_fallback`, and one `delivered` / `deferred` / `bounced` line per recipient,
//! each with `queue_id`.

mod probe;

pub use self::probe::Probe;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ravelin_wire::Reply;
use ravelin_wire::client::{Client, ClientError, RcptOutcome, Step, Transaction, check_path};
use ravelin_wire::data::DotStuffer;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How much of the body is read, stuffed and written at a time.
pub const BODY_CHUNK: usize = 64 * 1024;
/// Read buffer for replies.
const READ_BUF: usize = 8 * 1024;
/// How long QUIT may take when closing a connection we no longer need.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

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
            .finish()
    }
}

struct Inner {
    settings: DeliverySettings,
    local_domains: Vec<String>,
    local: RouteAgent,
    remote: Option<RouteAgent>,
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

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One open SMTP session.
struct Conn {
    stream: Stream,
    client: Client,
    host: String,
    port: u16,
    buf: Box<[u8]>,
}

/// Why a session step failed.
#[derive(Debug)]
enum ConnError {
    Client(ClientError),
    Io(String),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Client(e) => e.fmt(f),
            ConnError::Io(e) => f.write_str(e),
        }
    }
}

/// Runs an I/O future under a time limit, naming what timed out.
async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out after {} ms", limit.as_millis())),
    }
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
}

impl Conn {
    /// Does what the client asks (writes, reads) until it needs a decision from us.
    async fn step(&mut self, limit: Duration) -> Result<Step, ConnError> {
        loop {
            match self.client.poll().map_err(ConnError::Client)? {
                Step::Send(bytes) => timed(limit, "write", self.stream.write_all(&bytes))
                    .await
                    .map_err(ConnError::Io)?,
                Step::Read => {
                    let n = timed(limit, "read", self.stream.read(&mut self.buf))
                        .await
                        .map_err(ConnError::Io)?;
                    if n == 0 {
                        self.client.eof();
                    } else {
                        self.client.feed(&self.buf[..n]);
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// Ends the session with QUIT (best effort) and drops the connection.
    async fn close(mut self) {
        if self.client.quit().is_ok() {
            let _ = self.step(QUIT_TIMEOUT).await;
        }
    }

    fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The message body: a seekable reader and what we learned about it.
struct Body<R> {
    reader: R,
    start: u64,
    len: u64,
    eight_bit: Option<bool>,
    /// Reads may wait for the disk (so they leave the runtime's worker thread).
    may_block: bool,
}

impl<R: Read + Seek> Body<R> {
    fn rewind(&mut self) -> io::Result<()> {
        self.reader.seek(SeekFrom::Start(self.start)).map(|_| ())
    }

    fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let reader = &mut self.reader;
        let mut read = || loop {
            match reader.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        };
        if !self.may_block {
            return read();
        }
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(read),
            _ => read(),
        }
    }

    /// Whether any octet is above 127 (scanned once, on first need).
    fn eight_bit(&mut self) -> io::Result<bool> {
        if let Some(v) = self.eight_bit {
            return Ok(v);
        }
        self.rewind()?;
        let mut buf = vec![0u8; BODY_CHUNK];
        let mut found = false;
        loop {
            let n = self.read_chunk(&mut buf)?;
            if n == 0 {
                break;
            }
            if !buf[..n].is_ascii() {
                found = true;
                break;
            }
        }
        self.eight_bit = Some(found);
        Ok(found)
    }
}

/// How one attempt at a transaction on one connection ended.
enum Attempt {
    /// The server answered for every recipient.
    Done(Vec<RcptOutcome>),
    Failed {
        error: String,
        /// Answers that are already final, one slot per recipient of the attempt.
        settled: Vec<Option<RcptOutcome>>,
        /// Part of the body may have reached the server, or the failure is ours (reading
        /// the message): do not try another host.
        no_failover: bool,
    },
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
            }),
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
        if !local.is_empty() {
            self.deliver_route(
                &self.inner.local,
                sender,
                recipients,
                &local,
                &mut body,
                &mut results,
                log_id,
            )
            .await;
        }
        if !remote.is_empty() {
            match &self.inner.remote {
                Some(agent) => {
                    self.deliver_route(
                        agent,
                        sender,
                        recipients,
                        &remote,
                        &mut body,
                        &mut results,
                        log_id,
                    )
                    .await
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

    /// Delivers to the recipients `which` (indexes into `recipients`) over one route,
    /// filling their slots in `results`.
    #[allow(clippy::too_many_arguments)]
    async fn deliver_route<R: Read + Seek + Send>(
        &self,
        agent: &RouteAgent,
        sender: &str,
        recipients: &[String],
        which: &[usize],
        body: &mut Body<R>,
        results: &mut [Option<Outcome>],
        log_id: &str,
    ) {
        let settings = &self.inner.settings;
        let Ok(_slot) = agent.slots.acquire().await else {
            return;
        };
        let mut last_error = String::from("no host tried");
        for (host, port) in &agent.route.hosts {
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
                let (mut conn, reused) = match agent.take_idle(host, *port, settings.idle_timeout) {
                    Some(conn) => {
                        tracing::debug!(event = "delivery_reuse", queue_id = %log_id,
                            host = %host, port = *port);
                        (conn, true)
                    }
                    None if fresh_tried => break,
                    None => {
                        fresh_tried = true;
                        match self.open(agent, host, *port, log_id).await {
                            Ok(conn) => (conn, false),
                            Err(e) => {
                                tracing::warn!(event = "delivery_host_failed", queue_id = %log_id,
                                    route = agent.kind.name(), host = %host, port = *port, error = %e);
                                last_error = format!("{host}:{port}: {e}");
                                break;
                            }
                        }
                    }
                };
                let rcpts: Vec<String> = open.iter().map(|&i| recipients[i].clone()).collect();
                match self.transact(&mut conn, sender, rcpts, body).await {
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
                        if conn.client.is_ready() {
                            self.put_idle(agent, conn);
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
                            route = agent.kind.name(), host = %host, port = *port, reused, no_failover,
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

    /// Connects, reads the greeting, says EHLO and applies the route's TLS policy.
    async fn open(
        &self,
        agent: &RouteAgent,
        host: &str,
        port: u16,
        log_id: &str,
    ) -> Result<Conn, String> {
        let conn = self.connect(agent, host, port, log_id).await?;
        let Some(tls) = &agent.tls else {
            return Ok(conn);
        };
        let required = !matches!(agent.route.tls, TlsPolicy::May);
        if !conn.client.capabilities().starttls {
            if required {
                conn.close().await;
                return Err("STARTTLS required but not offered".into());
            }
            return Ok(conn);
        }
        match self.starttls(conn, tls, log_id).await {
            Ok(conn) => Ok(conn),
            Err(e) if required => Err(e),
            Err(e) => {
                tracing::warn!(event = "delivery_tls_fallback", queue_id = %log_id, host = %host,
                    port, error = %e);
                self.connect(agent, host, port, log_id).await
            }
        }
    }

    async fn connect(
        &self,
        agent: &RouteAgent,
        host: &str,
        port: u16,
        log_id: &str,
    ) -> Result<Conn, String> {
        let settings = &self.inner.settings;
        let tcp = timed(
            settings.connect_timeout,
            "connect",
            TcpStream::connect((host, port)),
        )
        .await?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(event = "delivery_connect", queue_id = %log_id, route = agent.kind.name(),
            host = %host, port, peer = %peer);
        let client = Client::new(&settings.helo_name).map_err(|e| e.to_string())?;
        let mut conn = Conn {
            stream: Stream::Plain(tcp),
            client,
            host: host.to_string(),
            port,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
        };
        match conn.step(settings.command_timeout).await {
            Ok(Step::Ready) => Ok(conn),
            Ok(other) => Err(format!("unexpected step {other:?} while opening")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// STARTTLS and the handshake; any failure (refusal included) is an error.
    async fn starttls(
        &self,
        mut conn: Conn,
        tls: &Arc<ClientConfig>,
        log_id: &str,
    ) -> Result<Conn, String> {
        let limit = self.inner.settings.command_timeout;
        conn.client.starttls().map_err(|e| e.to_string())?;
        match conn.step(limit).await {
            Ok(Step::StartTls) => {}
            Ok(Step::StartTlsRefused(reply)) => {
                conn.close().await;
                return Err(format!("STARTTLS refused: {reply}"));
            }
            Ok(other) => return Err(format!("unexpected step {other:?} after STARTTLS")),
            Err(e) => return Err(e.to_string()),
        }
        let Conn {
            stream,
            mut client,
            host,
            port,
            buf,
        } = conn;
        let Stream::Plain(tcp) = stream else {
            return Err("STARTTLS on a connection that is already encrypted".into());
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
        let connector = TlsConnector::from(tls.clone());
        let stream = timed(limit, "TLS handshake", connector.connect(name, tcp)).await?;
        let (_, session) = stream.get_ref();
        let protocol = session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let cipher = session
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default();
        tracing::info!(event = "delivery_tls", queue_id = %log_id, host = %host, port,
            protocol = %protocol, cipher = %cipher);
        client.tls_established().map_err(|e| e.to_string())?;
        let mut conn = Conn {
            stream: Stream::Tls(Box::new(stream)),
            client,
            host,
            port,
            buf,
        };
        match conn.step(limit).await {
            Ok(Step::Ready) => Ok(conn),
            Ok(other) => Err(format!("unexpected step {other:?} after TLS")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One transaction on an open connection.
    async fn transact<R: Read + Seek + Send>(
        &self,
        conn: &mut Conn,
        sender: &str,
        recipients: Vec<String>,
        body: &mut Body<R>,
    ) -> Attempt {
        let limit = self.inner.settings.command_timeout;
        let n = recipients.len();
        let failed = |error: String, settled: Vec<Option<RcptOutcome>>, no_failover: bool| {
            let mut settled = settled;
            settled.resize(n, None);
            Attempt::Failed {
                error,
                settled,
                no_failover,
            }
        };
        let eight_bit = if conn.client.capabilities().eightbitmime {
            match body.eight_bit() {
                Ok(v) => v,
                Err(e) => return failed(format!("cannot read the message: {e}"), Vec::new(), true),
            }
        } else {
            false
        };
        let tx = Transaction {
            sender: sender.to_string(),
            recipients,
            size: Some(body.len),
            eight_bit,
        };
        if let Err(e) = conn.client.begin(tx) {
            // Addresses were checked before; this is a bug, not the server's doing.
            return failed(e.to_string(), Vec::new(), true);
        }
        let mut body_started = false;
        loop {
            match conn.step(limit).await {
                Ok(Step::Done(outcomes)) => return Attempt::Done(outcomes),
                Ok(Step::SendBody) => {
                    body_started = true;
                    if let Err(e) = self.send_body(conn, body).await {
                        return failed(e, conn.client.settled(), true);
                    }
                    if let Err(e) = conn.client.body_sent() {
                        return failed(e.to_string(), conn.client.settled(), true);
                    }
                }
                Ok(other) => {
                    return failed(
                        format!("unexpected step {other:?}"),
                        conn.client.settled(),
                        body_started,
                    );
                }
                Err(e) => return failed(e.to_string(), conn.client.settled(), body_started),
            }
        }
    }

    async fn send_body<R: Read + Seek + Send>(
        &self,
        conn: &mut Conn,
        body: &mut Body<R>,
    ) -> Result<(), String> {
        let limit = self.inner.settings.command_timeout;
        body.rewind()
            .map_err(|e| format!("cannot read the message: {e}"))?;
        let mut stuffer = DotStuffer::new();
        let mut chunk = vec![0u8; BODY_CHUNK];
        // Stuffed output waits here until it fills a chunk, so the last piece of the body and
        // the final dot leave in one write (one segment for a small message).
        let mut out = Vec::with_capacity(2 * BODY_CHUNK + BODY_CHUNK / 16);
        let mut total: u64 = 0;
        loop {
            let n = body
                .read_chunk(&mut chunk)
                .map_err(|e| format!("cannot read the message: {e}"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            stuffer.push(&chunk[..n], &mut out);
            if out.len() >= BODY_CHUNK {
                timed(limit, "write body", conn.stream.write_all(&out)).await?;
                out.clear();
            }
        }
        stuffer.finish(&mut out);
        timed(limit, "write body", conn.stream.write_all(&out)).await?;
        if total != body.len {
            tracing::warn!(
                event = "delivery_size_mismatch",
                announced = body.len,
                sent = total
            );
        }
        Ok(())
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
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::ServerConfig;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::PrivateKeyDer;
    use tokio_rustls::TlsAcceptor;

    /// A private CA and a server certificate it issued for `name`.
    struct Pki {
        ca_pem: String,
        leaf: CertificateDer<'static>,
        key: Vec<u8>,
    }

    fn pki(name: &str) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            leaf: leaf.der().clone(),
            key: key.serialize_der(),
        }
    }

    /// A real rustls handshake over an in-memory pipe between `client` and a server
    /// presenting `pki`'s certificate; the client asks for `name`.
    async fn handshake(client: Arc<ClientConfig>, name: &str, pki: &Pki) -> Result<String, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.leaf.clone()],
                PrivateKeyDer::Pkcs8(pki.key.clone().into()),
            )
            .unwrap();
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(Arc::new(server));
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

    fn ca_file(pem: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, pem.as_bytes()).unwrap();
        f
    }

    #[tokio::test]
    async fn verify_checks_the_chain_and_the_name() {
        let good = pki("mx.example.test");
        let file = ca_file(&good.ca_pem);
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
        let empty = ca_file("");
        let missing = PathBuf::from("/nonexistent/ca.pem");
        for path in [empty.path().to_path_buf(), missing] {
            let route = Route {
                hosts: vec![("127.0.0.1".into(), 25)],
                tls: TlsPolicy::Verify {
                    ca_file: Some(path.clone()),
                },
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
        };
        let no_hosts = Route {
            hosts: vec![],
            tls: TlsPolicy::None,
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
