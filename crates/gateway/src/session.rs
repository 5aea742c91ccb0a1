//! One SMTP connection: drives a `ravelin_wire::server` session over TCP (and TLS after
//! STARTTLS or on an implicit-TLS listener) and applies the gateway's policy to its decisions.
//!
//! Order of events on a connection: a client in `[screen] block_file` is refused (`554 5.7.1`),
//! then the connection limits and bans; on a `relay` listener, a client outside
//! `outbound.trusted_networks` is refused at once (`554 5.7.1`) and closed; then, on an
//! `inbound` listener, the [`crate::screen`] (greet wait with pregreet detection, reputation
//! score at connect; elsewhere only the instant pregreet check: bytes that arrived before our
//! greeting mean a client that does not wait for replies), greeting, then the command loop.
//! For a screened client the HELO name is scored too, and MAIL is refused with `554 5.7.1`
//! when the connect-time and HELO scores together reach `[dnsbl] threshold`. On `submission` / `submissions` listeners the wire session
//! offers AUTH inside TLS and refuses MAIL before it; AUTH is checked by [`crate::auth`] and
//! logged as `event=auth` with the result and login name (never the password), and the
//! envelope sender must belong to the authenticated user (`553 5.7.1` otherwise), and so must
//! every From field of the message (checked on the header block the cleanup collected, at the
//! end of data, before the message is committed: `553 5.7.1`, nothing stored). Mail from
//! these listeners may go to any domain and is marked outbound in the spool envelope. On
//! inbound listeners MAIL is accepted from anyone; RCPT goes through [`crate::relay`], then
//! the rate limits, then [`crate::recipients`] (unknown: `550 5.1.1`, recorded as harvesting
//! abuse; lookup failed: `450 4.1.1`; after `harvest_threshold` unknown recipients each
//! further RCPT is delayed), then greylisting. DATA
//! opens a spool file that starts with our Received line, the content passes through
//! [`crate::cleanup`] (header limits, the header firewall, DKIM signing on outbound listeners)
//! and streams to disk as it arrives, and the `250` carrying the queue id is sent only after
//! [`crate::spool`] reports the message durable; then the queue manager is told. A write or
//! fsync error answers `452 4.3.1` and leaves nothing behind; a header the cleanup refuses
//! answers `550 5.6.0` (malformed) or `552 5.3.4` (over a limit) at the end of the data.
//!
//! Timeouts: `limits.command_timeout` for each whole command (from the previous reply to the
//! end of the command line, however it is dripped), `limits.data_timeout` for the message
//! data, pushed back by each chunk as far as `limits.min_data_rate` allows (a client that
//! drips its message runs out of time), `limits.session_timeout` for the whole connection; on expiry the client gets
//! `421 4.4.2`. On shutdown the session finishes a transaction in progress and answers the
//! next command with `421 4.3.2`. Every log line carries the session id, and the queue id once
//! one exists. Nothing here panics on client input; I/O errors end the session.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ravelin_wire::address::ReversePath;
use ravelin_wire::server::{CloseReason, Event, ServerConfig, ServerSession, Verdict};
use ravelin_wire::{Reply, date};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{error, info, warn};

use crate::auth::{Authenticator, Outcome};
use crate::checks::auth::{Action, Verifier};
use crate::checks::reputation::{self, Score};
use crate::cleanup::{self, CleanupError, Finished, MessageCleanup, Trace};
use crate::config::{AbuseKind, Cidr, ListenKind};
use crate::queue::QueueHandle;
use crate::recipients::{self, Recipients};
use crate::relay::RelayPolicy;
use crate::screen::{self, Screen, Standing};
use crate::spool::{Direction, Envelope, Incoming, QuarantineInfo, Spool};
use crate::state::greylist::GreyVerdict;
use crate::state::{ConnectionGuard, Decision, Defences, Exceeded, canonical_ip};

/// Bytes read at once between commands: a pipelined batch of commands fits.
const COMMAND_READ_BUF: usize = 2 * 1024;
/// Bytes read at once during DATA.
const DATA_READ_BUF: usize = 16 * 1024;

/// Per-listener settings of the sessions it accepts.
pub struct SessionSettings {
    pub hostname: String,
    pub listener: String,
    /// Protocol limits and extensions; `offer_starttls` / `require_tls` already set.
    pub wire: ServerConfig,
    /// Present when the listener offers STARTTLS or is implicit TLS.
    pub tls: Option<TlsAcceptor>,
    pub implicit_tls: bool,
    pub relay: RelayPolicy,
    /// Whether our Received line shows the client's name and address.
    pub received_client: bool,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Bytes per second of message data that keep a DATA phase going (0: off).
    pub min_data_rate: u64,
    pub session_timeout: Duration,
    /// What the listener is for: relay control, AUTH and the direction of its mail follow.
    pub kind: ListenKind,
    /// Password checks; present on submission listeners.
    pub auth: Option<Arc<Authenticator>>,
    /// The only clients a relay listener serves (`outbound.trusted_networks`).
    pub trusted_networks: Vec<Cidr>,
    /// Header limits, the header firewall and, outbound, DKIM signing.
    pub cleanup: Arc<cleanup::Policy>,
    /// Recipient validation; present on inbound listeners when sources are configured.
    pub recipients: Option<Arc<Recipients>>,
    /// SPF, DKIM, DMARC and ARC at the end of data (inbound listeners, `[checks] enabled`).
    pub checks: Option<Arc<Verifier>>,
}

