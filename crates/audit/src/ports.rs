//! `ports.exposed`: which mail ports of a host accept connections, and whether POP3 and IMAP
//! on their clear-text ports let a client log in before STARTTLS.
//!
//! [`scan_ports`] connects to each [`PortSpec`] (by default [`MAIL_PORTS`]: 25, 465, 587,
//! 2525, 110, 143, 993, 995) with at most [`PortOptions::concurrency`] connections at once and
//! a time limit on connect and on every read. A port is open (connected), closed (refused) or
//! silent (no answer in time, a filter). On an open POP3 port the auditor sends `CAPA` (RFC
//! 2449) and, only when the server has no CAPA, `USER` with a made-up name to see whether a
//! clear-text login would be taken; on an open IMAP port it sends `CAPABILITY` (RFC 3501:
//! `LOGINDISABLED`, `AUTH=PLAIN`, `STARTTLS`). No password is ever sent. Then it says
//! goodbye (`QUIT`, `LOGOUT`).
//!
//! Findings (endpoint `host[address]:port`): SMTP and submission ports that are open are
//! information; IMAP and POP3 are warnings on an MX host (seed 000: close mailbox access that
//! is not needed), and a failure when a clear-text login is offered before TLS. One finding per
//! host (endpoint `host[address]`) lists the ports that did not answer. How it fails: lines
//! longer than [`MAX_LINE`] bytes or replies over [`MAX_LINES`] lines end the dialogue (the
//! port still counts as open); an unexpected connect error gives an `error` finding for that
//! port.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::finding::{Finding, Severity, Status};

/// The one check id of this module.
pub const CHECKS: &[crate::smtp::CheckInfo] = &[crate::smtp::CheckInfo {
    id: "ports.exposed",
    description: "Only the mail ports the host needs answer, and POP3 / IMAP take no clear-text login before STARTTLS.",
}];

/// Longest protocol line read.
pub const MAX_LINE: usize = 4096;
/// Most lines of one POP3 CAPA or IMAP CAPABILITY answer.
pub const MAX_LINES: usize = 100;

/// What listens on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// SMTP between servers (25, or an alternative port such as 2525).
    Smtp,
    /// Message submission with STARTTLS (587).
    Submission,
    /// Message submission over implicit TLS (465).
    Submissions,
    /// POP3 in clear text, STARTTLS optional (110).
    Pop3,
    /// IMAP in clear text, STARTTLS optional (143).
    Imap,
    /// POP3 over TLS (995).
    Pop3s,
    /// IMAP over TLS (993).
    Imaps,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Smtp => "SMTP",
            Service::Submission => "submission",
            Service::Submissions => "submission over TLS",
            Service::Pop3 => "POP3",
            Service::Imap => "IMAP",
            Service::Pop3s => "POP3 over TLS",
            Service::Imaps => "IMAP over TLS",
        }
    }
}

/// One port to test and the service expected there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub port: u16,
    pub service: Service,
}

/// The mail ports of the baseline.
pub const MAIL_PORTS: &[PortSpec] = &[
    PortSpec {
        port: 25,
        service: Service::Smtp,
    },
    PortSpec {
        port: 465,
        service: Service::Submissions,
    },
    PortSpec {
        port: 587,
        service: Service::Submission,
    },
    PortSpec {
        port: 2525,
        service: Service::Smtp,
    },
    PortSpec {
        port: 110,
        service: Service::Pop3,
    },
    PortSpec {
        port: 143,
        service: Service::Imap,
    },
    PortSpec {
        port: 993,
        service: Service::Imaps,
    },
    PortSpec {
        port: 995,
        service: Service::Pop3s,
    },
];

/// Settings of [`scan_ports`].
#[derive(Clone, Debug)]
pub struct PortOptions {
    /// Time limit of the connect and of each read and write.
    pub timeout: Duration,
    /// Most connections at once to the host.
    pub concurrency: usize,
}

impl Default for PortOptions {
    fn default() -> PortOptions {
        PortOptions {
            timeout: Duration::from_secs(5),
            concurrency: 4,
        }
    }
}

/// What connecting to a port gave.
enum Reach {
    Open(TcpStream),
    Closed,
    Silent,
    Failed(String),
}

async fn reach(addr: SocketAddr, limit: Duration) -> Reach {
    match timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Reach::Open(stream),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Closed,
        Ok(Err(e)) => Reach::Failed(e.to_string()),
        Err(_) => Reach::Silent,
    }
}

