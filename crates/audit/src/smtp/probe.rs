//! The SMTP probe: one client connection to an endpoint, as the checks drive it.
//!
//! [`Connection::open`] connects over TCP (for an implicit-TLS endpoint it also does the TLS
//! handshake) and reads the greeting; [`Connection::command`] sends one command line and
//! reads one reply; [`Connection::send_raw`] writes bytes no well-behaved client writes (the
//! smuggling sequences); [`Connection::starttls`] upgrades the connection. Replies are read
//! with `ravelin_wire::ReplyParser`.
//!
//! STARTTLS uses rustls without certificate verification (`ravelin_tls::Verify::None`): the
//! auditor must see any server, whatever its certificate; judging the certificate is the TLS
//! checks' job. rustls speaks only TLS 1.2 and 1.3, so a server that offers nothing newer than
//! TLS 1.1 fails the handshake here and the checks that need TLS report that.
//!
//! Every exchange is kept in a [`Transcript`] (bounded by
//! [`ProbeSettings::max_transcript_bytes`]) from which the checks quote their evidence. The
//! probe never sends a secret: it never authenticates.
//!
//! Settings read: [`ProbeSettings`] (EHLO name, connect / greeting / reply time limits, the
//! largest reply and transcript). How it fails: every operation returns a [`ProbeError`]
//! naming what went wrong (connect refused, time limit, connection closed, a reply that is
//! not SMTP, a reply over the size limit, a TLS failure); nothing panics on server input.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ravelin_wire::{Reply, ReplyParser};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::target::{Endpoint, Role};

/// How the probe talks to servers.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The name the probe gives in EHLO / HELO.
    pub helo_name: String,
    pub connect_timeout: Duration,
    /// Longest wait for the greeting (servers with a greeting delay are slow on purpose).
    pub greeting_timeout: Duration,
    /// Longest wait for any other reply.
    pub command_timeout: Duration,
    /// Largest reply accepted, in bytes (all lines of one reply).
    pub max_reply_bytes: usize,
    /// Largest transcript kept per connection; later exchanges are counted, not kept.
    pub max_transcript_bytes: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            helo_name: "audit.ravelin.invalid".into(),
            connect_timeout: Duration::from_secs(10),
            greeting_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(30),
            max_reply_bytes: 64 * 1024,
            max_transcript_bytes: 32 * 1024,
        }
    }
}

/// Why a probe operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// The TCP connection could not be made.
    Connect(String),
    /// Nothing (or not enough) arrived in time; says what was awaited.
    Timeout(String),
    /// The server closed the connection.
    Closed,
    Io(String),
    /// The server's bytes are not an SMTP reply, or the probe was asked to send a malformed
    /// command.
    Protocol(String),
    /// A reply larger than [`ProbeSettings::max_reply_bytes`].
    TooLarge(usize),
    Tls(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Connect(e) => write!(f, "cannot connect: {e}"),
            ProbeError::Timeout(what) => write!(f, "timed out waiting for {what}"),
            ProbeError::Closed => f.write_str("the server closed the connection"),
            ProbeError::Io(e) => write!(f, "connection error: {e}"),
            ProbeError::Protocol(e) => write!(f, "not SMTP: {e}"),
            ProbeError::TooLarge(n) => write!(f, "reply larger than {n} bytes"),
            ProbeError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ProbeError {}

/// Who wrote a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Client,
    Server,
    /// Something the probe observed (TLS established, connection dropped, a time limit).
    Note,
}

/// The exchanges of one connection, in order, for evidence.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    lines: Vec<(Direction, String)>,
    bytes: usize,
    limit: usize,
    dropped: usize,
}

impl Transcript {
    fn new(limit: usize) -> Transcript {
        Transcript {
            limit,
            ..Transcript::default()
        }
    }

    fn push(&mut self, direction: Direction, line: String) {
        if self.bytes + line.len() > self.limit {
            self.dropped += 1;
            return;
        }
        self.bytes += line.len();
        self.lines.push((direction, line));
    }

    fn server(&mut self, reply: &Reply) {
        let n = reply.lines.len();
        for (i, line) in reply.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            let text = match reply.enhanced {
                Some(e) => format!("{}{sep}{e} {line}", reply.code),
                None => format!("{}{sep}{line}", reply.code),
            };
            self.push(Direction::Server, text);
        }
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> &[(Direction, String)] {
        &self.lines
    }

    /// The transcript as text: `C: ` for the client, `S: ` for the server, `* ` for notes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (d, line) in &self.lines {
            out.push_str(match d {
                Direction::Client => "C: ",
                Direction::Server => "S: ",
                Direction::Note => "* ",
            });
            out.push_str(line);
            out.push('\n');
        }
        if self.dropped > 0 {
            out.push_str(&format!("* ({} more lines not kept)\n", self.dropped));
        }
        out
    }
}

