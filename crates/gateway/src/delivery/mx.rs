//! Direct delivery to a domain's mail exchangers (RFC 5321 §5.1, RFC 7505, RFC 7672,
//! RFC 8461), used for mail to other domains when no smart host is configured.
//!
//! [`Direct::targets`] turns a recipient domain into the ordered list of places to try:
//!
//! 1. The MX records, through the gateway's resolver (`[dns]`). A null MX (`0 .`, RFC 7505)
//!    bounces the recipients with `556 5.1.10`; a domain that does not exist bounces with
//!    `550 5.1.2`; no MX record means the domain itself is the mail exchanger (implicit MX);
//!    a failed lookup defers. MX hosts are taken in preference order, randomly among equal
//!    preferences, at most [`MAX_MX_HOSTS`] of them.
//! 2. Each MX host's IPv4 and IPv6 addresses (at most [`MAX_ADDRESSES`] per host); a host
//!    without addresses, or whose lookup failed, is skipped.
//! 3. The TLS policy of each host, in this order: DANE when the MX (or implicit-MX address)
//!    answer and the host's TLSA records are DNSSEC-secure ([`super::dane`]); else MTA-STS
//!    when the domain publishes a policy ([`super::policy`]): under `enforce` a host that does
//!    not match the policy's `mx` patterns is skipped and the others must present a WebPKI
//!    valid certificate for their name, under `testing` failures are reported and tolerated;
//!    else opportunistic STARTTLS. DANE always wins over MTA-STS.
//!
//! Every address of every host becomes a [`Target`] on `[delivery] smtp_port`; the caller
//! tries them in order and moves on when a connection or TLS fails. When no target is left
//! the recipients are deferred with the reason (a DANE or MTA-STS failure is a temporary
//! failure, never a reason to send in plaintext). TLS results go to the TLS-RPT recorder.
//!
//! How it fails: [`Direct::new`] fails when a TLS configuration (the extra CA file) cannot be
//! built; lookups never fail the process, they defer or bounce recipients as above.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ravelin_dns::mta_sts::FetchSettings;
use ravelin_dns::{LookupError, Mx, Resolver};
use ravelin_wire::Reply;
use rustls::ClientConfig;
use tokio::sync::Semaphore;

use super::Outcome;
use super::dane::{self, DaneDecision};
use super::policy::{StsDecision, StsPolicies};
use super::smtp::{Target, TlsPlan};
use super::tlsrpt::{PolicyType, TlsRpt};

/// The most MX hosts of a domain that are tried.
pub const MAX_MX_HOSTS: usize = 10;

/// The most addresses of one MX host that are tried.
pub const MAX_ADDRESSES: usize = 4;

/// What direct delivery needs besides [`super::DeliverySettings`].
#[derive(Debug, Clone)]
pub struct DirectSettings {
    /// The gateway's resolver (`[dns]`), shared with the inbound checks.
    pub resolver: Resolver,
    /// The port of every MX (25; tests use a high port).
    pub port: u16,
    /// Use DANE where the TLSA records are DNSSEC-secure.
    pub dane: bool,
    /// Apply MTA-STS policies.
    pub mta_sts: bool,
    /// How MTA-STS policies are fetched (timeout, HTTPS port).
    pub sts_fetch: FetchSettings,
    /// CA certificates trusted besides the system's, for MTA-STS (policy host and MX).
    pub extra_ca_file: Option<PathBuf>,
    /// Where the TLS-RPT daily files (`tlsrpt/`) and the MTA-STS policy cache
    /// (`mta-sts/cache.json`) are kept: the spool directory.
    pub state_dir: PathBuf,
    /// Our host name: the organisation in TLS-RPT reports.
    pub hostname: String,
}

/// The direct route: resolver, TLS configurations, policy cache and TLS-RPT recorder.
pub(crate) struct Direct {
    resolver: Resolver,
    port: u16,
    dane: bool,
    sts: Option<StsPolicies>,
    /// Encryption without authentication (opportunistic TLS, DANE with unusable records).
    unauthenticated: Arc<ClientConfig>,
    rpt: Arc<TlsRpt>,
    slots: Semaphore,
}

impl Direct {
    pub(crate) fn new(settings: DirectSettings, concurrency: usize) -> Result<Direct, String> {
        let resolver = settings.resolver.clone();
        let unauthenticated =
            ravelin_tls::client_config(&ravelin_tls::Verify::None).map_err(|e| e.to_string())?;
        let sts = if settings.mta_sts {
            Some(StsPolicies::new(
                resolver.clone(),
                settings.sts_fetch.clone(),
                settings.extra_ca_file.clone(),
                settings.state_dir.join("mta-sts").join("cache.json"),
            )?)
        } else {
            None
        };
        Ok(Direct {
            resolver,
            port: settings.port,
            dane: settings.dane,
            sts,
            unauthenticated,
            rpt: Arc::new(TlsRpt::new(
                settings.state_dir.join("tlsrpt"),
                settings.hostname,
            )),
            slots: Semaphore::new(concurrency.max(1)),
        })
    }

