//! `ravelin quarantine list|show|release|delete`: the messages a DMARC `p=quarantine` verdict
//! kept from the backend (spool module `quarantine`). Works on the spool directory directly,
//! so it works whether or not the gateway runs; changes are durable before the command
//! returns. `release` sends a message on to the backend (a running gateway picks it up at its
//! next queue scan, which the release asks to happen now); `delete` is final.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use ravelin_wire::date;

use crate::queue_cmd::{each, fail, header_of, open, parse_ids};

#[derive(Subcommand)]
pub enum QuarantineAction {
    /// List quarantined messages with the reason.
    List {
        #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, reason, verdict and headers.
    Show {
        id: String,
        #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Release messages: they continue to the backend.
    Release {
        ids: Vec<String>,
        #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete messages for good.
    Delete {
        ids: Vec<String>,
        #[arg(long, short, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(action: QuarantineAction) -> ExitCode {
    match run_inner(action) {
        Ok(code) | Err(code) => code,
    }
}

fn run_inner(action: QuarantineAction) -> Result<ExitCode, ExitCode> {
    match action {
        QuarantineAction::List { config, json } => {
            let spool = open(&config)?;
            let entries = spool.quarantine_list().map_err(|e| fail(&e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&entries).unwrap_or_default()
                );
            } else if entries.is_empty() {
                println!("Quarantine is empty");
            } else {
                println!(
                    "{:<28} {:>9} {:<31} Sender / reason",
                    "Queue ID", "Size", "Quarantined"
                );
                for e in &entries {
                    let sender = match e.envelope.sender.as_str() {
                        "" => "<>",
                        s => s,
                    };
                    println!(
                        "{:<28} {:>9} {:<31} {sender}",
                        e.id.to_string(),
                        e.envelope.size,
                        date::rfc5322(e.info.time),
                    );
                    println!("{:>70} {}", "", e.info.reason);
                }
                println!("-- {} message(s)", entries.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineAction::Show { id, config, json } => {
            let spool = open(&config)?;
            let id = parse_ids(std::slice::from_ref(&id))?.remove(0);
            let (envelope, info, body) = spool.quarantine_read(&id).map_err(|e| fail(&e))?;
            let headers = header_of(body).map_err(|e| fail(&e))?;
            let headers = String::from_utf8_lossy(&headers);
            if json {
                let v = serde_json::json!({
                    "id": id, "envelope": envelope, "info": info, "headers": headers,
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("Queue ID:     {id}");
                println!("Reason:       {}", info.reason);
                println!("Quarantined:  {}", date::rfc5322(info.time));
                println!("Sender:       <{}>", envelope.sender);
                for r in &envelope.recipients {
                    println!("Recipient:    <{r}>");
                }
                println!(
                    "Client:       {}",
                    envelope.client.as_deref().unwrap_or("-")
                );
                println!();
                print!("{headers}");
            }
            Ok(ExitCode::SUCCESS)
        }
        QuarantineAction::Release { ids, config, json } => {
            each(&config, &ids, json, "released", |s, id| {
                s.quarantine_release(id)
            })
        }
        QuarantineAction::Delete { ids, config, json } => {
            each(&config, &ids, json, "deleted", |s, id| {
                s.quarantine_delete(id)
            })
        }
    }
}
