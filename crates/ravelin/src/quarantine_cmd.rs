//! `ravelin quarantine list|show|release|delete`: the messages a DMARC `p=quarantine` verdict
//! kept from the backend (spool module `quarantine`). Works on the spool directory directly,
//! so it works whether or not the gateway runs; changes are durable before the command
//! returns. `release` sends a message on to the backend (a running gateway picks it up at its
//! next queue scan, which the release asks to happen now); `delete` is final.

use std::process::ExitCode;

use clap::Subcommand;
use ravelin_wire::date;

use crate::AdminOpts;
use crate::queue_cmd::{each, fail, header_of, open, parse_ids, print_json};

#[derive(Subcommand)]
pub enum QuarantineAction {
    /// List quarantined messages with the reason.
    List {
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Show one message: envelope, reason, verdict and headers.
    Show {
        id: String,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Release messages: they continue to the backend.
    Release {
        ids: Vec<String>,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Delete messages for good.
    Delete {
        ids: Vec<String>,
        #[command(flatten)]
        opts: AdminOpts,
    },
}

pub fn run(action: QuarantineAction) -> ExitCode {
    let result = match action {
        QuarantineAction::List {
            opts: AdminOpts { config, json },
        } => list(&config, json),
        QuarantineAction::Show {
            id,
            opts: AdminOpts { config, json },
        } => show(&id, &config, json),
        QuarantineAction::Release {
            ids,
            opts: AdminOpts { config, json },
        } => each(&config, &ids, json, "released", |s, id| {
            s.quarantine_release(id)
        }),
        QuarantineAction::Delete {
            ids,
            opts: AdminOpts { config, json },
        } => each(&config, &ids, json, "deleted", |s, id| {
            s.quarantine_delete(id)
        }),
    };
    result.unwrap_or_else(|code| code)
}

fn list(config: &std::path::Path, json: bool) -> Result<ExitCode, ExitCode> {
    let spool = open(config)?;
    let entries = spool.quarantine_list().map_err(|e| fail(&e))?;
    if json {
        print_json(serde_json::to_value(&entries));
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("Quarantine is empty");
        return Ok(ExitCode::SUCCESS);
    }
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
    Ok(ExitCode::SUCCESS)
}

fn show(id: &str, config: &std::path::Path, json: bool) -> Result<ExitCode, ExitCode> {
    let spool = open(config)?;
    let id = parse_ids(&[id.to_string()])?.remove(0);
    let (envelope, info, body) = spool.quarantine_read(&id).map_err(|e| fail(&e))?;
    let headers = header_of(body).map_err(|e| fail(&e))?;
    let headers = String::from_utf8_lossy(&headers);
    if json {
        let v = serde_json::json!({
            "id": id, "envelope": envelope, "info": info, "headers": headers,
        });
        print_json(Ok(v));
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
