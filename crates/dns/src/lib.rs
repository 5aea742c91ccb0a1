//! # ravelin-dns: the DNS layer shared by the gateway and the auditor
//!
//! Resolver set-up (hickory, the `[dns]` section's name servers or the system's), DNSBL and
//! DNSWL queries with list error codes, FCrDNS, MX and TLSA lookups with their DNSSEC status,
//! the MTA-STS policy fetch and cache, and the parsers of the records both sides read.