    pub(crate) fn slots(&self) -> &Semaphore {
        &self.slots
    }

    /// The places to try for `domain`, in order, or the outcome for all its recipients.
    pub(crate) async fn targets(&self, domain: &str, log_id: &str) -> Result<Vec<Target>, Outcome> {
        if domain.is_empty() {
            return Err(Outcome::Permanent(Reply::ext(
                550,
                (5, 1, 2),
                "recipient without a domain",
            )));
        }
        let (hosts, mx_secure, implicit) = self.exchangers(domain).await?;
        let sts = match &self.sts {
            Some(sts) => sts.decide(domain, log_id).await,
            None => StsDecision::None,
        };
        if let StsDecision::FetchFailed(why) = &sts {
            self.rpt
                .recorder(domain, PolicyType::Sts, Vec::new())
                .policy_failure("sts-policy-fetch-error", "", why);
        }
        tracing::info!(event = "delivery_mx", queue_id = %log_id, domain = %domain,
            mx = %hosts.join(","), implicit, dnssec = mx_secure, mta_sts = sts.mode());
        let mut targets = Vec::new();
        let mut last_error = format!("no usable mail exchanger for {domain}");
        let mut any_address = false;
        for host in hosts.iter().take(MAX_MX_HOSTS) {
            let addresses = match self.resolver.ips(host, false).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::warn!(event = "delivery_mx_host_skipped", queue_id = %log_id,
                        domain = %domain, host = %host, error = %e);
                    last_error = format!("{host}: address lookup: {e}");
                    continue;
                }
            };
            any_address = true;
            let secure = mx_secure && addresses.secure;
            let Some((plan, policy, report)) = self
                .host_plan(domain, host, secure, &sts, log_id, &mut last_error)
                .await
            else {
                continue;
            };
            for ip in addresses
                .records
                .iter()
                .filter(|ip| usable_address(ip))
                .take(MAX_ADDRESSES)
            {
                targets.push(Target {
                    host: host.clone(),
                    port: self.port,
                    addr: Some(*ip),
                    plan: plan.clone(),
                    policy,
                    reuse: false,
                    report: report.clone(),
                    auth: None,
                });
            }
        }
        if targets.is_empty() {
            if implicit && !any_address {
                return Err(Outcome::Permanent(Reply::ext(
                    550,
                    (5, 1, 2),
                    format!("{domain} has no MX and no address record: {last_error}"),
                )));
            }
            return Err(Outcome::Transient(last_error));
        }
        Ok(targets)
    }

    /// The MX hosts in the order to try, whether the MX answer was DNSSEC-secure, and whether
    /// the domain is its own mail exchanger (implicit MX).
    async fn exchangers(&self, domain: &str) -> Result<(Vec<String>, bool, bool), Outcome> {
        match self.resolver.mx(domain).await {
            Ok(answer) if answer.is_null_mx() => Err(null_mx(domain)),
            Ok(answer) => {
                let mut records: Vec<Mx> = answer
                    .records
                    .into_iter()
                    .filter(|m| !m.is_null())
                    .collect();
                if records.is_empty() {
                    return Err(null_mx(domain));
                }
                shuffle_equal_preferences(&mut records);
                let hosts = records.into_iter().map(|m| m.exchange).collect();
                Ok((hosts, answer.secure, false))
            }
            Err(LookupError::NoRecords) => {
                // Implicit MX (RFC 5321 §5.1): DNSSEC status comes from the address answer.
                Ok((vec![domain.to_string()], true, true))
            }
            Err(LookupError::NxDomain) => Err(Outcome::Permanent(Reply::ext(
                550,
                (5, 1, 2),
                format!("the domain {domain} does not exist (NXDOMAIN)"),
            ))),
            Err(LookupError::InvalidName(why)) => Err(Outcome::Permanent(Reply::ext(
                550,
                (5, 1, 2),
                format!("{domain} is not a valid domain name: {why}"),
            ))),
            Err(e @ LookupError::Failed(_)) => {
                Err(Outcome::Transient(format!("MX lookup for {domain}: {e}")))
            }
        }
    }

    /// The TLS plan of one MX host, its policy name and where its results are reported;
    /// `None` when the host must not be used (its reason left in `last_error`).
    async fn host_plan(
        &self,
        domain: &str,
        host: &str,
        secure: bool,
        sts: &StsDecision,
        log_id: &str,
        last_error: &mut String,
    ) -> Option<(TlsPlan, &'static str, Option<super::tlsrpt::Recorder>)> {
        if self.dane {
            match dane::decide(&self.resolver, host, self.port, secure).await {
                DaneDecision::Dane { config, records } => {
                    let report = self.rpt.recorder(domain, PolicyType::Tlsa, records);
                    return Some((TlsPlan::Require(config), "dane", Some(report)));
                }
                DaneDecision::Unusable { records } => {
                    let report = self.rpt.recorder(domain, PolicyType::Tlsa, records);
                    let plan = TlsPlan::Require(self.unauthenticated.clone());
                    return Some((plan, "dane-unusable", Some(report)));
                }
                DaneDecision::Failed(why) => {
                    tracing::warn!(event = "delivery_mx_host_skipped", queue_id = %log_id,
                        domain = %domain, host = %host, policy = "dane", error = %why);
                    *last_error = format!("{host}: {why}");
                    return None;
                }
                DaneDecision::NotApplicable => {}
            }
        }
        match sts {
            StsDecision::Enforce(policy) | StsDecision::Testing(policy) => {
                let enforce = matches!(sts, StsDecision::Enforce(_));
                let report = self
                    .rpt
                    .recorder(domain, PolicyType::Sts, policy.strings.clone());
                if !policy.policy.matches_mx(host) {
                    let why = format!(
                        "{host} does not match the MTA-STS policy of {domain} (mx: {})",
                        policy.policy.mx.join(", ")
                    );
                    report.policy_failure("validation-failure", host, &why);
                    tracing::warn!(event = "delivery_mx_host_skipped", queue_id = %log_id,
                        domain = %domain, host = %host,
                        policy = if enforce { "mta-sts" } else { "mta-sts-testing" },
                        enforced = enforce, error = %why);
                    if enforce {
                        *last_error = why;
                        return None;
                    }
                    let plan = TlsPlan::May(self.unauthenticated.clone());
                    return Some((plan, "mta-sts-testing", None));
                }
                let verified = policy.verify.clone();
                if enforce {
                    Some((TlsPlan::Require(verified), "mta-sts", Some(report)))
                } else {
                    let plan = TlsPlan::Testing {
                        verified,
                        fallback: self.unauthenticated.clone(),
                    };
                    Some((plan, "mta-sts-testing", Some(report)))
                }
            }
            StsDecision::None | StsDecision::FetchFailed(_) => {
                let report = self.rpt.recorder(domain, PolicyType::NoPolicy, Vec::new());
                let plan = TlsPlan::May(self.unauthenticated.clone());
                Some((plan, "opportunistic", Some(report)))
            }
        }
    }
}

