//! `smtp.open_relay`: does the server take mail for outside domains from anyone?
//!
//! Every address trick of nmap's smtp-open-relay script is tried (null and spoofed senders,
//! `%` hacks, quoted local parts, `@`-in-local-part, source routes, bang paths, each with the
//! server's own names and its address literal in the places nmap puts them), plus a few
//! variants nmap does not try (case, trailing dot, multi-hop route, quoted `%`). The outside
//! domain is [`SmtpOptions::relay_domain`](super::SmtpOptions).
//!
//! A 2xx reply to RCPT for an outside recipient is evidence. With `--active` the check goes
//! on: DATA, and on 354 a few header lines, and then it drops the connection before the
//! final dot, so the server discards the transaction and nothing is ever delivered. Servers
//! that accept at RCPT and refuse at DATA are reported as a warning, not as a relay.
//!
//! Politeness: tests share a session (RSET between them) until it has seen two refusals,
//! then a new session starts, so no server's error limit or tarpit is reached. A session that
//! ends (421, closed) is replaced; a server that keeps throttling ends the check with status
//! `error` unless a relay was already seen.

use std::net::IpAddr;

use ravelin_wire::Reply;

use super::session::{self, OpenError, Session};
use super::{Ctx, Discovery, said};
use crate::finding::{Finding, Severity, Status};

/// One relay attempt: envelope sender and recipient (without angle brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trick {
    pub from: String,
    pub to: String,
}

/// The attempts, as templates: `{x}` is the outside domain, `{o}` one of the server's own
/// names, `{ip}` the server's address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`). The first
/// sixteen are nmap's smtp-open-relay tests in nmap's order.
const TEMPLATES: &[(&str, &str)] = &[
    ("", "relaytest@{x}"),
    ("antispam@{x}", "relaytest@{x}"),
    ("antispam@{o}", "relaytest@{x}"),
    ("antispam@{ip}", "relaytest@{x}"),
    ("antispam@{ip}", "relaytest%{x}@{ip}"),
    ("antispam@{ip}", "relaytest%{x}@{o}"),
    ("antispam@{ip}", "\"relaytest@{x}\""),
    ("antispam@{ip}", "\"relaytest%{x}\""),
    ("antispam@{ip}", "relaytest@{x}@{ip}"),
    ("antispam@{ip}", "\"relaytest@{x}\"@{ip}"),
    ("antispam@{ip}", "relaytest@{x}@{o}"),
    ("antispam@{ip}", "@{ip}:relaytest@{x}"),
    ("antispam@{ip}", "@{o}:relaytest@{x}"),
    ("antispam@{ip}", "{x}!relaytest"),
    ("antispam@{ip}", "{x}!relaytest@{ip}"),
    ("antispam@{ip}", "{x}!relaytest@{o}"),
    // Beyond nmap.
    ("postmaster@{o}", "RELAYTEST@{X}"),
    ("antispam@{ip}", "relaytest@{x}."),
    ("antispam@{ip}", "\"relaytest%{x}\"@{o}"),
    ("antispam@{ip}", "@{o},@{x}:relaytest@{x}"),
];

