//! # ravelin-dns: the DNS layer shared by the gateway and the auditor
//!
//! Resolver set-up (hickory, the `[dns]` section's name servers or the system's), DNSBL and
//! DNSWL queries with list error codes, FCrDNS, MX and TLSA lookups with their DNSSEC status,
//! the MTA-STS policy fetch and cache, and the parsers of the records both sides read.
//!
//! - [`resolver`]: [`Resolver`] built from [`ResolverSettings`]; typed lookups (TXT, MX, A,
//!   AAAA, PTR, CNAME, TLSA, CAA) returning an [`Answer`] or a [`LookupError`] that tells
//!   NXDOMAIN, NODATA and temporary failures apart.
//! - [`cache`]: the answer cache of a batch run's resolver ([`Resolver::for_batch`]):
//!   outcomes kept for their TTL, one query in flight per question.
//! - `multiplex`: the transport of a batch run's resolver: queries multiplexed over a few
//!   long-lived UDP sockets per name server instead of a socket per query.
//! - [`dnsbl`]: DNSBL / DNSWL queries, one list or many under one deadline, with list error
//!   codes (Spamhaus 127.255.255.x, answers outside 127.0.0.0/8) kept apart from listings.
//! - [`fcrdns`]: forward-confirmed reverse DNS of a client address.
//! - [`mta_sts`]: the MTA-STS policy fetch over HTTPS (RFC 8461 §3.3) and the policy cache
//!   keyed by domain, TXT id and `max_age`.
//! - [`records`]: pure parsers of SPF, DMARC, MTA-STS (TXT and policy file), TLS-RPT and DKIM
//!   key records, with located diagnostics.
//! - `testing` (cargo feature `testing`; enable it in `[dev-dependencies]`): an in-process
//!   authoritative DNS server, an HTTPS server for policy files, and a DNSSEC world (zones
//!   signed with ldns-signzone, served by NSD, validated by unbound) for DANE tests.
//!
//! ## DNSSEC: whose validation we trust, and why
//!
//! DANE (RFC 7672) needs to know whether TLSA, MX and address answers are DNSSEC-secure. Two
//! ways were weighed:
//!
//! 1. **Trust the AD bit of a validating resolver** (the model of Postfix's
//!    `smtp_dns_support_level = dnssec` and of Exim): every query carries the AD bit
//!    (RFC 6840 §5.7), and [`Answer::secure`] is the response's AD bit.
//! 2. **Validate in-process** with hickory's validator and a configured trust anchor.
//!
//! We chose the first. Validation is done by unbound (or any validating resolver the operator
//! runs), software whose only job it is and that administrators already run and monitor
//! next to their MTA; our code stays one query path with no DNSKEY/DS fetching, and a bogus
//! answer arrives as SERVFAIL, which is a temporary failure here, never "insecure". In an
//! evaluation against the same signed zones (ldns-signzone, NSD, unbound, a zone-level trust
//! anchor), hickory 0.26's validator reported even the correctly signed zone as bogus and the
//! unsigned zone as bogus rather than insecure: it wants a chain from the root, which a
//! private trust anchor (tests, internal zones) does not give, and which unbound handles.
//!
//! The price of the AD model is that the AD bit crosses the network unauthenticated, so it is
//! believed only from a resolver the operator trusts: by default ([`AdTrust::Loopback`]) only
//! when every configured name server is on a loopback address. With a remote resolver, every
//! answer is insecure and DANE is simply not used (opportunistic TLS or MTA-STS apply), unless
//! the operator says the path is trusted ([`AdTrust::Always`]).

pub mod cache;
pub mod dnsbl;
pub mod fcrdns;
pub mod mta_sts;
mod multiplex;
pub mod records;
pub mod resolver;

pub use dnsbl::{ListOutcome, ZoneOutcome, query_list, query_lists};
pub use fcrdns::{Fcrdns, fcrdns};
pub use resolver::{
    AdTrust, Answer, Caa, ConfigError, Failure, LookupError, Mx, Resolver, ResolverSettings, Tlsa,
    hickory_config, reverse_name, reversed_ip,
};

#[cfg(feature = "testing")]
pub mod testing;
