//! # ravelin-wire: SMTP as a pure state machine
//!
//! Bytes and events in, actions out: no sockets, no async runtime, no clock. The gateway's
//! listeners and delivery agents drive these machines; the auditor reuses the reply parser and
//! the client. Every parser here has a hard limit on what it buffers and refuses what RFC 5321
//! does not allow rather than guessing (see `server` for the strictness rules).
//!
//! - [`reply`]: replies, written canonically by the server and parsed by the client.
//! - [`address`]: reverse- and forward-paths, including the forms used for relay tricks.
//! - [`command`]: command-line parsing with ESMTP parameters.
//! - [`auth`]: SASL PLAIN and LOGIN for SMTP AUTH (decoding, limits, redacted passwords).
//! - [`line`]: the strict CRLF line reader for commands.
//! - [`data`]: the DATA reader (end-of-data, un-stuffing, bare CR/LF, size and line limits)
//!   and the writer that always emits canonical CRLF and dot-stuffing.
//! - [`date`]: RFC 5322 and RFC 3339 dates for trace headers and logs.
//! - [`headers`]: the message header section split into fields, with limits (what the header
//!   firewall and DKIM work on).
//! - [`server`]: the server session (sequence, limits, pipelining synchronisation).
//! - [`client`]: the client transaction used to deliver a message.

pub mod address;
pub mod auth;
pub mod client;
pub mod command;
pub mod data;
pub mod date;
pub mod headers;
pub mod line;
pub mod reply;
pub mod server;

pub use reply::{Enhanced, Reply, ReplyParser};
