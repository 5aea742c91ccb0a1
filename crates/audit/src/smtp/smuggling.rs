//! `smtp.smuggling.<sequence>` (active only): does a fake end-of-data sequence end the
//! message?
//!
//! Only `<CRLF>.<CRLF>` ends DATA (RFC 5321 section 4.1.1.4). A server that also takes a
//! sequence such as `<LF>.<LF>` lets an attacker hide a second, spoofed message inside the
//! first one when a server on the way passes the sequence through (SMTP smuggling,
//! CVE-2023-51764/51765/51766). For each sequence of [`SEQUENCES`], on a fresh session, the
//! check sends a short test message to a recipient of the server, then the sequence, then
//! `MAIL FROM:<>` in the same write, and waits [`SmtpOptions::smuggling_wait`](super::SmtpOptions)
//! for a reply. The verdict is automatic: a 2xx straight after the fake ending means the
//! server ended the message there (vulnerable; it received one short test message); a 5xx,
//! the connection closed, or no reply at all (the server is still reading data) means it did
//! not. A 4xx is inconclusive. When the server did not end the message, the connection is
//! dropped without the final dot, so nothing is delivered.
//!
//! The recipient is `postmaster@DOMAIN` when the target names the domain, else `postmaster`.
//! Without `--active`, and on submission ports, a single `smtp.smuggling` finding says the
//! checks were skipped.

use super::probe::ProbeError;
use super::{Ctx, said, session};
use crate::finding::{Finding, Severity, Status};
use crate::select::Selection;
use crate::target::Role;

/// What the smuggling checks are about.
pub const DESCRIPTION: &str = "Only <CRLF>.<CRLF> ends message data; other end-of-data \
    sequences are refused or taken as data (SMTP smuggling).";

/// One fake end-of-data sequence.
#[derive(Debug, Clone, Copy)]
pub struct Sequence {
    /// The id suffix: `smtp.smuggling.<name>`.
    pub name: &'static str,
    pub bytes: &'static [u8],
}

impl Sequence {
    /// The check id of the sequence: `smtp.smuggling.<name>`.
    pub fn id(&self) -> String {
        format!("smtp.smuggling.{}", self.name)
    }
}

/// The sequences tested (SEC Consult's SMTP smuggling research and its follow-ups).
pub const SEQUENCES: &[Sequence] = &[
    Sequence {
        name: "lf-dot-lf",
        bytes: b"\n.\n",
    },
    Sequence {
        name: "lf-dot-crlf",
        bytes: b"\n.\r\n",
    },
    Sequence {
        name: "crlf-dot-lf",
        bytes: b"\r\n.\n",
    },
    Sequence {
        name: "cr-dot-cr",
        bytes: b"\r.\r",
    },
    Sequence {
        name: "cr-dot-crlf",
        bytes: b"\r.\r\n",
    },
    Sequence {
        name: "crlf-dot-cr",
        bytes: b"\r\n.\r",
    },
    Sequence {
        name: "cr-dot-lf",
        bytes: b"\r.\n",
    },
    Sequence {
        name: "lf-dot-cr",
        bytes: b"\n.\r",
    },
    Sequence {
        name: "crlf-nul-dot-crlf",
        bytes: b"\r\n\x00.\r\n",
    },
    Sequence {
        name: "crlf-dot-nul-crlf",
        bytes: b"\r\n.\x00\r\n",
    },
    Sequence {
        name: "cr-crlf-dot-cr-crlf",
        bytes: b"\r\r\n.\r\r\n",
    },
];

const FIX: &str = "Accept only <CRLF>.<CRLF> as the end of data and refuse bare CR and LF. \
    Postfix: upgrade (3.9, or 3.8.4 / 3.7.9 / 3.6.13 / 3.5.23 and later) and set \
    `smtpd_forbid_bare_newline = normalize` (or `reject`) with \
    `smtpd_forbid_bare_newline_exclusions = $mynetworks` in main.cf. Sendmail: 8.18.1 or \
    later. Exim: 4.97.1 or later. Exchange and appliances: apply the vendor's fix, or let the \
    gateway face the internet (it refuses bare CR and LF and re-sends canonical CRLF).";

/// Runs every sequence `checks` selects (or reports the checks skipped without `--active`).
pub async fn run(ctx: &Ctx<'_>, checks: &Selection) -> Vec<Finding> {
    if !ctx.options.active {
        return vec![ctx.skipped(
            "smtp.smuggling",
            "active check: run with --active, only against servers you run or may test \
             (a vulnerable server receives one short test message per sequence)",
        )];
    }
    if ctx.endpoint.role != Role::Mx {
        return vec![ctx.skipped(
            "smtp.smuggling",
            "smuggling is tested on mail exchangers, where unauthenticated mail arrives",
        )];
    }
    let recipient = match ctx.domain() {
        Some(d) => format!("postmaster@{d}"),
        None => "postmaster".to_string(),
    };
    let mut out = Vec::new();
    let sequences: Vec<&Sequence> = SEQUENCES.iter().filter(|s| checks.wants(&s.id())).collect();
    for (i, seq) in sequences.iter().enumerate() {
        match one(ctx, seq, &recipient).await {
            Ok(f) => out.push(f),
            Err(Stop(why)) => {
                for rest in &sequences[i..] {
                    out.push(ctx.skipped(rest.id(), why.clone()));
                }
                break;
            }
        }
    }
    out
}

