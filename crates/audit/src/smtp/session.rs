//! Opening an SMTP session for a check: connect, greeting, EHLO (HELO when EHLO is refused),
//! with politeness towards servers that throttle.
//!
//! A greeting of 421 or another 4xx is throttling: the probe waits
//! ([`SmtpOptions::throttle_backoff`], doubled each time) and tries again, at most
//! [`SmtpOptions::throttle_retries`] times, then gives up with [`OpenError::Throttled`], which
//! checks report as status `error` with "throttled" — never as a pass or a fail. A 5xx
//! greeting is [`OpenError::Refused`]. [`Ehlo`] reads the EHLO keywords the checks need
//! (AUTH mechanisms, SIZE, STARTTLS, PIPELINING).
//!
//! Settings read: [`SmtpOptions`] (probe settings, retries, backoff).

use std::time::Duration;

use ravelin_wire::Reply;

use super::SmtpOptions;
use super::probe::{Connection, ProbeError};
use crate::target::Endpoint;

/// The server's answer to EHLO (or HELO).
#[derive(Debug, Clone)]
pub struct Ehlo {
    /// Whether EHLO was accepted (HELO sessions have no extensions).
    pub extended: bool,
    pub reply: Reply,
}

impl Ehlo {
    /// The first line: the server's name and greeting text.
    pub fn first_line(&self) -> &str {
        self.reply.lines.first().map(String::as_str).unwrap_or("")
    }

    /// `(KEYWORD, parameters)` of every extension line.
    pub fn keywords(&self) -> impl Iterator<Item = (String, &str)> {
        self.reply
            .lines
            .iter()
            .skip(1)
            .filter(|_| self.extended)
            .map(|line| {
                let (kw, params) = match line.find([' ', '=']) {
                    Some(i) => (&line[..i], line[i + 1..].trim()),
                    None => (line.as_str(), ""),
                };
                (kw.to_ascii_uppercase(), params)
            })
    }

    pub fn has(&self, keyword: &str) -> bool {
        self.keywords().any(|(k, _)| k == keyword)
    }

    /// The AUTH mechanisms offered (from `AUTH` and the old `AUTH=` lines), upper case,
    /// without duplicates.
    pub fn auth_mechanisms(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (k, params) in self.keywords() {
            if k == "AUTH" {
                for m in params.split_whitespace() {
                    let m = m.to_ascii_uppercase();
                    if !out.contains(&m) {
                        out.push(m);
                    }
                }
            }
        }
        out
    }

    /// `None`: no SIZE keyword; `Some(None)`: SIZE without a limit (or 0); `Some(Some(n))`.
    pub fn size(&self) -> Option<Option<u64>> {
        self.keywords()
            .find(|(k, _)| k == "SIZE")
            .map(|(_, p)| p.parse::<u64>().ok().filter(|n| *n > 0))
    }
}

/// Why a session could not be opened.
#[derive(Debug, Clone)]
pub enum OpenError {
    Probe(ProbeError),
    /// 4xx greetings (or 421 to EHLO) after every retry; the last reply.
    Throttled(String),
    /// A 5xx greeting or EHLO and HELO both refused.
    Refused(String),
}

impl OpenError {
    /// The evidence line for a finding with status `error`.
    pub fn evidence(&self) -> String {
        match self {
            OpenError::Probe(e) => e.to_string(),
            OpenError::Throttled(r) => format!("throttled: {r}"),
            OpenError::Refused(r) => format!("the server refused the session: {r}"),
        }
    }
}

impl From<ProbeError> for OpenError {
    fn from(e: ProbeError) -> Self {
        OpenError::Probe(e)
    }
}

/// An open session, after the greeting and EHLO.
pub struct Session {
    pub conn: Connection,
    pub greeting: Reply,
    /// Time from connect to the complete greeting.
    pub greeting_delay: Duration,
    pub ehlo: Ehlo,
}

/// Connects, reads the greeting and says EHLO (retrying while throttled).
pub async fn open(endpoint: &Endpoint, options: &SmtpOptions) -> Result<Session, OpenError> {
    let mut backoff = options.throttle_backoff;
    let mut attempt = 0;
    loop {
        let (mut conn, greeting, greeting_delay) =
            Connection::open(endpoint, options.probe.clone()).await?;
        let throttled = match greeting.code {
            200..=299 => match ehlo(&mut conn).await {
                Ok(ehlo) => {
                    return Ok(Session {
                        conn,
                        greeting,
                        greeting_delay,
                        ehlo,
                    });
                }
                Err(OpenError::Throttled(r)) => r,
                Err(e) => return Err(e),
            },
            400..=499 => greeting.one_line(),
            _ => {
                conn.quit().await;
                return Err(OpenError::Refused(greeting.one_line()));
            }
        };
        conn.quit().await;
        if attempt >= options.throttle_retries {
            return Err(OpenError::Throttled(throttled));
        }
        attempt += 1;
        tracing::debug!(event = "audit_backoff", endpoint = %endpoint, wait_ms = backoff.as_millis() as u64, reply = %throttled);
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
    }
}

/// EHLO, falling back to HELO when EHLO is refused as unknown.
pub async fn ehlo(conn: &mut Connection) -> Result<Ehlo, OpenError> {
    let name = conn.settings().helo_name.clone();
    let reply = conn.command(&format!("EHLO {name}")).await?;
    match reply.code {
        250 => Ok(Ehlo {
            extended: true,
            reply,
        }),
        421 => Err(OpenError::Throttled(reply.one_line())),
        500..=502 | 504 | 550 => {
            let helo = conn.command(&format!("HELO {name}")).await?;
            match helo.code {
                250 => Ok(Ehlo {
                    extended: false,
                    reply: helo,
                }),
                400..=499 => Err(OpenError::Throttled(helo.one_line())),
                _ => Err(OpenError::Refused(format!(
                    "{} / {}",
                    reply.one_line(),
                    helo.one_line()
                ))),
            }
        }
        400..=499 => Err(OpenError::Throttled(reply.one_line())),
        _ => Err(OpenError::Refused(reply.one_line())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ehlo(lines: &[&str]) -> Ehlo {
        Ehlo {
            extended: true,
            reply: Reply::multi(250, None, lines.iter().map(|l| l.to_string()).collect()),
        }
    }

    #[test]
    fn reads_keywords() {
        let e = ehlo(&[
            "mx.example.org",
            "PIPELINING",
            "SIZE 10240000",
            "AUTH PLAIN LOGIN",
            "AUTH=LOGIN CRAM-MD5",
            "starttls",
        ]);
        assert!(e.has("PIPELINING") && e.has("STARTTLS") && !e.has("CHUNKING"));
        assert_eq!(e.auth_mechanisms(), vec!["PLAIN", "LOGIN", "CRAM-MD5"]);
        assert_eq!(e.size(), Some(Some(10_240_000)));
        assert_eq!(ehlo(&["x", "SIZE"]).size(), Some(None));
        assert_eq!(ehlo(&["x", "SIZE 0"]).size(), Some(None));
        assert_eq!(ehlo(&["x"]).size(), None);
        assert_eq!(e.first_line(), "mx.example.org");
    }
}