/// The server's address as an RFC 5321 address literal.
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Every attempt for these names and this address, without duplicates. Templates that need
/// one of the server's names are left out when no name is known.
pub fn tricks(ours: &[String], ip: IpAddr, outside: &str) -> Vec<Trick> {
    let literal = address_literal(ip);
    let mut out: Vec<Trick> = Vec::new();
    for (from, to) in TEMPLATES {
        let names: Vec<&str> = if from.contains("{o}") || to.contains("{o}") {
            ours.iter().map(String::as_str).collect()
        } else {
            vec![""]
        };
        for o in names {
            let fill = |t: &str| {
                t.replace("{x}", outside)
                    .replace("{X}", &outside.to_ascii_uppercase())
                    .replace("{o}", o)
                    .replace("{ip}", &literal)
            };
            let t = Trick {
                from: fill(from),
                to: fill(to),
            };
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// `MAIL FROM:<…>` alone, or with `RCPT TO:<…>` when the refusal came at RCPT, and an arrow.
fn trick_line(trick: &Trick, refused_at: &str) -> String {
    if refused_at.starts_with("MAIL") {
        format!("MAIL FROM:<{}> →", trick.from)
    } else {
        format!("MAIL FROM:<{}> RCPT TO:<{}> →", trick.from, trick.to)
    }
}

/// What became of one accepted attempt.
struct Accepted {
    trick: Trick,
    rcpt: Reply,
    /// With `--active`: the DATA outcome.
    data: Option<Result<Reply, String>>,
}

/// Accepted and refused attempts quoted in the evidence (the rest are counted).
const SHOWN: usize = 5;

/// Refusals after which the session is replaced.
const REFUSALS_PER_SESSION: u32 = 2;

const RELAY_FIX: &str = "Relay only for your own users and hosts. Postfix (main.cf): \
    `smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, \
    reject_unauth_destination`, with `mynetworks` listing only your own servers \
    (`mynetworks_style = host`, never a whole provider range) and `relay_domains` only the \
    domains you accept. Exchange: no receive connector may grant \
    `Ms-Exch-SMTP-Accept-Any-Recipient` to `NT AUTHORITY\\ANONYMOUS LOGON` (check with \
    `Get-ReceiveConnector | Get-ADPermission -User \"NT AUTHORITY\\ANONYMOUS LOGON\"`, remove \
    with `Remove-ADPermission`), and an application relay connector must have \
    `-RemoteIPRanges` limited to the application servers.";

/// `smtp.open_relay`.
pub async fn open_relay(ctx: &Ctx<'_>, d: &Discovery) -> Finding {
    let id = "smtp.open_relay";
    let ours = d.server_names(ctx.endpoint);
    let attempts = tricks(&ours, ctx.endpoint.addr.ip(), &ctx.options.relay_domain);
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut session: Option<Session> = None;
    let mut refusals = 0u32;
    let mut fresh = true;
    let mut throttled: Option<OpenError> = None;
    for trick in &attempts {
        if refusals >= REFUSALS_PER_SESSION
            && let Some(s) = session.take()
        {
            s.conn.quit().await;
        }
        if session.is_none() {
            match session::open(ctx.endpoint, ctx.options).await {
                Ok(s) => {
                    session = Some(s);
                    refusals = 0;
                    fresh = true;
                }
                Err(e) => {
                    throttled = Some(e);
                    break;
                }
            }
        }
        let Some(s) = session.as_mut() else { break };
        if !fresh && s.conn.command("RSET").await.is_err() {
            session = None;
            problems.push("RSET failed; session replaced".into());
            continue;
        }
        fresh = false;
        let mail_cmd = format!("MAIL FROM:<{}>", trick.from);
        let rcpt_cmd = format!("RCPT TO:<{}>", trick.to);
        let mut rcpt = None;
        for cmd in [&mail_cmd, &rcpt_cmd] {
            match s.conn.command(cmd).await {
                Err(e) => {
                    problems.push(format!("{cmd} → {e}"));
                    session = None;
                    break;
                }
                Ok(r) if !r.is_positive() => {
                    refusals += 1;
                    refused.push(format!("{} {}", trick_line(trick, cmd), r.one_line()));
                    if r.code == 421 {
                        session = None;
                    }
                    break;
                }
                Ok(r) if cmd == &rcpt_cmd => rcpt = Some(r),
                Ok(_) => {}
            }
        }
        let (Some(rcpt), Some(s)) = (rcpt, session.as_mut()) else {
            continue;
        };
        let data = if ctx.options.active {
            let (outcome, dropped) = try_data(s, trick).await;
            if dropped && let Some(s) = session.take() {
                s.conn
                    .abort("before the final dot, so nothing is delivered");
            }
            Some(outcome)
        } else {
            None
        };
        accepted.push(Accepted {
            trick: trick.clone(),
            rcpt,
            data,
        });
    }
    if let Some(mut s) = session.take() {
        let _ = s.conn.command("RSET").await;
        s.conn.quit().await;
    }
    verdict(ctx, id, &attempts, accepted, refused, problems, throttled)
}

/// DATA for an accepted attempt: on 354, a few header lines and no final dot. Returns the
/// outcome and whether the connection must be dropped (it is inside DATA).
async fn try_data(s: &mut Session, trick: &Trick) -> (Result<Reply, String>, bool) {
    let reply = match s.conn.command("DATA").await {
        Ok(r) => r,
        Err(e) => return (Err(format!("DATA → {e}")), true),
    };
    if reply.code != 354 {
        return (Ok(reply), false);
    }
    let body = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: Ravelin open relay test\r\n\r\n\
         This open relay test is never completed: the connection is dropped before the end \
         of data.\r\n",
        trick.from, trick.to
    );
    if let Err(e) = s.conn.send_raw(body.as_bytes()).await {
        return (Err(format!("DATA → 354, then {e}")), true);
    }
    (Ok(reply), true)
}

fn verdict(
    ctx: &Ctx<'_>,
    id: &str,
    attempts: &[Trick],
    accepted: Vec<Accepted>,
    refused: Vec<String>,
    problems: Vec<String>,
    throttled: Option<OpenError>,
) -> Finding {
    let mut lines: Vec<String> = Vec::new();
    for a in accepted.iter().take(SHOWN) {
        let mut line = format!(
            "accepted: MAIL FROM:<{}> {}",
            a.trick.from,
            said(&format!("RCPT TO:<{}>", a.trick.to), &a.rcpt)
        );
        match &a.data {
            Some(Ok(r)) if r.code == 354 => {
                line.push_str(&format!(
                    "; DATA → {}; connection dropped before the final dot",
                    r.one_line()
                ));
            }
            Some(Ok(r)) => line.push_str(&format!("; DATA → {}", r.one_line())),
            Some(Err(e)) => line.push_str(&format!("; {e}")),
            None => {}
        }
        lines.push(line);
    }
    if accepted.len() > SHOWN {
        lines.push(format!("… and {} more accepted", accepted.len() - SHOWN));
    }
    let tested = accepted.len() + refused.len();
    lines.push(format!(
        "{} of {} attempts refused",
        refused.len(),
        attempts.len()
    ));
    lines.extend(refused.iter().take(SHOWN).map(|r| format!("refused: {r}")));
    if refused.len() > SHOWN {
        lines.push(format!("… and {} more refusals", refused.len() - SHOWN));
    }
    lines.extend(problems.iter().take(5).map(|p| format!("problem: {p}")));
    if let Some(e) = &throttled {
        lines.push(format!("stopped: {}", e.evidence()));
    }
    let evidence = lines.join("\n");
    if !accepted.is_empty() {
        let confirmed = accepted
            .iter()
            .any(|a| matches!(&a.data, Some(Ok(r)) if r.code == 354));
        let all_refused_at_data = accepted
            .iter()
            .all(|a| matches!(&a.data, Some(Ok(r)) if r.is_permanent()));
        let (status, severity, title) = if confirmed {
            (
                Status::Fail,
                Severity::Critical,
                "open relay: mail for outside domains is accepted up to DATA".to_string(),
            )
        } else if ctx.options.active && all_refused_at_data {
            (
                Status::Warn,
                Severity::Medium,
                "outside recipients are accepted at RCPT but refused at DATA".to_string(),
            )
        } else {
            (
                Status::Fail,
                Severity::High,
                format!(
                    "outside recipients are accepted at RCPT ({} of {} attempts; run with \
                     --active to confirm at DATA)",
                    accepted.len(),
                    attempts.len()
                ),
            )
        };
        return ctx
            .finding(id, status, severity, title, evidence)
            .fix(RELAY_FIX);
    }
    if throttled.is_some() || tested < attempts.len() {
        let title = if matches!(throttled, Some(OpenError::Throttled(_))) {
            "error: throttled"
        } else {
            "the relay test could not finish"
        };
        return ctx.finding(id, Status::Error, Severity::Info, title, evidence);
    }
    ctx.finding(
        id,
        Status::Pass,
        Severity::Info,
        format!("all {} relay attempts were refused", attempts.len()),
        evidence,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmap_tests_come_first_and_in_order() {
        let t = tricks(
            &["mx.example.org".into()],
            "192.0.2.1".parse().unwrap(),
            "nmap.scanme.org",
        );
        assert_eq!(t.len(), 20);
        assert_eq!(t[0].from, "");
        assert_eq!(t[0].to, "relaytest@nmap.scanme.org");
        assert_eq!(t[2].from, "antispam@mx.example.org");
        assert_eq!(t[4].to, "relaytest%nmap.scanme.org@[192.0.2.1]");
        assert_eq!(t[9].to, "\"relaytest@nmap.scanme.org\"@[192.0.2.1]");
        assert_eq!(t[12].to, "@mx.example.org:relaytest@nmap.scanme.org");
        assert_eq!(t[15].to, "nmap.scanme.org!relaytest@mx.example.org");
        assert_eq!(t[16].to, "RELAYTEST@NMAP.SCANME.ORG");
    }

    #[test]
    fn expands_every_name_and_drops_name_templates_without_names() {
        let two = tricks(
            &["a.example".into(), "b.example".into()],
            "2001:db8::1".parse().unwrap(),
            "x.example",
        );
        assert!(two.iter().any(|t| t.to == "relaytest%x.example@a.example"));
        assert!(two.iter().any(|t| t.to == "relaytest%x.example@b.example"));
        assert!(
            two.iter()
                .any(|t| t.to == "relaytest@x.example@[IPv6:2001:db8::1]")
        );
        let none = tricks(&[], "192.0.2.1".parse().unwrap(), "x.example");
        // The eight templates that need a name are left out.
        assert_eq!(none.len(), 12);
        assert!(
            none.iter()
                .all(|t| !t.from.ends_with('@') && !t.to.contains("@:"))
        );
    }
}
