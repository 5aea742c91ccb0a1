//! Address harvesting checks: `smtp.vrfy`, `smtp.expn`, `smtp.catch_all` and
//! `smtp.rcpt_enumeration`.
//!
//! VRFY and EXPN are asked about `postmaster` (which every mail domain must have, RFC 5321
//! section 4.5.1) and about a random address no one has; a server that answers the two
//! differently tells a harvester which addresses exist. The RCPT checks need the mail domain
//! (a `DOMAIN@HOST` target): `postmaster@DOMAIN` must be accepted and a random address
//! refused (otherwise the server is a catch-all), and a run of random addresses on one
//! connection must be slowed down (tarpit) or cut off (error limit) within
//! [`SmtpOptions::enumeration_probes`](super::SmtpOptions) tries.
//!
//! The RCPT checks run on mail exchangers only (a submission port serves authenticated
//! users). No message is sent: transactions end with RSET and QUIT. How it fails: a session that
//! cannot be opened gives status `error`; without a mail domain the RCPT checks are
//! `skipped`.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use super::probe::ProbeError;
use super::{Ctx, said, session};
use crate::finding::{Finding, Severity, Status};
use crate::target::Role;

/// A local part nobody has: `ravelin-audit-` and 16 random hex digits.
pub fn random_local() -> String {
    let n = RandomState::new().hash_one(Instant::now());
    format!("ravelin-audit-{n:016x}")
}

fn address(local: &str, domain: Option<&str>) -> String {
    match domain {
        Some(d) => format!("{local}@{d}"),
        None => local.to_string(),
    }
}

const VRFY_FIX: &str = "Turn VRFY off. Postfix (main.cf): `disable_vrfy_command = yes`. \
    Sendmail: `define(`confPRIVACY_FLAGS', `goaway')`. Exim: leave `acl_smtp_vrfy` unset \
    (VRFY is then refused). Exchange answers 252 without information by default.";

/// `smtp.vrfy`: VRFY postmaster against VRFY of a random address.
pub async fn vrfy(ctx: &Ctx<'_>) -> Finding {
    let id = "smtp.vrfy";
    let mut s = match session::open(ctx.endpoint, ctx.options).await {
        Ok(s) => s,
        Err(e) => return ctx.open_error(id, &e),
    };
    let known = format!("VRFY {}", address("postmaster", ctx.domain()));
    let unknown = format!("VRFY {}", address(&random_local(), ctx.domain()));
    let r_known = match s.conn.command(&known).await {
        Ok(r) => r,
        Err(e) => return ctx.error(id, format!("VRFY: {e}")),
    };
    let r_unknown = s.conn.command(&unknown).await;
    s.conn.quit().await;
    let evidence = match &r_unknown {
        Ok(r) => format!("{}\n{}", said(&known, &r_known), said(&unknown, r)),
        Err(e) => format!("{}\n{unknown} → {e}", said(&known, &r_known)),
    };
    match (&r_known, &r_unknown) {
        (k, Ok(u)) if k.is_positive() && u.is_permanent() => ctx
            .finding(
                id,
                Status::Fail,
                Severity::Medium,
                "VRFY tells existing mailboxes from unknown ones",
                evidence,
            )
            .fix(VRFY_FIX),
        (k, _) if k.is_permanent() => ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "VRFY is refused",
            evidence,
        ),
        (k, Ok(u)) if k.is_positive() && u.is_positive() => ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "VRFY gives the same answer for every address",
            evidence,
        ),
        _ => ctx.finding(
            id,
            Status::Info,
            Severity::Info,
            "VRFY answered inconclusively",
            evidence,
        ),
    }
}

/// `smtp.expn`: EXPN of postmaster must not list anything.
pub async fn expn(ctx: &Ctx<'_>) -> Finding {
    let id = "smtp.expn";
    let mut s = match session::open(ctx.endpoint, ctx.options).await {
        Ok(s) => s,
        Err(e) => return ctx.open_error(id, &e),
    };
    let command = format!("EXPN {}", address("postmaster", ctx.domain()));
    let reply = s.conn.command(&command).await;
    s.conn.quit().await;
    match reply {
        Ok(r) if r.code == 250 => ctx
            .finding(
                id,
                Status::Fail,
                Severity::Medium,
                "EXPN reveals the members of aliases and lists",
                said(&command, &r),
            )
            .fix(
                "Turn EXPN off. Sendmail: `define(`confPRIVACY_FLAGS', `goaway')` (includes \
                 noexpn). Exim: leave `acl_smtp_expn` unset. Postfix and Exchange do not \
                 implement EXPN.",
            ),
        Ok(r) => ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "EXPN reveals nothing",
            said(&command, &r),
        ),
        Err(e) => ctx.error(id, format!("{command}: {e}")),
    }
}

