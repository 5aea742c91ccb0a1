//! Authentication checks: `smtp.auth_before_tls`, `smtp.auth_mechanisms`, `smtp.ntlm_info`
//! and `smtp.plaintext_mail_accepted`.
//!
//! No credential is ever sent. AUTH LOGIN (to see whether a server takes AUTH before TLS
//! without advertising it) and AUTH NTLM (to read the challenge) are cancelled with `*` as
//! soon as the server asks for more (RFC 4954 section 4).
//!
//! Settings read: the endpoint's role (mail exchanger, submission, implicit TLS) and
//! [`SmtpOptions`](super::SmtpOptions). How it fails: a session that cannot be opened gives a
//! finding with status `error`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::ntlm::{self, Challenge};
use super::session::{self, Ehlo};
use super::{Ctx, Discovery, said};
use crate::finding::{Finding, Severity, Status};
use crate::target::Role;

/// What `smtp.ntlm_info` found, with the decoded challenge for the clock and software checks.
pub struct NtlmOutcome {
    pub finding: Finding,
    pub challenge: Option<Challenge>,
}

fn offers(ehlo: &Ehlo, mechanism: &str) -> bool {
    ehlo.auth_mechanisms().iter().any(|m| m == mechanism)
}

fn auth_line(ehlo: &Ehlo) -> String {
    let m = ehlo.auth_mechanisms();
    if m.is_empty() {
        "no AUTH".into()
    } else {
        format!("AUTH {}", m.join(" "))
    }
}

const NTLM_FIX: &str = "Do not offer NTLM to the internet. Exchange: on internet-facing receive \
    connectors remove Integrated Windows authentication, e.g. `Set-ReceiveConnector \
    \"<SERVER>\\Default Frontend <SERVER>\" -AuthMechanism Tls`, and keep NTLM for internal \
    connectors only; better, let the gateway face the internet so that Exchange is never \
    reached directly. Dovecot SASL (Postfix): remove `ntlm` from `auth_mechanisms`.";

/// `smtp.ntlm_info`: sends AUTH NTLM with a NEGOTIATE message when NTLM is offered (before
/// TLS if offered there, else inside TLS) and decodes the challenge.
pub async fn ntlm(ctx: &Ctx<'_>, d: &Discovery) -> NtlmOutcome {
    let id = "smtp.ntlm_info";
    let before_tls = offers(&d.ehlo, "NTLM");
    let in_tls = matches!(&d.tls_ehlo, Some(Ok(e)) if offers(e, "NTLM"));
    let plain = |finding| NtlmOutcome {
        finding,
        challenge: None,
    };
    if !before_tls && !in_tls {
        return plain(ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "NTLM is not offered",
            format!("EHLO: {}", auth_line(d.best_ehlo())),
        ));
    }
    let opened = if before_tls {
        session::open(ctx.endpoint, ctx.options)
            .await
            .map_err(|e| e.evidence())
    } else {
        super::tls_session(ctx).await
    };
    let mut s = match opened {
        Ok(s) => s,
        Err(e) => return plain(ctx.error(id, e)),
    };
    let where_ = if s.conn.tls().is_some() {
        "inside TLS"
    } else {
        "before TLS, in clear text"
    };
    let command = format!("AUTH NTLM {}", BASE64.encode(ntlm::negotiate_message()));
    let reply = match s.conn.command(&command).await {
        Ok(r) => r,
        Err(e) => return plain(ctx.error(id, format!("AUTH NTLM: {e}"))),
    };
    if reply.code != 334 {
        s.conn.quit().await;
        return plain(ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "NTLM is advertised but no challenge was given",
            said("AUTH NTLM <negotiate>", &reply),
        ));
    }
    // Cancel the exchange (RFC 4954: "*" aborts), then leave.
    if s.conn.command("*").await.is_ok() {
        s.conn.quit().await;
    }
    let token = reply.lines.first().map(|l| l.trim()).unwrap_or("");
    let decoded = BASE64
        .decode(token)
        .map_err(|e| format!("the 334 reply is not base64: {e}"))
        .and_then(|bytes| ntlm::parse_challenge(&bytes).map_err(|e| e.to_string()));
    let challenge = match decoded {
        Ok(c) => c,
        Err(why) => {
            return plain(ctx.error(
                id,
                format!("{why}; reply: {}", super::clip(&reply.one_line())),
            ));
        }
    };
    let revealed = challenge.revealed();
    let finding = if revealed.is_empty() {
        ctx.finding(
            id,
            Status::Warn,
            Severity::Low,
            format!("NTLM is offered to anyone ({where_}) but its challenge names nothing"),
            "AUTH NTLM <negotiate> → 334 <challenge without names or version>",
        )
        .fix(NTLM_FIX)
    } else {
        let lines: Vec<String> = revealed
            .iter()
            .map(|(label, value)| format!("{label}: {value}"))
            .collect();
        ctx.finding(
            id,
            Status::Fail,
            Severity::Medium,
            format!("the NTLM challenge reveals internal names and the Windows build ({where_})"),
            format!(
                "AUTH NTLM <negotiate> → 334 <challenge>\n{}",
                lines.join("\n")
            ),
        )
        .fix(NTLM_FIX)
    };
    NtlmOutcome {
        finding,
        challenge: Some(challenge),
    }
}

