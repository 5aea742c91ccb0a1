//! Header processing before the spool: the gateway's own Received line (RFC 5321 4.4) and
//! the per-message pipeline the DATA content passes through on its way to the spool.
//!
//! The Received line names the public host name only, the protocol (ESMTP, ESMTPS with TLS,
//! or SMTP after HELO), the TLS version and cipher, the queue id and, for a single recipient,
//! the recipient. `inbound.received_client` decides whether the client's HELO name and address
//! appear (a privacy setting; outbound listeners never show the client, who is inside).
//! Nothing the client sent is copied without being made safe: the HELO name is reduced to
//! printable ASCII without parentheses.
//!
//! The pipeline ([`MessageCleanup`]): the header section is buffered (at most
//! `limits.header_size` octets, `limits.header_fields` fields, `limits.line_length` per line),
//! parsed ([`ravelin_wire::headers`]) and passed through the header firewall
//! ([`crate::firewall`]): inbound rules on `inbound` listeners, outbound rules on submission
//! and relay listeners. Then the body streams on unchanged. Outbound mail whose From domain has
//! a DKIM key ([`crate::dkim`]) is signed once, here: the body is held back (in memory up to
//! [`MEMORY_STAGE`] octets, beyond that in an unnamed file in the spool's `incoming/`) until
//! its hash is known, then the signatures, the header and the body are written.
//!
//! Inbound mail on a listener with sender authentication ([`Policy::hold_for_checks`]) is
//! held the same way, together with the header as the client sent it: [`MessageCleanup::finish`]
//! then returns it as [`Finished::Held`], the session runs the checks ([`crate::checks`]) on
//! [`Held::message`] and writes the message with the Authentication-Results field on top
//! ([`Held::write`]), just below our Received line, or drops it.
//!
//! How it fails: a header over a limit is [`CleanupError::Header`] with
//! [`HeaderError::is_limit`] (the session answers `552 5.3.4`), a malformed one (see
//! [`ravelin_wire::headers`] for what is refused and why) also [`CleanupError::Header`]
//! (`550 5.6.0`); a write, staging or signing error is [`CleanupError::Io`] (`452 4.3.1`).
//! Once an error is returned the message is lost and nothing more is written.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;

use ravelin_wire::date;
use ravelin_wire::headers::{Collected, HeaderBlock, HeaderCollector, HeaderError, HeaderLimits};

use crate::dkim::{Outcome, Signer};
use crate::firewall::HeaderFirewall;

/// Body octets of an outbound message held in memory before it is signed; more go to a file.
pub const MEMORY_STAGE: usize = 1024 * 1024;

/// What the Received line records about one transaction.
pub struct Trace<'a> {
    pub hostname: &'a str,
    pub helo: Option<&'a str>,
    pub extended: bool,
    pub client_ip: Option<std::net::IpAddr>,
    /// Whether the client appears at all.
    pub show_client: bool,
    pub tls: Option<&'a str>,
    pub queue_id: &'a str,
    pub recipients: &'a [String],
    pub now: u64,
}

/// The folded header, CRLF terminated.
pub fn received(t: &Trace<'_>) -> String {
    let mut h = String::from("Received:");
    if t.show_client {
        let helo: String = t
            .helo
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_graphic() && !"()[]\\".contains(*c))
            .take(64)
            .collect();
        h.push_str(" from ");
        h.push_str(if helo.is_empty() { "unknown" } else { &helo });
        if let Some(ip) = t.client_ip {
            match ip {
                std::net::IpAddr::V4(v4) => h.push_str(&format!(" ([{v4}])")),
                std::net::IpAddr::V6(v6) => h.push_str(&format!(" ([IPv6:{v6}])")),
            }
        }
        h.push_str("\r\n\t");
    } else {
        h.push(' ');
    }
    let proto = match (t.extended, t.tls.is_some()) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, true) => "SMTPS",
        (false, false) => "SMTP",
    };
    h.push_str(&format!("by {}", t.hostname));
    if let Some(tls) = t.tls {
        h.push_str(&format!(" ({tls})"));
    }
    h.push_str(&format!(" with {proto} id {}", t.queue_id));
    if let [only] = t.recipients {
        h.push_str(&format!("\r\n\tfor <{only}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", date::rfc5322(t.now)));
    h
}