/// The remaining sequences cannot be tested either (e.g. no recipient is accepted).
struct Stop(String);

async fn one(ctx: &Ctx<'_>, seq: &Sequence, recipient: &str) -> Result<Finding, Stop> {
    let id = seq.id();
    let mut s = match session::open(ctx.endpoint, ctx.options).await {
        Ok(s) => s,
        Err(e) => return Ok(ctx.open_error(id, &e)),
    };
    let rcpt_cmd = format!("RCPT TO:<{recipient}>");
    for cmd in ["MAIL FROM:<>", rcpt_cmd.as_str()] {
        match s.conn.command(cmd).await {
            Ok(r) if r.is_positive() => {}
            Ok(r) => {
                s.conn.quit().await;
                return Err(Stop(format!(
                    "no transaction to test with: {} (name the mail domain as DOMAIN@HOST)",
                    said(cmd, &r)
                )));
            }
            Err(e) => return Ok(ctx.error(id, format!("{cmd}: {e}"))),
        }
    }
    match s.conn.command("DATA").await {
        Ok(r) if r.code == 354 => {}
        Ok(r) => {
            s.conn.quit().await;
            return Ok(ctx.error(id, said("DATA", &r)));
        }
        Err(e) => return Ok(ctx.error(id, format!("DATA: {e}"))),
    }
    let mut payload = format!(
        "From: <postmaster@{helo}>\r\nTo: <{recipient}>\r\n\
         Subject: Ravelin SMTP smuggling test ({name})\r\n\r\n\
         Ravelin audit: this message tests whether the sequence {name} ends the message data.",
        helo = ctx.options.probe.helo_name,
        name = seq.name
    )
    .into_bytes();
    payload.extend_from_slice(seq.bytes);
    payload.extend_from_slice(b"MAIL FROM:<>\r\n");
    if let Err(e) = s.conn.send_raw(&payload).await {
        return Ok(match e {
            ProbeError::Closed => not_vulnerable(ctx, id, seq, "the server closed the connection"),
            e => ctx.error(id, e.to_string()),
        });
    }
    let shown = format!(
        "sent the test message, then {} and MAIL FROM:<> in one write",
        super::probe::escape_bytes(seq.bytes)
    );
    match s.conn.read_reply_within(ctx.options.smuggling_wait).await {
        Ok(Some(r)) if r.is_positive() => {
            // The server ended the message at the fake ending; the reply to our MAIL follows.
            let next = s
                .conn
                .read_reply_within(ctx.options.probe.command_timeout)
                .await;
            let _ = s.conn.command("RSET").await;
            s.conn.quit().await;
            let mut evidence = format!("{shown}\nreply: {}", r.one_line());
            if let Ok(Some(n)) = next {
                evidence.push_str(&format!("\nthen, to the smuggled MAIL: {}", n.one_line()));
            }
            Ok(ctx
                .finding(
                    id,
                    Status::Fail,
                    Severity::High,
                    format!(
                        "{} ends the message: smuggled commands are executed",
                        super::probe::escape_bytes(seq.bytes)
                    ),
                    evidence,
                )
                .fix(FIX))
        }
        Ok(Some(r)) if r.is_permanent() => {
            s.conn.abort("after the refusal");
            Ok(not_vulnerable(
                ctx,
                id,
                seq,
                &format!("{shown}\nreply: {}", r.one_line()),
            ))
        }
        Ok(Some(r)) => {
            s.conn.abort("inconclusive reply");
            Ok(ctx.finding(
                id,
                Status::Error,
                Severity::Info,
                "inconclusive: a temporary error after the fake ending",
                format!("{shown}\nreply: {}", r.one_line()),
            ))
        }
        Ok(None) => {
            s.conn
                .abort("before the final dot, so nothing is delivered");
            Ok(not_vulnerable(
                ctx,
                id,
                seq,
                &format!(
                    "{shown}\nno reply within {} ms: the sequence was read as message data",
                    ctx.options.smuggling_wait.as_millis()
                ),
            ))
        }
        Err(ProbeError::Closed) => Ok(not_vulnerable(
            ctx,
            id,
            seq,
            &format!("{shown}\nthe server closed the connection"),
        )),
        Err(e) => Ok(ctx.error(id, format!("{shown}\n{e}"))),
    }
}

fn not_vulnerable(ctx: &Ctx<'_>, id: String, seq: &Sequence, evidence: &str) -> Finding {
    ctx.finding(
        id,
        Status::Pass,
        Severity::Info,
        format!(
            "{} does not end the message",
            super::probe::escape_bytes(seq.bytes)
        ),
        evidence,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_distinct_and_never_the_real_ending() {
        for (i, a) in SEQUENCES.iter().enumerate() {
            assert_ne!(a.bytes, b"\r\n.\r\n");
            for b in &SEQUENCES[i + 1..] {
                assert_ne!(a.bytes, b.bytes);
                assert_ne!(a.name, b.name);
            }
        }
    }
}
