//! `ravelin queue list|show|hold|release|delete|flush`: the operator's view of the spool, in the
//! manner of Postfix's `postqueue -p` and `postsuper`. Works on the spool directory directly, so
//! it works whether or not the gateway runs; changes are durable before the command returns.
//! `flush` asks a running gateway to retry deferred mail now.

use std::process::ExitCode;

use clap::Subcommand;
use ravelin_gateway::spool::{QueueId, Spool};
use ravelin_wire::date;

use crate::AdminOpts;

#[derive(Subcommand)]
pub enum QueueAction {
    /// List queued and held messages.
    List {
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Show one message: envelope, delivery state and headers.
    Show {
        id: String,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Put messages on hold: they stay in the spool and are not delivered.
    Hold {
        ids: Vec<String>,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Release held messages for delivery.
    Release {
        ids: Vec<String>,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Delete messages for good (no bounce is sent).
    Delete {
        ids: Vec<String>,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Ask the running gateway to retry all deferred messages now.
    Flush {
        #[command(flatten)]
        opts: AdminOpts,
    },
}

pub(crate) fn open(config: &std::path::Path) -> Result<Spool, ExitCode> {
    let config = super::load(config)?;
    Spool::open_admin(&config.spool.path).map_err(|e| {
        eprintln!(
            "ravelin: cannot open the spool {}: {e}",
            config.spool.path.display()
        );
        ExitCode::from(1)
    })
}

pub(crate) fn parse_ids(ids: &[String]) -> Result<Vec<QueueId>, ExitCode> {
    if ids.is_empty() {
        eprintln!("ravelin: give at least one queue id (see `ravelin queue list`)");
        return Err(ExitCode::from(2));
    }
    ids.iter()
        .map(|s| {
            s.parse::<QueueId>().map_err(|_| {
                eprintln!("ravelin: {s:?} is not a queue id");
                ExitCode::from(2)
            })
        })
        .collect()
}

pub fn run(action: QueueAction) -> ExitCode {
    match run_inner(action) {
        Ok(code) | Err(code) => code,
    }
}

fn run_inner(action: QueueAction) -> Result<ExitCode, ExitCode> {
    match action {
        QueueAction::List {
            opts: AdminOpts { config, json },
        } => {
            let spool = open(&config)?;
            let entries = spool.list().map_err(|e| fail(&e))?;
            if json {
                print_json(serde_json::to_value(&entries));
            } else if entries.is_empty() {
                println!("Mail queue is empty");
            } else {
                println!(
                    "{:<28} {:>9} {:<31} {:<6} Sender / recipients",
                    "Queue ID", "Size", "Arrival", "State"
                );
                for e in &entries {
                    let state = if e.held {
                        "held"
                    } else if e.state.attempts > 0 {
                        "defer"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<28} {:>9} {:<31} {:<6} {}",
                        e.id.to_string(),
                        e.envelope.size,
                        date::rfc5322(e.envelope.received_at),
                        state,
                        if e.envelope.sender.is_empty() {
                            "<>"
                        } else {
                            &e.envelope.sender
                        }
                    );
                    for r in &e.envelope.recipients {
                        let done = e.state.is_done(r);
                        println!("{:>78} {}{}", "", r, if done { " (delivered)" } else { "" });
                    }
                }
                println!("-- {} message(s)", entries.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueAction::Show {
            id,
            opts: AdminOpts { config, json },
        } => {
            let spool = open(&config)?;
            let id = parse_ids(std::slice::from_ref(&id))?.remove(0);
            let entry = spool
                .list()
                .map_err(|e| fail(&e))?
                .into_iter()
                .find(|e| e.id == id);
            let Some(entry) = entry else {
                eprintln!("ravelin: no message {id} in the queue");
                return Err(ExitCode::from(1));
            };
            let headers = read_headers(&spool, &id).map_err(|e| fail(&e))?;
            if json {
                let v = serde_json::json!({"entry": entry, "headers": String::from_utf8_lossy(&headers)});
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("Queue ID:  {}", entry.id);
                println!("State:     {}", if entry.held { "held" } else { "queued" });
                println!("Sender:    <{}>", entry.envelope.sender);
                for r in &entry.envelope.recipients {
                    println!(
                        "Recipient: <{r}>{}",
                        if entry.state.is_done(r) {
                            " (delivered)"
                        } else {
                            ""
                        }
                    );
                }
                println!("Arrival:   {}", date::rfc5322(entry.envelope.received_at));
                println!(
                    "Client:    {}",
                    entry.envelope.client.as_deref().unwrap_or("-")
                );
                println!("Attempts:  {}", entry.state.attempts);
                println!();
                print!("{}", String::from_utf8_lossy(&headers));
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueAction::Hold {
            ids,
            opts: AdminOpts { config, json },
        } => each(&config, &ids, json, "held", |s, id| s.hold(id)),
        QueueAction::Release {
            ids,
            opts: AdminOpts { config, json },
        } => each(&config, &ids, json, "released", |s, id| s.release(id)),
        QueueAction::Delete {
            ids,
            opts: AdminOpts { config, json },
        } => each(&config, &ids, json, "deleted", |s, id| s.delete(id)),
        QueueAction::Flush {
            opts: AdminOpts { config, json },
        } => {
            let spool = open(&config)?;
            spool.request_flush().map_err(|e| fail(&e))?;
            if json {
                println!("{}", serde_json::json!({"flush": "requested"}));
            } else {
                println!(
                    "flush requested: the gateway retries deferred mail at its next queue scan"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The header section of a queued message (at most 64 KiB).
fn read_headers(spool: &Spool, id: &QueueId) -> std::io::Result<Vec<u8>> {
    let (_, _, body) = spool.read(id)?;
    header_of(body)
}

/// The header section of a message's content (at most 64 KiB of it is read).
pub(crate) fn header_of(body: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    body.take(64 * 1024).read_to_end(&mut buf)?;
    Ok(ravelin_gateway::spool::header_section(&buf).to_vec())
}

/// Prints `value` as pretty JSON (`--json`).
pub(crate) fn print_json(value: serde_json::Result<serde_json::Value>) {
    let text = value.and_then(|v| serde_json::to_string_pretty(&v));
    println!("{}", text.unwrap_or_default());
}

pub(crate) fn fail(e: &std::io::Error) -> ExitCode {
    eprintln!("ravelin: {e}");
    ExitCode::from(1)
}

/// Applies `op` to each id; reports each result; exit 1 if any failed.
pub(crate) fn each(
    config: &std::path::Path,
    ids: &[String],
    json: bool,
    verb: &str,
    op: impl Fn(&Spool, &QueueId) -> std::io::Result<()>,
) -> Result<ExitCode, ExitCode> {
    let spool = open(config)?;
    let ids = parse_ids(ids)?;
    let mut results = Vec::new();
    let mut failed = false;
    for id in &ids {
        match op(&spool, id) {
            Ok(()) => results.push(serde_json::json!({"id": id.to_string(), "result": verb})),
            Err(e) => {
                failed = true;
                results.push(serde_json::json!({"id": id.to_string(), "error": e.to_string()}));
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(results));
    } else {
        for r in &results {
            match r.get("error") {
                Some(e) => eprintln!(
                    "{}: {}",
                    r["id"].as_str().unwrap_or(""),
                    e.as_str().unwrap_or("")
                ),
                None => println!("{}: {verb}", r["id"].as_str().unwrap_or("")),
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