impl SessionSettings {
    /// Whether mail received here goes out to the world.
    pub fn direction(&self) -> Direction {
        match self.kind {
            ListenKind::Inbound => Direction::Inbound,
            ListenKind::Submission | ListenKind::Submissions | ListenKind::Relay => {
                Direction::Outbound
            }
        }
    }
}

/// What all sessions share.
#[derive(Clone)]
pub struct Shared {
    pub spool: Spool,
    pub queue: QueueHandle,
    /// Bans, rate limits, connection counts and greylisting over the state store.
    pub defences: Arc<Defences>,
    /// Allow and block files, greet wait, reputation scoring.
    pub screen: Arc<Screen>,
    /// Turns true when the server is shutting down.
    pub shutdown: watch::Receiver<bool>,
}

/// A connection that may have been upgraded to TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A short, process-unique session id for logs.
pub fn next_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(date::now_secs);
    format!(
        "{:x}-{}",
        start & 0xff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The transaction being received.
#[derive(Default)]
struct Transaction {
    sender: String,
    /// The sender's domain (`None` for the null sender), for the per-domain rate limits.
    sender_domain: Option<String>,
    recipients: Vec<String>,
    incoming: Option<Incoming>,
    /// The header firewall and signing between the DATA content and the spool file.
    cleanup: Option<MessageCleanup>,
    write_error: Option<io::Error>,
    /// The content is refused (a bad header); the reply waits for the end of the data.
    refusal: Option<Reply>,
}

struct Session<'a> {
    settings: &'a SessionSettings,
    shared: &'a Shared,
    id: String,
    peer: SocketAddr,
    /// Our address the client connected to.
    local: std::net::IpAddr,
    /// On an inbound listener, for a screened client: the connect-time score, to which the
    /// HELO score is added.
    score: Option<Score>,
    /// The score of the last HELO name.
    helo_score: Option<Score>,
    helo: Option<(String, bool)>,
    tls_info: Option<String>,
    /// The login name once AUTH succeeded.
    auth_user: Option<String>,
    tx: Transaction,
    accepted: u32,
    rejected: u32,
    /// Recipients refused as unknown in this session (the harvest tarpit counts them).
    unknown_recipients: u32,
}

/// Serves one accepted connection to its end.
pub async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    settings: Arc<SessionSettings>,
    shared: Shared,
) {
    let id = next_session_id();
    info!(event = "connect", session = %id, client = %peer.ip(), listener = %settings.listener);
    let slot = match admit(&id, peer, &settings, &shared).await {
        Ok(slot) => slot,
        Err(reply) => {
            refuse_at_connect(tcp, &settings, &reply).await;
            info!(event = "disconnect", session = %id, client = %peer.ip(), reason = %reply.one_line(), accepted = 0, rejected = 0);
            return;
        }
    };
    let mut s = Session {
        settings: &settings,
        shared: &shared,
        id,
        peer,
        local: tcp
            .local_addr()
            .map_or(std::net::IpAddr::from([0u8; 4]), |a| a.ip()),
        score: None,
        helo_score: None,
        helo: None,
        tls_info: None,
        auth_user: None,
        tx: Transaction::default(),
        accepted: 0,
        rejected: 0,
        unknown_recipients: 0,
    };
    let reason = s.run(tcp).await;
    // The connection's slot is free once its end is logged.
    drop(slot);
    info!(
        event = "disconnect",
        session = %s.id,
        client = %peer.ip(),
        reason = %reason,
        accepted = s.accepted,
        rejected = s.rejected
    );
}

