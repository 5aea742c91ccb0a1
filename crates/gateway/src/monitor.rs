//! The own-exposure monitor (`[monitor]`): the gateway's public addresses looked up on the DNS
//! blocklists receivers consult, at start and every `interval`, so that a listing (a
//! compromised account sending spam through the gateway, a neighbour on a shared range) is
//! seen before the bounces pile up.
//!
//! Each round asks every list about every address at once through the gateway's resolver
//! (`[dns]`), with [`ravelin_dns::query_lists`]: a listing is an error line
//! (`own_address_listed`, with the list's codes and TXT reason) and sets
//! `ravelin_own_address_listed{address, list}` to 1; an address a list does not list sets it
//! to 0. Lists of IPv4 addresses only are not asked about IPv6 addresses. A round ends with
//! one `own_address_check` line counting what it found.
//!
//! How it fails: a list that does not answer, or answers with an error code (Spamhaus refuses
//! queries that come through public resolvers), is a warning naming the list and what its
//! answer means — never a listing, never a clean bill; the metric keeps its last value. A round
//! is bounded by [`ROUND_DEADLINE`] per address and is cancelled by the shutdown.

use std::net::IpAddr;
use std::time::Duration;

use ravelin_dns::dnsbl::is_ipv4_only;
use ravelin_dns::{ListOutcome, Resolver, query_lists};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::MonitorSection;

/// How long the lists have to answer about one address.
pub const ROUND_DEADLINE: Duration = Duration::from_secs(30);

/// What one round found, for the summary line and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// (address, list) pairs where the address is listed.
    pub listed: Vec<(IpAddr, String)>,
    /// (address, list) pairs that could not be told: no answer or a list error.
    pub unknown: Vec<(IpAddr, String)>,
    /// Lookups that said "not listed".
    pub clean: usize,
}

/// Starts the monitor when `[monitor] addresses` names any; it runs until `shutdown`.
pub fn spawn(
    section: &MonitorSection,
    resolver: Resolver,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if section.addresses.is_empty() {
        return None;
    }
    let (addresses, lists, interval) = (
        section.addresses.clone(),
        section.blocklists.clone(),
        section.interval.0,
    );
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = async {
                    every.tick().await;
                    check(&resolver, &addresses, &lists).await
                } => {}
            }
        }
    }))
}

/// One round over every address and list, logged and counted as the module says.
pub async fn check(resolver: &Resolver, addresses: &[IpAddr], lists: &[String]) -> Round {
    let mut round = Round::default();
    for &ip in addresses {
        let asked: Vec<String> = lists
            .iter()
            .filter(|zone| ip.is_ipv4() || !is_ipv4_only(zone))
            .cloned()
            .collect();
        for answer in query_lists(resolver, &asked, ip, ROUND_DEADLINE, true).await {
            let address = ip.to_string();
            let list = answer.zone;
            let gauge = |value: f64| {
                metrics::gauge!("ravelin_own_address_listed", "address" => address.clone(), "list" => list.clone())
                    .set(value);
            };
            match &answer.outcome {
                ListOutcome::Listed { .. } => {
                    error!(event = "own_address_listed", address = %ip, list = %list, outcome = %answer.outcome, decision = "receivers using this list refuse or score mail from this address: find why (a compromised account, an open relay behind the gateway) and ask the list for removal");
                    gauge(1.0);
                    round.listed.push((ip, list));
                }
                ListOutcome::NotListed => {
                    gauge(0.0);
                    round.clean += 1;
                }
                ListOutcome::ListError { .. } | ListOutcome::Failed(_) => {
                    warn!(event = "own_address_check", address = %ip, list = %list, outcome = %answer.outcome, decision = "listing unknown for this list until the next round");
                    round.unknown.push((ip, list));
                }
            }
        }
    }
    info!(
        event = "own_address_check",
        addresses = addresses.len(),
        lists = lists.len(),
        listed = round.listed.len(),
        unknown = round.unknown.len(),
        clean = round.clean
    );
    round
}
