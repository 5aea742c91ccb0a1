//! Test fixtures for every crate that tests DNS behaviour (cargo feature `testing`; enable it
//! in `[dev-dependencies]`): an in-process authoritative server ([`TestDnsServer`]) and an
//! HTTPS server for MTA-STS policy files ([`TestHttpsServer`]).

mod https;
mod server;

pub use https::{CannedResponse, TestHttpsServer};
pub use server::{Fault, TestDnsServer, TestServerError};
