//! Reputation scoring of a client: DNS block and allow lists (DNSBL / DNSWL), forward-confirmed
//! reverse DNS and the HELO name, each adding a configured weight (`[dnsbl]`) to a score that
//! refuses the client when it reaches `threshold` (Postfix's `postscreen_dnsbl_sites` and
//! `postscreen_dnsbl_threshold`, plus the reverse-DNS and HELO restrictions of smtpd).
//!
//! At connect ([`Reputation::connect`]) every list zone is asked once, all in parallel with the
//! PTR check, under one deadline (`[dnsbl] timeout`); a site's weight counts when one of the
//! codes answered passes its filter. Allow lists carry negative weights. At HELO
//! ([`Reputation::helo`]) the name is scored: our host name, our address, not a fully
//! qualified name, an address literal that is not the client's. The session adds the two and
//! refuses MAIL when the sum reaches the threshold.
//!
//! How it fails: a list or PTR lookup without an answer by the deadline (timeout, SERVFAIL)
//! adds nothing — a list that does not answer never blocks mail — and is named in the
//! `event=dnsbl` log line as unanswered. A list's error answer (127.255.255.x, an address
//! outside 127/8) is not a listing; it is logged once per zone and process as
//! `event=dnsbl_misconfigured` with what it means (most often: queries through a public
//! resolver, which the big lists refuse).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;

use ravelin_dns::dnsbl::{ListOutcome, list_error_meaning, query_lists};
use ravelin_dns::{Fcrdns, Resolver, fcrdns};
use ravelin_wire::Reply;
use tracing::{info, warn};

use crate::config::{DnsblSection, is_domain};
use crate::state::canonical_ip;

/// A score and what made it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Score {
    pub total: i32,
    /// The sites that counted, as `(zone, weight)`, in configuration order.
    pub listed: Vec<(String, i32)>,
    /// The other reasons that counted, as `(reason, weight)`.
    pub reasons: Vec<(&'static str, i32)>,
    /// Zones (or "ptr") that did not answer in time.
    pub unanswered: Vec<String>,
    /// Taken from the verdict cache; what made it is not known.
    pub cached: bool,
}

impl Score {
    /// A score remembered from an earlier connection.
    pub fn cached(total: i32) -> Score {
        Score {
            total,
            cached: true,
            ..Score::default()
        }
    }

    fn add(&mut self, reason: &'static str, weight: i32) {
        if weight != 0 {
            self.total = self.total.saturating_add(weight);
            self.reasons.push((reason, weight));
        }
    }

    /// `zone(+3),no_ptr(+1)` for logs.
    pub fn describe(&self) -> String {
        let listed = self.listed.iter().map(|(z, w)| format!("{z}({w:+})"));
        let reasons = self.reasons.iter().map(|(r, w)| format!("{r}({w:+})"));
        listed.chain(reasons).collect::<Vec<_>>().join(",")
    }

    /// The listed zone with the largest positive weight, named in the refusal.
    fn worst_zone(&self) -> Option<&str> {
        self.listed
            .iter()
            .filter(|(_, w)| *w > 0)
            .max_by_key(|(_, w)| *w)
            .map(|(z, _)| z.as_str())
    }
}

/// The reputation checks of one gateway.
pub struct Reputation {
    resolver: Resolver,
    config: DnsblSection,
    /// Zones whose misconfiguration was logged already.
    warned: Mutex<HashSet<String>>,
}

impl Reputation {
    /// The checks, or `None` when no list is configured and the reverse-DNS weights are 0
    /// (nothing to look up). The HELO weights apply either way through [`helo_score`].
    pub fn new(config: &DnsblSection, resolver: Resolver) -> Option<Reputation> {
        (!config.sites.is_empty() || config.checks_ptr()).then(|| Reputation {
            resolver,
            config: config.clone(),
            warned: Mutex::default(),
        })
    }

    pub fn threshold(&self) -> i32 {
        self.config.threshold
    }

