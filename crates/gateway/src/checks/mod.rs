//! Checks of a client and its mail that add to a verdict.
//!
//! - [`reputation`]: DNS block and allow lists, reverse DNS and the HELO name, scored against
//!   `[dnsbl] threshold` (at connect and HELO time).
//! - [`auth`]: sender authentication (SPF, DKIM, DMARC, ARC) of the whole message at the end of
//!   DATA, before the `250`, and the DMARC policy: refuse, quarantine or queue, and the
//!   Authentication-Results field added to the header.
//!
//! How they fail: a check never fails the transaction by itself; what cannot be decided in
//! time is recorded (`temperror`, or a timeout that adds nothing to the score) and the mail
//! goes on.

pub mod auth;
pub mod reputation;
