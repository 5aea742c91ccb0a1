//! The few SMTP steps before a TLS handshake: greeting, EHLO, STARTTLS (RFC 3207).
//!
//! Blocking, over a `std::net::TcpStream` whose read and write time limits the caller has
//! set; replies are read with [`ReplyParser`] and its limits (line length, line count). After
//! the server's `220` to STARTTLS nothing else may have arrived: bytes the server sent ahead
//! of the handshake would be read as if they came through TLS (the STARTTLS command
//! injection class of bugs), so they are an error here. Fails with [`StartTlsError`]; never
//! panics on what the server sends.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;

use ravelin_wire::{Reply, ReplyParser};

/// Why the session did not reach the TLS handshake.
#[derive(Debug)]
pub enum StartTlsError {
    /// Connecting, reading or writing failed (including time limits).
    Io(io::Error),
    /// The server answered with something that is not an SMTP reply.
    Protocol(String),
    /// The greeting or EHLO was refused; the reply is quoted.
    Refused(String),
    /// EHLO succeeded but did not list STARTTLS; the EHLO keywords are quoted.
    NotOffered(String),
    /// STARTTLS was answered with something other than 220; the reply is quoted.
    Rejected(String),
}

impl fmt::Display for StartTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartTlsError::Io(e) => write!(f, "{e}"),
            StartTlsError::Protocol(why) => write!(f, "protocol error: {why}"),
            StartTlsError::Refused(reply) => write!(f, "refused: {reply}"),
            StartTlsError::NotOffered(ehlo) => write!(f, "STARTTLS not offered (EHLO: {ehlo})"),
            StartTlsError::Rejected(reply) => write!(f, "STARTTLS answered {reply}"),
        }
    }
}

impl std::error::Error for StartTlsError {}

impl From<io::Error> for StartTlsError {
    fn from(e: io::Error) -> Self {
        StartTlsError::Io(e)
    }
}

/// What the server said before TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plaintext {
    /// The greeting, on one line.
    pub greeting: String,
    /// The EHLO keywords (the lines after the first), upper-cased.
    pub ehlo: Vec<String>,
}

fn read_reply(stream: &mut TcpStream, parser: &mut ReplyParser) -> Result<Reply, StartTlsError> {
    let mut chunk = [0u8; 4096];
    loop {
        match parser.next_reply() {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => {}
            Err(e) => return Err(StartTlsError::Protocol(e.to_string())),
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(StartTlsError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        parser.feed(&chunk[..n]);
    }
}

fn command(
    stream: &mut TcpStream,
    parser: &mut ReplyParser,
    line: &str,
) -> Result<Reply, StartTlsError> {
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    stream.flush()?;
    read_reply(stream, parser)
}

/// Reads the greeting and sends EHLO `ehlo_name`; does not send STARTTLS.
pub fn greet(
    stream: &mut TcpStream,
    ehlo_name: &str,
) -> Result<(Plaintext, ReplyParser), StartTlsError> {
    let mut parser = ReplyParser::new();
    let greeting = read_reply(stream, &mut parser)?;
    if greeting.code != 220 {
        return Err(StartTlsError::Refused(greeting.one_line()));
    }
    let ehlo = command(stream, &mut parser, &format!("EHLO {ehlo_name}"))?;
    if ehlo.code != 250 {
        return Err(StartTlsError::Refused(ehlo.one_line()));
    }
    let keywords = ehlo
        .lines
        .iter()
        .skip(1)
        .map(|l| l.trim().to_ascii_uppercase())
        .collect();
    Ok((
        Plaintext {
            greeting: greeting.one_line(),
            ehlo: keywords,
        },
        parser,
    ))
}

/// Greeting, EHLO and STARTTLS: on success the next bytes on `stream` are the TLS handshake.
pub fn starttls(stream: &mut TcpStream, ehlo_name: &str) -> Result<Plaintext, StartTlsError> {
    let (plain, mut parser) = greet(stream, ehlo_name)?;
    if !plain
        .ehlo
        .iter()
        .any(|k| k.split_whitespace().next() == Some("STARTTLS"))
    {
        return Err(StartTlsError::NotOffered(plain.ehlo.join(" ")));
    }
    let reply = command(stream, &mut parser, "STARTTLS")?;
    if reply.code != 220 {
        return Err(StartTlsError::Rejected(reply.one_line()));
    }
    if parser.buffered() > 0 {
        return Err(StartTlsError::Protocol(format!(
            "{} bytes arrived after the 220 to STARTTLS, before the handshake",
            parser.buffered()
        )));
    }
    Ok(plain)
}
