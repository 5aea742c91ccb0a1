//! One SMTP session over one connection: connect, greeting, EHLO, STARTTLS under a
//! [`TlsPlan`], the transaction, the body, QUIT. The protocol is `ravelin_wire::client`; this
//! module only moves its bytes, with a timeout on the connect
//! ([`DeliverySettings::connect_timeout`]) and on every read and write
//! ([`DeliverySettings::command_timeout`]).
//!
//! TLS plans ([`TlsPlan`]): `None` never sends STARTTLS; `May` uses it when offered and, when
//! the handshake fails, reconnects to the same address in plaintext; `Require` fails the
//! host when STARTTLS is not offered, refused or the handshake (certificate check included)
//! fails; `Testing` (MTA-STS `testing`) tries a verified handshake and, when only the
//! verification fails, reconnects and continues as `May`, reporting the failure.
//!
//! How it fails: every step returns an error text naming what failed (connect, greeting, TLS,
//! a reply); [`Attempt::Failed`] says which recipients already have a final answer and whether
//! another host may be tried. The body is read in [`BODY_CHUNK`] pieces and written through
//! `DotStuffer`; it is never held whole.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ravelin_wire::client::{Client, ClientError, RcptOutcome, Step, Transaction};
use ravelin_wire::data::DotStuffer;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::DeliverySettings;

/// How much of the body is read, stuffed and written at a time.
pub const BODY_CHUNK: usize = 64 * 1024;
/// Read buffer for replies.
const READ_BUF: usize = 8 * 1024;
/// How long QUIT may take when closing a connection we no longer need.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do about STARTTLS on one connection.
#[derive(Clone)]
pub(crate) enum TlsPlan {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered; plaintext when not offered or when the handshake fails.
    May(Arc<ClientConfig>),
    /// STARTTLS required and the handshake (with the configuration's checks) must succeed.
    Require(Arc<ClientConfig>),
    /// MTA-STS `testing`: try `verified`; when it fails, deliver with `fallback` as `May`.
    Testing {
        verified: Arc<ClientConfig>,
        fallback: Arc<ClientConfig>,
    },
}

/// One place to try: a host name (for TLS and logs), a port, an address when known, and the
/// TLS plan that applies to it.
#[derive(Clone)]
pub(crate) struct Target {
    /// The host name: the TLS server name, what certificates are checked against, and the
    /// key of the idle pool.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Where to connect; `None` resolves `host` with the system resolver.
    pub(crate) addr: Option<IpAddr>,
    pub(crate) plan: TlsPlan,
    /// The TLS policy's name for logs: none, may, encrypt, verify, dane, dane-unusable,
    /// mta-sts, mta-sts-testing, opportunistic.
    pub(crate) policy: &'static str,
    /// Whether connections may be parked and reused (routes with fixed hosts).
    pub(crate) reuse: bool,
    /// Where the TLS result of a session is counted (TLS-RPT), when anywhere.
    pub(crate) report: Option<super::tlsrpt::Recorder>,
    /// The login, for a next hop that wants AUTH (a smart host).
    pub(crate) auth: Option<Arc<super::Credentials>>,
}

/// What TLS gave one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TlsResult {
    /// No TLS (not offered, or not wanted).
    Plaintext,
    /// Encrypted; `verified` says whether the certificate was authenticated under the
    /// plan's policy (a tolerated verification failure is in [`Opened::tolerated`]).
    Tls { description: String, verified: bool },
}

/// Why a connection could not be opened, and the TLS-RPT result type when TLS was the cause.
#[derive(Debug, Clone)]
pub(crate) struct OpenError {
    pub(crate) message: String,
    pub(crate) tls_failure: Option<&'static str>,
}

impl OpenError {
    fn other(message: impl Into<String>) -> Self {
        OpenError {
            message: message.into(),
            tls_failure: None,
        }
    }

    fn tls(message: impl Into<String>, kind: &'static str) -> Self {
        OpenError {
            message: message.into(),
            tls_failure: Some(kind),
        }
    }
}