/// Mechanisms that send the password itself (base64 is not encryption).
fn is_plaintext_mechanism(m: &str) -> bool {
    matches!(m, "PLAIN" | "LOGIN")
}

const AUTH_TLS_FIX: &str = "Offer and accept AUTH only inside TLS. Postfix (main.cf): \
    `smtpd_tls_auth_only = yes`; for the submission service in master.cf also \
    `-o smtpd_tls_security_level=encrypt`. Exchange: on the receive connector use \
    `-AuthMechanism Tls,BasicAuth,BasicAuthRequireTLS` (never BasicAuth without \
    BasicAuthRequireTLS). Dovecot SASL: `disable_plaintext_auth = yes`.";

/// `smtp.auth_before_tls`: AUTH advertised before STARTTLS, or accepted without being
/// advertised (probed with AUTH LOGIN, cancelled at once).
pub async fn auth_before_tls(ctx: &Ctx<'_>, d: &Discovery) -> Finding {
    let id = "smtp.auth_before_tls";
    if ctx.endpoint.role == Role::Submissions {
        return ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "implicit TLS: nothing is sent in clear text",
            format!("TLS from the first byte; EHLO: {}", auth_line(&d.ehlo)),
        );
    }
    let offered = d.ehlo.auth_mechanisms();
    if !offered.is_empty() {
        let plaintext = offered.iter().any(|m| is_plaintext_mechanism(m));
        let (severity, what) = if plaintext {
            (
                Severity::High,
                "passwords can cross the network in clear text",
            )
        } else {
            (
                Severity::Medium,
                "challenge-response exchanges can be captured and cracked or relayed",
            )
        };
        return ctx
            .finding(
                id,
                Status::Fail,
                severity,
                format!("AUTH is offered before STARTTLS: {what}"),
                format!("EHLO before STARTTLS: {}", auth_line(&d.ehlo)),
            )
            .fix(AUTH_TLS_FIX);
    }
    let mut s = match session::open(ctx.endpoint, ctx.options).await {
        Ok(s) => s,
        Err(e) => return ctx.open_error(id, &e),
    };
    let reply = match s.conn.command("AUTH LOGIN").await {
        Ok(r) => r,
        Err(e) => return ctx.error(id, format!("AUTH LOGIN: {e}")),
    };
    if reply.code == 334 {
        let _ = s.conn.command("*").await;
        s.conn.quit().await;
        return ctx
            .finding(
                id,
                Status::Fail,
                Severity::High,
                "AUTH is accepted before STARTTLS although not advertised",
                said("AUTH LOGIN", &reply),
            )
            .fix(AUTH_TLS_FIX);
    }
    s.conn.quit().await;
    ctx.finding(
        id,
        Status::Pass,
        Severity::Info,
        "AUTH is neither offered nor accepted before STARTTLS",
        format!("EHLO: no AUTH; {}", said("AUTH LOGIN", &reply)),
    )
}

const MECHANISMS_FIX: &str = "Offer PLAIN and LOGIN inside TLS only (or SCRAM), nothing \
    weaker, and AUTH only where users submit mail (587 / 465). Postfix with Dovecot SASL: \
    `auth_mechanisms = plain login` in Dovecot, `smtpd_sasl_auth_enable = no` in main.cf and \
    `-o smtpd_sasl_auth_enable=yes` only on the submission services in master.cf. \
    Exchange: `Set-ReceiveConnector \"<SERVER>\\Default Frontend <SERVER>\" -AuthMechanism Tls` \
    on the internet-facing connector; clients use the Client Frontend connector on 587.";