const CATCH_ALL_FIX: &str = "Reject unknown recipients at RCPT. Postfix (main.cf): \
    `smtpd_reject_unlisted_recipient = yes` with complete `virtual_mailbox_maps` / \
    `local_recipient_maps`, and `relay_recipient_maps` listing the valid addresses on a relay \
    in front of Exchange. Exchange: Recipient Filtering with \
    `Set-RecipientFilterConfig -RecipientValidationEnabled $true`, or recipient validation on \
    the gateway. Keep postmaster@ working (RFC 5321 section 4.5.1).";

const ENUMERATION_FIX: &str = "Slow down and cut off clients that probe addresses. Postfix \
    (main.cf): `smtpd_soft_error_limit = 3`, `smtpd_hard_error_limit = 5`, \
    `smtpd_error_sleep_time = 1s`, and a fail2ban jail on \"User unknown\" rejections. \
    Exchange: `Set-ReceiveConnector \"<SERVER>\\Default Frontend <SERVER>\" -TarpitInterval \
    00:00:05` with Recipient Filtering on.";

/// How many consecutive slow replies count as a tarpit.
const TARPIT_RUN: usize = 2;
/// A reply at least this slow (and this much slower than the first ones) is a tarpit delay.
const TARPIT_MIN: Duration = Duration::from_millis(900);

/// `smtp.catch_all` and `smtp.rcpt_enumeration`.
pub async fn catch_all_and_enumeration(ctx: &Ctx<'_>) -> Vec<Finding> {
    let (catch, enumeration) = ("smtp.catch_all", "smtp.rcpt_enumeration");
    if ctx.endpoint.role != Role::Mx {
        let why = "a submission port takes mail from authenticated users; the recipient \
                   checks apply to mail exchangers";
        return vec![ctx.skipped(catch, why), ctx.skipped(enumeration, why)];
    }
    let Some(domain) = ctx.domain().map(str::to_string) else {
        let why = "no mail domain is known for this host; give it as DOMAIN@HOST[:PORT]";
        return vec![ctx.skipped(catch, why), ctx.skipped(enumeration, why)];
    };
    let both_error = |f: Finding| {
        let mut g = f.clone();
        g.id = enumeration.into();
        vec![f, g]
    };
    let mut s = match session::open(ctx.endpoint, ctx.options).await {
        Ok(s) => s,
        Err(e) => return both_error(ctx.open_error(catch, &e)),
    };
    let mail = match s.conn.command("MAIL FROM:<>").await {
        Ok(r) if r.is_positive() => r,
        Ok(r) => {
            return both_error(ctx.error(
                catch,
                format!(
                    "the server refused the null sender: {}",
                    said("MAIL FROM:<>", &r)
                ),
            ));
        }
        Err(e) => return both_error(ctx.error(catch, format!("MAIL: {e}"))),
    };
    let pm_cmd = format!("RCPT TO:<postmaster@{domain}>");
    let rand_cmd = format!("RCPT TO:<{}@{domain}>", random_local());
    let pm = match s.conn.command(&pm_cmd).await {
        Ok(r) => r,
        Err(e) => return both_error(ctx.error(catch, format!("RCPT: {e}"))),
    };
    let started = Instant::now();
    let random = match s.conn.command(&rand_cmd).await {
        Ok(r) => r,
        Err(e) => return both_error(ctx.error(catch, format!("RCPT: {e}"))),
    };
    let first_latency = started.elapsed();
    let evidence = format!(
        "{}\n{}\n{}",
        said("MAIL FROM:<>", &mail),
        said(&pm_cmd, &pm),
        said(&rand_cmd, &random)
    );
    let catch_finding = if !pm.is_positive() {
        ctx.finding(
            catch,
            if pm.is_permanent() {
                Status::Fail
            } else {
                Status::Info
            },
            Severity::Low,
            format!("postmaster@{domain} is not accepted"),
            evidence.clone(),
        )
        .fix(CATCH_ALL_FIX)
    } else if random.is_positive() {
        ctx.finding(
            catch,
            Status::Warn,
            Severity::Medium,
            format!("any address of {domain} is accepted (catch-all)"),
            evidence.clone(),
        )
        .fix(CATCH_ALL_FIX)
    } else if random.is_transient() {
        ctx.finding(
            catch,
            Status::Info,
            Severity::Info,
            "a random address was deferred, not refused (greylisting or recipient verification)",
            evidence.clone(),
        )
    } else {
        ctx.finding(
            catch,
            Status::Pass,
            Severity::Info,
            format!("postmaster@{domain} is accepted and unknown addresses are refused"),
            evidence.clone(),
        )
    };
    let enumeration_finding = if random.is_positive() {
        let _ = s.conn.command("RSET").await;
        s.conn.quit().await;
        ctx.finding(
            enumeration,
            Status::Pass,
            Severity::Info,
            "RCPT accepts every address, so it tells nothing about which exist",
            evidence,
        )
    } else if !random.is_permanent() {
        s.conn.quit().await;
        ctx.finding(
            enumeration,
            Status::Info,
            Severity::Info,
            "unknown addresses are deferred; enumeration not tested",
            evidence,
        )
    } else {
        probe_enumeration(ctx, s, &domain, first_latency, evidence).await
    };
    vec![catch_finding, enumeration_finding]
}

