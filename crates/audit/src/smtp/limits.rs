//! Protocol hygiene checks: `smtp.size_limit`, `smtp.greeting_delay` and
//! `smtp.pipelining_sync`.
//!
//! The size check reads SIZE from EHLO and declares one byte more in `MAIL FROM:<> SIZE=`
//! (nothing is sent after MAIL; on a submission port inside TLS, since MAIL before STARTTLS
//! is refused there). The pipelining check sends `EHLO` and `NOOP` in one write
//! straight after the greeting, which RFC 2920 forbids (EHLO must end a group): a strict
//! server refuses or disconnects; spam bots do this and a lenient server answers both.
//!
//! How it fails: a session that cannot be opened gives a finding with status `error`.

use std::time::Duration;

use super::probe::{Connection, ProbeError};
use super::{Ctx, Discovery, said, session};
use crate::finding::{Finding, Severity, Status};
use crate::target::Role;

/// Limits above this (bytes) are reported as very large.
const LARGE_LIMIT: u64 = 100 * 1024 * 1024;

const SIZE_FIX: &str = "Advertise and enforce a message size limit. Postfix (main.cf): \
    `message_size_limit = 26214400` (25 MiB; 0 means no limit). Exchange: \
    `Set-TransportConfig -MaxReceiveSize 25MB` and `Set-ReceiveConnector ... \
    -MaxMessageSize 25MB`.";

/// `smtp.size_limit`: SIZE advertised, bounded and enforced at MAIL.
pub async fn size_limit(ctx: &Ctx<'_>, d: &Discovery) -> Finding {
    let id = "smtp.size_limit";
    let ehlo = &d.ehlo;
    if !ehlo.extended {
        return ctx
            .finding(
                id,
                Status::Warn,
                Severity::Low,
                "EHLO is refused, so no SIZE limit is advertised",
                said("EHLO", &ehlo.reply),
            )
            .fix(SIZE_FIX);
    }
    let limit = match ehlo.size() {
        None => {
            return ctx
                .finding(
                    id,
                    Status::Warn,
                    Severity::Low,
                    "no SIZE limit is advertised",
                    "EHLO reply has no SIZE keyword",
                )
                .fix(SIZE_FIX);
        }
        Some(None) => {
            return ctx
                .finding(
                    id,
                    Status::Warn,
                    Severity::Low,
                    "SIZE is advertised without a limit",
                    "EHLO: SIZE (no number, or 0)",
                )
                .fix(SIZE_FIX);
        }
        Some(Some(n)) => n,
    };
    // A submission port refuses MAIL before STARTTLS: test the limit inside TLS there.
    let opened = if ctx.endpoint.role == Role::Submission && ehlo.has("STARTTLS") {
        super::tls_session(ctx).await
    } else {
        session::open(ctx.endpoint, ctx.options)
            .await
            .map_err(|e| e.evidence())
    };
    let mut s = match opened {
        Ok(s) => s,
        Err(e) => return ctx.error(id, e),
    };
    let command = format!("MAIL FROM:<> SIZE={}", limit.saturating_add(1));
    let reply = s.conn.command(&command).await;
    if matches!(&reply, Ok(r) if r.is_positive()) {
        let _ = s.conn.command("RSET").await;
    }
    s.conn.quit().await;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return ctx.error(id, format!("{command}: {e}")),
    };
    let evidence = format!("EHLO: SIZE {limit}\n{}", said(&command, &reply));
    if reply.is_positive() {
        ctx.finding(
            id,
            Status::Warn,
            Severity::Low,
            "a message declared larger than the SIZE limit is accepted at MAIL",
            evidence,
        )
        .fix(SIZE_FIX)
    } else if limit > LARGE_LIMIT {
        ctx.finding(
            id,
            Status::Warn,
            Severity::Low,
            format!(
                "the size limit is very large ({} MiB)",
                limit / (1024 * 1024)
            ),
            evidence,
        )
        .fix(SIZE_FIX)
    } else {
        ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            format!("SIZE {limit} is advertised and enforced"),
            evidence,
        )
    }
}

/// `smtp.greeting_delay` (info): how long the greeting took.
pub fn greeting_delay(ctx: &Ctx<'_>, d: &Discovery) -> Finding {
    let ms = d.greeting_delay.as_millis();
    let multiline = if d.greeting.lines.len() > 1 {
        " in a multi-line greeting"
    } else {
        ""
    };
    let title = if d.greeting_delay >= Duration::from_secs(1) {
        format!("the greeting comes after {ms} ms{multiline}")
    } else {
        format!("no greeting delay{multiline}")
    };
    ctx.finding(
        "smtp.greeting_delay",
        Status::Info,
        Severity::Info,
        title,
        format!("greeting after {ms} ms: {}", d.greeting.one_line()),
    )
}

/// `smtp.pipelining_sync`: EHLO and NOOP in one write must be refused.
pub async fn pipelining_sync(ctx: &Ctx<'_>) -> Finding {
    let id = "smtp.pipelining_sync";
    let (mut conn, greeting, _) =
        match Connection::open(ctx.endpoint, ctx.options.probe.clone()).await {
            Ok(c) => c,
            Err(e) => return ctx.error(id, e.to_string()),
        };
    if !greeting.is_positive() {
        conn.quit().await;
        return ctx.error(id, format!("greeting: {}", greeting.one_line()));
    }
    let helo = ctx.options.probe.helo_name.clone();
    let pipelined = format!("EHLO {helo}\r\nNOOP\r\n");
    if let Err(e) = conn.send_raw(pipelined.as_bytes()).await {
        return ctx.error(id, e.to_string());
    }
    let shown = format!("sent in one write: EHLO {helo} + NOOP");
    let first = conn.read_reply().await;
    let verdict = match first {
        Err(ProbeError::Closed) => Ok(format!("{shown}\nthe server closed the connection")),
        Err(e) => Err(format!("{shown}\n{e}")),
        Ok(r) if !r.is_positive() => Ok(format!("{shown}\nfirst reply: {}", r.one_line())),
        Ok(r) => {
            let first_line = format!("{shown}\nEHLO → {}", r.lines[0]);
            match conn
                .read_reply_within(ctx.options.probe.command_timeout)
                .await
            {
                Ok(Some(n)) if n.is_positive() => {
                    conn.quit().await;
                    return ctx
                        .finding(
                            id,
                            Status::Warn,
                            Severity::Low,
                            "commands sent before the EHLO reply are accepted",
                            format!("{first_line}\nNOOP → {}", n.one_line()),
                        )
                        .fix(
                            "Refuse clients that talk out of turn. Postfix (main.cf): \
                             `smtpd_forbid_unauth_pipelining = yes` (the default from 3.9), and \
                             with postscreen `postscreen_pipelining_enable = yes`. Exchange has no \
                             such setting: let the gateway face the internet.",
                        );
                }
                Ok(Some(n)) => Ok(format!("{first_line}\nthen: {}", n.one_line())),
                Ok(None) => Err(format!("{first_line}\nno reply to NOOP")),
                Err(ProbeError::Closed) => Ok(format!(
                    "{first_line}\nthen the server closed the connection"
                )),
                Err(e) => Err(format!("{first_line}\n{e}")),
            }
        }
    };
    conn.quit().await;
    match verdict {
        Ok(evidence) => ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "commands sent out of turn are refused",
            evidence,
        ),
        Err(why) => ctx.error(id, why),
    }
}