fn null_mx(domain: &str) -> Outcome {
    Outcome::Permanent(Reply::ext(
        556,
        (5, 1, 10),
        format!("{domain} does not accept mail (null MX, RFC 7505)"),
    ))
}

/// Shuffles MX records among equal preferences (RFC 5321 §5.1), keeping preference order.
fn shuffle_equal_preferences(records: &mut [Mx]) {
    records.sort_by_key(|m| m.preference);
    let mut start = 0;
    while start < records.len() {
        let pref = records[start].preference;
        let end = start
            + records[start..]
                .iter()
                .take_while(|m| m.preference == pref)
                .count();
        let group = &mut records[start..end];
        for i in (1..group.len()).rev() {
            let j = random_below(i + 1);
            group.swap(i, j);
        }
        start = end;
    }
}

/// A random number below `n` (n > 0) from the system's generator; 0 if it fails.
fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0;
    }
    (u32::from_le_bytes(bytes) as usize) % n
}

/// Addresses of a host that a delivery may connect to: not unspecified, not multicast.
fn usable_address(ip: &IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(preference: u16, exchange: &str) -> Mx {
        Mx {
            preference,
            exchange: exchange.to_string(),
        }
    }

    #[test]
    fn equal_preferences_are_shuffled_and_order_kept() {
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut records = vec![mx(20, "c"), mx(10, "a"), mx(10, "b"), mx(30, "d")];
            shuffle_equal_preferences(&mut records);
            let prefs: Vec<u16> = records.iter().map(|m| m.preference).collect();
            assert_eq!(prefs, vec![10, 10, 20, 30]);
            seen_first.insert(records[0].exchange.clone());
            assert_eq!(records[2].exchange, "c");
            assert_eq!(records[3].exchange, "d");
        }
        assert_eq!(
            seen_first.len(),
            2,
            "both equal-preference hosts come first sometimes"
        );
    }
}
