//! `dns.ptr`: reverse DNS of each MX address. Receivers check it on the mail the same hosts
//! send (Postfix `reject_unknown_client_hostname`, Exchange, most spam filters), and a name
//! that does not match what the server says in its banner and EHLO looks forged.
//!
//! Uses `ravelin_dns::fcrdns` (PTR names, each resolved back). Fails on: no PTR, a PTR that
//! does not resolve back to the address; warns on: a confirmed name that differs from the
//! name in the greeting and EHLO reply. The greeting and EHLO are read in one short session
//! (when the endpoint answers). How it fails: a temporary lookup failure is an `error`.

use crate::finding::{Finding, Severity, Status};
use crate::smtp::{SmtpOptions, session};
use crate::target::Endpoint;
use ravelin_dns::{Fcrdns, Resolver, fcrdns};

const ID: &str = "dns.ptr";

/// The first word of the greeting and of the EHLO reply, when they are domain names.
async fn announced_names(endpoint: &Endpoint, smtp: &SmtpOptions) -> Vec<String> {
    let Ok(s) = session::open(endpoint, smtp).await else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    let lines = [
        s.greeting.lines.first().cloned().unwrap_or_default(),
        s.ehlo.first_line().to_string(),
    ];
    s.conn.quit().await;
    for line in lines {
        if let Some(word) = line.split_whitespace().next() {
            let word = word.trim_end_matches('.').to_ascii_lowercase();
            if word.contains('.') && crate::target::is_domain_name(&word) && !names.contains(&word)
            {
                names.push(word);
            }
        }
    }
    names
}

/// The `dns.ptr` finding for one endpoint; `reachable` says whether SMTP answered there.
pub async fn check(
    resolver: &Resolver,
    endpoint: &Endpoint,
    reachable: bool,
    smtp: &SmtpOptions,
) -> Finding {
    let ip = endpoint.addr.ip();
    let at = endpoint.to_string();
    let f = |status, severity, title: &str, evidence: String| {
        Finding::new(ID, status, severity, at.as_str(), title, evidence)
    };
    let fix = format!(
        "Ask whoever runs the address block of {ip} (your ISP or hosting provider) to set its \
         PTR record to the MX host name ({}), which must resolve back to {ip}; use the same \
         name as Postfix `myhostname` / `smtpd_banner` or the Exchange receive connector's \
         FQDN.",
        endpoint.host()
    );
    let verdict = fcrdns(resolver, ip).await;
    let confirmed = match &verdict {
        Fcrdns::Confirmed { confirmed, .. } => confirmed.clone(),
        Fcrdns::NoPtr => {
            return f(
                Status::Fail,
                Severity::Medium,
                "no PTR record: many receivers refuse mail from this address",
                format!("PTR {ip}: none"),
            )
            .fix(fix);
        }
        Fcrdns::NotConfirmed { .. } => {
            return f(
                Status::Fail,
                Severity::Medium,
                "the PTR name does not resolve back to the address (no FCrDNS)",
                format!("{ip}: {verdict}"),
            )
            .fix(fix);
        }
        Fcrdns::Failed(_) => {
            return f(
                Status::Error,
                Severity::Info,
                "check could not run: DNS lookup failed",
                format!("{ip}: {verdict}"),
            );
        }
    };
    let announced = if reachable {
        announced_names(endpoint, smtp).await
    } else {
        Vec::new()
    };
    let evidence = format!(
        "{ip}: {verdict}; banner/EHLO name: {}",
        if announced.is_empty() {
            "not read".to_string()
        } else {
            announced.join(", ")
        }
    );
    if !announced.is_empty() && !announced.iter().any(|n| confirmed.contains(n)) {
        return f(
            Status::Warn,
            Severity::Low,
            "the PTR name differs from the name in the banner and EHLO",
            evidence,
        )
        .fix(fix);
    }
    f(
        Status::Pass,
        Severity::Info,
        "reverse DNS is forward-confirmed and matches the server's name",
        evidence,
    )
}
