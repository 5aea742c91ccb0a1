//! The SMTP server session as a pure state machine.
//!
//! The driver (the gateway's listener) feeds bytes with [`ServerSession::push_input`], pulls
//! [`Event`]s with [`ServerSession::poll`], answers the events that need a policy decision with
//! [`ServerSession::decide`], and writes what [`ServerSession::take_output`] returns after
//! waiting [`ServerSession::take_delay`]. The session answers everything that is protocol rather
//! than policy itself.
//!
//! Strict by default, and not configurable to be otherwise:
//! - a bare CR or bare LF in a command line or in DATA, or a NUL in DATA, is answered with
//!   `550 5.5.2` and the connection is closed ([`CloseReason::Framing`]); only CRLF.CRLF ends DATA;
//! - pipelining synchronisation (RFC 2920, Postfix's `smtpd_forbid_unauth_pipelining`): a
//!   command that must end a group (EHLO, DATA, QUIT, NOOP, VRFY, EXPN, HELP, STARTTLS, AUTH)
//!   followed by more input, or any pipelined input from a client that did not say EHLO, is
//!   answered with `554 5.5.0` and the connection is closed; so is input after STARTTLS, which
//!   would otherwise be injected into the TLS session (CVE-2011-0411);
//! - limits: command lines of 512 octets, text lines, message size (counted while streaming),
//!   recipients per message, junk commands, errors per session (a growing delay past the soft
//!   limit, `421` and close at the hard limit). Recipients past the limit get `452 4.5.3`, and
//!   (like Postfix's `smtpd_recipient_overshoot_limit`) the first
//!   [`ServerConfig::max_recipient_overshoot`] of them per transaction are not errors: a client
//!   that pipelines more recipients than we take must still reach DATA and send the rest
//!   later (RFC 5321 4.5.3.1.10), not be disconnected for it;
//! - VRFY answers 252 without information, EXPN 502, HELP nothing; the greeting and EHLO show
//!   only the configured host name;
//! - AUTH (RFC 4954, PLAIN and LOGIN, see [`crate::auth`]) only where the driver enables it
//!   (`offer_auth`), and only inside TLS: it is neither advertised nor accepted before, so no
//!   password crosses the network in clear. AUTH lines may be [`MAX_AUTH_LINE`] octets, every
//!   other command line stays at 512. A second AUTH after success, or AUTH inside a mail
//!   transaction, gets `503`; `*` cancels with `501`; bad base64 gets `501 5.5.2`. With
//!   `require_auth`, MAIL before AUTH gets `530 5.7.0`. Each failed AUTH (a `5xx` verdict) is
//!   answered after a delay that doubles from one second (up to `max_auth_delay`), and the
//!   `max_auth_failures`-th failure ends the session with `421`.
//!
//! Timeouts are the driver's (this crate has no clock): it calls [`ServerSession::timeout`].

use std::collections::VecDeque;
use std::time::Duration;

use crate::address::{ForwardPath, ReversePath};
use crate::auth::{self, Credentials, MAX_AUTH_LINE, Mechanism, SaslError};
use crate::command::{self, AuthArg, Command, MailParams};
use crate::data::{DataProgress, DataReader, DataViolation};
use crate::line::{LineEvent, LineReader, MAX_COMMAND_LINE};
use crate::reply::Reply;

/// Settings of one server session.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The only name the greeting and EHLO reveal.
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Text-line limit in DATA, including CRLF.
    pub max_line_length: usize,
    /// Errors after which each further error reply is delayed (by one more second each time).
    pub soft_error_limit: u32,
    /// Errors after which the session ends with 421.
    pub hard_error_limit: u32,
    /// Recipients refused per transaction for the recipient limit before each further one
    /// counts as an error.
    pub max_recipient_overshoot: u32,
    /// NOOP, VRFY, HELP and RSET beyond this count as errors.
    pub junk_command_limit: u32,
    /// Longest delay added before one error reply.
    pub max_error_delay: Duration,
    pub offer_starttls: bool,
    /// MAIL, RCPT and DATA are refused until STARTTLS.
    pub require_tls: bool,
    /// AUTH PLAIN and LOGIN are advertised and accepted, inside TLS only.
    pub offer_auth: bool,
    /// MAIL is refused until the client has authenticated.
    pub require_auth: bool,
    /// Failed AUTH attempts after which the session ends with 421.
    pub max_auth_failures: u32,
    /// Longest delay before the answer to one failed AUTH (it doubles from one second).
    pub max_auth_delay: Duration,
}

