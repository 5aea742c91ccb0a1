//! DNS block and allow lists (DNSBL / DNSWL, RFC 5782): is an address listed in a zone?
//!
//! The query name is the address reversed under the list's zone: `2.0.0.127.zen.spamhaus.org`
//! for 127.0.0.2, the 32 reversed nibbles for IPv6. An A answer means listed, with the
//! answer addresses as return codes; NXDOMAIN (or NODATA) means not listed.
//!
//! List error answers are not listings ([`ListOutcome::ListError`]): any code in
//! 127.255.255.0/24 (Spamhaus: .252 typo in the list name, .254 query through a public or
//! open resolver, .255 too many queries) and any answer outside 127.0.0.0/8 (a resolver that
//! rewrites NXDOMAIN to an address of its own). The caller logs those as a misconfiguration;
//! return-code filters and weights of particular lists belong to the caller's configuration,
//! which sees every code in [`ListOutcome::Listed`].
//!
//! Timeouts and SERVFAIL give [`ListOutcome::Failed`], which callers must treat as "unknown"
//! (a list that does not answer never blocks mail). [`query_lists`] asks many lists at once
//! under one deadline; lists that have not answered by then are reported failed with a
//! timeout.
//!
//! What is known about particular lists is here too, for the gateway and the auditor alike:
//! [`DEFAULT_ZONES`] (asked when nothing is configured), [`RETIRED_ZONES`] (shut down; some
//! answer "listed" for everything, never asked) and [`IPV4_ONLY_ZONES`] (their NXDOMAIN for an
//! IPv6 address means nothing).
//!
//! Reads no settings of its own: the resolver is the caller's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::resolver::{Failure, LookupError, Resolver, reversed_ip};

/// The lists queried by default: widely used, free for low-volume queries.
pub const DEFAULT_ZONES: &[&str] = &[
    "zen.spamhaus.org",
    "bl.spamcop.net",
    "b.barracudacentral.org",
    "psbl.surriel.com",
];

/// Lists that have shut down (some answer "listed" for every address since); never queried.
pub const RETIRED_ZONES: &[&str] = &[
    "dnsbl.sorbs.net",
    "spam.dnsbl.sorbs.net",
    "cbl.abuseat.org",
    "dnsbl.njabl.org",
    "dnsbl.ahbl.org",
    "rhsbl.ahbl.org",
    "list.dsbl.org",
    "bl.spamcannibal.org",
    "dnsbl.proxybl.org",
    "ipbl.mailhosts.org",
    "blackholes.mail-abuse.org",
];

/// Lists of IPv4 addresses only: asked about an IPv6 address they answer NXDOMAIN, which would
/// read as "not listed".
pub const IPV4_ONLY_ZONES: &[&str] = &[
    "bl.spamcop.net",
    "b.barracudacentral.org",
    "psbl.surriel.com",
];

/// Whether a zone lists IPv4 addresses only.
pub fn is_ipv4_only(zone: &str) -> bool {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    IPV4_ONLY_ZONES.contains(&zone.as_str())
}

/// Whether a zone is retired.
pub fn is_retired(zone: &str) -> bool {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    RETIRED_ZONES.contains(&zone.as_str()) || zone.ends_with(".sorbs.net")
}

/// The most lists asked in one [`query_lists`] call; further zones are reported failed.
pub const MAX_LISTS: usize = 64;

/// The most characters of a TXT reason kept.
pub const MAX_REASON: usize = 512;

/// What a list said about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOutcome {
    /// Listed: the return codes (all in 127.0.0.0/8, none an error code) and, when asked for
    /// and available, the list's TXT reason.
    Listed {
        codes: Vec<Ipv4Addr>,
        reason: Option<String>,
    },
    /// Not listed (NXDOMAIN or NODATA).
    NotListed,
    /// The list answered with an error code, not a listing; see [`list_error_meaning`].
    ListError { code: IpAddr },
    /// No answer: timeout, SERVFAIL, network error, or the name could not be formed.
    Failed(Failure),
}

impl fmt::Display for ListOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListOutcome::Listed { codes, reason } => {
                let codes: Vec<String> = codes.iter().map(|c| c.to_string()).collect();
                write!(f, "listed ({})", codes.join(", "))?;
                if let Some(reason) = reason {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            ListOutcome::NotListed => f.write_str("not listed"),
            ListOutcome::ListError { code } => {
                write!(f, "list error {code}: {}", list_error_meaning(*code))
            }
            ListOutcome::Failed(failure) => write!(f, "no answer: {failure}"),
        }
    }
}

/// One list's outcome in [`query_lists`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneOutcome {
    /// The zone, as the caller gave it.
    pub zone: String,
    pub outcome: ListOutcome,
}

/// True for answers that are list errors, not listings: 127.255.255.0/24 and anything
/// outside 127.0.0.0/8 (including every IPv6 answer).
pub fn is_list_error(code: IpAddr) -> bool {
    match code {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            a != 127 || (b == 255 && c == 255)
        }
        IpAddr::V6(_) => true,
    }
}

