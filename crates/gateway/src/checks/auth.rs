//! Sender authentication of inbound mail with mail-auth: SPF for the MAIL FROM and HELO
//! identities (RFC 7208), every DKIM signature (RFC 6376), the ARC chain (RFC 8617) and DMARC
//! with identifier alignment (RFC 7489). The verdict is an RFC 8601 Authentication-Results
//! field under our authserv-id and an [`Action`]: deliver, quarantine or reject.
//!
//! Settings read: `[checks]` (authserv-id, `enforce_dmarc`, `deadline`, `max_verify_size`,
//! `trusted_forwarders`), `hostname` (SPF's receiving host) and `[dns]`: mail-auth's hickory
//! resolver is built from `config.dns.resolver_settings()`, the same name servers, timeout
//! and attempts as every other lookup of the gateway.
//!
//! Policy: only a definitive DMARC `fail` under the sender domain's `p=reject` or
//! `p=quarantine` changes the message's fate, and only with `enforce_dmarc`. A message from a
//! trusted forwarder (client address in a listed network, or an ARC chain that passes with
//! its newest seal made by a listed domain) is delivered with the result recorded. A message
//! larger than `max_verify_size` is not held in memory for DKIM and ARC: it gets
//! `dkim=none` with a comment, DMARC is judged on SPF alone and is never enforced (a large
//! message must not be refused for signatures nobody checked).
//!
//! How it fails: never with an error. Every lookup shares one deadline; a check not finished
//! by then is `temperror`, as are DNS failures (mail-auth's own mapping), and `temperror`
//! never refuses mail. A message mail-auth cannot parse gets `dkim=none`, `arc=none` and a
//! DMARC result for an empty From domain (`none`).

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::dmarc::Policy;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, Error, MessageAuthenticator, SpfOutput, SpfResult, dmarc::verify::DmarcParameters,
    spf::verify::SpfParameters,
};
use tokio::time::{Instant, timeout_at};

use crate::config::{ChecksSection, Config, Forwarder, is_domain};

/// What the session does with the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue it for the backend.
    Deliver,
    /// Keep it in the quarantine; the domain whose policy said so.
    Quarantine(String),
    /// Refuse it with `550 5.7.1`; the domain whose policy said so.
    Reject(String),
}

/// The outcome of the checks of one message.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The Authentication-Results field, folded, CRLF terminated.
    pub header: String,
    pub action: Action,
    /// One line for the log: `spf=pass dkim=pass arc=none dmarc=pass`.
    pub summary: String,
    /// Why a DMARC failure was not acted on, if it was not.
    pub exempt: Option<&'static str>,
}

/// The SMTP facts the checks need.
pub struct Session<'a> {
    pub client: IpAddr,
    /// The HELO/EHLO argument ("" if none was given).
    pub helo: &'a str,
    /// The reverse-path ("" for the null sender).
    pub mail_from: &'a str,
}

/// The verifier shared by all sessions.
pub struct Verifier {
    authenticator: MessageAuthenticator,
    authserv_id: String,
    hostname: String,
    deadline: Duration,
    max_size: u64,
    enforce: bool,
    forwarders: Vec<Forwarder>,
}

impl Verifier {
    /// The verifier of `config`, or `None` when `[checks] enabled = false`.
    pub fn from_config(config: &Config) -> Result<Option<Verifier>, String> {
        if !config.checks.enabled {
            return Ok(None);
        }
        let (resolver, mut options) = ravelin_dns::hickory_config(&config.dns.resolver_settings())
            .map_err(|e| format!("checks: {e}"))?;
        // Records are looked up again for every message otherwise; honour their TTLs.
        options.cache_size = 4096;
        let authenticator = MessageAuthenticator::new(resolver, options)
            .map_err(|e| format!("checks: resolver set-up: {e}"))?;
        Ok(Some(Verifier::new(
            authenticator,
            &config.checks,
            &config.hostname,
        )))
    }

    pub fn new(
        authenticator: MessageAuthenticator,
        section: &ChecksSection,
        hostname: &str,
    ) -> Verifier {
        Verifier {
            authenticator,
            authserv_id: section.authserv_id(hostname).to_string(),
            hostname: hostname.to_string(),
            deadline: section.deadline.0,
            max_size: section.max_verify_size,
            enforce: section.enforce_dmarc,
            forwarders: section.trusted_forwarders.clone(),
        }
    }