/// `smtp.auth_mechanisms`: what the server offers (inside TLS when it can).
pub fn mechanisms(ctx: &Ctx<'_>, d: &Discovery) -> Finding {
    let id = "smtp.auth_mechanisms";
    let mut offered = d.ehlo.auth_mechanisms();
    if let Some(Ok(tls)) = &d.tls_ehlo {
        for m in tls.auth_mechanisms() {
            if !offered.contains(&m) {
                offered.push(m);
            }
        }
    }
    let evidence = format!(
        "before TLS: {}; inside TLS: {}",
        auth_line(&d.ehlo),
        match &d.tls_ehlo {
            Some(Ok(e)) => auth_line(e),
            Some(Err(why)) => format!("(STARTTLS failed: {why})"),
            None => "(no STARTTLS)".into(),
        }
    );
    if offered.is_empty() {
        let title = match ctx.endpoint.role {
            Role::Mx => "no AUTH on the mail exchanger",
            _ => "no AUTH offered",
        };
        return ctx.finding(id, Status::Pass, Severity::Info, title, evidence);
    }
    let mut problems: Vec<(Severity, String)> = Vec::new();
    for m in &offered {
        let why = match m.as_str() {
            "ANONYMOUS" => Some((Severity::High, "ANONYMOUS lets anyone authenticate")),
            "CRAM-MD5" => Some((
                Severity::Medium,
                "CRAM-MD5 needs passwords stored in a reversible form and is crackable offline",
            )),
            "DIGEST-MD5" => Some((
                Severity::Medium,
                "DIGEST-MD5 is obsolete (RFC 6331) and needs reversible passwords",
            )),
            "NTLM" => Some((
                Severity::Medium,
                "NTLM is deprecated, leaks internal names and can be relayed",
            )),
            "LOGIN" | "PLAIN" if ctx.endpoint.role == Role::Mx => Some((
                Severity::Low,
                "password AUTH on the mail exchanger invites password guessing from the whole internet",
            )),
            _ => None,
        };
        if let Some((severity, text)) = why
            && !problems.iter().any(|(_, t)| t == text)
        {
            problems.push((severity, text.to_string()));
        }
    }
    let title = format!("weak or misplaced AUTH mechanisms: {}", offered.join(" "));
    match ctx.problems(id, problems, Severity::High, title, &evidence) {
        Some(f) => f.fix(MECHANISMS_FIX),
        None => ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            format!("AUTH mechanisms: {}", offered.join(" ")),
            evidence,
        ),
    }
}

/// `smtp.plaintext_mail_accepted`: a submission port (587) must refuse MAIL before STARTTLS.
pub async fn plaintext_mail(ctx: &Ctx<'_>, d: &Discovery) -> Finding {
    let id = "smtp.plaintext_mail_accepted";
    match ctx.endpoint.role {
        Role::Mx => {
            return ctx.skipped(
                id,
                format!(
                    "port {} is a mail exchanger: TLS cannot be required of every sending server \
                     (use submission://HOST:PORT for a submission port)",
                    ctx.endpoint.addr.port()
                ),
            );
        }
        Role::Submissions => {
            return ctx.finding(
                id,
                Status::Pass,
                Severity::Info,
                "implicit TLS: no plaintext session exists",
                format!("EHLO inside TLS: {}", d.ehlo.first_line()),
            );
        }
        Role::Submission => {}
    }
    let mut s = match session::open(ctx.endpoint, ctx.options).await {
        Ok(s) => s,
        Err(e) => return ctx.open_error(id, &e),
    };
    let sender_domain = ctx
        .domain()
        .map(str::to_string)
        .unwrap_or_else(|| ctx.options.probe.helo_name.clone());
    let mail_cmd = format!("MAIL FROM:<audit@{sender_domain}>");
    let mail = match s.conn.command(&mail_cmd).await {
        Ok(r) => r,
        Err(e) => return ctx.error(id, format!("MAIL: {e}")),
    };
    let fix = "Require TLS before any mail on the submission port. Postfix (master.cf, \
               submission service): `-o smtpd_tls_security_level=encrypt`. Exchange: \
               `Set-ReceiveConnector \"<SERVER>\\Client Frontend <SERVER>\" -RequireTLS $true`.";
    if !mail.is_positive() {
        s.conn.quit().await;
        return ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "mail is refused before STARTTLS",
            said(&mail_cmd, &mail),
        );
    }
    let rcpt_cmd = match ctx.domain() {
        Some(domain) => format!("RCPT TO:<postmaster@{domain}>"),
        None => "RCPT TO:<postmaster>".to_string(),
    };
    let rcpt = s.conn.command(&rcpt_cmd).await;
    let _ = s.conn.command("RSET").await;
    s.conn.quit().await;
    match rcpt {
        Ok(r) if r.is_positive() => ctx
            .finding(
                id,
                Status::Fail,
                Severity::High,
                "the submission port takes mail without TLS",
                format!("{}\n{}", said(&mail_cmd, &mail), said(&rcpt_cmd, &r)),
            )
            .fix(fix),
        Ok(r) => ctx
            .finding(
                id,
                Status::Warn,
                Severity::Low,
                "the submission port starts mail transactions without TLS",
                format!("{}\n{}", said(&mail_cmd, &mail), said(&rcpt_cmd, &r)),
            )
            .fix(fix),
        Err(e) => ctx.error(id, format!("{}; RCPT: {e}", said(&mail_cmd, &mail))),
    }
}