    /// The connect-time score of `ip`: the lists and the reverse DNS, within the deadline.
    pub async fn connect(&self, ip: IpAddr) -> Score {
        let ip = canonical_ip(ip);
        let deadline = self.config.timeout.0;
        let mut zones: Vec<String> = Vec::new();
        for site in &self.config.sites {
            if !zones.contains(&site.zone) {
                zones.push(site.zone.clone());
            }
        }
        let ptr = async {
            if self.config.checks_ptr() {
                Some(tokio::time::timeout(deadline, fcrdns(&self.resolver, ip)).await)
            } else {
                None
            }
        };
        let (outcomes, ptr) = tokio::join!(
            query_lists(&self.resolver, &zones, ip, deadline, false),
            ptr
        );
        let mut score = Score::default();
        for outcome in &outcomes {
            match &outcome.outcome {
                ListOutcome::ListError { code } => self.misconfigured(&outcome.zone, *code),
                ListOutcome::Failed(_) => score.unanswered.push(outcome.zone.clone()),
                ListOutcome::Listed { .. } | ListOutcome::NotListed => {}
            }
        }
        for site in &self.config.sites {
            let listed = outcomes.iter().any(|o| {
                o.zone == site.zone
                    && matches!(&o.outcome, ListOutcome::Listed { codes, .. }
                        if codes.iter().any(|c| site.matches(*c)))
            });
            if listed && site.weight != 0 {
                score.total = score.total.saturating_add(site.weight);
                score.listed.push((site.zone.clone(), site.weight));
            }
        }
        match ptr {
            None => {}
            Some(Ok(Fcrdns::NoPtr)) => score.add("no_ptr", self.config.no_ptr),
            Some(Ok(Fcrdns::NotConfirmed { .. })) => {
                score.add("ptr_not_confirmed", self.config.ptr_not_confirmed);
            }
            Some(Ok(Fcrdns::Confirmed { .. })) => {}
            Some(Ok(Fcrdns::Failed(_)) | Err(_)) => score.unanswered.push("ptr".into()),
        }
        score
    }

    fn misconfigured(&self, zone: &str, code: IpAddr) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() < ravelin_dns::dnsbl::MAX_LISTS && warned.insert(zone.to_string()) {
            warn!(event = "dnsbl_misconfigured", zone = %zone, code = %code, reason = list_error_meaning(code), decision = "not a listing; fix the resolver or the zone name");
        }
    }

    /// Logs the connect-time verdict (`event=dnsbl`).
    pub fn log_connect(&self, session: &str, client: IpAddr, score: &Score, refused: bool) {
        info!(
            event = "dnsbl",
            session = %session,
            client = %client,
            score = score.total,
            threshold = self.config.threshold,
            zones = %score.describe(),
            unanswered = %score.unanswered.join(","),
            cached = score.cached,
            decision = if refused { "reject" } else { "pass" }
        );
    }
}

/// `554 5.7.1 Service unavailable; client [IP] blocked using ZONE`, or, when no list counted,
/// the reasons.
pub fn refusal(client: IpAddr, score: &Score) -> Reply {
    let client = canonical_ip(client);
    let text = match score.worst_zone() {
        Some(zone) => format!("Service unavailable; client [{client}] blocked using {zone}"),
        None => {
            let reasons: Vec<&str> = score.reasons.iter().map(|(r, _)| *r).collect();
            format!(
                "Service unavailable; client [{client}] blocked: {}",
                reasons.join(", ")
            )
        }
    };
    Reply::ext(554, (5, 7, 1), text)
}

/// An address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) or a bare address.
fn helo_address(helo: &str) -> Option<IpAddr> {
    let inner = helo
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(helo);
    let inner = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &inner[5..],
        _ => inner,
    };
    inner.parse::<IpAddr>().ok().map(canonical_ip)
}