    /// Largest message whose signatures are verified.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Checks one message. `message` is the whole message as received when `complete`, or
    /// only its header section (a message over [`Verifier::max_size`]).
    pub async fn verify(&self, smtp: &Session<'_>, message: &[u8], complete: bool) -> Verdict {
        let deadline = Instant::now() + self.deadline;
        let auth = &self.authenticator;
        let ip = smtp.client;
        let helo_domain = smtp.helo.trim_end_matches('.');
        let helo_is_name = is_domain(helo_domain, true);

        let spf_helo = match helo_is_name {
            true => Some(
                timeout_at(
                    deadline,
                    auth.verify_spf(SpfParameters::verify_ehlo(ip, helo_domain, &self.hostname)),
                )
                .await
                .unwrap_or_else(|_| spf_timeout(helo_domain)),
            ),
            false => None,
        };
        let spf_mail = match smtp.mail_from {
            "" => None,
            from => Some(
                timeout_at(
                    deadline,
                    auth.verify_spf(SpfParameters::verify_mail_from(
                        ip,
                        smtp.helo,
                        &self.hostname,
                        from,
                    )),
                )
                .await
                .unwrap_or_else(|_| spf_timeout(from.rsplit_once('@').map_or("", |(_, d)| d))),
            ),
        };
        // DMARC's SPF identity: MAIL FROM, or the HELO name for the null sender (RFC 7489 §4.1).
        let (spf_for_dmarc, spf_domain) = match (&spf_mail, &spf_helo) {
            (Some(s), _) => (
                s.clone(),
                smtp.mail_from.rsplit_once('@').map_or("", |(_, d)| d),
            ),
            (None, Some(h)) => (h.clone(), helo_domain),
            (None, None) => (SpfOutput::new(String::new()), ""),
        };

        let parsed = AuthenticatedMessage::parse(message);
        let empty = AuthenticatedMessage::default();
        let msg = parsed.as_ref().unwrap_or(&empty);
        let dkim: Vec<DkimOutput<'_>> = match (complete, &parsed) {
            (true, Some(m)) => timeout_at(deadline, auth.verify_dkim(m))
                .await
                .unwrap_or_else(|_| vec![DkimOutput::temp_err(timed_out())]),
            _ => Vec::new(),
        };
        let arc: ArcOutput<'_> = match (complete, &parsed) {
            (true, Some(m)) => timeout_at(deadline, auth.verify_arc(m))
                .await
                .unwrap_or_else(|_| {
                    ArcOutput::default().with_result(DkimResult::TempError(timed_out()))
                }),
            _ => ArcOutput::default(),
        };
        let dmarc = timeout_at(
            deadline,
            auth.verify_dmarc(DmarcParameters::new(msg, &dkim, spf_domain, &spf_for_dmarc)),
        )
        .await
        .unwrap_or_else(|_| {
            let domain = msg.from().rsplit_once('@').map_or("", |(_, d)| d);
            DmarcOutput::new(domain.to_ascii_lowercase())
                .with_spf_result(DmarcResult::TempError(timed_out()))
                .with_dkim_result(DmarcResult::TempError(timed_out()))
        });

        let mut results = AuthenticationResults::new(&self.authserv_id);
        if let Some(s) = &spf_mail {
            results = results.with_spf_mailfrom_result(s, ip, smtp.mail_from, smtp.helo);
        }
        if let Some(s) = &spf_helo {
            results = results.with_spf_ehlo_result(s, ip, helo_domain);
        }
        results = results
            .with_dkim_results(&dkim, msg.from())
            .with_arc_result(&arc, ip)
            .with_dmarc_result(&dmarc);
        let mut text = results.to_string();
        if dkim.is_empty() {
            text.push_str(match complete {
                true => ";\r\n\tdkim=none",
                false => ";\r\n\tdkim=none (message too large to verify)",
            });
        }
        if spf_mail.is_none() && spf_helo.is_none() {
            text.push_str(";\r\n\tspf=none");
        }

        let (action, exempt) = self.decide(&dmarc, &arc, ip, complete);
        let dkim_words: Vec<&str> = dkim.iter().take(8).map(|d| dkim_word(d.result())).collect();
        let summary = format!(
            "spf={} dkim={} arc={} dmarc={}",
            spf_word(spf_for_dmarc.result()),
            if dkim_words.is_empty() {
                "none".to_string()
            } else {
                dkim_words.join(",")
            },
            dkim_word(arc.result()),
            dmarc_word(&dmarc.result()),
        );
        Verdict {
            header: format!("Authentication-Results: {text}\r\n"),
            action,
            summary,
            exempt,
        }
    }

    /// What the DMARC result asks for, after the local overrides.
    fn decide(
        &self,
        dmarc: &DmarcOutput,
        arc: &ArcOutput<'_>,
        client: IpAddr,
        complete: bool,
    ) -> (Action, Option<&'static str>) {
        if !matches!(dmarc.result(), DmarcResult::Fail(_)) {
            return (Action::Deliver, None);
        }
        let domain = dmarc.domain().to_string();
        let wanted = match dmarc.policy() {
            Policy::Reject => Action::Reject(domain),
            Policy::Quarantine => Action::Quarantine(domain),
            Policy::None | Policy::Unspecified => return (Action::Deliver, None),
        };
        let exempt = if !self.enforce {
            Some("enforce_dmarc is off")
        } else if !complete {
            Some("message too large to verify")
        } else if self.trusted(arc, client) {
            Some("trusted forwarder")
        } else {
            None
        };
        match exempt {
            Some(why) => (Action::Deliver, Some(why)),
            None => (wanted, None),
        }
    }

    /// Whether the client, or the ARC chain's newest sealer when the chain passes, is a
    /// trusted forwarder.
    fn trusted(&self, arc: &ArcOutput<'_>, client: IpAddr) -> bool {
        let sealer = match arc.result() {
            DkimResult::Pass => arc
                .sets()
                .iter()
                .max_by_key(|s| s.seal.header.i)
                .map(|s| s.seal.header.d.trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        };
        self.forwarders.iter().any(|f| match f {
            Forwarder::Network(net) => net.contains(client),
            Forwarder::Domain(d) => sealer.as_deref() == Some(d.as_str()),
        })
    }
}

fn timed_out() -> Error {
    Error::Io("lookup deadline passed".into())
}

fn spf_timeout(domain: &str) -> SpfOutput {
    SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError)
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}