/// What the pipeline of one listener does; shared by its sessions.
pub struct Policy {
    /// Outbound rules and signing (submission and relay listeners) or inbound rules.
    pub outbound: bool,
    pub firewall: HeaderFirewall,
    pub limits: HeaderLimits,
    /// The authserv-id of our Authentication-Results fields (inbound).
    pub authserv_id: String,
    /// Inbound: hold each message for the end-of-data checks (see [`Finished::Held`]).
    pub hold_for_checks: bool,
    /// DKIM keys (outbound; `None` or empty: no signing).
    pub signer: Option<Arc<Signer>>,
    /// Where a held-back body goes once it outgrows memory (see `Spool::scratch_dir`).
    pub scratch_dir: PathBuf,
}

/// Why a message cannot be stored.
#[derive(Debug)]
pub enum CleanupError {
    /// The header is over a limit or malformed: the message is refused.
    Header(HeaderError),
    /// Writing, holding or signing failed: try again later.
    Io(io::Error),
}

impl From<io::Error> for CleanupError {
    fn from(e: io::Error) -> Self {
        CleanupError::Io(e)
    }
}

impl From<HeaderError> for CleanupError {
    fn from(e: HeaderError) -> Self {
        CleanupError::Header(e)
    }
}

/// What was done to one message, for the log.
#[derive(Debug, Default)]
pub struct Report {
    /// Names of the fields the firewall removed.
    pub removed: Vec<String>,
    /// Names of the fields it rewrote.
    pub rewritten: Vec<String>,
    /// Outbound with keys configured: signed or why not.
    pub dkim: Option<Outcome>,
    /// The header block as the client sent it, when asked for with
    /// [`MessageCleanup::keeping_header`] (the From check of submitted mail).
    pub header: Option<Vec<u8>>,
}

/// Where the message bytes go: the spool file being written.
pub type Sink<'a> = dyn FnMut(&[u8]) -> io::Result<()> + 'a;

/// The pipeline for one message (see the module documentation).
pub struct MessageCleanup {
    policy: Arc<Policy>,
    collector: HeaderCollector,
    /// Set once the header went through the firewall.
    state: State,
    report: Report,
    /// Keep the client's header block in the report.
    keep_header: bool,
}

enum State {
    /// Buffering the header.
    Header,
    /// Header written; the body streams through.
    Streaming,
    /// Outbound, to be signed, or inbound, to be checked: the processed header and the body
    /// held back; for the checks also the header as received.
    Holding {
        header: Vec<u8>,
        original: Option<Vec<u8>>,
        body: Stage,
    },
    /// An error was returned; nothing more is taken.
    Failed,
}

impl MessageCleanup {
    pub fn new(policy: Arc<Policy>) -> Self {
        let collector = HeaderCollector::new(policy.limits.max_bytes);
        MessageCleanup {
            policy,
            collector,
            state: State::Header,
            report: Report::default(),
            keep_header: false,
        }
    }

    /// Keeps a copy of the header block as the client sent it for [`Report::header`].
    pub fn keeping_header(mut self) -> Self {
        self.keep_header = true;
        self
    }

    /// Takes the next chunk of message content; what is ready goes to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Sink<'_>) -> Result<(), CleanupError> {
        let result = self.push_inner(chunk, out);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn push_inner(&mut self, chunk: &[u8], out: &mut Sink<'_>) -> Result<(), CleanupError> {
        let body = match self.state {
            State::Failed => return Err(io::Error::other("an earlier error").into()),
            State::Header => match self.collector.push(chunk)? {
                Collected::NeedMore => return Ok(()),
                Collected::Complete { consumed } => {
                    let header = self.collector.take();
                    self.process_header(&header, out)?;
                    &chunk[consumed..]
                }
            },
            _ => chunk,
        };
        match &mut self.state {
            State::Holding { body: stage, .. } => stage.write(body)?,
            _ if body.is_empty() => {}
            _ => out(body)?,
        }
        Ok(())
    }

