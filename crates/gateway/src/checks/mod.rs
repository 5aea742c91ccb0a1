//! Checks made on a whole message at the end of DATA, before the `250`: their verdict decides
//! whether the message is refused, quarantined or queued, and what is added to its header.
//!
//! - [`auth`]: sender authentication (SPF, DKIM, DMARC, ARC) and the DMARC policy.
//!
//! How they fail: a check never fails the transaction by itself; what cannot be decided in
//! time is recorded as `temperror` and the mail goes on.

pub mod auth;