impl ServerConfig {
    pub fn new(hostname: impl Into<String>) -> Self {
        ServerConfig {
            hostname: hostname.into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: crate::data::MAX_TEXT_LINE,
            soft_error_limit: 3,
            hard_error_limit: 10,
            max_recipient_overshoot: 1000,
            junk_command_limit: 100,
            max_error_delay: Duration::from_secs(10),
            offer_starttls: false,
            require_tls: false,
            offer_auth: false,
            require_auth: false,
            max_auth_failures: 3,
            max_auth_delay: Duration::from_secs(16),
        }
    }
}

/// Why the session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Quit,
    /// The client closed the connection.
    Eof,
    Timeout,
    TooManyErrors,
    /// Bare CR, bare LF or NUL: the stream can no longer be framed safely.
    Framing(DataViolation),
    /// Input after a command that must end a pipelined group (the command is named).
    Pipelining(&'static str),
    /// The client sent data before the greeting.
    Pregreet,
    /// BDAT without CHUNKING: the bytes that follow cannot be framed.
    Chunking,
    /// The server is shutting down.
    Shutdown,
    /// The driver refused a decision with a closing reply.
    Policy,
    /// Too many failed AUTH attempts in this session.
    AuthFailures,
}

impl CloseReason {
    /// Whether the reason is protocol abuse rather than an ordinary end.
    pub fn is_abuse(&self) -> bool {
        !matches!(
            self,
            CloseReason::Quit | CloseReason::Eof | CloseReason::Shutdown | CloseReason::Policy
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::Eof => "client disconnected",
            CloseReason::Timeout => "timeout",
            CloseReason::TooManyErrors => "too many errors",
            CloseReason::Framing(DataViolation::BareLf) => "bare LF",
            CloseReason::Framing(DataViolation::BareCr) => "bare CR",
            CloseReason::Framing(DataViolation::Nul) => "NUL in data",
            CloseReason::Pipelining(_) => "unauthorised pipelining",
            CloseReason::Pregreet => "pregreet",
            CloseReason::Chunking => "BDAT without CHUNKING",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Policy => "policy",
            CloseReason::AuthFailures => "too many authentication failures",
        }
    }
}

/// What the session reports to its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// EHLO or HELO was accepted (informational).
    Helo { name: String, extended: bool },
    /// Needs [`ServerSession::decide`].
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    /// Needs [`ServerSession::decide`].
    Rcpt { to: ForwardPath },
    /// DATA with at least one recipient. Needs [`ServerSession::decide`]; on acceptance the
    /// session answers 354 and the content follows as [`Event::Data`].
    DataStart,
    /// Message content: CRLF line endings, dots un-stuffed.
    Data(Vec<u8>),
    /// The end of data was read and the content is within limits. Needs
    /// [`ServerSession::decide`]: accept only once the message is durably stored.
    DataEnd { size: u64 },
    /// The message was refused by the session itself (size, line length, framing, the client
    /// went away); the driver discards what it stored. The reply has already been queued.
    DataRejected { reply: Reply },
    /// A command was refused by the session itself (for logs).
    Refused { command: String, reply: Reply },
    /// The client presented credentials (AUTH). Needs [`ServerSession::decide`]: `Accept`
    /// (`235 2.7.0`) when they are good, `Reject` with `535 5.7.8` when they are not, or with
    /// `454 4.7.0` when they cannot be checked now; a `5xx` counts as a failed attempt.
    Auth(Credentials),
    /// `220 Ready to start TLS` is in the output: flush it, do the handshake, then call
    /// [`ServerSession::tls_established`].
    StartTls,
    /// Flush the output and close the connection.
    Close(CloseReason),
}

/// The driver's answer to a decision event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accept with the session's default reply.
    Accept,
    /// Accept with this (positive) reply.
    AcceptWith(Reply),
    /// Refuse with this (4xx/5xx) reply; the session goes on.
    Reject(Reply),
    /// Refuse with this reply and close the connection.
    RejectAndClose(Reply),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Mail,
    Rcpt,
    DataStart,
    DataEnd,
    Auth,
}