/// Bytes as printable text: CR, LF, NUL and other controls written as escapes (`\r`, `\n`,
/// `\0`, `\xNN`), so a transcript line shows exactly what went on the wire.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0 => s.push_str("\\0"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between taking the TCP stream for a handshake and putting the TLS stream back.
    Gone,
}

impl Stream {
    fn io(&mut self) -> Result<&mut dyn Duplex, ProbeError> {
        match self {
            Stream::Plain(s) => Ok(s),
            Stream::Tls(s) => Ok(s.as_mut()),
            Stream::Gone => Err(ProbeError::Closed),
        }
    }
}

/// What STARTTLS came to.
#[derive(Debug)]
pub enum StartTls {
    /// The handshake succeeded; the connection is now encrypted.
    Established,
    /// The server refused STARTTLS with this reply; the connection is still in plaintext.
    Refused(Reply),
}

/// The TLS parameters of an encrypted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub protocol: String,
    pub cipher: String,
}

/// One open connection to an endpoint.
pub struct Connection {
    stream: Stream,
    parser: ReplyParser,
    /// Bytes of the reply being read (fed since the last complete reply).
    pending: usize,
    transcript: Transcript,
    settings: Arc<ProbeSettings>,
    server_name: String,
    tls: Option<TlsInfo>,
    local: Option<SocketAddr>,
    buf: Box<[u8]>,
}

const READ_CHUNK: usize = 4096;

impl Connection {
    /// Connects to `endpoint` (doing the TLS handshake first for implicit-TLS endpoints) and
    /// reads the greeting. Returns the connection, the greeting and how long it took from
    /// connect to the complete greeting.
    pub async fn open(
        endpoint: &Endpoint,
        settings: Arc<ProbeSettings>,
    ) -> Result<(Connection, Reply, Duration), ProbeError> {
        let tcp =
            match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(endpoint.addr))
                .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => return Err(ProbeError::Connect(e.to_string())),
                Err(_) => {
                    return Err(ProbeError::Connect(format!(
                        "no answer within {} s",
                        settings.connect_timeout.as_secs()
                    )));
                }
            };
        let _ = tcp.set_nodelay(true);
        let connected = Instant::now();
        let mut conn = Connection {
            local: tcp.local_addr().ok(),
            stream: Stream::Plain(tcp),
            parser: ReplyParser::new(),
            pending: 0,
            transcript: Transcript::new(settings.max_transcript_bytes),
            server_name: endpoint.host(),
            settings: settings.clone(),
            tls: None,
            buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
        };
        if endpoint.role == Role::Submissions {
            conn.handshake().await?;
        }
        let greeting = conn
            .read_reply_limit(settings.greeting_timeout, "the greeting")
            .await?;
        Ok((conn, greeting, connected.elapsed()))
    }

    /// Sends one command line (CRLF is added) and reads one reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, ProbeError> {
        self.send_line(line).await?;
        let what = format!("the reply to {}", verb(line));
        self.read_reply_limit(self.settings.command_timeout, &what)
            .await
    }

    /// Sends one command line without reading a reply (for pipelining).
    pub async fn send_line(&mut self, line: &str) -> Result<(), ProbeError> {
        if line.contains(['\r', '\n']) {
            return Err(ProbeError::Protocol(format!(
                "refusing to send a command containing CR or LF: {}",
                escape_bytes(line.as_bytes())
            )));
        }
        self.transcript.push(Direction::Client, line.to_string());
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes).await
    }

    /// Sends bytes as they are (shown escaped in the transcript).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        self.transcript
            .push(Direction::Client, escape_bytes(bytes).to_string());
        self.write(bytes).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        let limit = self.settings.command_timeout;
        let io = self.stream.io()?;
        let write = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_error(e)),
            Err(_) => Err(ProbeError::Timeout("the server to take our data".into())),
        }
    }

    /// Reads one reply within the command time limit.
    pub async fn read_reply(&mut self) -> Result<Reply, ProbeError> {
        self.read_reply_limit(self.settings.command_timeout, "a reply")
            .await
    }

    /// Reads one reply, waiting at most `limit`; `Ok(None)` when nothing complete arrived in
    /// time (the connection stays usable).
    pub async fn read_reply_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<Reply>, ProbeError> {
        match self.read_reply_limit(limit, "a reply").await {
            Ok(r) => Ok(Some(r)),
            Err(ProbeError::Timeout(_)) => {
                self.note(format!("no reply within {} ms", limit.as_millis()));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn read_reply_limit(&mut self, limit: Duration, what: &str) -> Result<Reply, ProbeError> {
        match tokio::time::timeout(limit, self.read_reply_inner()).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(what.to_string())),
        }
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, ProbeError> {
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => {
                    self.pending = self.parser.buffered();
                    self.transcript.server(&reply);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(ProbeError::Protocol(e.to_string())),
            }
            if self.pending > self.settings.max_reply_bytes {
                return Err(ProbeError::TooLarge(self.settings.max_reply_bytes));
            }
            let io = self.stream.io()?;
            let n = io.read(&mut self.buf).await.map_err(io_error)?;
            if n == 0 {
                return Err(ProbeError::Closed);
            }
            self.pending += n;
            self.parser.feed(&self.buf[..n]);
        }
    }

    /// Sends STARTTLS and, on 220, does the TLS handshake (without certificate verification).
    pub async fn starttls(&mut self) -> Result<StartTls, ProbeError> {
        let reply = self.command("STARTTLS").await?;
        if reply.code != 220 {
            return Ok(StartTls::Refused(reply));
        }
        if self.parser.buffered() > 0 {
            // Bytes after the 220 would be read as if they came over TLS; a server that
            // sends them is broken (or under attack). They are discarded with the parser.
            self.note(format!(
                "{} bytes arrived after the 220 to STARTTLS and were discarded",
                self.parser.buffered()
            ));
        }
        self.handshake().await?;
        Ok(StartTls::Established)
    }

    async fn handshake(&mut self) -> Result<(), ProbeError> {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(ProbeError::Tls(
                "the connection is already encrypted".into(),
            ));
        };
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| ProbeError::Tls(format!("server name {:?}: {e}", self.server_name)))?;
        let connector = TlsConnector::from(tls_config()?);
        let stream =
            match tokio::time::timeout(self.settings.command_timeout, connector.connect(name, tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(ProbeError::Tls(e.to_string())),
                Err(_) => return Err(ProbeError::Timeout("the TLS handshake".into())),
            };
        let (_, session) = stream.get_ref();
        let info = TlsInfo {
            protocol: session
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: session
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
        };
        self.note(format!(
            "TLS established: {} {}",
            info.protocol, info.cipher
        ));
        self.tls = Some(info);
        self.stream = Stream::Tls(Box::new(stream));
        // RFC 3207: the client discards what it knew from before the handshake.
        self.parser = ReplyParser::new();
        self.pending = 0;
        Ok(())
    }

    /// Adds an observation to the transcript.
    pub fn note(&mut self, text: impl Into<String>) {
        self.transcript.push(Direction::Note, text.into());
    }

    /// Sends QUIT, waits briefly for the reply and closes; errors are ignored (the checks
    /// are done with the connection).
    pub async fn quit(mut self) {
        if self.send_line("QUIT").await.is_ok() {
            let _ = self.read_reply_within(Duration::from_secs(2)).await;
        }
        if let Ok(io) = self.stream.io() {
            let _ = tokio::time::timeout(Duration::from_secs(2), io.shutdown()).await;
        }
    }

    /// Closes the connection at once, without QUIT (in DATA: before the final dot, so the
    /// server discards the message). Returns the transcript.
    pub fn abort(mut self, why: &str) -> Transcript {
        self.note(format!("connection dropped: {why}"));
        std::mem::take(&mut self.transcript)
    }

    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// The TLS parameters once the connection is encrypted.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Our side's address (to tell our own address from the server's in its replies).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    pub fn settings(&self) -> &ProbeSettings {
        &self.settings
    }
}