    /// At the end of the data: what is left goes out (a message without an empty line is all
    /// header), signed when it should be; a message held for the checks is handed back.
    pub fn finish(mut self, out: &mut Sink<'_>) -> Result<Finished, CleanupError> {
        if matches!(self.state, State::Header) {
            let header = self.collector.take();
            self.process_header(&header, out)?;
        }
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Holding {
                header,
                original: Some(original),
                body,
            } => {
                return Ok(Finished::Held(Held {
                    report: self.report,
                    original,
                    header,
                    body,
                }));
            }
            State::Holding {
                header,
                original: None,
                mut body,
            } => {
                let signer =
                    self.policy.signer.as_deref().ok_or_else(|| {
                        io::Error::other("a message held for signing without keys")
                    })?;
                let outcome = signer.sign(&header, &mut |feed| body.replay(feed))?;
                let fields = match &outcome {
                    Outcome::Signed { fields, .. } => fields.as_slice(),
                    Outcome::Unsigned(_) => &[],
                };
                emit(fields, &header, &mut body, out)?;
                self.report.dkim = Some(outcome);
            }
            State::Failed => return Err(io::Error::other("an earlier error").into()),
            State::Header | State::Streaming => {}
        }
        Ok(Finished::Written(self.report))
    }

    /// Parses and filters the header; writes it, or holds it for signing.
    fn process_header(&mut self, header: &[u8], out: &mut Sink<'_>) -> Result<(), CleanupError> {
        let block = HeaderBlock::parse(header, &self.policy.limits)?;
        if self.keep_header {
            self.report.header = Some(header.to_vec());
        }
        let policy = &self.policy;
        let filtered = if policy.outbound {
            policy.firewall.outbound(&block)
        } else {
            policy.firewall.inbound(&block, &policy.authserv_id)
        };
        self.report.removed = filtered.removed;
        self.report.rewritten = filtered.rewritten;
        let signer = policy
            .signer
            .as_deref()
            .filter(|s| policy.outbound && !s.is_empty());
        if !policy.outbound && policy.hold_for_checks {
            self.state = State::Holding {
                header: filtered.header,
                original: Some(header.to_vec()),
                body: Stage::new(policy.scratch_dir.clone()),
            };
            return Ok(());
        }
        match signer.map(|s| s.signing_domain(&filtered.header)) {
            Some(Ok(_)) => {
                self.state = State::Holding {
                    header: filtered.header,
                    original: None,
                    body: Stage::new(policy.scratch_dir.clone()),
                };
            }
            unsigned => {
                if let Some(Err(why)) = unsigned {
                    self.report.dkim = Some(Outcome::Unsigned(why));
                }
                out(&filtered.header)?;
                self.state = State::Streaming;
            }
        }
        Ok(())
    }
}

/// What [`MessageCleanup::finish`] did.
pub enum Finished {
    /// The message is written; what was done to it.
    Written(Report),
    /// Held for the checks; nothing is written yet.
    Held(Held),
}

/// An inbound message held for the end-of-data checks.
pub struct Held {
    /// What the header firewall did.
    pub report: Report,
    /// The header section as the client sent it (what signatures cover).
    original: Vec<u8>,
    /// The header after the firewall (what is stored).
    header: Vec<u8>,
    body: Stage,
}

impl Held {
    /// The message as received: all of it when it is at most `max` octets (`true`), else
    /// only its header section (`false`), so that at most `max` octets are held in memory.
    pub fn message(&mut self, max: u64) -> io::Result<(Vec<u8>, bool)> {
        let total = self.original.len() as u64 + self.body.len;
        if total > max {
            return Ok((self.original.clone(), false));
        }
        let mut all = Vec::with_capacity(total as usize);
        all.extend_from_slice(&self.original);
        self.body
            .replay(&mut |chunk| all.extend_from_slice(chunk))?;
        Ok((all, true))
    }

    /// Writes `fields` (our Authentication-Results), then the filtered header and the body.
    pub fn write(mut self, fields: &[u8], out: &mut Sink<'_>) -> Result<Report, CleanupError> {
        emit(fields, &self.header, &mut self.body, out)?;
        Ok(self.report)
    }
}

/// Writes `fields`, `header` and the held body, in order.
fn emit(fields: &[u8], header: &[u8], body: &mut Stage, out: &mut Sink<'_>) -> io::Result<()> {
    if !fields.is_empty() {
        out(fields)?;
    }
    out(header)?;
    let mut result = Ok(());
    body.replay(&mut |chunk| {
        if result.is_ok() {
            result = out(chunk);
        }
    })?;
    result
}

/// A body held back: memory first, then an unnamed file.
struct Stage {
    memory: Vec<u8>,
    file: Option<File>,
    dir: PathBuf,
    /// Octets held.
    len: u64,
}

