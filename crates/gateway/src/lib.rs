//! # ravelin-gateway: the SMTP edge relay
//!
//! The mail's path is the module layout:
//!
//! - [`screen`]: before the dialogue: allow and block files, greet wait (pregreet), the
//!   verdict cache, the reputation score at connect.
//! - [`checks`]: checks that score a client (DNS lists, reverse DNS, HELO).
//! - [`listener`]: binds the configured listeners, accepts connections, drops privileges.
//! - [`session`]: drives a `ravelin_wire::server` session over one connection and applies the
//!   gateway's policy (relay control, STARTTLS, limits, timeouts).
//! - [`relay`]: relay control: which recipients a listener accepts.
//! - [`recipients`]: recipient validation (file, LDAP, callout) and the harvest defence.
//! - [`ldap`]: the LDAP client shared by AUTH and recipient lookups.
//! - [`auth`]: SMTP AUTH for submission (users file, LDAP) and sender ownership.
//! - [`checks`]: end-of-DATA checks of the whole message: SPF, DKIM, DMARC, ARC.
//! - [`cleanup`]: header processing before the spool (our Received line).
//! - [`dkim`]: DKIM signing of outbound mail and key generation.
//! - [`firewall`]: the header firewall: what reveals the inside goes out of outbound mail,
//!   what only the inside may set goes out of inbound mail.
//! - [`spool`]: durable message storage; nothing is acknowledged before it is on disk.
//! - [`queue`]: the queue manager: scheduling, retry with backoff, expiry, bounces.
//! - [`bounce`]: RFC 3464 delivery status notifications.
//! - [`delivery`]: the SMTP client side: backends, smart host, TLS, connection reuse.
//! - [`config`]: the TOML configuration, validated with file/line errors.
//! - [`log`]: one JSON object per line for the SIEM.
//! - [`metrics`]: Prometheus metrics counted from the log events, served over HTTP.
//! - [`monitor`]: the gateway's own addresses watched on DNS blocklists (`[monitor]`).
//! - [`alerts`]: every error line of the log also sent to a webhook (`[alerts]`).
//! - [`secret`]: secrets read from owner-only files.
//! - [`state`]: the state store (embedded redb or Redis) and what sits on it: bans, rate
//!   limits, connection counts, greylisting, the admin socket.
//! - [`server`]: `ravelin serve`: wires all of the above together.

pub mod alerts;
pub mod auth;
pub mod bounce;
pub mod checks;
pub mod cleanup;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod firewall;
pub mod ldap;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod monitor;
pub mod queue;
pub mod recipients;
pub mod relay;
pub mod screen;
pub mod secret;
pub mod server;
pub mod session;
pub mod spool;
pub mod state;
#[cfg(test)]
mod test_pki;