fn io_error(e: std::io::Error) -> ProbeError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionAborted => ProbeError::Closed,
        _ => ProbeError::Io(e.to_string()),
    }
}

/// The command verb of a line, for messages.
fn verb(line: &str) -> String {
    line.split([' ', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// The TLS client configuration of the probe: no certificate verification.
fn tls_config() -> Result<Arc<ClientConfig>, ProbeError> {
    static CONFIG: std::sync::OnceLock<Result<Arc<ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            ravelin_tls::client_config(&ravelin_tls::Verify::None).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(ProbeError::Tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_bytes() {
        assert_eq!(escape_bytes(b"a\r\n.\n\0\x7f\\"), "a\\r\\n.\\n\\0\\x7f\\\\");
    }

    #[test]
    fn transcript_is_bounded() {
        let mut t = Transcript::new(10);
        t.push(Direction::Client, "12345".into());
        t.push(Direction::Client, "123456".into());
        t.push(Direction::Client, "1234".into());
        assert_eq!(t.lines().len(), 2);
        assert!(t.render().ends_with("* (1 more lines not kept)\n"));
    }

    #[test]
    fn transcript_shows_replies_as_sent() {
        let mut t = Transcript::new(1000);
        t.server(&Reply::multi(
            250,
            None,
            vec!["mx.example.org".into(), "SIZE 10".into()],
        ));
        t.server(&Reply::ext(550, (5, 1, 1), "no"));
        assert_eq!(
            t.render(),
            "S: 250-mx.example.org\nS: 250 SIZE 10\nS: 550 5.1.1 no\n"
        );
    }
}