/// Sends more random recipients on the session until the server cuts off, slows down, or
/// the probe budget is spent.
async fn probe_enumeration(
    ctx: &Ctx<'_>,
    mut s: session::Session,
    domain: &str,
    first_latency: Duration,
    mut evidence: String,
) -> Finding {
    let id = "smtp.rcpt_enumeration";
    let budget = ctx.options.enumeration_probes.max(2);
    let baseline = first_latency;
    let mut slow_run = 0usize;
    let mut refused = 1usize; // the random address of the catch-all check
    let verdict = loop {
        if first_latency >= TARPIT_MIN {
            break Some(format!(
                "unknown recipients are answered slowly from the first one ({} ms)",
                first_latency.as_millis()
            ));
        }
        if refused >= budget {
            break None;
        }
        let cmd = format!("RCPT TO:<{}@{domain}>", random_local());
        let started = Instant::now();
        let reply = s.conn.command(&cmd).await;
        let latency = started.elapsed();
        match reply {
            Ok(r) if r.is_permanent() && r.code != 421 => {
                refused += 1;
                if latency >= TARPIT_MIN && latency >= baseline + TARPIT_MIN {
                    slow_run += 1;
                } else {
                    slow_run = 0;
                }
                if slow_run >= TARPIT_RUN {
                    break Some(format!(
                        "after {refused} unknown recipients the replies slowed down \
                         (last took {} ms): {}",
                        latency.as_millis(),
                        said(&cmd, &r)
                    ));
                }
            }
            Ok(r) => {
                break Some(format!(
                    "after {refused} unknown recipients: {}",
                    said(&cmd, &r)
                ));
            }
            Err(ProbeError::Closed) => {
                break Some(format!(
                    "after {refused} unknown recipients the server closed the connection"
                ));
            }
            Err(ProbeError::Timeout(_)) => {
                break Some(format!(
                    "after {refused} unknown recipients the server stopped answering"
                ));
            }
            Err(e) => {
                return ctx.error(id, format!("{evidence}\n{cmd} → {e}"));
            }
        }
    };
    match verdict {
        Some(how) => {
            s.conn.quit().await;
            evidence.push('\n');
            evidence.push_str(&how);
            ctx.finding(
                id,
                Status::Pass,
                Severity::Info,
                "address probing is slowed down or cut off",
                evidence,
            )
        }
        None => {
            let _ = s.conn.command("RSET").await;
            s.conn.quit().await;
            evidence.push_str(&format!(
                "\n{refused} unknown recipients were refused one by one on one connection, \
                 without delay or disconnection"
            ));
            ctx.finding(
                id,
                Status::Warn,
                Severity::Medium,
                "addresses can be probed at full speed",
                evidence,
            )
            .fix(ENUMERATION_FIX)
        }
    }
}