/// What an error code means, in words for logs and audit evidence.
pub fn list_error_meaning(code: IpAddr) -> &'static str {
    match code {
        IpAddr::V4(v4) if v4.octets()[0] != 127 => {
            "an answer outside 127.0.0.0/8: the resolver rewrites NXDOMAIN, or the zone is not a DNSBL"
        }
        IpAddr::V4(v4) => match v4.octets() {
            [127, 255, 255, 252] => "typing error in the DNSBL name",
            [127, 255, 255, 254] => {
                "query refused: it came through a public or open resolver (use a local resolver)"
            }
            [127, 255, 255, 255] => "query refused: too many queries (rate limited)",
            [127, 255, 255, _] => "query refused by the list (127.255.255.0/24 error code)",
            _ => "not an error code",
        },
        IpAddr::V6(_) => "an IPv6 answer: not a DNSBL return code",
    }
}

/// The DNS name asked for `ip` in `zone`: `d.c.b.a.zone` or the IPv6 nibble form.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    format!("{}.{}", reversed_ip(ip), zone.trim_end_matches('.'))
}

/// Asks one list about `ip`. With `reason`, a listing's TXT record is fetched too (one more
/// query; its failure only leaves the reason empty).
pub async fn query_list(resolver: &Resolver, zone: &str, ip: IpAddr, reason: bool) -> ListOutcome {
    let name = query_name(ip, zone);
    let answer = match resolver.ipv4(&name).await {
        Ok(answer) => answer,
        Err(LookupError::NxDomain | LookupError::NoRecords) => {
            // A resolver may also rewrite into an AAAA-only answer; that is not a listing.
            return ListOutcome::NotListed;
        }
        Err(LookupError::Failed(failure)) => return ListOutcome::Failed(failure),
        Err(LookupError::InvalidName(why)) => {
            return ListOutcome::Failed(Failure::Other(format!("list zone {zone:?}: {why}")));
        }
    };
    if let Some(code) = answer
        .records
        .iter()
        .map(|c| IpAddr::V4(*c))
        .find(|c| is_list_error(*c))
    {
        return ListOutcome::ListError { code };
    }
    let reason = if reason {
        match resolver.txt(&name).await {
            Ok(txt) => txt.records.into_iter().next().map(|mut text| {
                if text.len() > MAX_REASON {
                    let mut end = MAX_REASON;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                }
                text
            }),
            Err(_) => None,
        }
    } else {
        None
    };
    ListOutcome::Listed {
        codes: answer.records,
        reason,
    }
}

/// Asks every list about `ip` at once and waits at most `deadline`. The outcomes come in the
/// order of `zones`; a list without an answer by the deadline is `Failed(Timeout)`. At most
/// [`MAX_LISTS`] zones are asked.
pub async fn query_lists(
    resolver: &Resolver,
    zones: &[String],
    ip: IpAddr,
    deadline: Duration,
    reason: bool,
) -> Vec<ZoneOutcome> {
    let mut outcomes: Vec<ZoneOutcome> = zones
        .iter()
        .map(|zone| ZoneOutcome {
            zone: zone.clone(),
            outcome: ListOutcome::Failed(Failure::Timeout),
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, zone) in zones.iter().enumerate().take(MAX_LISTS) {
        let resolver = resolver.clone();
        let zone = zone.clone();
        tasks.spawn(async move { (index, query_list(&resolver, &zone, ip, reason).await) });
    }
    for outcome in outcomes.iter_mut().skip(MAX_LISTS) {
        outcome.outcome = ListOutcome::Failed(Failure::Other(format!(
            "more than {MAX_LISTS} lists; this one was not asked"
        )));
    }
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, tasks.join_next()).await {
            Ok(Some(Ok((index, outcome)))) => {
                if let Some(slot) = outcomes.get_mut(index) {
                    slot.outcome = outcome;
                }
            }
            // A task that panicked or was cancelled keeps its "timeout" outcome.
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Dropping the set aborts the lists still running.
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        for code in [
            "127.255.255.252",
            "127.255.255.254",
            "127.255.255.255",
            "127.255.255.1",
        ] {
            assert!(is_list_error(code.parse().unwrap()), "{code}");
        }
        for code in ["192.0.2.1", "10.0.0.2", "0.0.0.0", "::1"] {
            assert!(is_list_error(code.parse().unwrap()), "{code}");
        }
        for code in [
            "127.0.0.2",
            "127.0.0.4",
            "127.0.0.10",
            "127.0.1.255",
            "127.255.254.1",
        ] {
            assert!(!is_list_error(code.parse().unwrap()), "{code}");
        }
        assert!(list_error_meaning("127.255.255.254".parse().unwrap()).contains("public"));
        assert!(list_error_meaning("192.0.2.1".parse().unwrap()).contains("outside"));
    }

    #[test]
    fn query_names() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "zen.example."),
            "99.2.0.192.zen.example"
        );
        assert_eq!(
            query_name("2001:db8::1".parse().unwrap(), "bl.example"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"
        );
    }

    #[test]
    fn outcomes_read_well_in_logs() {
        let listed = ListOutcome::Listed {
            codes: vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)],
            reason: Some("see https://example.test/lookup".to_string()),
        };
        assert_eq!(
            listed.to_string(),
            "listed (127.0.0.2, 127.0.0.4): see https://example.test/lookup"
        );
        let error = ListOutcome::ListError {
            code: "127.255.255.254".parse().unwrap(),
        };
        assert!(error.to_string().starts_with("list error 127.255.255.254"));
    }
}
