//! Checks of a client and its mail that add to a verdict.
//!
//! - [`reputation`]: DNS block and allow lists, reverse DNS and the HELO name, scored against
//!   `[dnsbl] threshold`.

pub mod reputation;
