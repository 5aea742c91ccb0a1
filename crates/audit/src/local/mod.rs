//! Local configuration checks: what the auditor can tell from a mail server's configuration
//! files, with findings under the same ids as the remote checks where they mean the same.
//!
//! - [`postfix`]: `main.cf` and `master.cf` (`ravelin audit --postfix-config DIR`).

pub mod postfix;

pub use postfix::lint_postfix_config;