/// The score of a HELO name from `client`, which connected to our address `local`.
pub fn helo_score(
    config: &DnsblSection,
    hostname: &str,
    helo: &str,
    client: IpAddr,
    local: IpAddr,
) -> Score {
    let mut score = Score::default();
    let name = helo.trim_end_matches('.').to_ascii_lowercase();
    if let Some(addr) = helo_address(&name) {
        if addr == canonical_ip(local) && addr != canonical_ip(client) {
            score.add("helo_our_address", config.helo_our_address);
        } else if addr != canonical_ip(client) {
            if name.starts_with('[') {
                score.add("helo_literal_mismatch", config.helo_literal_mismatch);
            } else {
                score.add("helo_not_fqdn", config.helo_not_fqdn);
            }
        } else if !name.starts_with('[') {
            // The client's own address, but not written as a literal.
            score.add("helo_not_fqdn", config.helo_not_fqdn);
        }
    } else if name == hostname {
        score.add("helo_our_name", config.helo_our_name);
    } else if !is_domain(&name, true) {
        score.add("helo_not_fqdn", config.helo_not_fqdn);
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn reasons(helo: &str) -> Vec<&'static str> {
        let c = DnsblSection::default();
        helo_score(
            &c,
            "mx.example.org",
            helo,
            ip("192.0.2.9"),
            ip("198.51.100.1"),
        )
        .reasons
        .into_iter()
        .map(|(r, _)| r)
        .collect()
    }

    #[test]
    fn helo_names_are_scored() {
        assert!(reasons("mail.sender.example").is_empty());
        assert!(reasons("[192.0.2.9]").is_empty());
        assert_eq!(reasons("MX.Example.org."), ["helo_our_name"]);
        assert_eq!(reasons("[198.51.100.1]"), ["helo_our_address"]);
        assert_eq!(reasons("198.51.100.1"), ["helo_our_address"]);
        assert_eq!(reasons("localhost"), ["helo_not_fqdn"]);
        assert_eq!(reasons("192.0.2.9"), ["helo_not_fqdn"]);
        assert_eq!(reasons("[203.0.113.5]"), ["helo_literal_mismatch"]);
        assert_eq!(reasons("[IPv6:2001:db8::1]"), ["helo_literal_mismatch"]);
        let c = DnsblSection::default();
        let s = helo_score(
            &c,
            "mx.example.org",
            "mx.example.org",
            ip("192.0.2.9"),
            ip("192.0.2.1"),
        );
        assert_eq!(s.total, c.helo_our_name);
    }

    /// Sites sharing a zone are asked once and each counts its own codes; IPv4-mapped and
    /// IPv6 clients are asked by their proper names; an unanswered PTR adds nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lists_are_scored_per_site() {
        use ravelin_dns::testing::TestDnsServer;
        let v6 = ravelin_dns::reversed_ip(ip("2001:db8::1"));
        let dns = TestDnsServer::start(&[(
            "bl.test",
            &format!("10.2.0.192 A 127.0.0.10\n11.2.0.192 A 127.0.0.4\n{v6} A 127.0.0.2\n"),
        )])
        .unwrap();
        let config = DnsblSection {
            sites: vec![
                "bl.test=127.0.0.[2..11]*3".parse().unwrap(),
                "bl.test=127.0.0.10*5".parse().unwrap(),
            ],
            ..DnsblSection::default()
        };
        let r = Reputation::new(&config, dns.resolver().unwrap()).unwrap();
        let s = r.connect(ip("::ffff:192.0.2.10")).await;
        assert_eq!(s.total, 8, "{s:?}");
        assert_eq!(s.describe(), "bl.test(+3),bl.test(+5)");
        // No reverse zone on this server: the PTR lookup is refused, which adds nothing.
        assert_eq!(s.unanswered, ["ptr"]);
        assert_eq!(r.connect(ip("192.0.2.11")).await.total, 3);
        assert_eq!(r.connect(ip("2001:db8::1")).await.total, 3);
        assert_eq!(r.connect(ip("192.0.2.12")).await.total, 0);
    }

    #[test]
    fn refusals_name_the_worst_zone() {
        let score = Score {
            total: 5,
            listed: vec![("a.example".into(), 2), ("b.example".into(), 3)],
            ..Score::default()
        };
        assert_eq!(
            refusal(ip("::ffff:192.0.2.9"), &score).one_line(),
            "554 5.7.1 Service unavailable; client [192.0.2.9] blocked using b.example"
        );
        let mut score = Score::default();
        score.add("helo_our_name", 3);
        score.add("no_ptr", 0);
        assert_eq!(score.describe(), "helo_our_name(+3)");
        assert!(
            refusal(ip("192.0.2.9"), &score)
                .one_line()
                .ends_with("blocked: helo_our_name")
        );
    }
}