/// Where a SASL exchange is: which response the client owes.
#[derive(Debug)]
enum SaslStep {
    /// PLAIN without an initial response: the whole message.
    PlainMessage,
    /// LOGIN: the user name.
    LoginUser,
    /// LOGIN: the password, for this user name.
    LoginPassword(String),
}

#[derive(Debug)]
enum Phase {
    /// Before the greeting.
    Init,
    Command,
    Data(Box<DataReader>),
    /// STARTTLS answered; waiting for the driver's handshake.
    AwaitTls,
    /// AUTH answered with `334`: the next line is a SASL response.
    Auth(SaslStep),
    Closed,
}

#[derive(Debug, Default)]
struct Transaction {
    recipients: usize,
    /// Recipients refused for the recipient limit so far.
    overshoot: u32,
}

/// One SMTP server session.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    phase: Phase,
    lines: LineReader,
    inbuf: Vec<u8>,
    output: Vec<u8>,
    delay: Duration,
    events: VecDeque<Event>,
    pending: Option<Pending>,
    /// `Some(extended)` after HELO/EHLO.
    helo: Option<bool>,
    tx: Option<Transaction>,
    tls: bool,
    authenticated: bool,
    auth_failures: u32,
    errors: u32,
    junk: u32,
    shutting_down: bool,
}

impl ServerSession {
    pub fn new(config: ServerConfig) -> Self {
        let line_limit = if config.offer_auth {
            MAX_AUTH_LINE
        } else {
            MAX_COMMAND_LINE
        };
        ServerSession {
            config,
            phase: Phase::Init,
            lines: LineReader::new(line_limit),
            inbuf: Vec::new(),
            output: Vec::new(),
            delay: Duration::ZERO,
            events: VecDeque::new(),
            pending: None,
            helo: None,
            tx: None,
            tls: false,
            authenticated: false,
            auth_failures: 0,
            errors: 0,
            junk: 0,
            shutting_down: false,
        }
    }

    /// A session on a connection that is TLS from the first byte (implicit TLS, port 465).
    pub fn new_tls(config: ServerConfig) -> Self {
        let mut s = Self::new(config);
        s.tls = true;
        s
    }

    /// Queues the `220` greeting.
    pub fn greet(&mut self) {
        if matches!(self.phase, Phase::Init) {
            let r = Reply::new(220, None, format!("{} ESMTP", self.config.hostname));
            r.write_to(&mut self.output);
            self.phase = Phase::Command;
        }
    }

    /// The client sent data before the greeting: refuse and close.
    pub fn reject_pregreet(&mut self) {
        self.close_with(
            Reply::ext(
                554,
                (5, 5, 1),
                "Protocol error: data sent before the greeting",
            ),
            CloseReason::Pregreet,
        );
    }