/// The TLS-RPT (RFC 8460) result type for a failed TLS handshake.
pub(crate) fn tls_failure_kind(error: &str) -> &'static str {
    if error.contains("NotValidForName") || error.contains("not valid for name") {
        "certificate-host-mismatch"
    } else if error.contains("Expired") || error.contains("expired") {
        "certificate-expired"
    } else if error.contains("UnknownIssuer") || error.contains("unknown issuer") {
        "certificate-not-trusted"
    } else {
        "validation-failure"
    }
}
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One open SMTP session.
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) client: Client,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The address connected to.
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) buf: Box<[u8]>,
}

/// Why a session step failed.
#[derive(Debug)]
pub(crate) enum ConnError {
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
pub(crate) async fn timed<T>(
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
    pub(crate) async fn step(&mut self, limit: Duration) -> Result<Step, ConnError> {
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
    pub(crate) async fn close(mut self) {
        if self.client.quit().is_ok() {
            let _ = self.step(QUIT_TIMEOUT).await;
        }
    }

    pub(crate) fn label(&self) -> String {
        match self.peer {
            Some(peer) if peer.ip().to_string() != self.host => {
                format!("{}[{}]:{}", self.host, peer.ip(), self.port)
            }
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// The message body: a seekable reader and what we learned about it.
pub(crate) struct Body<R> {
    pub(crate) reader: R,
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) eight_bit: Option<bool>,
    /// Reads may wait for the disk (so they leave the runtime's worker thread).
    pub(crate) may_block: bool,
}

impl<R: Read + Seek> Body<R> {
    pub(crate) fn rewind(&mut self) -> io::Result<()> {
        self.reader.seek(SeekFrom::Start(self.start)).map(|_| ())
    }

    pub(crate) fn read_chunk(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
pub(crate) enum Attempt {
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

/// Whether a policy authenticates the server (a completed handshake under it is "verified").
fn authenticates(policy: &str) -> bool {
    matches!(policy, "verify" | "dane" | "mta-sts" | "mta-sts-testing")
}

/// An open session and what TLS gave it.
pub(crate) struct Opened {
    pub(crate) conn: Conn,
    pub(crate) tls: TlsResult,
    /// A TLS failure that was tolerated (MTA-STS `testing`): its TLS-RPT result type.
    pub(crate) tolerated: Option<&'static str>,
}

/// Connects, reads the greeting, says EHLO, applies the target's TLS plan and, when the
/// target has a login, authenticates (inside TLS only).
pub(crate) async fn open(
    settings: &DeliverySettings,
    route: &'static str,
    target: &Target,
    log_id: &str,
) -> Result<Opened, OpenError> {
    let mut opened = open_tls(settings, route, target, log_id).await?;
    if let Some(auth) = &target.auth {
        authenticate(settings, &mut opened.conn, auth, log_id).await?;
    }
    Ok(opened)
}

/// AUTH PLAIN with `auth`; refused (or not offered) is an error of this host, so the mail
/// is deferred, never bounced, for what is a configuration problem. The password is never
/// sent before TLS and never logged.
async fn authenticate(
    settings: &DeliverySettings,
    conn: &mut Conn,
    auth: &super::Credentials,
    log_id: &str,
) -> Result<(), OpenError> {
    if !conn.client.is_tls() {
        return Err(OpenError::other(
            "the next hop wants AUTH but the session is not encrypted: the password is not sent",
        ));
    }
    conn.client
        .auth_plain(&auth.user, auth.password.expose())
        .map_err(|e| OpenError::other(format!("AUTH as {}: {e}", auth.user)))?;
    match conn.step(settings.command_timeout).await {
        Ok(Step::Ready) => {
            tracing::info!(event = "delivery_auth", queue_id = %log_id, host = %conn.host,
                user = %auth.user, result = "success");
            Ok(())
        }
        Ok(Step::AuthRefused(reply)) => {
            tracing::warn!(event = "delivery_auth", queue_id = %log_id, host = %conn.host,
                user = %auth.user, result = "failure", reply = %reply.one_line());
            Err(OpenError::other(format!(
                "AUTH as {} refused: {}",
                auth.user,
                reply.one_line()
            )))
        }
        Ok(other) => Err(OpenError::other(format!(
            "unexpected step {other:?} after AUTH"
        ))),
        Err(e) => Err(OpenError::other(e.to_string())),
    }
}

/// Connects, reads the greeting, says EHLO and applies the target's TLS plan.
async fn open_tls(
    settings: &DeliverySettings,
    route: &'static str,
    target: &Target,
    log_id: &str,
) -> Result<Opened, OpenError> {
    let conn = connect(settings, route, target, log_id)
        .await
        .map_err(OpenError::other)?;
    let (config, required, fallback) = match &target.plan {
        TlsPlan::None => {
            return Ok(Opened {
                conn,
                tls: TlsResult::Plaintext,
                tolerated: None,
            });
        }
        TlsPlan::May(config) => (config, false, None),
        TlsPlan::Require(config) => (config, true, None),
        TlsPlan::Testing { verified, fallback } => (verified, false, Some(fallback)),
    };
    let peer = conn.label();
    if !conn.client.capabilities().starttls {
        if required {
            conn.close().await;
            log_tls_failure(log_id, target, &peer, "STARTTLS required but not offered");
            return Err(OpenError::tls(
                "STARTTLS required but not offered",
                "starttls-not-supported",
            ));
        }
        log_tls(log_id, target, &peer, "plaintext", "");
        let tolerated = fallback.map(|_| "starttls-not-supported");
        return Ok(Opened {
            conn,
            tls: TlsResult::Plaintext,
            tolerated,
        });
    }
    let error = match starttls(settings, conn, config).await {
        Ok((conn, description)) => {
            let verified = authenticates(target.policy);
            let verification = if verified { "verified" } else { "unverified" };
            log_tls(log_id, target, &peer, verification, &description);
            return Ok(Opened {
                conn,
                tls: TlsResult::Tls {
                    description,
                    verified,
                },
                tolerated: None,
            });
        }
        Err(e) => e,
    };
    log_tls_failure(log_id, target, &peer, &error.message);
    if required {
        return Err(error);
    }
    tracing::warn!(event = "delivery_tls_fallback", queue_id = %log_id, host = %target.host,
        port = target.port, policy = target.policy, error = %error.message);
    let conn = connect(settings, route, target, log_id)
        .await
        .map_err(OpenError::other)?;
    let tolerated = error.tls_failure;
    if let Some(fallback) = fallback
        && conn.client.capabilities().starttls
    {
        match starttls(settings, conn, fallback).await {
            Ok((conn, description)) => {
                log_tls(log_id, target, &peer, "failed-tolerated", &description);
                return Ok(Opened {
                    conn,
                    tls: TlsResult::Tls {
                        description,
                        verified: false,
                    },
                    tolerated,
                });
            }
            Err(_) => {
                let conn = connect(settings, route, target, log_id)
                    .await
                    .map_err(OpenError::other)?;
                log_tls(log_id, target, &peer, "plaintext", "");
                return Ok(Opened {
                    conn,
                    tls: TlsResult::Plaintext,
                    tolerated,
                });
            }
        }
    }
    log_tls(log_id, target, &peer, "plaintext", "");
    Ok(Opened {
        conn,
        tls: TlsResult::Plaintext,
        tolerated: fallback.and(tolerated),
    })
}

/// The `delivery_tls` line of a session: the policy applied and how the server fared.
fn log_tls(log_id: &str, target: &Target, peer: &str, verification: &str, description: &str) {
    tracing::info!(event = "delivery_tls", queue_id = %log_id, host = %target.host,
        peer = %peer, policy = target.policy, verification, tls = %description);
}

fn log_tls_failure(log_id: &str, target: &Target, peer: &str, error: &str) {
    tracing::warn!(event = "delivery_tls", queue_id = %log_id, host = %target.host,
        peer = %peer, policy = target.policy, verification = "failed", error = %error);
}

async fn connect(
    settings: &DeliverySettings,
    route: &'static str,
    target: &Target,
    log_id: &str,
) -> Result<Conn, String> {
    let (host, port) = (target.host.as_str(), target.port);
    let tcp = match target.addr {
        Some(ip) => {
            timed(
                settings.connect_timeout,
                "connect",
                TcpStream::connect(SocketAddr::new(ip, port)),
            )
            .await?
        }
        None => {
            timed(
                settings.connect_timeout,
                "connect",
                TcpStream::connect((host, port)),
            )
            .await?
        }
    };
    let _ = tcp.set_nodelay(true);
    let peer_addr = tcp.peer_addr().ok();
    let peer = peer_addr.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(event = "delivery_connect", queue_id = %log_id, route,
        host = %host, port, peer = %peer);
    let client = Client::new(&settings.helo_name).map_err(|e| e.to_string())?;
    let mut conn = Conn {
        stream: Stream::Plain(tcp),
        client,
        host: host.to_string(),
        port,
        peer: target.addr.and(peer_addr),
        buf: vec![0u8; READ_BUF].into_boxed_slice(),
    };
    match conn.step(settings.command_timeout).await {
        Ok(Step::Ready) => Ok(conn),
        Ok(other) => Err(format!("unexpected step {other:?} while opening")),
        Err(e) => Err(e.to_string()),
    }
}

/// STARTTLS and the handshake; any failure (refusal included) is an error. Returns the
/// session and the negotiated protocol and cipher.
async fn starttls(
    settings: &DeliverySettings,
    mut conn: Conn,
    tls: &Arc<ClientConfig>,
) -> Result<(Conn, String), OpenError> {
    let limit = settings.command_timeout;
    conn.client
        .starttls()
        .map_err(|e| OpenError::other(e.to_string()))?;
    match conn.step(limit).await {
        Ok(Step::StartTls) => {}
        Ok(Step::StartTlsRefused(reply)) => {
            conn.close().await;
            return Err(OpenError::tls(
                format!("STARTTLS refused: {reply}"),
                "starttls-not-supported",
            ));
        }
        Ok(other) => {
            return Err(OpenError::other(format!(
                "unexpected step {other:?} after STARTTLS"
            )));
        }
        Err(e) => return Err(OpenError::other(e.to_string())),
    }
    let Conn {
        stream,
        mut client,
        host,
        port,
        peer,
        buf,
    } = conn;
    let Stream::Plain(tcp) = stream else {
        return Err(OpenError::other(
            "STARTTLS on a connection that is already encrypted",
        ));
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| OpenError::other(format!("TLS server name {host:?}: {e}")))?;
    let connector = TlsConnector::from(tls.clone());
    let stream = timed(limit, "TLS handshake", connector.connect(name, tcp))
        .await
        .map_err(|e| {
            let kind = tls_failure_kind(&e);
            OpenError::tls(e, kind)
        })?;
    let description = ravelin_tls::describe(stream.get_ref().1);
    client
        .tls_established()
        .map_err(|e| OpenError::other(e.to_string()))?;
    let mut conn = Conn {
        stream: Stream::Tls(Box::new(stream)),
        client,
        host,
        port,
        peer,
        buf,
    };
    match conn.step(limit).await {
        Ok(Step::Ready) => Ok((conn, description)),
        Ok(other) => Err(OpenError::other(format!(
            "unexpected step {other:?} after TLS"
        ))),
        Err(e) => Err(OpenError::other(e.to_string())),
    }
}

/// One transaction on an open connection.
pub(crate) async fn transact<R: Read + Seek + Send>(
    settings: &DeliverySettings,
    conn: &mut Conn,
    sender: &str,
    recipients: Vec<String>,
    body: &mut Body<R>,
) -> Attempt {
    let limit = settings.command_timeout;
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
                if let Err(e) = send_body(settings, conn, body).await {
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
    settings: &DeliverySettings,
    conn: &mut Conn,
    body: &mut Body<R>,
) -> Result<(), String> {
    let limit = settings.command_timeout;
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