impl Stage {
    fn new(dir: PathBuf) -> Self {
        Stage {
            memory: Vec::new(),
            file: None,
            dir,
            len: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.len += bytes.len() as u64;
        if self.file.is_none() && self.memory.len() + bytes.len() > MEMORY_STAGE {
            let mut file = tempfile::tempfile_in(&self.dir)?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(f) => f.write_all(bytes),
            None => {
                self.memory.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Feeds everything held, in order, to `feed`.
    fn replay(&mut self, feed: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let Some(file) = &mut self.file else {
            feed(&self.memory);
            return Ok(());
        };
        file.rewind()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf)? {
                0 => return Ok(()),
                n => feed(&buf[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(show: bool) -> String {
        received(&Trace {
            hostname: "mx.example.org",
            helo: Some("client (evil)\r\nX-Injected: 1"),
            extended: true,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            show_client: show,
            tls: Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384"),
            queue_id: "ABC123",
            recipients: &["b@example.org".to_string()],
            now: 1_795_455_600,
        })
    }

    #[test]
    fn received_line() {
        assert_eq!(
            trace(true),
            "Received: from clientevilX-Injected:1 ([192.0.2.7])\r\n\tby mx.example.org (TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384) with ESMTPS id ABC123\r\n\tfor <b@example.org>;\r\n\tMon, 23 Nov 2026 17:40:00 +0000\r\n"
        );
        let private = trace(false);
        assert!(private.starts_with("Received: by mx.example.org"));
        assert!(!private.contains("192.0.2.7"));
    }

    use crate::config::HeaderFirewallSection;
    use crate::dkim::{KeyAlgorithm, generate, parse_key};

    fn policy(outbound: bool, signer: Option<Signer>, scratch: &std::path::Path) -> Arc<Policy> {
        Arc::new(Policy {
            outbound,
            firewall: HeaderFirewall::new(&HeaderFirewallSection::default(), "mx1.example.org"),
            limits: HeaderLimits {
                max_bytes: 4096,
                max_fields: 20,
                max_line: 1000,
            },
            authserv_id: "mx1.example.org".into(),
            hold_for_checks: false,
            signer: signer.map(Arc::new),
            scratch_dir: scratch.to_path_buf(),
        })
    }

    /// Runs `message` through the pipeline in chunks of `size`: the output, or the error.
    fn run(
        policy: &Arc<Policy>,
        message: &[u8],
        size: usize,
    ) -> Result<(Vec<u8>, Report), CleanupError> {
        let mut out = Vec::new();
        let mut c = MessageCleanup::new(policy.clone());
        for chunk in message.chunks(size.max(1)) {
            c.push(chunk, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
        }
        let finished = c.finish(&mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        let report = match finished {
            Finished::Written(report) => report,
            Finished::Held(mut held) => {
                let (message, complete) = held.message(u64::MAX)?;
                assert!(complete);
                out.extend_from_slice(&message);
                out.extend_from_slice(b"--\r\n");
                held.write(b"Authentication-Results: x; none\r\n", &mut |b| {
                    out.extend_from_slice(b);
                    Ok(())
                })?
            }
        };
        Ok((out, report))
    }

    const INBOUND: &[u8] = b"Authentication-Results: mx1.example.org; dmarc=pass\r\n\
        From: it@example.org\r\nX-MS-Exchange-Organization-SCL: -1\r\nSubject: hi\r\n\r\n\
        body line\r\n\r\n";

    #[test]
    fn inbound_strips_and_streams_the_body_however_it_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(false, None, dir.path());
        for size in [1, 2, 3, 7, 64, 4096] {
            let (out, report) = run(&p, INBOUND, size).unwrap();
            assert_eq!(
                out, b"From: it@example.org\r\nSubject: hi\r\n\r\nbody line\r\n\r\n",
                "chunks of {size}"
            );
            assert_eq!(
                report.removed,
                ["Authentication-Results", "X-MS-Exchange-Organization-SCL"]
            );
            assert!(report.dkim.is_none());
        }
        // A message that is all header, and one that is empty.
        let (out, _) = run(&p, b"Subject: only\r\nX-MS-Exchange-Forest-X: 1\r\n", 5).unwrap();
        assert_eq!(out, b"Subject: only\r\n");
        assert_eq!(run(&p, b"", 5).unwrap().0, b"");
    }

    #[test]
    fn inbound_held_for_checks_keeps_the_header_as_received() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = policy(false, None, dir.path());
        Arc::get_mut(&mut p).unwrap().hold_for_checks = true;
        for size in [1, 5, 4096] {
            let mut c = MessageCleanup::new(p.clone());
            let mut written = Vec::new();
            for chunk in INBOUND.chunks(size) {
                c.push(chunk, &mut |b| {
                    written.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            }
            let Finished::Held(mut held) = c
                .finish(&mut |b| {
                    written.extend_from_slice(b);
                    Ok(())
                })
                .unwrap()
            else {
                panic!("not held");
            };
            // Nothing is written before the verdict; the checks see what the client sent.
            assert!(written.is_empty());
            assert_eq!(held.message(1 << 20).unwrap(), (INBOUND.to_vec(), true));
            let header_only = held.message(10).unwrap();
            assert_eq!(header_only.0, &INBOUND[..INBOUND.len() - 13]);
            assert!(!header_only.1);
            let report = held
                .write(
                    b"Authentication-Results: mx1.example.org; spf=pass\r\n",
                    &mut |b| {
                        written.extend_from_slice(b);
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(
                written,
                b"Authentication-Results: mx1.example.org; spf=pass\r\n\
                  From: it@example.org\r\nSubject: hi\r\n\r\nbody line\r\n\r\n"
            );
            assert_eq!(report.removed.len(), 2);
        }
    }

    #[test]
    fn bad_headers_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(false, None, dir.path());
        let big = format!("Subject: {}\r\n", "x".repeat(900)).repeat(5);
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (big.into_bytes(), true),
            (b"A: 1\r\n".repeat(21), true),
            (
                b"Subject: x\r\n \r\nX-MS-Exchange-Organization-SCL: -1\r\n\r\n".to_vec(),
                false,
            ),
            (b"not a header\r\n\r\nbody".to_vec(), false),
        ];
        for (message, limit) in cases {
            match run(&p, &message, 100) {
                Err(CleanupError::Header(e)) => assert_eq!(e.is_limit(), limit, "{e}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(&message)),
            }
        }
        // After an error nothing more is taken.
        let mut c = MessageCleanup::new(p.clone());
        let mut sink = |_: &[u8]| Ok(());
        assert!(c.push(b" first\r\n\r\n", &mut sink).is_err());
        assert!(c.push(b"more", &mut sink).is_err());
    }

    #[test]
    fn outbound_signs_once_with_the_body_held_in_a_file_when_large() {
        let dir = tempfile::tempdir().unwrap();
        let mut signer = Signer::default();
        let key = parse_key(generate(KeyAlgorithm::Ed25519).unwrap().pem.as_bytes()).unwrap();
        signer.add("example.org", "ed", key);
        let p = policy(true, Some(signer), dir.path());
        let header = b"Received: from EXCH01.corp.example.org (10.1.0.5) by EXCH02\r\n\
            \t(10.1.0.6) with mapi; Mon, 23 Nov 2026 17:40:00 +0000\r\n\
            From: a@example.org\r\nTo: b@partner.example\r\nSubject: s\r\n\r\n";
        let line = b"0123456789".repeat(99);
        let mut message = header.to_vec();
        while message.len() < MEMORY_STAGE + 100_000 {
            message.extend_from_slice(&line);
            message.extend_from_slice(b"\r\n");
        }
        let (out, report) = run(&p, &message, 16 * 1024).unwrap();
        let Some(Outcome::Signed { domain, .. }) = &report.dkim else {
            panic!("{:?}", report.dkim);
        };
        assert_eq!(domain, "example.org");
        assert_eq!(report.removed, ["Received"]);
        assert!(out.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256; s=ed; d=example.org;"));
        let body_at = header.len();
        assert!(out.ends_with(&message[body_at..]));
        let text =
            String::from_utf8_lossy(&out[..out.len() - (message.len() - body_at)]).into_owned();
        assert_eq!(text.matches("DKIM-Signature:").count(), 1);
        assert!(
            text.ends_with("From: a@example.org\r\nTo: b@partner.example\r\nSubject: s\r\n\r\n"),
            "{text}"
        );
        // The spilled body left no named file behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // A From without a key streams unsigned, and says why.
        let other = b"From: a@other.example\r\n\r\nbody\r\n";
        let (out, report) = run(&p, other, 3).unwrap();
        assert_eq!(out, other);
        assert_eq!(
            report.dkim,
            Some(Outcome::Unsigned("no key for other.example".into()))
        );
    }
}
