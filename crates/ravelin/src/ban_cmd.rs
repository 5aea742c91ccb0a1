//! `ravelin ban list|add|remove`: the operator's view of the ban list, whether or not the
//! gateway runs.
//!
//! With the embedded store, the running gateway holds the database file (redb allows one
//! process), so the command sends its request to the gateway's admin socket (`admin.sock` in
//! the spool directory); the gateway logs the change (`ban_added`, `ban_removed`) and it takes
//! effect at once. When no gateway answers there, the command opens the store itself (with
//! Redis, the same shared data either way). Exit codes: 0 done, 1 the store could not be
//! reached or the request was refused, 2 usage error.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::AdminOpts;
use ravelin_gateway::config::{Cidr, Config, HumanDuration, StoreUrl};
use ravelin_gateway::state::admin::{self, Request, Response};
use ravelin_gateway::state::{Ban, BanReason, Bans, Store};

#[derive(Subcommand)]
pub enum BanAction {
    /// List the bans in force: target, reason, expiry, count.
    List {
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Ban an address or a network (CIDR).
    Add {
        /// An address (192.0.2.7, 2001:db8::7) or a network (192.0.2.0/24, 2001:db8::/48).
        target: String,
        /// manual, relay_probing, harvesting, pregreet, protocol_abuse, too_many_errors or
        /// auth_failures.
        #[arg(long, default_value = "manual")]
        reason: String,
        /// How long, e.g. "1h", "7d" (default: [bans] manual_duration, or the reason's
        /// duration, doubled for repeat offenders).
        #[arg(long)]
        duration: Option<String>,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Lift the ban of an address or network (exactly as listed).
    Remove {
        target: String,
        #[command(flatten)]
        opts: AdminOpts,
    },
}

fn usage(message: String) -> ExitCode {
    eprintln!("ravelin: {message}");
    ExitCode::from(2)
}

fn parse_target(text: &str) -> Result<Cidr, ExitCode> {
    let target: Cidr = text
        .parse()
        .map_err(|e: String| usage(e.replace(" — fix: ", "; ")))?;
    ravelin_gateway::state::bans::check_target(&target).map_err(usage)?;
    Ok(target)
}

pub fn run(action: BanAction) -> ExitCode {
    match run_inner(action) {
        Ok(code) | Err(code) => code,
    }
}

fn run_inner(action: BanAction) -> Result<ExitCode, ExitCode> {
    let (config_path, json, request) = match action {
        BanAction::List {
            opts: AdminOpts { config, json },
        } => (
            config,
            json,
            Request::BanList {
                limit: admin::MAX_BANS_LISTED,
            },
        ),
        BanAction::Add {
            target,
            reason,
            duration,
            opts: AdminOpts { config, json },
        } => {
            let target = parse_target(&target)?;
            let reason: BanReason = reason.parse().map_err(usage)?;
            let duration_secs = match duration {
                None => None,
                Some(d) => {
                    let d: HumanDuration = d
                        .parse()
                        .map_err(|e: String| usage(e.replace(" — fix: ", "; ")))?;
                    if d.get().as_secs() == 0 {
                        return Err(usage("--duration must be at least 1s".into()));
                    }
                    Some(d.get().as_secs())
                }
            };
            (
                config,
                json,
                Request::BanAdd {
                    target,
                    reason,
                    duration_secs,
                },
            )
        }
        BanAction::Remove {
            target,
            opts: AdminOpts { config, json },
        } => {
            let target = parse_target(&target)?;
            (config, json, Request::BanRemove { target })
        }
    };
    let config = super::load(&config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("ravelin: cannot start the runtime: {e}");
            ExitCode::from(1)
        })?;
    let response = runtime.block_on(exchange(&config, request))?;
    print(response, json)
}

/// Sends the request to the running gateway, or carries it out on the store directly when
/// no gateway answers.
async fn exchange(config: &Config, request: Request) -> Result<Response, ExitCode> {
    let socket = admin::socket_path(&config.spool.path);
    match admin::request(&socket, &request).await {
        Ok(response) => return Ok(response),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) => {}
        Err(e) => {
            eprintln!(
                "ravelin: the gateway's admin socket {} did not answer: {e}",
                socket.display()
            );
            return Err(ExitCode::from(1));
        }
    }
    let store = Store::open(config).map_err(|e| {
        eprintln!("ravelin: {e}");
        if matches!(e, ravelin_gateway::state::StateError::Locked(_)) {
            eprintln!(
                "ravelin: a gateway holds the database but its admin socket {} does not answer; check that it runs with this configuration",
                socket.display()
            );
        }
        ExitCode::from(1)
    })?;
    let bans = Bans::new(
        store.clone(),
        &config.bans,
        &config.outbound.trusted_networks,
    );
    let response = admin::execute(&bans, request).await;
    store.close().await;
    if config.state.store == StoreUrl::Embedded {
        give_to_spool_owner(&config.state.embedded_path(&config.spool.path));
    }
    Ok(response)
}

/// A store file created by root for a gateway that runs as another user is given to the
/// owner of the directory it is in (the spool, which the gateway owns).
fn give_to_spool_owner(file: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Some(dir) = file.parent() else { return };
    if let (Ok(d), Ok(f)) = (std::fs::metadata(dir), std::fs::metadata(file))
        && (d.uid(), d.gid()) != (f.uid(), f.gid())
        && let Err(e) = std::os::unix::fs::chown(file, Some(d.uid()), Some(d.gid()))
    {
        eprintln!(
            "ravelin: cannot give {} to the spool's owner: {e}",
            file.display()
        );
    }
}

fn ban_json(b: &Ban) -> serde_json::Value {
    serde_json::json!({
        "target": b.target.to_string(),
        "reason": b.reason.as_str(),
        "created": b.created,
        "expires": b.expires,
        "expires_at": b.expires_text(),
        "count": b.count,
    })
}

fn print(response: Response, json: bool) -> Result<ExitCode, ExitCode> {
    match response {
        Response::Error { message } => {
            if json {
                println!("{}", serde_json::json!({ "error": message }));
            } else {
                eprintln!("ravelin: {message}");
            }
            Err(ExitCode::from(1))
        }
        Response::Bans { bans } => {
            if json {
                let list: Vec<_> = bans.iter().map(ban_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else if bans.is_empty() {
                println!("No bans in force");
            } else {
                println!(
                    "{:<43} {:<16} {:<24} {:>5}",
                    "Address or network", "Reason", "Expires (UTC)", "Count"
                );
                for b in &bans {
                    println!(
                        "{:<43} {:<16} {:<24} {:>5}",
                        b.target.to_string(),
                        b.reason.as_str(),
                        b.expires_text(),
                        b.count
                    );
                }
                println!("-- {} ban(s)", bans.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Ban { ban } => {
            if json {
                println!("{}", ban_json(&ban));
            } else {
                println!(
                    "{} banned ({}) until {} (ban {} of this target)",
                    ban.target,
                    ban.reason.as_str(),
                    ban.expires_text(),
                    ban.count
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Removed { removed } => {
            if json {
                println!("{}", serde_json::json!({ "removed": removed }));
            } else if removed {
                println!("ban lifted");
            } else {
                println!(
                    "no such ban (targets are matched exactly as `ravelin ban list` shows them)"
                );
            }
            Ok(if removed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
