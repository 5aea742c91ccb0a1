//! # ravelin-dns: the DNS layer shared by the gateway and the auditor
//!
//! Resolver set-up (hickory, the `[dns]` section's name servers or the system's), DNSBL and
//! DNSWL queries with list error codes, FCrDNS, MX and TLSA lookups with their DNSSEC status,
//! the MTA-STS policy fetch and cache, and the parsers of the records both sides read.
//!
//! - [`resolver`]: [`Resolver`] built from [`ResolverSettings`]; typed lookups (TXT, MX, A,
//!   AAAA, PTR, CNAME, TLSA, CAA) returning an [`Answer`] or a [`LookupError`] that tells
//!   NXDOMAIN, NODATA and temporary failures apart.
//! - [`dnsbl`]: DNSBL / DNSWL queries, one list or many under one deadline, with list error
//!   codes (Spamhaus 127.255.255.x, answers outside 127.0.0.0/8) kept apart from listings.
//! - [`fcrdns`]: forward-confirmed reverse DNS of a client address.
//! - [`mta_sts`]: the MTA-STS policy fetch over HTTPS (RFC 8461 §3.3) and the policy cache
//!   keyed by domain, TXT id and `max_age`.
//! - [`records`]: pure parsers of SPF, DMARC, MTA-STS (TXT and policy file), TLS-RPT and DKIM
//!   key records, with located diagnostics.
//! - `testing` (cargo feature `testing`): an in-process authoritative DNS server for tests.

pub mod dnsbl;
pub mod fcrdns;
pub mod mta_sts;
pub mod records;
pub mod resolver;

pub use dnsbl::{ListOutcome, ZoneOutcome, query_list, query_lists};
pub use fcrdns::{Fcrdns, fcrdns};
pub use resolver::{
    AdTrust, Answer, Caa, ConfigError, Failure, LookupError, Mx, Resolver, ResolverSettings, Tlsa,
    reverse_name, reversed_ip,
};

#[cfg(feature = "testing")]
pub mod testing;