    /// Bytes received from the client.
    pub fn push_input(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::Closed) {
            self.inbuf.extend_from_slice(bytes);
        }
    }

    /// Whether the session is reading message content (the driver uses the DATA timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_))
    }

    /// Whether the client has authenticated (AUTH answered `235`).
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Refuses the client at connect (before or instead of the greeting) and closes.
    pub fn refuse_connection(&mut self, reply: Reply) {
        self.close_with(reply, CloseReason::Policy);
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed) && self.events.is_empty()
    }

    /// Bytes to write to the client (possibly empty).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// How long to wait before writing the output (error tarpit).
    pub fn take_delay(&mut self) -> Duration {
        std::mem::take(&mut self.delay)
    }

    /// The client closed its side.
    pub fn eof(&mut self) {
        self.abort_data(Reply::ext(451, (4, 3, 0), "Connection lost during DATA"));
        self.close(CloseReason::Eof);
    }

    /// The driver's read timeout fired.
    pub fn timeout(&mut self) {
        self.abort_data(Reply::ext(421, (4, 4, 2), "Timeout exceeded"));
        let r = Reply::ext(
            421,
            (4, 4, 2),
            format!("{} Error: timeout exceeded", self.config.hostname),
        );
        self.close_with(r, CloseReason::Timeout);
    }

    /// The server is stopping: a transaction in DATA may finish; the next command gets 421.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        if matches!(self.phase, Phase::Command) && self.pending.is_none() && self.tx.is_none() {
            self.close_with(
                Reply::ext(421, (4, 3, 2), "Service shutting down"),
                CloseReason::Shutdown,
            );
        }
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 4.2).
    pub fn tls_established(&mut self) {
        if matches!(self.phase, Phase::AwaitTls) {
            self.tls = true;
            self.helo = None;
            self.tx = None;
            self.authenticated = false;
            self.inbuf.clear();
            self.phase = Phase::Command;
        }
    }

    /// Answers the pending decision event.
    pub fn decide(&mut self, verdict: Verdict) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let (accepted, reply) = match verdict {
            Verdict::Accept => (true, self.default_reply(pending)),
            Verdict::AcceptWith(r) if r.is_positive() => (true, r),
            Verdict::AcceptWith(r) | Verdict::Reject(r) => (false, r),
            Verdict::RejectAndClose(r) => {
                if pending == Pending::DataEnd {
                    self.tx = None;
                }
                self.close_with(r, CloseReason::Policy);
                return;
            }
        };
        if pending == Pending::Auth {
            self.auth_outcome(accepted, reply);
            return;
        }
        match (pending, accepted) {
            (Pending::Mail, true) => self.tx = Some(Transaction::default()),
            (Pending::Rcpt, true) => {
                if let Some(tx) = &mut self.tx {
                    tx.recipients += 1;
                }
            }
            (Pending::DataStart, true) => {
                self.phase = Phase::Data(Box::new(DataReader::new(
                    self.config.max_message_size,
                    self.config.max_line_length,
                )));
            }
            (Pending::DataEnd, _) => self.tx = None,
            _ => {}
        }
        if accepted {
            self.reply(reply);
        } else {
            self.error(reply);
        }
        if pending == Pending::DataEnd {
            self.check_pipelining_after_data();
        }
    }

    fn default_reply(&self, pending: Pending) -> Reply {
        match pending {
            Pending::Mail => Reply::ext(250, (2, 1, 0), "Ok"),
            Pending::Rcpt => Reply::ext(250, (2, 1, 5), "Ok"),
            Pending::DataStart => Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"),
            Pending::DataEnd => Reply::ext(250, (2, 0, 0), "Ok"),
            Pending::Auth => Reply::ext(235, (2, 7, 0), "Authentication successful"),
        }
    }

    /// The next event, or None when the session needs input or a decision.
    pub fn poll(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.pending.is_some() {
                return None;
            }
            match &mut self.phase {
                Phase::Init | Phase::AwaitTls | Phase::Closed => return None,
                Phase::Data(reader) => {
                    if self.inbuf.is_empty() {
                        return None;
                    }
                    let mut chunk = Vec::with_capacity(self.inbuf.len());
                    match reader.feed(&self.inbuf, &mut chunk) {
                        DataProgress::NeedMore => self.inbuf.clear(),
                        DataProgress::Done { consumed } => {
                            self.inbuf.drain(..consumed);
                            self.end_of_data();
                        }
                        DataProgress::Violation(v) => {
                            self.inbuf.clear();
                            let reply =
                                Reply::ext(550, (5, 5, 2), format!("Error: {}", v.describe()));
                            self.events.push_back(Event::DataRejected {
                                reply: reply.clone(),
                            });
                            self.tx = None;
                            self.close_with(reply, CloseReason::Framing(v));
                            chunk.clear();
                        }
                    }
                    if !chunk.is_empty() {
                        self.events.push_front(Event::Data(chunk));
                    }
                }
                Phase::Command => {
                    if !self.next_command() {
                        return None;
                    }
                }
                Phase::Auth(_) => {
                    if !self.next_sasl_response() {
                        return None;
                    }
                }
            }
        }
    }

    fn end_of_data(&mut self) {
        let Phase::Data(reader) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let refused = if reader.oversize() {
            Some(Reply::ext(
                552,
                (5, 3, 4),
                "Error: message size exceeds the fixed limit",
            ))
        } else if reader.long_line() {
            Some(Reply::ext(
                550,
                (5, 6, 0),
                format!(
                    "Error: message has a line longer than {} octets (RFC 5321 4.5.3.1.6)",
                    self.config.max_line_length
                ),
            ))
        } else {
            None
        };
        match refused {
            Some(reply) => {
                self.tx = None;
                self.events.push_back(Event::DataRejected {
                    reply: reply.clone(),
                });
                self.error(reply);
                self.check_pipelining_after_data();
            }
            None => {
                self.pending = Some(Pending::DataEnd);
                self.events.push_back(Event::DataEnd {
                    size: reader.size(),
                });
            }
        }
    }

    /// After the end of data, only a client that said EHLO may have pipelined more.
    fn check_pipelining_after_data(&mut self) {
        if self.helo != Some(true) && !self.inbuf.is_empty() && matches!(self.phase, Phase::Command)
        {
            self.pipelining_violation("DATA");
        }
    }

    /// Reads and handles one command line; false when more input is needed.
    fn next_command(&mut self) -> bool {
        match self.lines.next(&self.inbuf) {
            LineEvent::NeedMore => false,
            LineEvent::Discarded { consumed } => {
                self.inbuf.drain(..consumed);
                false
            }
            LineEvent::TooLong { consumed } => {
                self.inbuf.drain(..consumed);
                self.refuse(
                    "(line too long)",
                    Reply::ext(500, (5, 5, 2), "Error: command line too long"),
                );
                true
            }
            LineEvent::BareLf => {
                self.framing_violation(DataViolation::BareLf);
                true
            }
            LineEvent::BareCr => {
                self.framing_violation(DataViolation::BareCr);
                true
            }
            LineEvent::Line(len)
                if len + 2 > MAX_COMMAND_LINE && !is_auth_line(&self.inbuf[..len]) =>
            {
                self.inbuf.drain(..len + 2);
                self.refuse(
                    "(line too long)",
                    Reply::ext(500, (5, 5, 2), "Error: command line too long"),
                );
                true
            }
            LineEvent::Line(len) => {
                let parsed = command::parse(&self.inbuf[..len]);
                if is_auth_line(&self.inbuf[..len]) {
                    // An initial response carries a password: do not leave it in the buffer.
                    self.inbuf[..len].fill(0);
                }
                self.inbuf.drain(..len + 2);
                match parsed {
                    Ok(cmd) => self.command(cmd),
                    Err(e) => self.refuse("(syntax)", e.reply()),
                }
                true
            }
        }
    }

    fn framing_violation(&mut self, v: DataViolation) {
        self.inbuf.clear();
        let reply = Reply::ext(550, (5, 5, 2), format!("Error: {}", v.describe()));
        self.close_with(reply, CloseReason::Framing(v));
    }

    fn pipelining_violation(&mut self, after: &'static str) {
        self.inbuf.clear();
        let reply = Reply::ext(
            554,
            (5, 5, 0),
            format!(
                "Error: SMTP protocol synchronization: commands sent before the reply to {after}"
            ),
        );
        self.close_with(reply, CloseReason::Pipelining(after));
    }

    fn command(&mut self, cmd: Command) {
        // Pipelining synchronisation: the buffer still holds input the client sent before it
        // could have seen our reply to this command.
        if !self.inbuf.is_empty()
            && (cmd.must_end_group() || self.helo != Some(true))
            && cmd != Command::Quit
        {
            self.pipelining_violation(cmd.verb());
            return;
        }
        if self.shutting_down && self.tx.is_none() && cmd != Command::Quit {
            self.close_with(
                Reply::ext(421, (4, 3, 2), "Service shutting down"),
                CloseReason::Shutdown,
            );
            return;
        }
        let verb = cmd.verb().to_string();
        match cmd {
            Command::Ehlo(name) => {
                self.helo = Some(true);
                self.tx = None;
                let mut lines = vec![
                    self.config.hostname.clone(),
                    "PIPELINING".to_string(),
                    format!("SIZE {}", self.config.max_message_size),
                    "8BITMIME".to_string(),
                    "ENHANCEDSTATUSCODES".to_string(),
                ];
                if self.config.offer_starttls && !self.tls {
                    lines.push("STARTTLS".to_string());
                }
                if self.config.offer_auth && self.tls {
                    lines.push(auth::OFFERED.to_string());
                }
                self.reply(Reply::multi(250, None, lines));
                self.events.push_back(Event::Helo {
                    name,
                    extended: true,
                });
            }
            Command::Helo(name) => {
                self.helo = Some(false);
                self.tx = None;
                self.reply(Reply::new(250, None, self.config.hostname.clone()));
                self.events.push_back(Event::Helo {
                    name,
                    extended: false,
                });
            }
            Command::Mail { from, params } => {
                if self.helo.is_none() {
                    self.refuse(
                        &verb,
                        Reply::ext(503, (5, 5, 1), "Error: send HELO/EHLO first"),
                    );
                } else if self.config.require_tls && !self.tls {
                    self.refuse(
                        &verb,
                        Reply::ext(530, (5, 7, 0), "Must issue a STARTTLS command first"),
                    );
                } else if self.config.require_auth && !self.authenticated {
                    self.refuse(&verb, Reply::ext(530, (5, 7, 0), "Authentication required"));
                } else if self.tx.is_some() {
                    self.refuse(
                        &verb,
                        Reply::ext(503, (5, 5, 1), "Error: nested MAIL command"),
                    );
                } else if params
                    .size
                    .is_some_and(|s| s > self.config.max_message_size)
                {
                    self.refuse(
                        &verb,
                        Reply::ext(
                            552,
                            (5, 3, 4),
                            "Error: message size exceeds the fixed limit",
                        ),
                    );
                } else {
                    self.pending = Some(Pending::Mail);
                    self.events.push_back(Event::Mail { from, params });
                }
            }
            Command::Rcpt { to } => match &mut self.tx {
                None => self.refuse(
                    &verb,
                    Reply::ext(503, (5, 5, 1), "Error: need MAIL command"),
                ),
                Some(tx) if tx.recipients >= self.config.max_recipients => {
                    let reply = Reply::ext(452, (4, 5, 3), "Error: too many recipients");
                    if tx.overshoot < self.config.max_recipient_overshoot {
                        tx.overshoot += 1;
                        self.events.push_back(Event::Refused {
                            command: verb,
                            reply: reply.clone(),
                        });
                        self.reply(reply);
                    } else {
                        self.refuse(&verb, reply);
                    }
                }
                Some(_) => {
                    self.pending = Some(Pending::Rcpt);
                    self.events.push_back(Event::Rcpt { to });
                }
            },
            Command::Data => match &self.tx {
                None => self.refuse(
                    &verb,
                    Reply::ext(503, (5, 5, 1), "Error: need MAIL command"),
                ),
                Some(tx) if tx.recipients == 0 => self.refuse(
                    &verb,
                    Reply::ext(554, (5, 5, 1), "Error: no valid recipients"),
                ),
                Some(_) => {
                    self.pending = Some(Pending::DataStart);
                    self.events.push_back(Event::DataStart);
                }
            },
            Command::Rset => {
                self.tx = None;
                self.junk(Reply::ext(250, (2, 0, 0), "Ok"));
            }
            Command::Noop => self.junk(Reply::ext(250, (2, 0, 0), "Ok")),
            Command::Vrfy => self.junk(Reply::ext(
                252,
                (2, 5, 2),
                "Cannot VRFY user; send mail and we will try to deliver it",
            )),
            Command::Help => self.junk(Reply::ext(214, (2, 0, 0), "See RFC 5321")),
            Command::Expn => self.refuse(
                &verb,
                Reply::ext(502, (5, 5, 1), "Error: EXPN is not available"),
            ),
            Command::Quit => {
                self.reply(Reply::ext(221, (2, 0, 0), "Bye"));
                self.close(CloseReason::Quit);
            }
            Command::StartTls => {
                if !self.config.offer_starttls {
                    self.refuse(
                        &verb,
                        Reply::ext(502, (5, 5, 1), "Error: STARTTLS is not offered"),
                    );
                } else if self.tls {
                    self.refuse(
                        &verb,
                        Reply::ext(503, (5, 5, 1), "Error: TLS is already active"),
                    );
                } else if self.helo != Some(true) {
                    self.refuse(&verb, Reply::ext(503, (5, 5, 1), "Error: send EHLO first"));
                } else {
                    self.reply(Reply::ext(220, (2, 0, 0), "Ready to start TLS"));
                    self.phase = Phase::AwaitTls;
                    self.events.push_back(Event::StartTls);
                }
            }
            Command::Auth(arg) => self.auth_command(arg),
            Command::Bdat => {
                let r = Reply::ext(502, (5, 5, 1), "Error: CHUNKING is not offered");
                self.events.push_back(Event::Refused {
                    command: verb,
                    reply: r.clone(),
                });
                self.close_with(r, CloseReason::Chunking);
            }
            Command::NotImplemented(_) => self.refuse(
                &verb,
                Reply::ext(502, (5, 5, 1), "Error: command not implemented"),
            ),
        }
    }

    /// AUTH: checks the state, then either asks for a response (`334`) or, with a complete
    /// initial response, hands the credentials to the driver.
    fn auth_command(&mut self, arg: AuthArg) {
        let refusal = if !self.config.offer_auth {
            Some(Reply::ext(
                503,
                (5, 5, 1),
                "Error: authentication is not enabled",
            ))
        } else if !self.tls {
            Some(Reply::ext(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ))
        } else if self.helo != Some(true) {
            Some(Reply::ext(503, (5, 5, 1), "Error: send EHLO first"))
        } else if self.authenticated {
            Some(Reply::ext(503, (5, 5, 1), "Error: already authenticated"))
        } else if self.tx.is_some() {
            Some(Reply::ext(
                503,
                (5, 5, 1),
                "Error: MAIL transaction in progress",
            ))
        } else {
            None
        };
        if let Some(reply) = refusal {
            self.refuse("AUTH", reply);
            return;
        }
        let Some(mechanism) = Mechanism::parse(&arg.mechanism) else {
            self.refuse(
                "AUTH",
                Reply::ext(
                    504,
                    (5, 5, 4),
                    "Unrecognized authentication type (offered: PLAIN LOGIN)",
                ),
            );
            return;
        };
        let initial = match arg.initial.as_deref() {
            None => None,
            Some(text) => match auth::decode_response(text.as_bytes(), true) {
                Ok(bytes) => Some(bytes),
                Err(e) => return self.sasl_error(e),
            },
        };
        match (mechanism, initial) {
            (Mechanism::Plain, None) => self.challenge(SaslStep::PlainMessage, ""),
            (Mechanism::Plain, Some(message)) => self.plain_message(&message),
            (Mechanism::Login, None) => self.challenge(SaslStep::LoginUser, auth::LOGIN_USERNAME),
            (Mechanism::Login, Some(user)) => self.login_user(&user),
        }
    }

    /// Sends a `334` challenge and waits for the response.
    fn challenge(&mut self, step: SaslStep, text: &str) {
        self.reply(Reply::new(334, None, text));
        self.phase = Phase::Auth(step);
    }

    fn plain_message(&mut self, message: &[u8]) {
        match auth::parse_plain(message) {
            Ok(credentials) => self.credentials(credentials),
            Err(e) => self.sasl_error(e),
        }
    }

    fn login_user(&mut self, user: &[u8]) {
        match auth::field(user) {
            Ok(u) if !u.is_empty() => {
                self.challenge(SaslStep::LoginPassword(u), auth::LOGIN_PASSWORD)
            }
            _ => self.sasl_error(SaslError::Malformed),
        }
    }

    fn credentials(&mut self, credentials: Credentials) {
        self.phase = Phase::Command;
        self.pending = Some(Pending::Auth);
        self.events.push_back(Event::Auth(credentials));
    }

    /// Ends the exchange with the error's reply.
    fn sasl_error(&mut self, e: SaslError) {
        self.phase = Phase::Command;
        self.refuse("AUTH", e.reply());
    }

    /// Reads one SASL response line; false when more input is needed.
    fn next_sasl_response(&mut self) -> bool {
        let len = match self.lines.next(&self.inbuf) {
            LineEvent::NeedMore => return false,
            LineEvent::Discarded { consumed } => {
                self.inbuf.drain(..consumed);
                return false;
            }
            LineEvent::TooLong { consumed } => {
                self.inbuf.drain(..consumed);
                self.sasl_error(SaslError::TooLong);
                return true;
            }
            LineEvent::BareLf => {
                self.framing_violation(DataViolation::BareLf);
                return true;
            }
            LineEvent::BareCr => {
                self.framing_violation(DataViolation::BareCr);
                return true;
            }
            LineEvent::Line(len) => len,
        };
        let decoded = auth::decode_response(&self.inbuf[..len], false);
        // The line held a secret: overwrite it before letting go of it.
        self.inbuf[..len].fill(0);
        self.inbuf.drain(..len + 2);
        if !self.inbuf.is_empty() {
            // The client did not wait for our challenge or verdict.
            self.pipelining_violation("AUTH");
            return true;
        }
        let Phase::Auth(step) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return true;
        };
        match (step, decoded) {
            (_, Err(e)) => self.sasl_error(e),
            (SaslStep::PlainMessage, Ok(message)) => self.plain_message(&message),
            (SaslStep::LoginUser, Ok(user)) => self.login_user(&user),
            (SaslStep::LoginPassword(authcid), Ok(password)) => match auth::field(&password) {
                Ok(p) if !p.is_empty() => self.credentials(Credentials {
                    mechanism: Mechanism::Login,
                    authzid: None,
                    authcid,
                    password: auth::Password::new(p),
                }),
                _ => self.sasl_error(SaslError::Malformed),
            },
        }
        true
    }

    /// The driver's verdict on credentials: success marks the session authenticated; a
    /// permanent failure is delayed (1 s, 2 s, 4 s ... up to `max_auth_delay`) and the
    /// `max_auth_failures`-th one ends the session.
    fn auth_outcome(&mut self, accepted: bool, reply: Reply) {
        if accepted {
            self.authenticated = true;
            self.reply(reply);
            return;
        }
        if !reply.is_permanent() {
            self.reply(reply);
            return;
        }
        self.auth_failures += 1;
        let doubling = 1u64 << (self.auth_failures - 1).min(30);
        self.delay += Duration::from_secs(doubling).min(self.config.max_auth_delay);
        self.reply(reply);
        if self.auth_failures >= self.config.max_auth_failures {
            self.close_with(
                Reply::ext(
                    421,
                    (4, 7, 0),
                    format!(
                        "{} Error: too many authentication failures",
                        self.config.hostname
                    ),
                ),
                CloseReason::AuthFailures,
            );
        }
    }

    fn junk(&mut self, reply: Reply) {
        self.junk += 1;
        if self.junk > self.config.junk_command_limit {
            self.refuse(
                "(junk)",
                Reply::ext(421, (4, 7, 0), "Error: too many commands without mail"),
            );
        } else {
            self.reply(reply);
        }
    }

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
    }

    /// A session-made error reply: counted and logged.
    fn refuse(&mut self, command: &str, reply: Reply) {
        self.events.push_back(Event::Refused {
            command: command.to_string(),
            reply: reply.clone(),
        });
        self.error(reply);
    }

    /// Writes an error reply, applying the error limits.
    fn error(&mut self, reply: Reply) {
        self.errors += 1;
        if self.errors >= self.config.hard_error_limit {
            let r = Reply::ext(
                421,
                (4, 7, 0),
                format!("{} Error: too many errors", self.config.hostname),
            );
            self.close_with(r, CloseReason::TooManyErrors);
            return;
        }
        if self.errors > self.config.soft_error_limit {
            let step = Duration::from_secs(u64::from(self.errors - self.config.soft_error_limit));
            self.delay += step.min(self.config.max_error_delay);
        }
        self.reply(reply);
    }

    fn abort_data(&mut self, reply: Reply) {
        if matches!(self.phase, Phase::Data(_)) || self.pending == Some(Pending::DataEnd) {
            self.events.push_back(Event::DataRejected { reply });
            self.pending = None;
            self.tx = None;
        }
    }

    fn close_with(&mut self, reply: Reply, reason: CloseReason) {
        self.reply(reply);
        self.close(reason);
    }

    fn close(&mut self, reason: CloseReason) {
        // Whatever is buffered may hold a SASL response; it is never read now.
        self.inbuf.fill(0);
        if !matches!(self.phase, Phase::Closed) {
            self.phase = Phase::Closed;
            self.pending = None;
            self.inbuf.clear();
            self.events.push_back(Event::Close(reason));
        }
    }
}

/// Whether a command line is AUTH (which may be longer than other commands).
fn is_auth_line(line: &[u8]) -> bool {
    line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH ")
}
