//! The SMTP client session as a state machine: what the delivery agent speaks to a server.
//!
//! [`Client`] does no I/O. The driver feeds it the server's bytes ([`Client::feed`],
//! [`Client::eof`]) and asks it what to do next ([`Client::poll`]): write these bytes, read
//! more, stream the message body, do the TLS handshake, or act on a finished transaction.
//! The order of a session is fixed: greeting, EHLO (HELO when the server answers EHLO with
//! 5xx), then any number of transactions, then QUIT. STARTTLS is the driver's decision once
//! the session is [`Step::Ready`]; after [`Client::tls_established`] the machine sends EHLO
//! again and forgets what the server offered in plaintext (RFC 3207 section 4.2).
//!
//! A transaction is MAIL, one RCPT per recipient, DATA. With PIPELINING (RFC 2920) they go
//! out as one batch and the replies are matched in order; without it one command at a time.
//! At most [`MAX_OUTSTANDING`] commands are ever awaiting replies; longer recipient lists go
//! out in several batches. When no recipient is accepted the body is not sent: if the
//! pipelined DATA was nevertheless answered with 354, the machine sends the bare `.`
//! terminator and the transaction fails (RFC 2920 section 3.1). The session is reset with
//! RSET before the next transaction whenever the previous one did not reach its end.
//!
//! MAIL carries `SIZE=` when the server offers SIZE, `BODY=8BITMIME` when the body has 8-bit
//! octets and the server offers 8BITMIME, and `SMTPUTF8` when an address is not ASCII. A
//! message over the server's fixed SIZE limit, or with non-ASCII addresses for a server
//! without SMTPUTF8, fails at once with a permanent result and nothing is sent.
//!
//! Addresses go out as `<local@domain>`; [`check_path`] refuses (and nothing is written for)
//! a sender or recipient with CR, LF, `<`, `>` or any other control character, or longer than
//! RFC 5321 allows, so no address can inject a command. Replies are read with
//! [`ReplyParser`] and its limits.
//!
//! Failures: a reply the session cannot continue after (greeting other than 2xx, 421 at any
//! point, EHLO and HELO refused, RSET refused, a malformed reply, the connection closing
//! while a reply is due, bytes the server sent unasked) makes [`Client::poll`] return the
//! error, then the same error on every later call: the connection must be dropped.
//! [`Client::settled`] tells which recipients already got a final answer before that.

use std::collections::VecDeque;
use std::fmt;

use crate::reply::{Reply, ReplyError, ReplyParser};

/// Most commands awaiting replies at any time (one pipelined batch at most).
pub const MAX_OUTSTANDING: usize = 100;
/// RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets.
pub const MAX_ADDRESS: usize = 254;
/// RFC 5321 4.5.3.1.2: a domain is at most 255 octets.
pub const MAX_HELO: usize = 255;
/// Most SASL mechanisms kept from an AUTH line.
const MAX_AUTH_MECHANISMS: usize = 32;
/// Longest SASL mechanism name kept (RFC 4422 allows 20).
const MAX_MECHANISM_LEN: usize = 64;

/// What the server offered in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// `None` when SIZE is not offered; `Some(0)` when it is offered without a fixed limit.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub starttls: bool,
    pub smtputf8: bool,
    pub enhancedstatuscodes: bool,
    pub chunking: bool,
    /// SASL mechanisms, upper-cased, in the order offered.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Reads the keyword lines of an EHLO reply (the first line is the server's name).
    /// Keywords are case-insensitive; unknown ones are ignored.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(first) = words.next() else { continue };
            // "AUTH=LOGIN PLAIN" is the pre-standard form some servers still send.
            let (keyword, inline) = match first.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (first, None),
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eightbitmime = true,
                "STARTTLS" => caps.starttls = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhancedstatuscodes = true,
                "CHUNKING" => caps.chunking = true,
                "AUTH" => {
                    for m in inline.into_iter().chain(words) {
                        let m = m.to_ascii_uppercase();
                        if m.is_empty() || m.len() > MAX_MECHANISM_LEN || caps.auth.contains(&m) {
                            continue;
                        }
                        if caps.auth.len() < MAX_AUTH_MECHANISMS {
                            caps.auth.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        caps
    }
}

/// One mail transaction to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The reverse-path without brackets; empty for the null sender (bounces).
    pub sender: String,
    /// Forward-paths without brackets, at least one.
    pub recipients: Vec<String>,
    /// The body's size in octets, announced with `SIZE=` when the server offers SIZE.
    pub size: Option<u64>,
    /// The body contains octets above 127.
    pub eight_bit: bool,
}

/// The final answer for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered(Reply),
    Transient(Reply),
    Permanent(Reply),
}

impl RcptOutcome {
    /// 2xx is delivered, 5xx permanent, anything else (4xx, or a 3xx out of place) transient.
    pub fn from_reply(reply: &Reply) -> RcptOutcome {
        match reply.code / 100 {
            2 => RcptOutcome::Delivered(reply.clone()),
            5 => RcptOutcome::Permanent(reply.clone()),
            _ => RcptOutcome::Transient(reply.clone()),
        }
    }

    fn failure(reply: &Reply) -> RcptOutcome {
        match reply.code / 100 {
            5 => RcptOutcome::Permanent(reply.clone()),
            _ => RcptOutcome::Transient(reply.clone()),
        }
    }

    pub fn reply(&self) -> &Reply {
        match self {
            RcptOutcome::Delivered(r) | RcptOutcome::Transient(r) | RcptOutcome::Permanent(r) => r,
        }
    }
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes to the server (all of them), then poll again.
    Send(Vec<u8>),
    /// Read from the server and [`Client::feed`] what arrives (or call [`Client::eof`]).
    Read,
    /// The session is idle: begin a transaction, STARTTLS, or QUIT.
    Ready,
    /// The server agreed to STARTTLS: do the handshake on the same connection, then call
    /// [`Client::tls_established`]; on failure drop the connection.
    StartTls,
    /// The server refused STARTTLS with this reply; the session is still usable in plaintext.
    StartTlsRefused(Reply),
    /// The server refused AUTH with this reply; the session is still usable (unauthenticated).
    AuthRefused(Reply),
    /// The server answered DATA with 354: stream the body through
    /// [`crate::data::DotStuffer`] (which writes the terminator), then call
    /// [`Client::body_sent`].
    SendBody,
    /// The transaction is over; one outcome per recipient, in order. The session is idle.
    Done(Vec<RcptOutcome>),
    /// QUIT was answered or the server closed the connection after it.
    Closed,
}

