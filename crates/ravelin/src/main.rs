//! The `ravelin` command: thin glue between the command line and the library crates.
//!
//! Exit codes: 0 success; 1 the operation failed (invalid configuration, spool error, demo
//! expectation not met); 2 usage error (from clap). `ravelin audit` has its own codes (see
//! audit_cmd.rs): 0 clean, 1 findings at or above --fail-on, 2 usage error, 3 could not run.

mod audit_cmd;
mod ban_cmd;
mod demo;
mod dkim_cmd;
mod quarantine_cmd;
mod queue_cmd;
mod user_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ravelin_gateway::config::Config;

#[derive(Parser)]
#[command(
    name = "ravelin",
    version,
    about = "Secure-by-default SMTP gateway and mail-security auditor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_CONFIG: &str = "/etc/ravelin/ravelin.toml";

/// The options of every command that works on a gateway's spool or state (queue,
/// quarantine, ban).
#[derive(clap::Args, Debug)]
struct AdminOpts {
    /// The gateway's configuration file (it names the spool and the state store).
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print the result as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check or print the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Inspect and manage the mail queue (like postqueue / postsuper).
    Queue {
        #[command(subcommand)]
        action: queue_cmd::QueueAction,
    },
    /// Messages kept from the backend by a DMARC verdict: list, show, release, delete
    /// (works while the gateway runs).
    Quarantine {
        #[command(subcommand)]
        action: quarantine_cmd::QuarantineAction,
    },
    /// List, add and remove bans (works while the gateway runs).
    Ban {
        #[command(subcommand)]
        action: ban_cmd::BanAction,
    },
    /// Maintain the users file of submission AUTH ([auth] users_file).
    User {
        #[command(subcommand)]
        action: user_cmd::UserAction,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        action: dkim_cmd::DkimAction,
    },
    /// Audit mail domains and servers from outside: DNS records, TLS, SMTP behaviour,
    /// disclosure, relay, smuggling, reputation.
    Audit(Box<audit_cmd::AuditArgs>),
    /// Start a gateway on loopback in front of a built-in sink, send good mail and attacks,
    /// and show what was delivered and what was stopped. Needs nothing installed.
    Demo {
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a configuration file: every error with file, line and fix; exit 1 if any.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print a complete, commented example configuration.
    Example,
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(e) = ravelin_gateway::log::init(config.log.format, &config.log.level) {
                eprintln!("ravelin: cannot set up logging: {e}");
                return ExitCode::from(1);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ravelin: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(ravelin_gateway::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(event = "fatal", reason = %e);
                    eprintln!("ravelin: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Config {
            action: ConfigAction::Check { config },
        } => match load(&config) {
            Ok(c) => {
                // The users file is checked here rather than by `load`, which `ravelin user`
                // also uses before the file exists.
                if let Some(users) = &c.auth.users_file
                    && let Err(errors) = ravelin_gateway::auth::users::read(users)
                {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
                println!(
                    "{}: configuration is valid ({} listener(s))",
                    config.display(),
                    c.listen.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Config {
            action: ConfigAction::Example,
        } => {
            print!("{}", ravelin_gateway::config::example());
            ExitCode::SUCCESS
        }
        Command::Queue { action } => queue_cmd::run(action),
        Command::Quarantine { action } => quarantine_cmd::run(action),
        Command::Ban { action } => ban_cmd::run(action),
        Command::User { action } => user_cmd::run(action),
        Command::Dkim { action } => dkim_cmd::run(action),
        Command::Demo { json } => demo::run(json),
        Command::Audit(args) => audit_cmd::run(*args),
    }
}
