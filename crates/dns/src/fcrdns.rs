//! Forward-confirmed reverse DNS (FCrDNS, "iprev" of RFC 8601): the PTR names of an address,
//! each checked by looking up its addresses of the same family and finding the address among
//! them.
//!
//! At most [`MAX_PTR_NAMES`] PTR names are checked (RFC 8601 §3 lets a verifier bound this),
//! all at once. The outcome tells the four cases apart: confirmed (with every confirmed and
//! unconfirmed name), PTR names of which none confirms, no PTR at all, and a temporary failure
//! (the PTR lookup failed, or no name confirmed while some forward lookup failed, so the
//! answer is unknown).
//!
//! Reads no settings of its own: the resolver is the caller's.

use std::fmt;
use std::net::IpAddr;

use crate::resolver::{Failure, LookupError, Resolver};

/// The most PTR names whose forward lookups are made.
pub const MAX_PTR_NAMES: usize = 10;

/// The FCrDNS verdict for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fcrdns {
    /// At least one PTR name resolves back to the address.
    Confirmed {
        /// The names whose addresses include the address (lowercase, no final dot).
        confirmed: Vec<String>,
        /// The other PTR names checked.
        unconfirmed: Vec<String>,
    },
    /// PTR names exist, but none of them resolves back to the address.
    NotConfirmed { names: Vec<String> },
    /// The address has no PTR record (NXDOMAIN or NODATA).
    NoPtr,
    /// The answer is unknown now.
    Failed(Failure),
}

impl Fcrdns {
    /// The first confirmed name, if any: the client's verified host name.
    pub fn verified_name(&self) -> Option<&str> {
        match self {
            Fcrdns::Confirmed { confirmed, .. } => confirmed.first().map(String::as_str),
            _ => None,
        }
    }
}

impl fmt::Display for Fcrdns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fcrdns::Confirmed { confirmed, .. } => {
                write!(f, "forward-confirmed as {}", confirmed.join(", "))
            }
            Fcrdns::NotConfirmed { names } => write!(
                f,
                "PTR {} does not resolve back to the address",
                names.join(", ")
            ),
            Fcrdns::NoPtr => f.write_str("no PTR record"),
            Fcrdns::Failed(failure) => write!(f, "reverse DNS unknown: {failure}"),
        }
    }
}

/// Checks the reverse DNS of `ip`.
pub async fn fcrdns(resolver: &Resolver, ip: IpAddr) -> Fcrdns {
    let names = match resolver.ptr(ip).await {
        Ok(answer) => answer.records,
        Err(LookupError::NxDomain | LookupError::NoRecords) => return Fcrdns::NoPtr,
        Err(LookupError::Failed(failure)) => return Fcrdns::Failed(failure),
        Err(LookupError::InvalidName(why)) => return Fcrdns::Failed(Failure::Other(why)),
    };
    let mut unique: Vec<String> = Vec::new();
    for name in names {
        if !name.is_empty() && !unique.contains(&name) {
            unique.push(name);
        }
    }
    unique.truncate(MAX_PTR_NAMES);
    if unique.is_empty() {
        return Fcrdns::NoPtr;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for (index, name) in unique.iter().enumerate() {
        let resolver = resolver.clone();
        let name = name.clone();
        tasks.spawn(async move { (index, forward_contains(&resolver, &name, ip).await) });
    }
    let mut checks: Vec<Option<Result<bool, Failure>>> = vec![None; unique.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, result)) = joined
            && let Some(slot) = checks.get_mut(index)
        {
            *slot = Some(result);
        }
    }

    let mut confirmed = Vec::new();
    let mut unconfirmed = Vec::new();
    let mut failure = None;
    for (name, check) in unique.into_iter().zip(checks) {
        match check {
            Some(Ok(true)) => confirmed.push(name),
            Some(Ok(false)) => unconfirmed.push(name),
            Some(Err(f)) => {
                failure.get_or_insert(f);
                unconfirmed.push(name);
            }
            None => {
                failure.get_or_insert(Failure::Other("a forward lookup was lost".to_string()));
                unconfirmed.push(name);
            }
        }
    }
    if !confirmed.is_empty() {
        Fcrdns::Confirmed {
            confirmed,
            unconfirmed,
        }
    } else if let Some(failure) = failure {
        Fcrdns::Failed(failure)
    } else {
        Fcrdns::NotConfirmed { names: unconfirmed }
    }
}

/// Whether `name` has `ip` among its addresses of the same family.
async fn forward_contains(resolver: &Resolver, name: &str, ip: IpAddr) -> Result<bool, Failure> {
    let found = match ip {
        IpAddr::V4(v4) => resolver.ipv4(name).await.map(|a| a.records.contains(&v4)),
        IpAddr::V6(v6) => resolver.ipv6(name).await.map(|a| a.records.contains(&v6)),
    };
    match found {
        Ok(found) => Ok(found),
        Err(LookupError::Failed(failure)) => Err(failure),
        Err(_) => Ok(false),
    }
}