impl Session<'_> {
    async fn run(&mut self, tcp: TcpStream) -> String {
        let deadline = Instant::now() + self.settings.session_timeout;
        let mut wire = if self.settings.implicit_tls {
            ServerSession::new_tls(self.settings.wire.clone())
        } else {
            ServerSession::new(self.settings.wire.clone())
        };
        let untrusted = self.refuse_untrusted(&mut wire);
        let mut conn = if self.settings.implicit_tls {
            match self.handshake(tcp).await {
                Ok(c) => c,
                Err(e) => return format!("TLS handshake failed: {e}"),
            }
        } else {
            if !untrusted {
                self.screen(&tcp, &mut wire).await;
            }
            Conn::Plain(tcp)
        };
        wire.greet();
        // A small buffer between commands (most sessions are idle or short there), a larger
        // one while a message streams in.
        let mut buf = vec![0u8; COMMAND_READ_BUF];
        let mut shutdown = self.shared.shutdown.clone();
        let mut close_reason: Option<CloseReason> = None;
        // When the command being waited for must be complete: set when the wait begins, kept
        // across partial reads, cleared by each reply. A client that drips a byte at a time
        // cannot stretch one command past command_timeout.
        let mut command_deadline: Option<Instant> = None;
        // When the message data must be complete, unless more of it arrives: each chunk pushes
        // it by size / min_data_rate, never past data_timeout from now.
        let mut data_deadline: Option<Instant> = None;
        loop {
            let mut starttls = false;
            while let Some(ev) = wire.poll() {
                match ev {
                    Event::StartTls => starttls = true,
                    Event::Close(r) => close_reason = Some(r),
                    other => {
                        if let Some(v) = self.handle(other).await {
                            wire.decide(v);
                        }
                    }
                }
            }
            // Recorded before the closing reply leaves, so a client that reconnects at once
            // already meets the ban it earned.
            match &close_reason {
                Some(
                    CloseReason::Framing(_) | CloseReason::Pipelining(_) | CloseReason::Chunking,
                ) => {
                    self.record(AbuseKind::ProtocolAbuse).await;
                }
                Some(CloseReason::TooManyErrors) => {
                    self.record(AbuseKind::TooManyErrors).await;
                }
                _ => {}
            }
            let delay = wire.take_delay();
            if !delay.is_zero() {
                info!(event = "tarpit", session = %self.id, client = %self.peer.ip(), delay_ms = delay.as_millis() as u64);
                tokio::time::sleep(delay).await;
            }
            let out = wire.take_output();
            if !out.is_empty() {
                match timeout(self.settings.command_timeout, conn.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return self.end(&format!("write error: {e}")),
                    Err(_) => return self.end("write timeout"),
                }
                command_deadline = None;
            }
            if let Some(r) = close_reason {
                let _ = timeout(Duration::from_secs(5), conn.shutdown()).await;
                if r.is_abuse() {
                    warn!(event = "protocol_violation", session = %self.id, client = %self.peer.ip(), decision = "disconnect", reason = r.as_str());
                }

                return self.end(r.as_str());
            }
            if starttls {
                let Conn::Plain(tcp) = conn else {
                    return self.end("STARTTLS inside TLS");
                };
                conn = match self.handshake(tcp).await {
                    Ok(c) => c,
                    Err(e) => return self.end(&format!("TLS handshake failed: {e}")),
                };
                wire.tls_established();
                continue;
            }
            let in_data = wire.in_data();
            let (read_deadline, buf_size) = if in_data {
                command_deadline = None;
                let by = *data_deadline
                    .get_or_insert_with(|| Instant::now() + self.settings.data_timeout);
                (by, DATA_READ_BUF)
            } else {
                data_deadline = None;
                let by = *command_deadline
                    .get_or_insert_with(|| Instant::now() + self.settings.command_timeout);
                (by, COMMAND_READ_BUF)
            };
            if buf.len() != buf_size {
                buf = vec![0u8; buf_size];
            }
            let read_deadline = read_deadline.min(deadline);
            tokio::select! {
                r = timeout_at(read_deadline, conn.read(&mut buf)) => match r {
                    Err(_) => wire.timeout(),
                    Ok(Ok(0)) => wire.eof(),
                    Ok(Ok(n)) => {
                        if in_data {
                            data_deadline = Some(self.data_credit(data_deadline, n));
                        }
                        wire.push_input(&buf[..n]);
                    }
                    Ok(Err(e)) => {
                        info!(event = "read_error", session = %self.id, client = %self.peer.ip(), reason = %e);
                        wire.eof();
                    }
                },
                Ok(()) = shutdown.changed() => {
                    if *shutdown.borrow() {
                        wire.shutdown();
                    }
                }
            }
        }
    }

    /// The DATA deadline after `n` more bytes arrived: `n / min_data_rate` seconds later,
    /// never more than `data_timeout` from now (with `min_data_rate = 0`: `data_timeout` from
    /// now, a timeout per read).
    fn data_credit(&self, deadline: Option<Instant>, n: usize) -> Instant {
        let now = Instant::now();
        let cap = now + self.settings.data_timeout;
        match (deadline, self.settings.min_data_rate) {
            (Some(d), rate) if rate > 0 => {
                (d + Duration::from_secs_f64(n as f64 / rate as f64)).min(cap)
            }
            _ => cap,
        }
    }

    /// Before the greeting: on an inbound listener the screen (greet wait, reputation at
    /// connect); elsewhere only the instant pregreet check.
    async fn screen(&mut self, tcp: &TcpStream, wire: &mut ServerSession) {
        let outcome = if self.settings.kind == ListenKind::Inbound {
            self.shared.screen.run(tcp, self.peer.ip(), &self.id).await
        } else {
            screen::instant_check(tcp).await
        };
        match outcome {
            screen::Outcome::Pass(score) => self.score = score,
            screen::Outcome::Pregreet => {
                warn!(event = "pregreet", session = %self.id, client = %self.peer.ip(), decision = "reject", reason = "client talked before the greeting");
                wire.reject_pregreet();
                self.record(AbuseKind::Pregreet).await;
            }
            screen::Outcome::Refuse(score) => {
                let reply = reputation::refusal(self.peer.ip(), &score);
                warn!(event = "refused", session = %self.id, client = %self.peer.ip(), listener = %self.settings.listener, decision = "reject", reason = %reply.one_line());
                wire.refuse_connection(reply);
            }
        }
    }

    /// The refusal of MAIL when the connect-time score and the HELO score together reach
    /// the threshold.
    fn helo_refusal(&self) -> Option<Reply> {
        let (Some(connect), Some(helo)) = (&self.score, &self.helo_score) else {
            return None;
        };
        let mut total = connect.clone();
        total.total = total.total.saturating_add(helo.total);
        total.reasons.extend(helo.reasons.iter().cloned());
        (helo.total != 0 && total.total >= self.shared.screen.threshold())
            .then(|| reputation::refusal(self.peer.ip(), &total))
    }

    /// On a relay listener, refuses a client outside the trusted networks; true if refused.
    fn refuse_untrusted(&self, wire: &mut ServerSession) -> bool {
        let ip = self.peer.ip();
        if self.settings.kind != ListenKind::Relay
            || self
                .settings
                .trusted_networks
                .iter()
                .any(|n| n.contains(ip))
        {
            return false;
        }
        warn!(event = "refused", session = %self.id, client = %ip, listener = %self.settings.listener, decision = "reject", reason = "client not in outbound.trusted_networks");
        wire.refuse_connection(Reply::ext(
            554,
            (5, 7, 1),
            format!("{} Access denied", self.settings.hostname),
        ));
        true
    }

    /// Verifies AUTH credentials and logs the result (never the password).
    async fn authenticate(&mut self, credentials: ravelin_wire::auth::Credentials) -> Verdict {
        let mechanism = credentials.mechanism.as_str();
        let outcome = match &self.settings.auth {
            Some(auth) => auth.authenticate(&credentials).await,
            None => Outcome::Unavailable {
                reason: "no password source configured".into(),
            },
        };
        match outcome {
            Outcome::Accepted { user, source } => {
                info!(event = "auth", session = %self.id, client = %self.peer.ip(), result = "success", user = %user, mechanism, source);
                self.auth_user = Some(user);
                Verdict::Accept
            }
            Outcome::Rejected { reason } => {
                self.rejected += 1;
                warn!(event = "auth", session = %self.id, client = %self.peer.ip(), result = "failure", user = %credentials.authcid, mechanism, reason);
                let reply = Reply::ext(535, (5, 7, 8), "Authentication credentials invalid");
                if self.auth_failed().await {
                    Verdict::RejectAndClose(reply)
                } else {
                    Verdict::Reject(reply)
                }
            }
            Outcome::Unavailable { reason } => {
                warn!(event = "auth", session = %self.id, client = %self.peer.ip(), result = "unavailable", user = %credentials.authcid, mechanism, reason = %reason);
                Verdict::Reject(Reply::ext(
                    454,
                    (4, 7, 0),
                    "Temporary authentication failure",
                ))
            }
        }
    }

    /// Counts a failed AUTH against this client in the ban mechanism; true when it earned a
    /// ban (the session closes now and the client's next connections are refused). The wire
    /// session delays each failure by itself (growing, closing at `limits.auth_failures`);
    /// `[bans.auth_failures] delay` adds to that.
    async fn auth_failed(&self) -> bool {
        matches!(self.record(AbuseKind::AuthFailures).await, Decision::Ban(_))
    }

    /// On a submission listener, the reply refusing a sender the user does not own.
    fn sender_refusal(&self, from: &ReversePath) -> Option<Reply> {
        let (Some(auth), Some(user)) = (&self.settings.auth, &self.auth_user) else {
            return None;
        };
        let owned = match from {
            ReversePath::Null => false,
            ReversePath::Path(p) => auth.may_send_as(user, &p.mailbox.to_string()),
        };
        (!owned).then(|| {
            Reply::ext(
                553,
                (5, 7, 1),
                format!("<{from}>: Sender address rejected: not owned by user {user}"),
            )
        })
    }

    /// For submitted mail, the reply refusing a header block with a From field the user does
    /// not own (`header`: the block as the client sent it, kept by the cleanup).
    fn foreign_from_refusal(&self, header: &[u8]) -> Option<Reply> {
        let (Some(auth), Some(user)) = (&self.settings.auth, &self.auth_user) else {
            return None;
        };
        let mut header = std::borrow::Cow::Borrowed(header);
        if !header.ends_with(b"\r\n\r\n") {
            // A message that is all header: end the block for the parser.
            header.to_mut().extend_from_slice(b"\r\n");
        }
        auth.foreign_from(user, &header).map(|from| {
            Reply::ext(
                553,
                (5, 7, 1),
                format!("From: {from}: Sender address rejected: not owned by user {user}"),
            )
        })
    }

    /// Discards a transaction left unfinished and returns the reason for the log.
    fn end(&mut self, reason: &str) -> String {
        self.tx = Transaction::default();
        reason.to_string()
    }

    async fn handshake(&mut self, tcp: TcpStream) -> io::Result<Conn> {
        let Some(acceptor) = &self.settings.tls else {
            return Err(io::Error::other("no TLS configuration"));
        };
        let tls = timeout(self.settings.command_timeout, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timeout"))??;
        let info = ravelin_tls::describe(tls.get_ref().1);
        info!(event = "tls", session = %self.id, client = %self.peer.ip(), tls = %info);
        self.tls_info = Some(info);
        Ok(Conn::Tls(Box::new(tls)))
    }

    fn queue_id(&self) -> String {
        self.tx
            .incoming
            .as_ref()
            .map(|i| i.id().to_string())
            .unwrap_or_default()
    }

    /// Handles one event; returns the verdict for decision events.
    async fn handle(&mut self, ev: Event) -> Option<Verdict> {
        match ev {
            Event::Helo { name, extended } => {
                if self.score.is_some() {
                    let score = self
                        .shared
                        .screen
                        .helo_score(&name, self.peer.ip(), self.local);
                    info!(event = "helo", session = %self.id, client = %self.peer.ip(), helo = %name, esmtp = extended, score = score.total, checks = %score.describe());
                    self.helo_score = Some(score);
                } else {
                    info!(event = "helo", session = %self.id, client = %self.peer.ip(), helo = %name, esmtp = extended);
                }
                self.helo = Some((name, extended));
                self.tx = Transaction::default();
                None
            }
            Event::Mail { from, .. } => {
                self.tx = Transaction::default();
                (self.tx.sender, self.tx.sender_domain) = match &from {
                    ReversePath::Null => (String::new(), None),
                    ReversePath::Path(p) => (from.to_string(), Some(p.mailbox.domain.to_string())),
                };
                if let Some(reply) = self.helo_refusal() {
                    self.rejected += 1;
                    warn!(event = "mail", session = %self.id, client = %self.peer.ip(), from = %self.tx.sender, decision = "reject", reason = %reply.one_line());
                    self.tx = Transaction::default();
                    return Some(Verdict::Reject(reply));
                }
                if let Some(reply) = self.sender_refusal(&from) {
                    self.rejected += 1;
                    warn!(event = "mail", session = %self.id, client = %self.peer.ip(), from = %self.tx.sender, user = self.auth_user.as_deref().unwrap_or(""), decision = "reject", reason = %reply.one_line());
                    self.tx = Transaction::default();
                    return Some(Verdict::Reject(reply));
                }
                let limits = &self.shared.defences.limits;
                if let Err(e) = limits
                    .message(
                        self.peer.ip(),
                        self.tx.sender_domain.as_deref(),
                        self.auth_user.as_deref(),
                    )
                    .await
                {
                    self.rejected += 1;
                    self.rate_limited(&e, "mail");
                    return Some(Verdict::Reject(rate_limit_reply()));
                }
                info!(event = "mail", session = %self.id, client = %self.peer.ip(), from = %self.tx.sender);
                Some(Verdict::Accept)
            }
            Event::Auth(credentials) => Some(self.authenticate(credentials).await),
            Event::Rcpt { to } => {
                self.harvest_tarpit().await;
                match self.check_recipient(&to) {
                    Ok(rcpt) => Some(self.accept_rcpt(rcpt).await),
                    Err(reply) => {
                        self.rejected += 1;
                        warn!(event = "rcpt", session = %self.id, client = %self.peer.ip(), from = %self.tx.sender, to = %to, decision = "reject", reason = %reply.one_line());
                        Some(match self.record(AbuseKind::RelayProbing).await {
                            Decision::Ban(_) => Verdict::RejectAndClose(reply),
                            _ => Verdict::Reject(reply),
                        })
                    }
                }
            }
            Event::DataStart => Some(self.start_data()),
            Event::Data(chunk) => {
                let tx = &mut self.tx;
                if let (Some(inc), Some(cleanup), None, None) = (
                    &mut tx.incoming,
                    &mut tx.cleanup,
                    &tx.write_error,
                    &tx.refusal,
                ) {
                    let result = cleanup.push(&chunk, &mut |bytes| inc.write(bytes));
                    tx.note(result.map(drop));
                }
                None
            }
            Event::DataEnd { size } => Some(self.end_data(size).await),
            Event::DataRejected { reply } => {
                self.rejected += 1;
                warn!(event = "data", session = %self.id, queue_id = %self.queue_id(), client = %self.peer.ip(), decision = "reject", reason = %reply.one_line());
                self.tx = Transaction::default();
                None
            }
            Event::Refused { command, reply } => {
                info!(event = "refused", session = %self.id, client = %self.peer.ip(), command = %command, reason = %reply.one_line());
                None
            }
            Event::StartTls | Event::Close(_) => None,
        }
    }

    /// Rate limit and greylisting of a recipient the relay policy accepted.
    async fn accept_rcpt(&mut self, rcpt: String) -> Verdict {
        let d = self.shared.defences.clone();
        let client = self.peer.ip();
        if let Err(e) = d
            .limits
            .recipient(
                client,
                self.tx.sender_domain.as_deref(),
                self.auth_user.as_deref(),
            )
            .await
        {
            self.rejected += 1;
            self.rate_limited(&e, "rcpt");
            return Verdict::Reject(rate_limit_reply());
        }
        if let Some(verdict) = self.validate_recipient(&rcpt).await {
            return verdict;
        }
        if let Some(g) = &d.greylist
            && let GreyVerdict::Defer(_) = g.check(client, &self.tx.sender, &rcpt).await
        {
            self.rejected += 1;
            info!(event = "rcpt", session = %self.id, client = %client, from = %self.tx.sender, to = %rcpt, decision = "defer", reason = "greylisted");
            return Verdict::Reject(Reply::ext(
                450,
                (4, 7, 1),
                "Greylisted, please try again later",
            ));
        }
        info!(event = "rcpt", session = %self.id, client = %client, to = %rcpt, decision = "accept");
        self.tx.recipients.push(rcpt);
        Verdict::Accept
    }

    /// Recipient validation; `None` when the recipient may go on (known, or not checked).
    async fn validate_recipient(&mut self, rcpt: &str) -> Option<Verdict> {
        let checker = self.settings.recipients.clone()?;
        let client = self.peer.ip();
        match checker.check(rcpt, &self.id).await {
            recipients::Verdict::Known { .. } => None,
            recipients::Verdict::Unknown { sources } => {
                self.rejected += 1;
                self.unknown_recipients += 1;
                let reply = recipients::unknown_reply(rcpt);
                warn!(event = "recipient_unknown", session = %self.id, client = %client, from = %self.tx.sender, to = %rcpt, source = %sources, count = self.unknown_recipients, decision = "reject", reason = %reply.one_line());
                Some(match self.record(AbuseKind::Harvesting).await {
                    Decision::Ban(_) => Verdict::RejectAndClose(reply),
                    _ => Verdict::Reject(reply),
                })
            }
            recipients::Verdict::Unavailable { source, reason } => {
                self.rejected += 1;
                let reply = recipients::unavailable_reply(rcpt);
                warn!(event = "recipient_unverified", session = %self.id, client = %client, from = %self.tx.sender, to = %rcpt, source, reason = %reason, decision = "tempfail");
                Some(Verdict::Reject(reply))
            }
        }
    }

    /// Delays an RCPT of a session that has had too many unknown recipients.
    async fn harvest_tarpit(&self) {
        let Some(checker) = &self.settings.recipients else {
            return;
        };
        let delay = checker.tarpit(self.unknown_recipients);
        if !delay.is_zero() {
            info!(event = "tarpit", session = %self.id, client = %self.peer.ip(), delay_ms = delay.as_millis() as u64, reason = "unknown recipients", count = self.unknown_recipients);
            tokio::time::sleep(delay).await;
        }
    }

    fn rate_limited(&self, e: &Exceeded, command: &str) {
        warn!(event = "rate_limit", session = %self.id, client = %self.peer.ip(), command, limit = e.limit, subject = %e.subject, count = e.count, max = e.max, decision = "tempfail");
        // The first refusal of an account in a window is an error line, so an alert: an
        // account over its limit is most often one whose password was stolen.
        if let Some(user) = &e.user
            && e.count == u64::from(e.max) + 1
        {
            error!(event = "user_over_limit", session = %self.id, client = %self.peer.ip(), user = %user, limit = e.limit, max = e.max, decision = "tempfail until the window passes", reason = "an account over its sending limit is often one whose password was stolen: check its logins (event auth) and its mail (ravelin queue list), then change its password");
        }
    }

    /// Records an abuse event of this client; sleeps through a tarpit delay. A ban takes
    /// effect at the client's next connection (the caller may also close this one).
    async fn record(&self, kind: AbuseKind) -> Decision {
        let decision = self.shared.defences.bans.record(self.peer.ip(), kind).await;
        if let Decision::Delay(d) = &decision {
            tokio::time::sleep(*d).await;
        }
        decision
    }

    /// Relay control: outbound listeners may send anywhere, inbound ones to our domains only.
    fn check_recipient(&self, to: &ravelin_wire::address::ForwardPath) -> Result<String, Reply> {
        match self.settings.direction() {
            Direction::Outbound => self.settings.relay.check_outbound(to),
            Direction::Inbound => self.settings.relay.check(to),
        }
    }

    fn start_data(&mut self) -> Verdict {
        let (helo, extended) = match &self.helo {
            Some((h, e)) => (Some(h.as_str()), *e),
            None => (None, false),
        };
        let envelope = Envelope {
            sender: self.tx.sender.clone(),
            recipients: self.tx.recipients.clone(),
            received_at: date::now_secs(),
            client: Some(self.peer.ip().to_string()),
            helo: helo.map(str::to_string),
            listener: self.settings.listener.clone(),
            session: self.id.clone(),
            size: 0,
            direction: self.settings.direction(),
            auth_user: self.auth_user.clone(),
        };
        let mut incoming = match self.shared.spool.create(envelope) {
            Ok(i) => i,
            Err(e) => {
                warn!(event = "spool_error", session = %self.id, client = %self.peer.ip(), reason = %e);
                return Verdict::Reject(storage_error());
            }
        };
        let header = cleanup::received(&Trace {
            hostname: &self.settings.hostname,
            helo,
            extended,
            client_ip: Some(self.peer.ip()),
            show_client: self.settings.received_client,
            tls: self.tls_info.as_deref(),
            queue_id: &incoming.id().to_string(),
            recipients: &self.tx.recipients,
            now: date::now_secs(),
        });
        if let Err(e) = incoming.write(header.as_bytes()) {
            self.tx.write_error = Some(e);
        }
        self.tx.incoming = Some(incoming);
        let cleanup = MessageCleanup::new(self.settings.cleanup.clone());
        // Submitted mail: the From fields are checked against the user at the end of data.
        self.tx.cleanup = Some(if self.auth_user.is_some() {
            cleanup.keeping_header()
        } else {
            cleanup
        });
        Verdict::Accept
    }

    async fn end_data(&mut self, size: u64) -> Verdict {
        let mut tx = std::mem::take(&mut self.tx);
        let Some(mut incoming) = tx.incoming.take() else {
            return Verdict::Reject(storage_error());
        };
        let id = *incoming.id();
        let mut quarantine = None;
        if let (Some(cleanup), None, None) = (tx.cleanup.take(), &tx.write_error, &tx.refusal) {
            let result = match cleanup.finish(&mut |bytes| incoming.write(bytes)) {
                Ok(Finished::Written(report)) => Ok(report),
                Ok(Finished::Held(held)) => match self.check(&id, &tx, held, &mut incoming).await {
                    Ok((report, Action::Deliver, _)) => Ok(report),
                    Ok((_, Action::Reject(domain), _)) => {
                        drop(incoming);
                        self.rejected += 1;
                        let reply = Reply::ext(
                            550,
                            (5, 7, 1),
                            format!("Email rejected per DMARC policy for {domain}"),
                        );
                        warn!(event = "data", session = %self.id, queue_id = %id, client = %self.peer.ip(), from = %tx.sender, decision = "reject", reason = %reply.one_line());
                        return Verdict::Reject(reply);
                    }
                    Ok((report, Action::Quarantine(domain), header)) => {
                        quarantine = Some(QuarantineInfo {
                            reason: format!("DMARC policy quarantine for {domain}"),
                            time: date::now_secs(),
                            verdict: header,
                        });
                        Ok(report)
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            if let Ok(report) = &result {
                self.log_cleanup(&id, report);
                if let Some(reply) = report
                    .header
                    .as_deref()
                    .and_then(|h| self.foreign_from_refusal(h))
                {
                    drop(incoming);
                    self.rejected += 1;
                    warn!(event = "data", session = %self.id, queue_id = %id, client = %self.peer.ip(), from = %tx.sender, user = self.auth_user.as_deref().unwrap_or(""), decision = "reject", reason = %reply.one_line());
                    return Verdict::Reject(reply);
                }
            }
            tx.note(result.map(drop));
        }
        if let Some(reply) = tx.refusal {
            drop(incoming);
            self.rejected += 1;
            warn!(event = "data", session = %self.id, queue_id = %id, client = %self.peer.ip(), decision = "reject", reason = %reply.one_line());
            return Verdict::Reject(reply);
        }
        if let Some(e) = tx.write_error {
            drop(incoming);
            self.rejected += 1;
            warn!(event = "spool_error", session = %self.id, queue_id = %id, client = %self.peer.ip(), decision = "tempfail", reason = %e);
            return Verdict::Reject(storage_error());
        }
        if let (Some(info), None, None) = (&quarantine, &tx.refusal, &tx.write_error) {
            return match incoming.commit_quarantined(info).await {
                Ok(_) => {
                    self.accepted += 1;
                    info!(event = "queued", session = %self.id, queue_id = %id, client = %self.peer.ip(), from = %tx.sender, recipients = tx.recipients.len(), size, direction = "inbound", decision = "quarantine", reason = %info.reason);
                    Verdict::AcceptWith(Reply::ext(250, (2, 0, 0), format!("Ok: queued as {id}")))
                }
                Err(e) => {
                    self.rejected += 1;
                    warn!(event = "spool_error", session = %self.id, queue_id = %id, client = %self.peer.ip(), decision = "tempfail", reason = %e);
                    Verdict::Reject(storage_error())
                }
            };
        }
        match incoming.commit().await {
            Ok(_) => {
                self.accepted += 1;
                info!(
                    event = "queued",
                    session = %self.id,
                    queue_id = %id,
                    client = %self.peer.ip(),
                    from = %tx.sender,
                    recipients = tx.recipients.len(),
                    size,
                    direction = self.settings.direction().as_str(),
                    decision = "accept"
                );
                self.shared.queue.enqueue(id);
                Verdict::AcceptWith(Reply::ext(250, (2, 0, 0), format!("Ok: queued as {id}")))
            }
            Err(e) => {
                self.rejected += 1;
                warn!(event = "spool_error", session = %self.id, queue_id = %id, client = %self.peer.ip(), decision = "tempfail", reason = %e);
                Verdict::Reject(storage_error())
            }
        }
    }
}

impl Session<'_> {
    /// Runs the sender authentication checks on a held message, then writes it to the spool
    /// file with our Authentication-Results field on top. Returns what the cleanup did, what
    /// to do with the message and the field.
    async fn check(
        &self,
        id: &crate::spool::QueueId,
        tx: &Transaction,
        mut held: cleanup::Held,
        incoming: &mut Incoming,
    ) -> Result<(cleanup::Report, Action, String), CleanupError> {
        let Some(verifier) = self.settings.checks.as_deref() else {
            return Ok((
                held.write(b"", &mut |b| incoming.write(b))?,
                Action::Deliver,
                String::new(),
            ));
        };
        let (message, complete) = held.message(verifier.max_size())?;
        let helo = self.helo.as_ref().map_or("", |(h, _)| h.as_str());
        let smtp = crate::checks::auth::Session {
            client: self.peer.ip(),
            helo,
            mail_from: &tx.sender,
        };
        let verdict = verifier.verify(&smtp, &message, complete).await;
        drop(message);
        let action = match &verdict.action {
            Action::Deliver => "deliver",
            Action::Quarantine(_) => "quarantine",
            Action::Reject(_) => "reject",
        };
        info!(event = "auth_checks", session = %self.id, queue_id = %id, client = %self.peer.ip(), from = %tx.sender, results = %verdict.summary, decision = action, exempt = verdict.exempt.unwrap_or(""));
        let report = match verdict.action {
            Action::Reject(_) => held.report,
            _ => held.write(verdict.header.as_bytes(), &mut |b| incoming.write(b))?,
        };
        Ok((report, verdict.action, verdict.header))
    }
}

fn rate_limit_reply() -> Reply {
    Reply::ext(
        451,
        (4, 7, 1),
        "Rate limit exceeded, please try again later",
    )
}

/// The checks made before anything is sent: connection counts, bans, connection rate. The
/// slot is held for the whole session; `Err` is the reply to refuse with.
async fn admit(
    id: &str,
    peer: SocketAddr,
    settings: &SessionSettings,
    shared: &Shared,
) -> Result<ConnectionGuard, Reply> {
    let d = &shared.defences;
    let client = peer.ip();
    if shared.screen.standing(client) == Standing::Blocked {
        warn!(event = "blocked", session = %id, client = %client, listener = %settings.listener, decision = "reject", reason = "client in [screen] block_file");
        return Err(Reply::ext(
            554,
            (5, 7, 1),
            format!(
                "Service unavailable; client [{}] blocked by local policy",
                canonical_ip(client)
            ),
        ));
    }
    let slot = d.connections.try_acquire(client).map_err(|e| {
        warn!(event = "connection_limit", session = %id, client = %client, listener = %settings.listener, limit = e.limit, subject = %e.subject, max = e.max, decision = "reject", reason = "too many connections");
        Reply::ext(421, (4, 7, 0), format!("{} Error: too many connections", settings.hostname))
    })?;
    if let Ok(Some(ban)) = d.bans.check(client).await {
        warn!(event = "banned", session = %id, client = %client, ban = %ban.target, reason = ban.reason.as_str(), expires = %ban.expires_text(), count = ban.count, decision = "reject");
        return Err(Reply::ext(554, (5, 7, 1), "Access denied"));
    }
    if let Err(e) = d.limits.connection(client).await {
        warn!(event = "connection_limit", session = %id, client = %client, listener = %settings.listener, limit = e.limit, subject = %e.subject, count = e.count, max = e.max, decision = "reject", reason = "connection rate");
        return Err(Reply::ext(
            421,
            (4, 7, 0),
            format!(
                "{} Error: too many connections, try again later",
                settings.hostname
            ),
        ));
    }
    Ok(slot)
}

/// Sends `reply` to a client refused at connect and closes (on an implicit-TLS listener the
/// client expects a handshake, not clear text: the connection is only closed).
async fn refuse_at_connect(mut tcp: TcpStream, settings: &SessionSettings, reply: &Reply) {
    if settings.implicit_tls {
        return;
    }
    let _ = timeout(Duration::from_secs(5), async {
        tcp.write_all(&reply.to_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

impl Transaction {
    /// Records what the cleanup pipeline said: an I/O error fails the transaction with a
    /// temporary error, a bad header refuses it.
    fn note(&mut self, result: Result<(), CleanupError>) {
        match result {
            Ok(()) => {}
            Err(CleanupError::Io(e)) => self.write_error = Some(e),
            Err(CleanupError::Header(e)) if e.is_limit() => {
                self.refusal = Some(Reply::ext(552, (5, 3, 4), e.to_string()));
            }
            Err(CleanupError::Header(e)) => {
                self.refusal = Some(Reply::ext(550, (5, 6, 0), e.to_string()));
            }
        }
    }
}

impl Session<'_> {
    /// Logs what the header firewall and DKIM signing did to a message.
    fn log_cleanup(&self, id: &crate::spool::QueueId, report: &cleanup::Report) {
        let direction = if self.settings.cleanup.outbound {
            "outbound"
        } else {
            "inbound"
        };
        if !report.removed.is_empty() || !report.rewritten.is_empty() {
            info!(
                event = "header_firewall",
                session = %self.id,
                queue_id = %id,
                client = %self.peer.ip(),
                direction,
                removed = %report.removed.join(","),
                rewritten = %report.rewritten.join(",")
            );
        }
        match &report.dkim {
            Some(crate::dkim::Outcome::Signed {
                domain, selectors, ..
            }) => info!(
                event = "dkim",
                session = %self.id,
                queue_id = %id,
                decision = "signed",
                domain = %domain,
                selectors = %selectors.join(",")
            ),
            Some(crate::dkim::Outcome::Unsigned(why)) => warn!(
                event = "dkim",
                session = %self.id,
                queue_id = %id,
                decision = "unsigned",
                reason = %why
            ),
            None => {}
        }
    }
}

fn storage_error() -> Reply {
    Reply::ext(
        452,
        (4, 3, 1),
        "Insufficient system storage, try again later",
    )
}
