//! One SMTP connection: drives a `ravelin_wire::server` session over TCP (and TLS after
//! STARTTLS or on an implicit-TLS listener) and applies the gateway's policy to its decisions.
//!
//! Order of events on a connection: pregreet check (bytes that arrived before our greeting
//! mean a client that does not wait for replies), greeting, then the command loop. MAIL is
//! accepted from anyone, RCPT goes through [`crate::relay`], DATA opens a spool file that starts
//! with our Received line, the content passes through [`crate::cleanup`] (header limits, the
//! header firewall, DKIM signing on outbound listeners) and streams to disk as it arrives, and
//! the `250` carrying the queue id is sent only after [`crate::spool`] reports the message
//! durable; then the queue manager is told. A write or fsync error answers `452 4.3.1` and
//! leaves nothing behind; a header the cleanup refuses answers `550 5.6.0` (malformed) or
//! `552 5.3.4` (over a limit) at the end of the data.
//!
//! Timeouts: `limits.command_timeout` for each read between commands, `limits.data_timeout`
//! during DATA, `limits.session_timeout` for the whole connection; on expiry the client gets
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
use tracing::{info, warn};

use crate::cleanup::{self, CleanupError, MessageCleanup, Trace};
use crate::queue::QueueHandle;
use crate::relay::RelayPolicy;
use crate::spool::{Envelope, Incoming, Spool};

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
    pub session_timeout: Duration,
    /// How long to wait for a client that talks before the greeting.
    pub greet_pause: Duration,
    /// Header limits, the header firewall and, outbound, DKIM signing.
    pub cleanup: Arc<cleanup::Policy>,
}

/// What all sessions share.
#[derive(Clone)]
pub struct Shared {
    pub spool: Spool,
    pub queue: QueueHandle,
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
    helo: Option<(String, bool)>,
    tls_info: Option<String>,
    tx: Transaction,
    accepted: u32,
    rejected: u32,
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
    let mut s = Session {
        settings: &settings,
        shared: &shared,
        id,
        peer,
        helo: None,
        tls_info: None,
        tx: Transaction::default(),
        accepted: 0,
        rejected: 0,
    };
    let reason = s.run(tcp).await;
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
        let mut conn = if self.settings.implicit_tls {
            match self.handshake(tcp).await {
                Ok(c) => c,
                Err(e) => return format!("TLS handshake failed: {e}"),
            }
        } else {
            if pregreet(&tcp, self.settings.greet_pause).await {
                warn!(event = "pregreet", session = %self.id, client = %self.peer.ip(), decision = "reject", reason = "client talked before the greeting");
                wire.reject_pregreet();
            }
            Conn::Plain(tcp)
        };
        wire.greet();
        let mut buf = vec![0u8; 16 * 1024];
        let mut shutdown = self.shared.shutdown.clone();
        let mut close_reason: Option<CloseReason> = None;
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
            let delay = wire.take_delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let out = wire.take_output();
            if !out.is_empty() {
                match timeout(self.settings.command_timeout, conn.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return self.end(&format!("write error: {e}")),
                    Err(_) => return self.end("write timeout"),
                }
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
            let per_read = if wire.in_data() {
                self.settings.data_timeout
            } else {
                self.settings.command_timeout
            };
            let read_deadline = (Instant::now() + per_read).min(deadline);
            tokio::select! {
                r = timeout_at(read_deadline, conn.read(&mut buf)) => match r {
                    Err(_) => wire.timeout(),
                    Ok(Ok(0)) => wire.eof(),
                    Ok(Ok(n)) => wire.push_input(&buf[..n]),
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
                info!(event = "helo", session = %self.id, client = %self.peer.ip(), helo = %name, esmtp = extended);
                self.helo = Some((name, extended));
                self.tx = Transaction::default();
                None
            }
            Event::Mail { from, .. } => {
                self.tx = Transaction::default();
                self.tx.sender = match &from {
                    ReversePath::Null => String::new(),
                    ReversePath::Path(_) => from.to_string(),
                };
                info!(event = "mail", session = %self.id, client = %self.peer.ip(), from = %self.tx.sender);
                Some(Verdict::Accept)
            }
            Event::Rcpt { to } => match self.settings.relay.check(&to) {
                Ok(rcpt) => {
                    info!(event = "rcpt", session = %self.id, client = %self.peer.ip(), to = %rcpt, decision = "accept");
                    self.tx.recipients.push(rcpt);
                    Some(Verdict::Accept)
                }
                Err(reply) => {
                    self.rejected += 1;
                    warn!(event = "rcpt", session = %self.id, client = %self.peer.ip(), from = %self.tx.sender, to = %to, decision = "reject", reason = %reply.one_line());
                    Some(Verdict::Reject(reply))
                }
            },
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
        self.tx.cleanup = Some(MessageCleanup::new(self.settings.cleanup.clone()));
        Verdict::Accept
    }

    async fn end_data(&mut self, size: u64) -> Verdict {
        let mut tx = std::mem::take(&mut self.tx);
        let Some(mut incoming) = tx.incoming.take() else {
            return Verdict::Reject(storage_error());
        };
        let id = *incoming.id();
        if let (Some(cleanup), None, None) = (tx.cleanup.take(), &tx.write_error, &tx.refusal) {
            let result = cleanup.finish(&mut |bytes| incoming.write(bytes));
            if let Ok(report) = &result {
                self.log_cleanup(&id, report);
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

/// Whether the client sent anything before our greeting: bytes already waiting on the socket
/// now, or arriving within `pause`.
async fn pregreet(tcp: &TcpStream, pause: Duration) -> bool {
    let mut probe = [0u8; 1];
    if pause.is_zero() {
        use std::os::fd::AsRawFd;
        let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        return matches!(nix::sys::socket::recv(tcp.as_raw_fd(), &mut probe, flags), Ok(n) if n > 0);
    }
    matches!(timeout(pause, tcp.peek(&mut probe)).await, Ok(Ok(n)) if n > 0)
}