/// Why the session cannot go on, or why a call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// We refuse to write this address or HELO name; nothing was sent.
    Invalid(String),
    /// The call does not fit the session's state; nothing was sent.
    Misuse(&'static str),
    /// The greeting was not 2xx.
    Greeting(Reply),
    /// The server is closing the connection (421).
    Closing(Reply),
    /// The server refused a command the session cannot do without.
    Refused {
        command: &'static str,
        reply: Reply,
    },
    BadReply(ReplyError),
    /// The connection closed while a reply was due.
    ConnectionClosed,
    /// The server sent bytes nobody asked for (possible response injection).
    UnexpectedData,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Invalid(why) => write!(f, "refused to send: {why}"),
            ClientError::Misuse(why) => write!(f, "client used out of sequence: {why}"),
            ClientError::Greeting(r) => write!(f, "greeting refused: {r}"),
            ClientError::Closing(r) => write!(f, "server closing the connection: {r}"),
            ClientError::Refused { command, reply } => write!(f, "{command} refused: {reply}"),
            ClientError::BadReply(e) => write!(f, "bad reply: {e}"),
            ClientError::ConnectionClosed => write!(f, "connection closed while a reply was due"),
            ClientError::UnexpectedData => write!(f, "server sent data nobody asked for"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Checks that `addr` may be written between angle brackets: at most [`MAX_ADDRESS`] octets,
/// no control characters (CR and LF included), no `<` or `>`. Syntax beyond that is the
/// server's business; this check is what keeps an address from injecting a command.
pub fn check_path(addr: &str) -> Result<(), ClientError> {
    if addr.len() > MAX_ADDRESS {
        return Err(ClientError::Invalid(format!(
            "address longer than {MAX_ADDRESS} octets"
        )));
    }
    if let Some(c) = addr
        .chars()
        .find(|&c| c.is_control() || c == '<' || c == '>')
    {
        return Err(ClientError::Invalid(format!("address contains {c:?}")));
    }
    Ok(())
}

/// A reply we await, in the order the commands went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Rset,
    Mail,
    Rcpt(usize),
    Data,
    /// The reply to the end of the body.
    EndOfData,
    /// The reply to a lone `.` sent after an unwanted 354.
    Discard,
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Greeting or EHLO/HELO in progress.
    Opening,
    Ready,
    StartTls,
    Auth,
    Handshake,
    Transaction,
    Body,
    Quit,
    Closed,
}

#[derive(Debug)]
struct Tx {
    mail_cmd: Vec<u8>,
    recipients: Vec<String>,
    mail_sent: bool,
    mail: Option<Reply>,
    rcpt: Vec<Option<Reply>>,
    next_rcpt: usize,
    data_sent: bool,
    data: Option<Reply>,
    end: Option<Reply>,
    /// An address probe: MAIL and RCPT only, never DATA.
    probe: bool,
}

impl Tx {
    fn mail_ok(&self) -> bool {
        self.mail.as_ref().is_some_and(|r| r.code / 100 == 2)
    }

    fn any_accepted(&self) -> bool {
        self.mail_ok() && self.rcpt.iter().flatten().any(|r| r.code / 100 == 2)
    }

    /// The final answer for recipient `i`, if there is one yet.
    fn outcome(&self, i: usize) -> Option<RcptOutcome> {
        let mail = self.mail.as_ref()?;
        if self.probe {
            // A refused MAIL says nothing about the recipient: inconclusive, not permanent.
            if mail.code / 100 != 2 {
                return Some(RcptOutcome::Transient(mail.clone()));
            }
            return self.rcpt.get(i)?.as_ref().map(RcptOutcome::from_reply);
        }
        if mail.code / 100 != 2 {
            return Some(RcptOutcome::failure(mail));
        }
        let rcpt = self.rcpt.get(i)?.as_ref()?;
        if rcpt.code / 100 != 2 {
            return Some(RcptOutcome::failure(rcpt));
        }
        if let Some(end) = &self.end {
            return Some(RcptOutcome::from_reply(end));
        }
        match &self.data {
            Some(data) if data.code != 354 => Some(RcptOutcome::failure(data)),
            _ => None,
        }
    }
}

/// The client session. See the module documentation for the protocol it follows.
#[derive(Debug)]
pub struct Client {
    helo: String,
    parser: ReplyParser,
    out: Vec<u8>,
    expect: VecDeque<Expect>,
    phase: Phase,
    caps: Capabilities,
    tls: bool,
    authenticated: bool,
    tx: Option<Tx>,
    needs_rset: bool,
    eof: bool,
    event: Option<Step>,
    failed: Option<ClientError>,
}

impl Client {
    /// A session that will greet as `helo` (our host name, or an address literal).
    pub fn new(helo: &str) -> Result<Client, ClientError> {
        if helo.is_empty() || helo.len() > MAX_HELO || !helo.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Invalid(format!("HELO name {helo:?}")));
        }
        Ok(Client {
            helo: helo.to_string(),
            parser: ReplyParser::new(),
            out: Vec::new(),
            expect: VecDeque::from([Expect::Greeting]),
            phase: Phase::Opening,
            caps: Capabilities::default(),
            tls: false,
            authenticated: false,
            tx: None,
            needs_rset: false,
            eof: false,
            event: None,
            failed: None,
        })
    }

    /// Bytes read from the server.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.feed(bytes);
    }

    /// The server closed its side of the connection.
    pub fn eof(&mut self) {
        self.eof = true;
    }

    /// What the server offered in its last EHLO reply (empty after HELO or before EHLO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// TLS was established with STARTTLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The session is idle and healthy: a new transaction may begin.
    pub fn is_ready(&self) -> bool {
        self.failed.is_none()
            && self.phase == Phase::Ready
            && self.expect.is_empty()
            && self.event.is_none()
    }

    /// The answers already final in the current transaction, one slot per recipient. After an
    /// error these are the recipients the driver must not retry elsewhere as if untried.
    pub fn settled(&self) -> Vec<Option<RcptOutcome>> {
        match &self.tx {
            Some(tx) => (0..tx.recipients.len()).map(|i| tx.outcome(i)).collect(),
            None => Vec::new(),
        }
    }

    /// The next thing the driver must do.
    pub fn poll(&mut self) -> Result<Step, ClientError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.poll_inner();
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn poll_inner(&mut self) -> Result<Step, ClientError> {
        loop {
            if !self.out.is_empty() {
                return Ok(Step::Send(std::mem::take(&mut self.out)));
            }
            if let Some(&expect) = self.expect.front() {
                let reply = match self.parser.next_reply() {
                    Ok(Some(reply)) => reply,
                    Ok(None) if self.eof && expect == Expect::Quit => {
                        self.expect.clear();
                        self.phase = Phase::Closed;
                        continue;
                    }
                    Ok(None) if self.eof => return Err(ClientError::ConnectionClosed),
                    Ok(None) => return Ok(Step::Read),
                    Err(_) if expect == Expect::Quit => {
                        self.expect.clear();
                        self.phase = Phase::Closed;
                        continue;
                    }
                    Err(e) => return Err(ClientError::BadReply(e)),
                };
                self.expect.pop_front();
                self.handle(expect, reply)?;
                if self.expect.is_empty() && self.phase == Phase::Transaction {
                    self.advance();
                }
                continue;
            }
            if let Some(event) = self.event.take() {
                return Ok(event);
            }
            if self.parser.buffered() > 0 && self.phase != Phase::Closed {
                return Err(ClientError::UnexpectedData);
            }
            return Ok(match self.phase {
                Phase::Ready => Step::Ready,
                Phase::Handshake => Step::StartTls,
                Phase::Body => Step::SendBody,
                Phase::Closed => Step::Closed,
                // Every other phase has a reply outstanding.
                Phase::Opening
                | Phase::StartTls
                | Phase::Auth
                | Phase::Transaction
                | Phase::Quit => {
                    return Err(ClientError::Misuse(
                        "no reply awaited in a phase that needs one",
                    ));
                }
            });
        }
    }

    fn send(&mut self, expect: Expect, command: &[u8]) {
        self.out.extend_from_slice(command);
        self.out.extend_from_slice(b"\r\n");
        self.expect.push_back(expect);
    }

    fn handle(&mut self, expect: Expect, reply: Reply) -> Result<(), ClientError> {
        if reply.code == 421 && expect != Expect::Quit {
            return Err(ClientError::Closing(reply));
        }
        let ok = reply.code / 100 == 2;
        match expect {
            Expect::Greeting if ok => self.ehlo(),
            Expect::Greeting => return Err(ClientError::Greeting(reply)),
            Expect::Ehlo if ok => {
                self.caps = Capabilities::from_ehlo(&reply);
                self.phase = Phase::Ready;
            }
            Expect::Ehlo if reply.code / 100 == 5 => {
                let helo = format!("HELO {}", self.helo);
                self.send(Expect::Helo, helo.as_bytes());
            }
            Expect::Ehlo => {
                return Err(ClientError::Refused {
                    command: "EHLO",
                    reply,
                });
            }
            Expect::Helo if ok => {
                self.caps = Capabilities::default();
                self.phase = Phase::Ready;
            }
            Expect::Helo => {
                return Err(ClientError::Refused {
                    command: "HELO",
                    reply,
                });
            }
            Expect::StartTls if reply.code == 220 => {
                // Anything after the 220 was sent before the handshake and must not be read
                // as if it came over TLS.
                if self.parser.buffered() > 0 {
                    return Err(ClientError::UnexpectedData);
                }
                self.phase = Phase::Handshake;
            }
            Expect::StartTls => {
                self.phase = Phase::Ready;
                self.event = Some(Step::StartTlsRefused(reply));
            }
            Expect::Auth => {
                self.phase = Phase::Ready;
                if reply.code == 235 {
                    self.authenticated = true;
                } else {
                    self.event = Some(Step::AuthRefused(reply));
                }
            }
            Expect::Rset if ok => {}
            Expect::Rset => {
                return Err(ClientError::Refused {
                    command: "RSET",
                    reply,
                });
            }
            Expect::Mail => self.tx_mut()?.mail = Some(reply),
            Expect::Rcpt(i) => {
                if let Some(slot) = self.tx_mut()?.rcpt.get_mut(i) {
                    *slot = Some(reply);
                }
            }
            Expect::Data => {
                let tx = self.tx_mut()?;
                let go = reply.code == 354;
                let accepted = tx.any_accepted();
                tx.data = Some(reply);
                if go && accepted {
                    self.phase = Phase::Body;
                } else if go {
                    // Pipelined DATA after every recipient failed: end the empty message.
                    self.out.extend_from_slice(b".\r\n");
                    self.expect.push_back(Expect::Discard);
                }
            }
            Expect::EndOfData => self.tx_mut()?.end = Some(reply),
            Expect::Discard => {}
            Expect::Quit => {
                self.phase = Phase::Closed;
            }
        }
        Ok(())
    }

    fn tx_mut(&mut self) -> Result<&mut Tx, ClientError> {
        self.tx.as_mut().ok_or(ClientError::Misuse(
            "transaction reply without a transaction",
        ))
    }

    fn ehlo(&mut self) {
        let ehlo = format!("EHLO {}", self.helo);
        self.send(Expect::Ehlo, ehlo.as_bytes());
    }

    /// Called when every reply of the transaction so far is in: send the next batch or end.
    fn advance(&mut self) {
        let Some(tx) = &self.tx else { return };
        let probed = tx.probe && tx.mail.is_some() && tx.rcpt.iter().all(Option::is_some);
        let over =
            tx.end.is_some() || tx.data.is_some() || (tx.mail.is_some() && !tx.mail_ok()) || probed;
        if !over {
            self.send_more();
            if !self.expect.is_empty() {
                return;
            }
        }
        if let Some(tx) = self.tx.take() {
            let outcomes = (0..tx.recipients.len())
                .map(|i| {
                    tx.outcome(i).unwrap_or_else(|| {
                        RcptOutcome::Transient(Reply::ext(
                            451,
                            (4, 3, 0),
                            "transaction ended without a reply",
                        ))
                    })
                })
                .collect();
            self.needs_rset = tx.end.is_none();
            self.phase = Phase::Ready;
            self.event = Some(Step::Done(outcomes));
        }
    }

    /// Queues as many transaction commands as the server's pipelining allows.
    fn send_more(&mut self) {
        let limit = if self.caps.pipelining {
            MAX_OUTSTANDING
        } else {
            1
        };
        while self.expect.len() < limit {
            let Some(tx) = self.tx.as_mut() else { return };
            if !tx.mail_sent {
                tx.mail_sent = true;
                let cmd = std::mem::take(&mut tx.mail_cmd);
                self.send(Expect::Mail, &cmd);
                continue;
            }
            if tx.mail.is_some() && !tx.mail_ok() {
                return;
            }
            if tx.next_rcpt < tx.recipients.len() {
                let i = tx.next_rcpt;
                tx.next_rcpt += 1;
                let cmd = format!("RCPT TO:<{}>", tx.recipients[i]);
                self.send(Expect::Rcpt(i), cmd.as_bytes());
                continue;
            }
            if !tx.data_sent && !tx.probe {
                // Once every RCPT reply is in, DATA only makes sense for an accepted
                // recipient; while some are outstanding, pipelining sends it blind.
                let all_known = tx.mail.is_some() && tx.rcpt.iter().all(Option::is_some);
                if all_known && !tx.any_accepted() {
                    return;
                }
                tx.data_sent = true;
                self.send(Expect::Data, b"DATA");
            }
            return;
        }
    }

    /// Starts a transaction. Refuses bad addresses and calls out of sequence without sending
    /// anything; a message the server cannot take (SIZE, SMTPUTF8) ends at once with
    /// [`Step::Done`] carrying permanent failures.
    pub fn begin(&mut self, tx: Transaction) -> Result<(), ClientError> {
        self.begin_tx(tx, false)
    }

    /// Starts an address probe (a callout): MAIL FROM `sender` and RCPT TO `recipient`, no
    /// DATA. It ends with [`Step::Done`] carrying the RCPT reply as the recipient's outcome
    /// (a refused MAIL is reported as [`RcptOutcome::Transient`]: it says nothing about the
    /// recipient); the session is then reset before any next transaction.
    pub fn begin_probe(&mut self, sender: &str, recipient: &str) -> Result<(), ClientError> {
        let tx = Transaction {
            sender: sender.to_string(),
            recipients: vec![recipient.to_string()],
            size: None,
            eight_bit: false,
        };
        self.begin_tx(tx, true)
    }

    fn begin_tx(&mut self, tx: Transaction, probe: bool) -> Result<(), ClientError> {
        if !self.is_ready() {
            return Err(ClientError::Misuse("begin while the session is not ready"));
        }
        if tx.recipients.is_empty() {
            return Err(ClientError::Misuse("a transaction needs a recipient"));
        }
        check_path(&tx.sender)?;
        for r in &tx.recipients {
            if r.is_empty() {
                return Err(ClientError::Invalid("empty recipient".into()));
            }
            check_path(r)?;
        }
        let n = tx.recipients.len();
        let utf8 = !tx.sender.is_ascii() || tx.recipients.iter().any(|r| !r.is_ascii());
        if utf8 && !self.caps.smtputf8 {
            let reply = Reply::ext(
                553,
                (5, 6, 7),
                "non-ASCII address but the server does not offer SMTPUTF8",
            );
            self.event = Some(Step::Done(vec![RcptOutcome::Permanent(reply); n]));
            return Ok(());
        }
        if let (Some(limit @ 1..), Some(size)) = (self.caps.size, tx.size)
            && size > limit
        {
            let reply = Reply::ext(
                552,
                (5, 3, 4),
                format!("message size {size} exceeds the server's limit of {limit}"),
            );
            self.event = Some(Step::Done(vec![RcptOutcome::Permanent(reply); n]));
            return Ok(());
        }
        let mut mail = format!("MAIL FROM:<{}>", tx.sender);
        if let (Some(_), Some(size)) = (self.caps.size, tx.size) {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if tx.eight_bit && self.caps.eightbitmime {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.needs_rset {
            self.needs_rset = false;
            self.send(Expect::Rset, b"RSET");
        }
        self.tx = Some(Tx {
            mail_cmd: mail.into_bytes(),
            recipients: tx.recipients,
            mail_sent: false,
            mail: None,
            rcpt: vec![None; n],
            next_rcpt: 0,
            data_sent: false,
            data: None,
            end: None,
            probe,
        });
        self.phase = Phase::Transaction;
        self.send_more();
        Ok(())
    }

    /// The driver has written the whole body, terminator included.
    pub fn body_sent(&mut self) -> Result<(), ClientError> {
        if self.failed.is_some() || self.phase != Phase::Body {
            return Err(ClientError::Misuse("body_sent without a 354"));
        }
        self.phase = Phase::Transaction;
        self.expect.push_back(Expect::EndOfData);
        Ok(())
    }

    /// Asks for TLS. Only when the session is ready, not yet encrypted, and STARTTLS offered.
    pub fn starttls(&mut self) -> Result<(), ClientError> {
        if !self.is_ready() || self.tls {
            return Err(ClientError::Misuse(
                "STARTTLS while the session is not ready",
            ));
        }
        if !self.caps.starttls {
            return Err(ClientError::Misuse("STARTTLS not offered"));
        }
        self.phase = Phase::StartTls;
        self.send(Expect::StartTls, b"STARTTLS");
        Ok(())
    }

    /// The TLS handshake succeeded: greet again over TLS, forgetting the old capabilities.
    pub fn tls_established(&mut self) -> Result<(), ClientError> {
        if self.failed.is_some() || self.phase != Phase::Handshake {
            return Err(ClientError::Misuse("tls_established without STARTTLS"));
        }
        self.tls = true;
        self.caps = Capabilities::default();
        self.parser = ReplyParser::new();
        self.phase = Phase::Opening;
        self.ehlo();
        Ok(())
    }

    /// Authenticates with AUTH PLAIN (RFC 4616) as `user`. Only inside TLS, only when the
    /// session is ready and the server offers PLAIN; the next [`Step`] is `Ready` once the
    /// server answered 235, or [`Step::AuthRefused`]. The password goes into the one command
    /// line written and nowhere else.
    pub fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        if !self.is_ready() || self.authenticated {
            return Err(ClientError::Misuse("AUTH while the session is not ready"));
        }
        if !self.tls {
            return Err(ClientError::Misuse("AUTH without TLS"));
        }
        if !self.caps.auth.iter().any(|m| m == "PLAIN") {
            return Err(ClientError::Misuse("AUTH PLAIN not offered"));
        }
        if user.is_empty() || user.contains('\0') || password.contains('\0') {
            return Err(ClientError::Invalid("AUTH user name or password".into()));
        }
        use base64::Engine;
        let mut token = Vec::with_capacity(user.len() + password.len() + 2);
        token.push(0);
        token.extend_from_slice(user.as_bytes());
        token.push(0);
        token.extend_from_slice(password.as_bytes());
        let line = format!(
            "AUTH PLAIN {}",
            base64::engine::general_purpose::STANDARD.encode(&token)
        );
        token.fill(0);
        self.phase = Phase::Auth;
        self.send(Expect::Auth, line.as_bytes());
        Ok(())
    }

    /// The server accepted AUTH on this session.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Ends the session politely.
    pub fn quit(&mut self) -> Result<(), ClientError> {
        if !self.is_ready() {
            return Err(ClientError::Misuse("QUIT while the session is not ready"));
        }
        self.phase = Phase::Quit;
        self.send(Expect::Quit, b"QUIT");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DotStuffer;

    /// Plays a scripted server: each `Read` gets the next chunk, then end of file.
    struct Harness {
        client: Client,
        server: VecDeque<&'static [u8]>,
        writes: Vec<Vec<u8>>,
        body: &'static [u8],
    }

    impl Harness {
        fn new(server: &[&'static [u8]]) -> Harness {
            Harness {
                client: Client::new("gw.example.net").unwrap(),
                server: server.iter().copied().collect(),
                writes: Vec::new(),
                body: b"Subject: t\r\n\r\n.hi\r\n",
            }
        }

        fn run(&mut self) -> Result<Step, ClientError> {
            loop {
                match self.client.poll()? {
                    Step::Send(b) => self.writes.push(b),
                    Step::Read => match self.server.pop_front() {
                        Some(chunk) => self.client.feed(chunk),
                        None => self.client.eof(),
                    },
                    Step::SendBody => {
                        let mut out = Vec::new();
                        let mut s = DotStuffer::new();
                        s.push(self.body, &mut out);
                        s.finish(&mut out);
                        self.writes.push(out);
                        self.client.body_sent().unwrap();
                    }
                    other => return Ok(other),
                }
            }
        }

        fn writes(&self) -> Vec<String> {
            self.writes
                .iter()
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect()
        }

        fn ready(&mut self) {
            assert_eq!(self.run(), Ok(Step::Ready));
        }

        fn done(&mut self, tx: Transaction) -> Vec<RcptOutcome> {
            self.client.begin(tx).unwrap();
            match self.run() {
                Ok(Step::Done(o)) => o,
                other => panic!("expected Done, got {other:?}"),
            }
        }

        fn quit(&mut self) {
            self.client.quit().unwrap();
            assert_eq!(self.run(), Ok(Step::Closed));
        }
    }

    fn tx(rcpts: &[&str]) -> Transaction {
        Transaction {
            sender: "s@example.net".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            size: Some(20),
            eight_bit: false,
        }
    }

    fn code(o: &RcptOutcome) -> (char, u16) {
        match o {
            RcptOutcome::Delivered(r) => ('D', r.code),
            RcptOutcome::Transient(r) => ('T', r.code),
            RcptOutcome::Permanent(r) => ('P', r.code),
        }
    }

    const GREET: &[u8] = b"220 mx.example.org ESMTP\r\n";
    const EHLO_PIPE: &[u8] = b"250-mx.example.org\r\n250-pipelining\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
    const EHLO_PLAIN: &[u8] = b"250-mx.example.org\r\n250 SIZE\r\n";

    #[test]
    fn pipelined_transaction_then_quit() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n",
            b"250 2.0.0 Ok: queued as X\r\n",
            b"221 2.0.0 Bye\r\n",
        ]);
        h.ready();
        assert!(h.client.capabilities().pipelining);
        let out = h.done(tx(&["a@example.org", "b@example.org"]));
        assert_eq!(
            out.iter().map(code).collect::<Vec<_>>(),
            [('D', 250), ('D', 250)]
        );
        assert_eq!(out[0].reply().one_line(), "250 2.0.0 Ok: queued as X");
        h.quit();
        assert_eq!(
            h.writes(),
            [
                "EHLO gw.example.net\r\n",
                "MAIL FROM:<s@example.net> SIZE=20\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
                "Subject: t\r\n\r\n..hi\r\n.\r\n",
                "QUIT\r\n",
            ]
        );
    }

    fn probe(h: &mut Harness, rcpt: &str) -> Vec<RcptOutcome> {
        h.client.begin_probe("", rcpt).unwrap();
        match h.run() {
            Ok(Step::Done(o)) => o,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn probes_stop_after_rcpt_and_reset_before_the_next() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n",
            b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n550 5.1.1 <b@example.org>: Recipient address rejected: User unknown\r\n",
            b"250 2.0.0 Ok\r\n503 5.5.1 no\r\n",
            b"221 bye\r\n",
        ]);
        h.ready();
        let out = probe(&mut h, "a@example.org");
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('D', 250)]);
        let out = probe(&mut h, "b@example.org");
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('P', 550)]);
        // A refused MAIL says nothing about the recipient.
        let out = probe(&mut h, "c@example.org");
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('T', 503)]);
        h.quit();
        assert_eq!(
            h.writes(),
            [
                "EHLO gw.example.net\r\n",
                "MAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\n",
                "RSET\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.org>\r\n",
                "RSET\r\nMAIL FROM:<>\r\nRCPT TO:<c@example.org>\r\n",
                "QUIT\r\n",
            ]
        );
    }

    #[test]
    fn one_command_at_a_time_without_pipelining() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 queued\r\n",
            b"221 bye\r\n",
        ]);
        h.ready();
        let mut t = tx(&["a@example.org", "b@example.org"]);
        t.eight_bit = true; // 8BITMIME not offered: no BODY parameter
        let out = h.done(t);
        assert_eq!(
            out.iter().map(code).collect::<Vec<_>>(),
            [('D', 250), ('D', 250)]
        );
        h.quit();
        assert_eq!(
            h.writes(),
            [
                "EHLO gw.example.net\r\n",
                "MAIL FROM:<s@example.net> SIZE=20\r\n",
                "RCPT TO:<a@example.org>\r\n",
                "RCPT TO:<b@example.org>\r\n",
                "DATA\r\n",
                "Subject: t\r\n\r\n..hi\r\n.\r\n",
                "QUIT\r\n",
            ]
        );
    }

    #[test]
    fn partial_rcpt_failure_and_eight_bit() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"250 ok\r\n550 5.1.1 no such user\r\n450 4.2.0 try later\r\n250 ok\r\n354 go\r\n",
            b"250 queued\r\n",
        ]);
        h.ready();
        let mut t = tx(&["a@example.org", "b@example.org", "c@example.org"]);
        t.sender = String::new();
        t.eight_bit = true;
        let out = h.done(t);
        assert_eq!(
            out.iter().map(code).collect::<Vec<_>>(),
            [('P', 550), ('T', 450), ('D', 250)]
        );
        assert_eq!(out[0].reply().one_line(), "550 5.1.1 no such user");
        assert!(h.client.is_ready());
        assert_eq!(
            h.writes()[1],
            "MAIL FROM:<> SIZE=20 BODY=8BITMIME\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n"
        );
    }

    #[test]
    fn all_rcpt_rejected_pipelined_354_gets_lone_dot_then_rset() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"250 ok\r\n550 no\r\n554 no\r\n354 go\r\n",
            b"554 5.5.1 no valid recipients\r\n",
            b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 queued\r\n",
        ]);
        h.ready();
        let out = h.done(tx(&["a@example.org", "b@example.org"]));
        assert_eq!(
            out.iter().map(code).collect::<Vec<_>>(),
            [('P', 550), ('P', 554)]
        );
        // The next transaction resets first, in the same batch.
        let out = h.done(tx(&["c@example.org"]));
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('D', 250)]);
        assert_eq!(
            h.writes()[1..],
            [
                "MAIL FROM:<s@example.net> SIZE=20\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
                ".\r\n",
                "RSET\r\nMAIL FROM:<s@example.net> SIZE=20\r\nRCPT TO:<c@example.org>\r\nDATA\r\n",
                "Subject: t\r\n\r\n..hi\r\n.\r\n",
            ]
        );
    }

    #[test]
    fn all_rcpt_rejected_pipelined_data_refused() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"250 ok\r\n550 no\r\n503 5.5.1 no valid recipients\r\n",
        ]);
        h.ready();
        let out = h.done(tx(&["a@example.org"]));
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('P', 550)]);
        assert_eq!(h.writes().len(), 2);
    }

    #[test]
    fn all_rcpt_rejected_without_pipelining_sends_no_data() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"450 4.7.1 greylisted\r\n",
        ]);
        h.ready();
        let out = h.done(tx(&["a@example.org"]));
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('T', 450)]);
        // The server still holds the open transaction: the next one starts with RSET, alone
        // since there is no pipelining.
        h.client.begin(tx(&["b@example.org"])).unwrap();
        assert_eq!(h.client.poll(), Ok(Step::Send(b"RSET\r\n".to_vec())));
        assert_eq!(h.client.poll(), Ok(Step::Read));
        h.client.feed(b"250 ok\r\n");
        assert_eq!(
            h.client.poll(),
            Ok(Step::Send(
                b"MAIL FROM:<s@example.net> SIZE=20\r\n".to_vec()
            ))
        );
        assert_eq!(
            h.writes(),
            [
                "EHLO gw.example.net\r\n",
                "MAIL FROM:<s@example.net> SIZE=20\r\n",
                "RCPT TO:<a@example.org>\r\n"
            ]
        );
    }

    #[test]
    fn transient_failure_at_mail() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"451 4.3.0 busy\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n",
        ]);
        h.ready();
        let out = h.done(tx(&["a@example.org"]));
        assert_eq!(
            out,
            [RcptOutcome::Transient(Reply::ext(451, (4, 3, 0), "busy"))]
        );
        assert!(h.client.is_ready());
    }

    #[test]
    fn transient_failure_at_mail_without_pipelining_stops() {
        let mut h = Harness::new(&[GREET, EHLO_PLAIN, b"452 4.3.1 full\r\n"]);
        h.ready();
        let out = h.done(tx(&["a@example.org", "b@example.org"]));
        assert_eq!(
            out.iter().map(code).collect::<Vec<_>>(),
            [('T', 452), ('T', 452)]
        );
        assert_eq!(h.writes().len(), 2);
    }

    #[test]
    fn permanent_failure_at_end_of_data() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"554 5.7.1 spam\r\n",
        ]);
        h.ready();
        let out = h.done(tx(&["a@example.org"]));
        assert_eq!(
            out,
            [RcptOutcome::Permanent(Reply::ext(554, (5, 7, 1), "spam"))]
        );
        // The server ended the transaction itself: no RSET needed.
        assert!(!h.client.needs_rset);
    }

    #[test]
    fn data_refused_after_accepted_rcpt() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"451 4.3.0 later\r\n",
        ]);
        h.ready();
        let out = h.done(tx(&["a@example.org"]));
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('T', 451)]);
        assert!(h.client.needs_rset);
    }

    #[test]
    fn ehlo_refused_falls_back_to_helo() {
        let mut h = Harness::new(&[
            b"220-mx\r\n220 second line\r\n",
            b"502 5.5.2 what\r\n",
            b"250 mx\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 ok\r\n",
        ]);
        h.ready();
        assert_eq!(h.client.capabilities(), &Capabilities::default());
        let out = h.done(tx(&["a@example.org"]));
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('D', 250)]);
        assert_eq!(
            h.writes()[..3],
            [
                "EHLO gw.example.net\r\n",
                "HELO gw.example.net\r\n",
                "MAIL FROM:<s@example.net>\r\n"
            ]
        );
    }

    #[test]
    fn greeting_and_helo_refusals_are_errors() {
        let mut h = Harness::new(&[b"554 5.7.1 go away\r\n"]);
        assert!(matches!(h.run(), Err(ClientError::Greeting(r)) if r.code == 554));
        // The error sticks.
        assert!(matches!(h.client.poll(), Err(ClientError::Greeting(_))));
        let mut h = Harness::new(&[GREET, b"500 no\r\n", b"501 no\r\n"]);
        assert!(matches!(
            h.run(),
            Err(ClientError::Refused {
                command: "HELO",
                ..
            })
        ));
        let mut h = Harness::new(&[GREET, b"421 4.3.2 shutting down\r\n"]);
        assert!(matches!(h.run(), Err(ClientError::Closing(_))));
    }

    #[test]
    fn starttls_flow_forgets_capabilities() {
        let mut h = Harness::new(&[
            GREET,
            b"250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
            b"220 2.0.0 Ready to start TLS\r\n",
            b"250-mx\r\n250 SIZE 50\r\n",
        ]);
        h.ready();
        h.client.starttls().unwrap();
        assert_eq!(h.run(), Ok(Step::StartTls));
        h.client.tls_established().unwrap();
        h.ready();
        assert!(h.client.is_tls());
        assert_eq!(
            h.client.capabilities(),
            &Capabilities {
                size: Some(50),
                ..Capabilities::default()
            }
        );
        assert_eq!(
            h.client.starttls(),
            Err(ClientError::Misuse(
                "STARTTLS while the session is not ready"
            ))
        );
        assert_eq!(
            h.writes(),
            [
                "EHLO gw.example.net\r\n",
                "STARTTLS\r\n",
                "EHLO gw.example.net\r\n"
            ]
        );
        // Over the limit: permanent at once, nothing sent.
        let mut t = tx(&["a@example.org"]);
        t.size = Some(51);
        let out = h.done(t);
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('P', 552)]);
        assert_eq!(h.writes().len(), 3);
    }

    #[test]
    fn auth_plain_only_inside_tls_and_refusal_leaves_the_session_usable() {
        let mut h = Harness::new(&[
            GREET,
            b"250-mx\r\n250-AUTH LOGIN PLAIN\r\n250 STARTTLS\r\n",
            b"220 2.0.0 Ready to start TLS\r\n",
            b"250-mx\r\n250 AUTH PLAIN\r\n",
            b"535 5.7.8 Authentication credentials invalid\r\n",
            b"235 2.7.0 Authentication successful\r\n",
        ]);
        h.ready();
        assert_eq!(
            h.client.auth_plain("relay", "pw"),
            Err(ClientError::Misuse("AUTH without TLS"))
        );
        h.client.starttls().unwrap();
        assert_eq!(h.run(), Ok(Step::StartTls));
        h.client.tls_established().unwrap();
        h.ready();
        h.client.auth_plain("relay", "wrong").unwrap();
        match h.run() {
            Ok(Step::AuthRefused(r)) => assert_eq!(r.code, 535),
            other => panic!("{other:?}"),
        }
        assert!(!h.client.is_authenticated());
        h.client.auth_plain("relay", "secret").unwrap();
        h.ready();
        assert!(h.client.is_authenticated());
        let writes = h.writes();
        // \0relay\0secret
        assert_eq!(
            writes.last().unwrap(),
            "AUTH PLAIN AHJlbGF5AHNlY3JldA==\r\n"
        );
    }

    #[test]
    fn starttls_injection_and_refusal() {
        let mut h = Harness::new(&[
            GREET,
            b"250-mx\r\n250 STARTTLS\r\n",
            b"220 go ahead\r\n250-injected\r\n250 PIPELINING\r\n",
        ]);
        h.ready();
        h.client.starttls().unwrap();
        assert_eq!(h.run(), Err(ClientError::UnexpectedData));

        let mut h = Harness::new(&[
            GREET,
            b"250-mx\r\n250 STARTTLS\r\n",
            b"454 4.7.0 TLS not available\r\n",
        ]);
        h.ready();
        h.client.starttls().unwrap();
        assert!(matches!(h.run(), Ok(Step::StartTlsRefused(r)) if r.code == 454));
        h.ready();
    }

    #[test]
    fn refuses_injection_in_addresses() {
        let mut h = Harness::new(&[GREET, EHLO_PIPE]);
        h.ready();
        for bad in ["a@b>\r\nRSET", "a@b\n", "<a@b", "a@b>", "a\0@b", "a\x7f@b"] {
            let mut t = tx(&["ok@example.org"]);
            t.sender = bad.into();
            assert!(
                matches!(h.client.begin(t), Err(ClientError::Invalid(_))),
                "{bad:?}"
            );
            assert!(matches!(
                h.client.begin(tx(&["ok@example.org", bad])),
                Err(ClientError::Invalid(_))
            ));
        }
        assert!(
            h.client
                .begin(tx(&[&format!("{}@example.org", "a".repeat(250))]))
                .is_err()
        );
        assert!(h.client.begin(tx(&[""])).is_err());
        assert!(h.client.begin(tx(&[])).is_err());
        assert!(Client::new("bad name").is_err());
        assert!(Client::new("x\r\nQUIT").is_err());
        // Nothing went out beyond EHLO, and the session is still usable.
        assert_eq!(h.writes().len(), 1);
        assert!(h.client.is_ready());
    }

    #[test]
    fn smtputf8_addresses() {
        let mut h = Harness::new(&[GREET, EHLO_PIPE]);
        h.ready();
        let out = h.done(tx(&["jörg@example.org"]));
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('P', 553)]);
        let mut h = Harness::new(&[
            GREET,
            b"250-mx\r\n250 SMTPUTF8\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 ok\r\n",
        ]);
        h.ready();
        let out = h.done(tx(&["jörg@example.org"]));
        assert_eq!(out.iter().map(code).collect::<Vec<_>>(), [('D', 250)]);
        assert_eq!(
            h.writes()[1..3],
            [
                "MAIL FROM:<s@example.net> SMTPUTF8\r\n",
                "RCPT TO:<jörg@example.org>\r\n"
            ]
        );
    }

    #[test]
    fn pipelining_window_is_capped() {
        let rcpts: Vec<String> = (0..150).map(|i| format!("r{i}@example.org")).collect();
        let mut h = Harness::new(&[GREET, EHLO_PIPE]);
        h.ready();
        let t = Transaction {
            recipients: rcpts,
            ..tx(&[])
        };
        h.client.begin(t).unwrap();
        let Ok(Step::Send(first)) = h.client.poll() else {
            panic!()
        };
        assert_eq!(
            first
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            MAX_OUTSTANDING
        );
        assert_eq!(h.client.poll(), Ok(Step::Read));
        let mut replies = Vec::new();
        for _ in 0..MAX_OUTSTANDING {
            replies.extend_from_slice(b"250 ok\r\n");
        }
        h.client.feed(&replies);
        let Ok(Step::Send(second)) = h.client.poll() else {
            panic!()
        };
        let lines: Vec<&[u8]> = second
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 52);
        assert_eq!(lines[0], b"RCPT TO:<r99@example.org>\r");
        assert_eq!(lines[51], b"DATA\r");
    }

    #[test]
    fn connection_loss_reports_settled_recipients() {
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n",
        ]);
        h.ready();
        h.client
            .begin(tx(&["a@example.org", "b@example.org"]))
            .unwrap();
        assert_eq!(h.run(), Err(ClientError::ConnectionClosed));
        let settled = h.client.settled();
        assert!(matches!(&settled[0], Some(RcptOutcome::Permanent(r)) if r.code == 550));
        assert_eq!(settled[1], None);
        assert!(!h.client.is_ready());
    }

    #[test]
    fn unasked_replies_are_refused() {
        let mut h = Harness::new(&[GREET, b"250 mx\r\n250 extra\r\n"]);
        assert_eq!(h.run(), Err(ClientError::UnexpectedData));
        let mut h = Harness::new(&[
            GREET,
            EHLO_PIPE,
            b"250 ok\r\n250 ok\r\n421 4.4.2 timeout\r\n",
        ]);
        h.ready();
        h.client.begin(tx(&["a@example.org"])).unwrap();
        assert!(matches!(h.run(), Err(ClientError::Closing(r)) if r.code == 421));
    }

    #[test]
    fn quit_tolerates_a_silent_close() {
        let mut h = Harness::new(&[GREET, EHLO_PIPE]);
        h.ready();
        h.quit();
    }

    proptest::proptest! {
        /// Whatever a server sends, the machine answers with a step or an error, never a
        /// panic, and never sends anything but commands it composed itself.
        #[test]
        fn survives_any_server(chunks in proptest::collection::vec(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0..12),
            prefix in 0usize..4,
        ) {
            let canned: [&[u8]; 4] = [GREET, EHLO_PIPE, b"250 ok\r\n250 ok\r\n354 go\r\n", b"250 ok\r\n"];
            let mut client = Client::new("gw.example.net").unwrap();
            let mut input: VecDeque<Vec<u8>> = canned[..prefix].iter().map(|c| c.to_vec()).collect();
            input.extend(chunks);
            let mut began = false;
            for _ in 0..200 {
                match client.poll() {
                    Ok(Step::Send(b)) => proptest::prop_assert!(b.ends_with(b"\r\n")),
                    Ok(Step::Read) => match input.pop_front() {
                        Some(c) => client.feed(&c),
                        None => client.eof(),
                    },
                    Ok(Step::Ready) if !began => {
                        began = true;
                        client.begin(tx(&["a@example.org"])).unwrap();
                    }
                    Ok(Step::SendBody) => client.body_sent().unwrap(),
                    Ok(Step::StartTls) => client.tls_established().unwrap(),
                    Ok(Step::Ready | Step::Closed) | Err(_) => break,
                    Ok(Step::Done(_) | Step::StartTlsRefused(_) | Step::AuthRefused(_)) => {}
                }
            }
        }
    }

    #[test]
    fn parses_capabilities() {
        let r = Reply::multi(
            250,
            None,
            vec![
                "mx".into(),
                "size 0".into(),
                "Auth=LOGIN".into(),
                "AUTH plain login CRAM-MD5".into(),
                "smtputf8".into(),
                "CHUNKING".into(),
                "STARTTLS".into(),
                String::new(),
            ],
        );
        let c = Capabilities::from_ehlo(&r);
        assert_eq!(
            c,
            Capabilities {
                size: Some(0),
                smtputf8: true,
                chunking: true,
                starttls: true,
                auth: vec!["LOGIN".into(), "PLAIN".into(), "CRAM-MD5".into()],
                ..Capabilities::default()
            }
        );
    }
}
