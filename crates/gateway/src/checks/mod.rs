//! Checks of a client and its mail that add to a verdict.
//!
//! - [`reputation`]: at connect and HELO, DNS block and allow lists, reverse DNS and the HELO
//!   name, scored against `[dnsbl] threshold`.
//! - [`auth`]: at the end of DATA, before the `250`, sender authentication (SPF, DKIM, DMARC,
//!   ARC) and the DMARC policy: whether the message is refused, quarantined or queued, and
//!   the Authentication-Results header added.
//!
//! How they fail: a check never fails the transaction by itself; a DNS answer that does not
//! come in time counts as no listing, or is recorded as `temperror`, and the mail goes on.

pub mod auth;
pub mod reputation;