/// A line-oriented dialogue with limits.
struct Dialogue {
    stream: TcpStream,
    buf: Vec<u8>,
    limit: Duration,
}

impl Dialogue {
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_LINE {
                return Err(format!("a line longer than {MAX_LINE} bytes"));
            }
            let mut chunk = [0u8; 2048];
            let n = match timeout(self.limit, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err("the server closed the connection".into()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no answer within {:?}", self.limit)),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), String> {
        match timeout(
            self.limit,
            self.stream.write_all(format!("{line}\r\n").as_bytes()),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("could not send within {:?}", self.limit)),
        }
    }
}

/// What a POP3 or IMAP server offers before TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// Whether a client may log in with a clear-text password before TLS.
    pub plaintext: bool,
    /// Whether STARTTLS (`STLS` / `STARTTLS`) is offered.
    pub starttls: bool,
    /// What was seen (greeting, capabilities).
    pub evidence: String,
}

/// POP3: `CAPA`; without CAPA, `USER` (RFC 1939 makes USER/PASS the default login).
async fn pop3_login(d: &mut Dialogue) -> Result<Login, String> {
    let greeting = d.line().await?;
    if !greeting.starts_with("+OK") {
        return Err(format!("not a POP3 greeting: {greeting}"));
    }
    d.send("CAPA").await?;
    let first = d.line().await?;
    let mut caps = Vec::new();
    let plaintext;
    if first.starts_with("+OK") {
        loop {
            let line = d.line().await?;
            if line == "." {
                break;
            }
            if caps.len() >= MAX_LINES {
                return Err(format!("CAPA longer than {MAX_LINES} lines"));
            }
            caps.push(line.to_ascii_uppercase());
        }
        let sasl_plain = caps.iter().any(|c| {
            let mut words = c.split_whitespace();
            words.next() == Some("SASL") && words.any(|m| m == "PLAIN" || m == "LOGIN")
        });
        plaintext = caps.iter().any(|c| c == "USER") || sasl_plain;
    } else {
        d.send("USER ravelin-audit-probe").await?;
        let reply = d.line().await?;
        caps.push(format!("no CAPA ({first}); USER → {reply}"));
        plaintext = reply.starts_with("+OK");
    }
    let starttls = caps.iter().any(|c| c == "STLS");
    let _ = d.send("QUIT").await;
    Ok(Login {
        plaintext,
        starttls,
        evidence: format!("{greeting} | CAPA: {}", caps.join(" ")),
    })
}

/// IMAP: `CAPABILITY`.
async fn imap_login(d: &mut Dialogue) -> Result<Login, String> {
    let greeting = d.line().await?;
    if !greeting.starts_with("* OK") {
        return Err(format!("not an IMAP greeting: {greeting}"));
    }
    d.send("a1 CAPABILITY").await?;
    let mut caps = Vec::new();
    for _ in 0..MAX_LINES {
        let line = d.line().await?;
        if let Some(rest) = line.strip_prefix("* CAPABILITY ") {
            caps.extend(rest.split_whitespace().map(str::to_ascii_uppercase));
        } else if line.starts_with("a1 ") {
            let _ = d.send("a2 LOGOUT").await;
            let has = |c: &str| caps.iter().any(|k| k == c);
            return Ok(Login {
                plaintext: !has("LOGINDISABLED") || has("AUTH=PLAIN") || has("AUTH=LOGIN"),
                starttls: has("STARTTLS"),
                evidence: format!("{greeting} | CAPABILITY {}", caps.join(" ")),
            });
        }
    }
    Err(format!("no end of CAPABILITY within {MAX_LINES} lines"))
}

fn mailbox_fix(service: Service) -> &'static str {
    match service {
        Service::Pop3 | Service::Pop3s => {
            "Require TLS before login (Dovecot: `disable_plaintext_auth = yes`; Exchange: `Set-PopSettings -LoginType SecureLogin`), or close the port on the internet-facing address when users do not need it"
        }
        _ => {
            "Require TLS before login (Dovecot: `disable_plaintext_auth = yes`; Exchange: `Set-ImapSettings -LoginType SecureLogin`), or close the port on the internet-facing address when users do not need it"
        }
    }
}

