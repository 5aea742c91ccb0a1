//! Test fixtures for every crate that tests DNS behaviour (cargo feature `testing`; enable it
//! in `[dev-dependencies]`): an in-process authoritative server ([`TestDnsServer`]).

mod server;

pub use server::{Fault, TestDnsServer, TestServerError};