/// The finding for one open port.
async fn open_port(
    endpoint: String,
    spec: PortSpec,
    stream: TcpStream,
    limit: Duration,
) -> Finding {
    const ID: &str = "ports.exposed";
    let label = format!("{} ({})", spec.service.name(), spec.port);
    let mut dialogue = Dialogue {
        stream,
        buf: Vec::new(),
        limit,
    };
    let login = match spec.service {
        Service::Pop3 => pop3_login(&mut dialogue).await,
        Service::Imap => imap_login(&mut dialogue).await,
        Service::Pop3s | Service::Imaps => {
            return Finding::new(
                ID,
                Status::Warn,
                Severity::Low,
                endpoint,
                format!("{label} is reachable: mailbox logins are open to password guessing on this host"),
                "connection accepted",
            )
            .fix("Close mailbox access on the internet-facing address of the mail gateway if users do not need it there");
        }
        Service::Smtp | Service::Submission | Service::Submissions => {
            return Finding::new(
                ID,
                Status::Info,
                Severity::Info,
                endpoint,
                format!("{label} accepts connections"),
                "connection accepted",
            );
        }
    };
    match login {
        Ok(login) if login.plaintext => Finding::new(
            ID,
            Status::Fail,
            Severity::Medium,
            endpoint,
            format!(
                "{label} accepts a clear-text password {}",
                if login.starttls {
                    "before STARTTLS"
                } else {
                    "and offers no STARTTLS"
                }
            ),
            login.evidence,
        )
        .fix(mailbox_fix(spec.service)),
        Ok(login) => Finding::new(
            ID,
            Status::Warn,
            Severity::Low,
            endpoint,
            format!("{label} is reachable; logins only after TLS"),
            login.evidence,
        )
        .fix(mailbox_fix(spec.service)),
        Err(why) => Finding::new(
            ID,
            Status::Warn,
            Severity::Low,
            endpoint,
            format!("{label} accepts connections, but the login offer could not be read"),
            why,
        )
        .fix(mailbox_fix(spec.service)),
    }
}

/// How findings name the host and a port: `name[ip]:port` and `name[ip]`, or `ip:port` and
/// `ip` for a host without a name (as [`crate::target::Endpoint`] prints).
fn endpoint_name(name: Option<&str>, ip: IpAddr, port: Option<u16>) -> String {
    match (name, port) {
        (None, Some(port)) => SocketAddr::new(ip, port).to_string(),
        (None, None) => ip.to_string(),
        (Some(name), Some(port)) => format!("{name}[{ip}]:{port}"),
        (Some(name), None) => format!("{name}[{ip}]"),
    }
}

/// Tests `ports` on `ip` (`name`, the host's name if it has one, names it in endpoints).
pub async fn scan_ports(
    name: Option<&str>,
    ip: IpAddr,
    ports: &[PortSpec],
    opts: &PortOptions,
) -> Vec<Finding> {
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for (index, spec) in ports.iter().copied().enumerate() {
        let gate = gate.clone();
        let endpoint = endpoint_name(name, ip, Some(spec.port));
        let limit = opts.timeout;
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let result = match reach(SocketAddr::new(ip, spec.port), limit).await {
                Reach::Open(stream) => Ok(open_port(endpoint, spec, stream, limit).await),
                Reach::Closed => Err((spec, "closed")),
                Reach::Silent => Err((spec, "no answer")),
                Reach::Failed(why) => Ok(Finding::new(
                    "ports.exposed",
                    Status::Error,
                    Severity::Info,
                    endpoint,
                    format!(
                        "{} ({}) could not be tested",
                        spec.service.name(),
                        spec.port
                    ),
                    why,
                )),
            };
            (index, result)
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(result) = done {
            results.push(result);
        }
    }
    results.sort_by_key(|(index, _)| *index);
    let mut findings = Vec::new();
    let mut unreachable = Vec::new();
    for (_, result) in results {
        match result {
            Ok(finding) => findings.push(finding),
            Err((spec, how)) => {
                unreachable.push(format!("{} {} ({how})", spec.port, spec.service.name()))
            }
        }
    }
    if !unreachable.is_empty() {
        findings.push(Finding::new(
            "ports.exposed",
            Status::Pass,
            Severity::Info,
            endpoint_name(name, ip, None),
            format!(
                "{} of {} mail ports not reachable",
                unreachable.len(),
                ports.len()
            ),
            unreachable.join(", "),
        ));
    }
    findings
}
