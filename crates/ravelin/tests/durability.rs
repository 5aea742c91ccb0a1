//! Durability end to end: what the gateway acknowledges with 250 is delivered, whatever happens
//! to the gateway or its next hop, and what it refuses leaves no trace.
//!
//! - SIGKILL under load, several times, restarting on the same spool: every queue id a client
//!   saw in a `250 ... queued as ID` reaches the backend (duplicates are counted, not failed).
//! - A backend that is down: mail waits deferred in the queue and goes out at the next retry
//!   once the backend listens; `ravelin queue flush` sends it at once despite a long retry;
//!   `ravelin queue hold` and `release` run as root keep the message's delivery state.
//! - A permanent refusal by a Postfix backend: an RFC 3464 DSN reaches the original sender's
//!   Maildir (parsed by Python's email package); a bounce of a null-sender message does not.
//! - SIGKILL while the gateway delivers and generates bounces, many cycles, an operator
//!   deleting queued messages while it is down: nothing acknowledged is lost (a delivery or a
//!   DSN), nothing deleted gains a copy, the spool is clean after every restart.
//! - SIGTERM while clients are in DATA: each either gets 250 and its message is delivered, or
//!   gets 4xx / a closed connection and nothing is delivered; the process exits 0 in time.
//! - A full spool file system: `452 4.3.1`, nothing left in the spool; accepted again once
//!   space is freed. Full to the last byte with a message deferred: the session goes on after
//!   452, the deferred message's failed state write is logged and retried, and once space and
//!   backend return it is delivered exactly once.
//!
//! The ground truth is always the client side (the replies a client received) and the
//! backend's copies (the queue id in our Received header); the gateway's own log is only a
//! cross-check. Peers are real: smtp-source, smtp-sink, Postfix, a raw socket client.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// The gateway's hostname in [`RavelinConfig::inbound`]; our Received line says `by` it.
const HOSTNAME: &str = "mx.test.example";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The queue id in a reply text `Ok: queued as ID` (any line of a reply).
fn queued_as(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("queued as ")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Every queue id smtp-source -v reports having received (`<<< 250 2.0.0 Ok: queued as ID`).
fn acknowledged_by_smtp_source(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|l| l.split_once("<<< ")?.1.strip_prefix("250 "))
        .filter_map(queued_as)
        .collect()
}

/// The queue id in the gateway's Received header of a delivered message
/// (`by mx.test.example ... id ID`).
fn gateway_queue_id(message: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    let by = text.find(&format!("by {HOSTNAME}"))?;
    let after = &text[by..];
    // The header ends at its `;` (before the date); the id comes before that.
    let header = &after[..after.find(';')?];
    let (_, rest) = header.split_once(" id ")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

/// How often each queue id reached the sink.
fn delivered_ids(sink: &SmtpSink) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for m in sink.messages() {
        let id = gateway_queue_id(&m.message).unwrap_or_else(|| {
            panic!(
                "{}: no Received header of ours with a queue id:\n{}",
                m.path.display(),
                String::from_utf8_lossy(&m.message)
            )
        });
        *count.entry(id).or_insert(0) += 1;
    }
    count
}

/// `ravelin queue list --json`.
fn queue_list(gw: &Ravelin) -> Vec<serde_json::Value> {
    let out = gw.command(&["queue", "list", "--json"]);
    assert!(out.status.success(), "queue list: {}", describe(&out));
    match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        Ok(serde_json::Value::Array(entries)) => entries,
        _ => panic!("queue list --json is not a JSON array: {}", describe(&out)),
    }
}

fn wait_queue_empty(gw: &Ravelin, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let entries = queue_list(gw);
        if entries.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "queue not empty after {timeout:?}: {}\nlog:\n{}",
                serde_json::to_string_pretty(&entries).unwrap_or_default(),
                tail(&gw.log_path(), 30)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Names in a spool subdirectory (`queue`, `incoming`, `corrupt`, ...).
fn spool_files(gw: &Ravelin, sub: &str) -> Vec<String> {
    gw.spool_entries(sub)
}

/// A client that has sent MAIL, RCPT and DATA and is now inside the message data.
fn open_data(addr: SocketAddr, from: &str, to: &str) -> RawClient {
    let mut c = RawClient::connect(addr).expect("connect to ravelin");
    let step = |c: &mut RawClient, line: &str, want: u16| {
        let r = c
            .command(line)
            .unwrap_or_else(|e| panic!("{line}: no reply: {e}"));
        assert_eq!(r.code, want, "{line} -> {r:?}");
    };
    let greeting = c.read_reply().expect("greeting");
    assert_eq!(greeting.code, 220, "{greeting:?}");
    step(&mut c, "EHLO client.test", 250);
    step(&mut c, &format!("MAIL FROM:<{from}>"), 250);
    step(&mut c, &format!("RCPT TO:<{to}>"), 250);
    step(&mut c, "DATA", 354);
    c
}

/// Sends one message (`data`: CRLF lines, ending in CRLF, no line starting with a dot) and
/// returns the reply to the end of data. An empty `from` is the null sender.
fn send_message(addr: SocketAddr, from: &str, to: &str, data: &[u8]) -> RawReply {
    let mut c = open_data(addr, from, to);
    c.send(data).expect("send the message data");
    c.send(b".\r\n").expect("send the end of data");
    let reply = c.read_reply().expect("reply to the end of data");
    let _ = c.command("QUIT");
    reply
}

/// Sends a message and returns the queue id of its 250 reply.
fn send_accepted(addr: SocketAddr, from: &str, to: &str, data: &[u8]) -> String {
    let reply = send_message(addr, from, to, data);
    assert_eq!(reply.code, 250, "message not accepted: {reply:?}");
    queued_as(&reply.text()).unwrap_or_else(|| panic!("250 without a queue id: {reply:?}"))
}

fn simple_message(from: &str, to: &str, token: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {token}\r\nMessage-ID: <{token}@example.net>\r\n\r\nbody of {token}\r\n"
    )
    .into_bytes()
}

/// A small deterministic generator (xorshift64*), seeded from the clock and printed, so a
/// failing run's kill schedule can be read from its output.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Crash safety

/// One smtp-source run of the load: when it ran, the queue ids it was given, and whether it
/// finished (false: the gateway died under it).
struct LoadRun {
    start: Instant,
    end: Instant,
    acked: Vec<String>,
    completed: bool,
    /// smtp-source's warnings and fatal errors (why it stopped).
    errors: Vec<String>,
}

#[test]
fn every_acknowledged_message_survives_repeated_sigkill() {
    const CYCLES: usize = 6;
    let sink = SmtpSink::start();
    let config = RavelinConfig::inbound(sink.addr)
        .tls("off")
        .set("delivery", "retry_max = \"2s\"");
    let mut gw = Ravelin::start(config);
    let target = gw.addr().to_string();

    // Load: smtp-source runs back to back, 8 sessions each; -v prints every reply it reads,
    // so its output holds exactly the acknowledgements a client received. A run dies when the
    // gateway is killed under it; the next starts as soon as the gateway listens again.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let out = smtp_source(&[
                    "-v",
                    "-s",
                    "8",
                    "-m",
                    "300",
                    "-l",
                    "2000",
                    "-M",
                    "load.test",
                    "-f",
                    "load@example.net",
                    "-t",
                    "rcpt@example.org",
                    &target,
                ]);
                let run = LoadRun {
                    start,
                    end: Instant::now(),
                    acked: acknowledged_by_smtp_source(&out.stderr),
                    completed: out.status.success(),
                    errors: String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .filter(|l| l.contains("fatal:") || l.contains("warning:"))
                        .map(str::to_string)
                        .collect(),
                };
                if !run.completed {
                    thread::sleep(Duration::from_millis(20));
                }
                runs.push(run);
            }
            runs
        })
    };

    // Kill only an instance that is taking load: once it has queued its first message (its
    // log is appended to the same file across restarts), at a random moment after that.
    let queued_lines = |gw: &Ravelin| gw.log_text().matches("\"event\":\"queued\"").count();
    let mut rng = Rng::from_clock();
    let mut kills = Vec::new();
    for _ in 0..CYCLES {
        let before = queued_lines(&gw);
        wait_until("the gateway taking load", WAIT, || {
            (queued_lines(&gw) > before).then_some(())
        });
        thread::sleep(rng.millis(100, 800));
        kills.push(Instant::now());
        gw.kill();
        thread::sleep(rng.millis(0, 300));
        gw.restart();
    }
    let before = queued_lines(&gw);
    wait_until("the last instance taking load", WAIT, || {
        (queued_lines(&gw) > before).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let runs = load.join().expect("load thread");
    let acked: Vec<String> = runs.iter().flat_map(|r| r.acked.iter().cloned()).collect();

    // Each kill hit a running smtp-source (which then dies, after its customary one-second
    // pause, with "lost connection"), or the short gap between two runs.
    for (i, &k) in kills.iter().enumerate() {
        let during = |r: &&LoadRun| r.start <= k && k <= r.end + Duration::from_millis(100);
        let cut = runs.iter().filter(during).find(|r| !r.completed);
        let Some(r) = cut.or_else(|| runs.iter().find(during)) else {
            panic!(
                "kill {} hit no smtp-source run: the load did not run",
                i + 1
            );
        };
        eprintln!(
            "kill {}: during an smtp-source run that got {} acknowledgement(s); {}",
            i + 1,
            r.acked.len(),
            if r.completed {
                "it completed".to_string()
            } else {
                r.errors.join("; ")
            }
        );
    }
    let unique: BTreeSet<String> = acked.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        acked.len(),
        "the gateway acknowledged the same queue id twice"
    );

    // Everything acknowledged arrives; then the queue drains completely.
    let deadline = Instant::now() + Duration::from_secs(40);
    let delivered = loop {
        let delivered = delivered_ids(&sink);
        let missing: Vec<&String> = unique
            .iter()
            .filter(|id| !delivered.contains_key(*id))
            .collect();
        if missing.is_empty() {
            break delivered;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} of {} acknowledged messages never reached the backend (lost): {:?}\nqueue: {}\nlog:\n{}",
                missing.len(),
                unique.len(),
                &missing[..missing.len().min(20)],
                serde_json::to_string(&queue_list(&gw)).unwrap_or_default(),
                tail(&gw.log_path(), 30)
            );
        }
        thread::sleep(Duration::from_millis(200));
    };
    wait_queue_empty(&gw, WAIT);
    let delivered = {
        // Final count once nothing is left to deliver.
        let after = delivered_ids(&sink);
        assert!(after.len() >= delivered.len());
        after
    };

    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    let unacknowledged = delivered.keys().filter(|id| !unique.contains(*id)).count();
    let cut_short = runs.iter().filter(|r| !r.completed).count();
    eprintln!(
        "SIGKILL cycles: {CYCLES}; smtp-source runs: {} ({cut_short} cut short); acknowledged: {}; \
         delivered: {} distinct ({} acknowledged, {unacknowledged} committed but never acknowledged \
         to the client); duplicates: {duplicates}; lost: 0",
        runs.len(),
        unique.len(),
        delivered.len(),
        delivered.len() - unacknowledged
    );

    // Cross-checks: the gateway logged each acknowledged id as queued; a crash leaves no
    // damaged files and recovery clears incoming/.
    let queued: BTreeSet<String> = gw
        .events("queued")
        .iter()
        .filter_map(|e| e["queue_id"].as_str().map(str::to_string))
        .collect();
    let unlogged: Vec<&String> = unique.iter().filter(|id| !queued.contains(*id)).collect();
    assert!(
        unlogged.is_empty(),
        "acknowledged but never logged as queued: {unlogged:?}"
    );
    assert!(
        spool_files(&gw, "corrupt").is_empty(),
        "SIGKILL left damaged spool files: {:?}",
        spool_files(&gw, "corrupt")
    );
    assert!(
        spool_files(&gw, "incoming").is_empty(),
        "incoming/ not empty after the load ended: {:?}",
        spool_files(&gw, "incoming")
    );
    let recoveries = gw
        .events("spool_recovered")
        .iter()
        .filter(|e| e.get("queued").is_some())
        .count();
    assert_eq!(recoveries, CYCLES + 1, "one spool recovery per start");
}

/// Copies at the backend per token: (deliveries to alice, DSNs to alice naming it).
fn backend_copies(backend: &Postfix, tokens: &[String]) -> BTreeMap<String, (usize, usize)> {
    let mut copies: BTreeMap<String, (usize, usize)> =
        tokens.iter().map(|t| (t.clone(), (0, 0))).collect();
    for m in backend.messages() {
        let text = String::from_utf8_lossy(&m.message);
        for (token, (delivered, dsns)) in copies.iter_mut() {
            if text.contains(&format!("<{token}@example.net>")) {
                if m.return_path.is_empty() {
                    *dsns += 1;
                } else {
                    *delivered += 1;
                }
            }
        }
    }
    copies
}

/// Waits until the backend Postfix has nothing left in its own queue (everything it accepted
/// is in a Maildir).
fn backend_settled(backend: &Postfix) {
    wait_until("the backend's queue to drain", WAIT, || {
        backend.queue().is_empty().then_some(())
    });
}

/// SIGKILL at random moments while the gateway receives, delivers and generates bounces, many
/// cycles, with an operator deleting queued messages while it is down. Messages to alice are
/// delivered; messages to bob are refused by the backend (`550 5.1.1`), so each becomes a DSN
/// to its sender alice. After each restart the spool is checked. At the end: every
/// acknowledged message to alice that was not deleted reached her, every one to bob produced
/// a DSN; a deleted message gained no copy and no DSN after its deletion; nothing is left in
/// `corrupt/`, `incoming/` or the queue.
#[test]
fn sigkill_during_delivery_and_bounces_loses_nothing_and_revives_nothing_deleted() {
    const CYCLES: usize = 8;
    const PER_CYCLE: usize = 6;
    // A backend that takes a second per recipient, so messages wait in our queue when the
    // gateway is killed.
    let backend = Postfix::start(
        PostfixOptions::backend(&["alice", "postmaster"])
            .set("smtpd_client_restrictions", "sleep 1"),
    );
    let config = RavelinConfig::inbound(backend.addr)
        .tls("off")
        .set("delivery", "concurrency = 1")
        .set("delivery", "retry_max = \"2s\"");
    let mut gw = Ravelin::start(config);
    let mut rng = Rng::from_clock();
    // token -> (queue id, to bob?)
    let mut acked: BTreeMap<String, (String, bool)> = BTreeMap::new();
    // token -> the copies it had when it was deleted
    let mut deleted: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut n = 0;
    for cycle in 0..CYCLES {
        for _ in 0..PER_CYCLE {
            n += 1;
            let token = format!("crash-{n}");
            let to_bob = n % 3 == 0;
            let to = if to_bob {
                "bob@example.org"
            } else {
                "alice@example.org"
            };
            let data = simple_message("alice@example.org", to, &token);
            let id = send_accepted(gw.addr(), "alice@example.org", to, &data);
            acked.insert(token, (id, to_bob));
        }
        // Soon enough that some are still queued, at a random point of their delivery.
        thread::sleep(rng.millis(0, 150));
        gw.kill();
        // Every restart finds a consistent spool: nothing damaged.
        assert!(
            spool_files(&gw, "corrupt").is_empty(),
            "cycle {cycle}: SIGKILL left damaged files: {:?}",
            spool_files(&gw, "corrupt")
        );
        // With the gateway down, the operator deletes one message still queued.
        // (Only a client's message: DSNs queued by the gateway are entries too.)
        let queued: Vec<String> = queue_list(&gw)
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .filter(|id| acked.values().any(|(qid, _)| qid == id))
            .collect();
        if let Some(id) = queued.get(rng.below(queued.len().max(1) as u64) as usize) {
            let id = id.as_str();
            let out = gw.command(&["queue", "delete", id]);
            assert!(
                out.status.success(),
                "queue delete {id}: {}",
                describe(&out)
            );
            let token = acked
                .iter()
                .find(|(_, (qid, _))| qid == id)
                .map(|(t, _)| t.clone())
                .expect("a deleted id was acknowledged");
            backend_settled(&backend);
            let copies = backend_copies(&backend, std::slice::from_ref(&token))[&token];
            eprintln!("cycle {cycle}: deleted {id} ({token}), copies then {copies:?}");
            deleted.insert(token, copies);
        }
        thread::sleep(rng.millis(0, 200));
        gw.restart();
    }
    assert!(
        deleted.len() >= CYCLES / 2,
        "only {} deletions: the queue was empty at most kills",
        deleted.len()
    );
    wait_queue_empty(&gw, Duration::from_secs(90));
    backend_settled(&backend);

    let tokens: Vec<String> = acked.keys().cloned().collect();
    let copies = backend_copies(&backend, &tokens);
    let mut duplicates = 0;
    for (token, (id, to_bob)) in &acked {
        let (delivered, dsns) = copies[token];
        if let Some(then) = deleted.get(token) {
            assert_eq!(
                (delivered, dsns),
                *then,
                "{token} ({id}) gained a copy after it was deleted"
            );
            continue;
        }
        if *to_bob {
            assert_eq!(delivered, 0, "{token} ({id}) to bob was delivered");
            assert!(dsns >= 1, "{token} ({id}) to bob bounced without a DSN");
            duplicates += dsns - 1;
        } else {
            assert_eq!(dsns, 0, "{token} ({id}) to alice produced a DSN");
            assert!(delivered >= 1, "{token} ({id}) to alice was lost");
            duplicates += delivered - 1;
        }
    }
    for sub in ["corrupt", "incoming", "queue", "hold"] {
        assert!(
            spool_files(&gw, sub).is_empty(),
            "{sub}/ not empty at the end: {:?}",
            spool_files(&gw, sub)
        );
    }
    eprintln!(
        "SIGKILL cycles: {CYCLES}; acknowledged: {}; deleted by the operator: {}; \
         bounced: {}; duplicates: {duplicates}; lost: 0",
        acked.len(),
        deleted.len(),
        acked.values().filter(|(_, b)| *b).count()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Backend down for a while

#[test]
fn mail_waits_while_the_backend_is_down_and_goes_out_at_the_next_retry() {
    let backend = free_addr(); // nothing listens here yet
    let config = RavelinConfig::inbound(backend)
        .tls("off")
        .retry_initial("1s")
        .set("delivery", "retry_max = \"2s\"");
    let gw = Ravelin::start(config);

    let mut ids = BTreeSet::new();
    for i in 0..3 {
        let token = format!("down-{i}");
        let data = simple_message("sender@example.net", "user@example.org", &token);
        ids.insert(send_accepted(
            gw.addr(),
            "sender@example.net",
            "user@example.org",
            &data,
        ));
    }

    // Deferred: listed with at least one failed attempt and the reason.
    let entries = wait_until("3 deferred messages", WAIT, || {
        let entries = queue_list(&gw);
        let deferred = entries
            .iter()
            .filter(|e| e["state"]["attempts"].as_u64().unwrap_or(0) >= 1)
            .count();
        (entries.len() == 3 && deferred == 3).then_some(entries)
    });
    let listed: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        listed, ids,
        "queue list shows other messages than were acknowledged"
    );
    for e in &entries {
        assert_eq!(e["held"], false, "{e}");
        assert_eq!(e["envelope"]["sender"], "sender@example.net", "{e}");
        assert_eq!(e["envelope"]["recipients"][0], "user@example.org", "{e}");
        let reason = e["state"]["last_error"]["user@example.org"]
            .as_str()
            .unwrap_or_default();
        assert!(!reason.is_empty(), "deferred without a reason: {e}");
    }
    for id in &ids {
        gw.wait_for_event("deferred", WAIT, |v| v["queue_id"] == id.as_str());
    }

    // The backend comes up on that port: the next retry (at most retry_max = 2 s away)
    // delivers everything.
    let sink = SmtpSink::start_on(backend, &[]);
    let up = Instant::now();
    let messages = sink.wait_for_messages(3, Duration::from_secs(10));
    let took = up.elapsed();
    let delivered: BTreeSet<String> = messages
        .iter()
        .filter_map(|m| gateway_queue_id(&m.message))
        .collect();
    assert_eq!(delivered, ids);
    assert_eq!(messages.len(), 3, "duplicates delivered");
    wait_queue_empty(&gw, WAIT);
    eprintln!(
        "backend down: 3 acknowledged, 3 deferred, 3 delivered {:.1} s after the backend came up",
        took.as_secs_f64()
    );
}

#[test]
fn queue_flush_sends_a_deferred_message_at_once() {
    let backend = free_addr();
    let config = RavelinConfig::inbound(backend)
        .tls("off")
        .retry_initial("1h")
        .set("delivery", "retry_max = \"2h\"")
        .set("delivery", "scan_interval = \"1s\"");
    let gw = Ravelin::start(config);
    let data = simple_message("sender@example.net", "user@example.org", "flush-1");
    let id = send_accepted(gw.addr(), "sender@example.net", "user@example.org", &data);

    let entry = wait_until("the message deferred", WAIT, || {
        queue_list(&gw)
            .into_iter()
            .find(|e| e["id"] == id.as_str() && e["state"]["attempts"].as_u64() >= Some(1))
    });
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let next_ms = entry["state"]["next_attempt_ms"].as_u64().unwrap_or(0);
    assert!(
        next_ms > now_ms + 50 * 60 * 1000,
        "next attempt is not about an hour away: {entry}"
    );

    // With the backend up, nothing happens by itself (several queue scans pass) ...
    let sink = SmtpSink::start_on(backend, &[]);
    thread::sleep(Duration::from_secs(3));
    assert!(
        sink.messages().is_empty(),
        "delivered before the flush: the retry delay was not honoured"
    );
    // ... until the operator flushes.
    let out = gw.command(&["queue", "flush", "--json"]);
    assert!(out.status.success(), "queue flush: {}", describe(&out));
    let flushed = Instant::now();
    let messages = sink.wait_for_messages(1, Duration::from_secs(10));
    let took = flushed.elapsed();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        gateway_queue_id(&messages[0].message).as_deref(),
        Some(id.as_str())
    );
    assert!(
        messages[0].message.ends_with(b"body of flush-1\n"),
        "{:?}",
        String::from_utf8_lossy(&messages[0].message)
    );
    wait_queue_empty(&gw, WAIT);
    eprintln!(
        "queue flush: delivered {:.1} s after `ravelin queue flush` (retry was due in about 1 h)",
        took.as_secs_f64()
    );
}

#[test]
fn hold_and_release_by_root_keep_the_delivery_state() {
    // The gateway runs as an unprivileged user; the operator's tools are often run as root.
    // Whatever they write into the spool must stay readable by the gateway, or the state of
    // a message (attempts, recipients already delivered) is lost.
    let backend = free_addr();
    let config = RavelinConfig::inbound(backend)
        .tls("off")
        .retry_initial("1s")
        .set("delivery", "retry_max = \"2s\"")
        .set("delivery", "scan_interval = \"1s\"");
    let gw = Ravelin::start(config);
    let data = simple_message("sender@example.net", "user@example.org", "hold-1");
    let id = send_accepted(gw.addr(), "sender@example.net", "user@example.org", &data);
    let attempts = |gw: &Ravelin| {
        queue_list(gw)
            .into_iter()
            .find(|e| e["id"] == id.as_str())
            .and_then(|e| e["state"]["attempts"].as_u64())
    };
    wait_until("two failed attempts", WAIT, || {
        (attempts(&gw)? >= 2).then_some(())
    });

    for action in ["hold", "release"] {
        let out = gw.command(&["queue", action, &id]);
        assert!(out.status.success(), "queue {action}: {}", describe(&out));
    }
    let at_release = attempts(&gw).expect("listed after release");
    assert!(
        at_release >= 2,
        "release lost the attempt count: {at_release}"
    );
    // The gateway picks the released message up and tries it again, counting on: the
    // attempt numbers it logs run 1, 2, 3, ... without starting over.
    let logged = |gw: &Ravelin| -> Vec<u64> {
        gw.events("deferred")
            .iter()
            .filter(|v| v["queue_id"] == id.as_str())
            .filter_map(|v| v["attempts"].as_u64())
            .collect()
    };
    let seen = logged(&gw).len();
    let sequence = wait_until("an attempt after the release", WAIT, || {
        let l = logged(&gw);
        (l.len() > seen).then_some(l)
    });
    let counting: Vec<u64> = (1..=sequence.len() as u64).collect();
    assert_eq!(
        sequence, counting,
        "the attempt count started over after hold and release (delivery state lost)"
    );
    assert!(
        gw.events("spool_corrupt").is_empty(),
        "the gateway could not read what the operator's tool wrote: {:?}",
        gw.events("spool_corrupt")
    );
    assert_eq!(spool_files(&gw, "corrupt"), Vec::<String>::new());

    let sink = SmtpSink::start_on(backend, &[]);
    let messages = sink.wait_for_messages(1, WAIT);
    assert_eq!(
        gateway_queue_id(&messages[0].message).as_deref(),
        Some(id.as_str())
    );
    wait_queue_empty(&gw, WAIT);
}

// ---------------------------------------------------------------------------------------------
// 3. Permanent failure and DSN

/// Parses a DSN with Python's email package and returns what it found as JSON.
fn parse_dsn_with_python(path: &Path) -> serde_json::Value {
    const SCRIPT: &str = r#"
import email, email.policy, json, sys
with open(sys.argv[1], 'rb') as f:
    msg = email.message_from_binary_file(f, policy=email.policy.compat32)
out = {
    'content_type': msg.get_content_type(),
    'report_type': msg.get_param('report-type'),
    'from': msg.get('From'),
    'to': msg.get('To'),
    'subject': msg.get('Subject'),
    'auto_submitted': msg.get('Auto-Submitted'),
    'defects': [str(d) for d in msg.defects],
    'parts': [],
}
for part in msg.get_payload():
    entry = {'content_type': part.get_content_type(), 'defects': [str(d) for d in part.defects]}
    if part.get_content_type() == 'message/delivery-status':
        blocks = part.get_payload()
        entry['per_message'] = dict(blocks[0].items())
        entry['per_recipient'] = [dict(b.items()) for b in blocks[1:]]
    elif part.get_content_type() == 'text/rfc822-headers':
        entry['headers'] = part.get_payload(decode=True).decode('ascii', 'replace')
    else:
        entry['text'] = part.get_payload(decode=True).decode('utf-8', 'replace')
    out['parts'].append(entry)
print(json.dumps(out))
"#;
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(SCRIPT).arg(path);
    let out = run(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "python: {}", describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("python printed no JSON ({e}): {}", describe(&out)))
}

#[test]
fn permanent_failure_returns_a_dsn_to_the_sender_but_never_for_a_null_sender() {
    let backend = Postfix::backend(&["alice", "postmaster"]);
    let gw = Ravelin::start(RavelinConfig::inbound(backend.addr).tls("off"));

    // alice writes to bob, whom the gateway accepts (no recipient validation yet) and the
    // backend refuses.
    let original = b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\n\
Subject: lunch on Friday\r\nMessage-ID: <dsn-original-1@example.org>\r\n\r\nAre you in?\r\n";
    let id = send_accepted(gw.addr(), "alice@example.org", "bob@example.org", original);
    let bounced = gw.wait_for_event("bounced", WAIT, |v| v["queue_id"] == id.as_str());
    assert!(
        bounced["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("550 5.1.1"),
        "{bounced}"
    );
    gw.wait_for_event("dsn_queued", WAIT, |v| v["queue_id"] == id.as_str());

    let messages = backend.wait_for_messages(1, WAIT);
    assert_eq!(messages.len(), 1, "expected only the DSN: {messages:?}");
    let dsn = &messages[0];
    assert_eq!(dsn.user, "alice");
    assert_eq!(dsn.delivered_to, "alice@example.org");
    assert_eq!(dsn.return_path, "", "a DSN must have the null sender");

    let parsed = parse_dsn_with_python(&dsn.path);
    let show = serde_json::to_string_pretty(&parsed).unwrap_or_default();
    assert_eq!(parsed["content_type"], "multipart/report", "{show}");
    assert_eq!(parsed["report_type"], "delivery-status", "{show}");
    assert_eq!(parsed["defects"], serde_json::json!([]), "{show}");
    let from = parsed["from"].as_str().unwrap_or("");
    assert!(
        from.contains(&format!("MAILER-DAEMON@{HOSTNAME}")),
        "From: {from}\n{show}"
    );
    assert!(
        parsed["to"]
            .as_str()
            .unwrap_or("")
            .contains("alice@example.org"),
        "{show}"
    );
    let parts = parsed["parts"].as_array().expect("parts");
    let types: Vec<&str> = parts
        .iter()
        .map(|p| p["content_type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ],
        "{show}"
    );
    for p in parts {
        assert_eq!(p["defects"], serde_json::json!([]), "{show}");
    }
    assert!(
        parts[0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("bob@example.org"),
        "{show}"
    );
    let status = &parts[1];
    assert_eq!(
        status["per_message"]["Reporting-MTA"],
        format!("dns; {HOSTNAME}"),
        "{show}"
    );
    let rcpts = status["per_recipient"].as_array().expect("recipients");
    assert_eq!(rcpts.len(), 1, "{show}");
    assert_eq!(
        rcpts[0]["Final-Recipient"], "rfc822; bob@example.org",
        "{show}"
    );
    assert_eq!(rcpts[0]["Action"], "failed", "{show}");
    assert_eq!(rcpts[0]["Status"], "5.1.1", "{show}");
    let diagnostic = rcpts[0]["Diagnostic-Code"].as_str().unwrap_or("");
    assert!(diagnostic.starts_with("smtp; 550 5.1.1"), "{show}");
    let headers = parts[2]["headers"].as_str().unwrap_or("");
    for h in [
        "From: Alice <alice@example.org>",
        "To: Bob <bob@example.org>",
        "Subject: lunch on Friday",
        "Message-ID: <dsn-original-1@example.org>",
        &format!(" id {id}"),
    ] {
        assert!(
            headers.contains(h),
            "original headers lack {h:?}:\n{headers}"
        );
    }
    assert!(
        !headers.contains("Are you in?"),
        "the DSN carries the original body: {headers}"
    );
    wait_queue_empty(&gw, WAIT);

    // A message with the null sender that fails permanently is dropped without a DSN.
    let id2 = send_accepted(
        gw.addr(),
        "",
        "bob@example.org",
        b"From: <MAILER-DAEMON@elsewhere.example>\r\nSubject: a bounce\r\n\r\nundeliverable\r\n",
    );
    gw.wait_for_event("bounced", WAIT, |v| v["queue_id"] == id2.as_str());
    wait_queue_empty(&gw, WAIT);
    // A DSN, had one been made, would have been queued before the original was removed;
    // give a wrong one time to arrive anyway.
    thread::sleep(Duration::from_secs(2));
    let wrong: Vec<serde_json::Value> = gw
        .events("dsn_queued")
        .into_iter()
        .filter(|v| v["queue_id"] == id2.as_str())
        .collect();
    assert!(
        wrong.is_empty(),
        "a DSN was queued for a null-sender message: {wrong:?}"
    );
    assert_eq!(
        gw.events("dsn_suppressed")
            .iter()
            .filter(|v| v["queue_id"] == id2.as_str())
            .count(),
        1
    );
    let after = backend.messages();
    assert_eq!(
        after.len(),
        1,
        "something new was delivered after the null-sender bounce: {after:?}"
    );
    let refusals = backend.maillog().matches("User unknown").count();
    assert!(refusals >= 2, "the backend refused bob {refusals} time(s)");
    eprintln!(
        "DSN: 2 messages refused by Postfix with 550 5.1.1; 1 DSN delivered to alice (parsed by \
         Python email), 0 for the null sender"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. SIGTERM during DATA

/// How a client in DATA at SIGTERM fared.
#[derive(Debug)]
enum Fate {
    /// 250 with this queue id.
    Accepted(String),
    /// A 4xx reply, or the connection closed; the text says which.
    Refused(String),
}

fn finish_or_closed(c: &mut RawClient, rest: &[u8]) -> Fate {
    let sent = c.send(rest).and_then(|()| c.send(b".\r\n"));
    if let Err(e) = sent {
        return Fate::Refused(format!("closed while sending: {e}"));
    }
    match c.read_reply() {
        Ok(r) if r.code == 250 => Fate::Accepted(
            queued_as(&r.text()).unwrap_or_else(|| panic!("250 without a queue id: {r:?}")),
        ),
        Ok(r) if (400..500).contains(&r.code) => Fate::Refused(format!("{} {}", r.code, r.text())),
        Ok(r) => panic!("unexpected reply to the end of data after SIGTERM: {r:?}"),
        Err(e) => Fate::Refused(format!("closed: {e}")),
    }
}

/// What a client that stopped sending in the middle of DATA sees by the time the gateway is
/// gone: a 4xx reply or a closed connection, never an acceptance.
fn stalled_fate(c: &mut RawClient) -> Fate {
    match c.read_reply() {
        Ok(r) if (400..500).contains(&r.code) => Fate::Refused(format!("{} {}", r.code, r.text())),
        Ok(r) => panic!("a client that never ended its data got {r:?}"),
        Err(e) => Fate::Refused(format!("closed: {e}")),
    }
}

#[test]
fn sigterm_during_data_loses_nothing_acknowledged_and_delivers_nothing_refused() {
    const GRACE: Duration = Duration::from_secs(4);
    let backend = free_addr(); // down until the restart, so deliveries happen after it
    let config = RavelinConfig::inbound(backend)
        .tls("off")
        .set("delivery", "retry_max = \"2s\"")
        .set(
            "limits",
            &format!("data_timeout = \"{}s\"", GRACE.as_secs()),
        );
    let mut gw = Ravelin::start(config);
    let (from, to) = ("sender@example.net", "user@example.org");

    let before = send_accepted(
        gw.addr(),
        from,
        to,
        &simple_message(from, to, "term-before"),
    );

    // Five clients in the middle of their message data: three will finish it after SIGTERM,
    // two never will.
    let mut finishers = Vec::new();
    for i in 0..3 {
        let token = format!("term-finish-{i}");
        let mut c = open_data(gw.addr(), from, to);
        c.send(format!("Subject: {token}\r\n\r\nfirst half of {token}\r\n").as_bytes())
            .expect("send half");
        finishers.push((token, c));
    }
    let mut stallers = Vec::new();
    for i in 0..2 {
        let token = format!("term-stall-{i}");
        let mut c = open_data(gw.addr(), from, to);
        c.send(format!("Subject: {token}\r\n\r\nfirst half of {token}\r\n").as_bytes())
            .expect("send half");
        stallers.push((token, c));
    }
    thread::sleep(Duration::from_millis(300));

    gw.signal(Signal::SIGTERM);
    let term = Instant::now();
    thread::sleep(Duration::from_millis(300));
    let mut fates: Vec<(String, Fate)> = Vec::new();
    for (token, mut c) in finishers {
        let fate = finish_or_closed(&mut c, format!("second half of {token}\r\n").as_bytes());
        if let Fate::Accepted(_) = fate {
            // No new transaction once shutting down (a closed connection refuses it too).
            if let Ok(r) = c.command("MAIL FROM:<sender@example.net>") {
                assert_eq!(r.code, 421, "new transaction during shutdown: {r:?}");
            }
        }
        fates.push((token, fate));
    }
    let status = gw
        .wait_exit(GRACE + Duration::from_secs(6))
        .unwrap_or_else(|| {
            panic!(
                "ravelin still runs {:?} after SIGTERM (grace {GRACE:?}); log:\n{}",
                term.elapsed(),
                tail(&gw.log_path(), 30)
            )
        });
    let exited_after = term.elapsed();
    for (token, mut c) in stallers {
        let fate = stalled_fate(&mut c);
        fates.push((token, fate));
    }
    assert!(
        status.success(),
        "ravelin exited with {status} after SIGTERM; log:\n{}",
        tail(&gw.log_path(), 30)
    );
    assert!(
        exited_after <= GRACE + Duration::from_secs(3),
        "ravelin took {exited_after:?} to stop (grace {GRACE:?})"
    );

    // The backend comes up and the gateway starts again on the same spool.
    let sink = SmtpSink::start_on(backend, &[]);
    gw.restart();
    let mut expected: BTreeSet<String> = BTreeSet::from([before.clone()]);
    for (_, fate) in &fates {
        if let Fate::Accepted(id) = fate {
            expected.insert(id.clone());
        }
    }
    wait_until("the acknowledged messages delivered", WAIT, || {
        let d = delivered_ids(&sink);
        expected.iter().all(|id| d.contains_key(id)).then_some(())
    });
    wait_queue_empty(&gw, WAIT);
    let messages = sink.messages();
    assert_eq!(
        messages.len(),
        expected.len(),
        "delivered {:?}, acknowledged {expected:?}",
        delivered_ids(&sink)
    );
    for (token, fate) in &fates {
        let carrying: Vec<&SinkMessage> = messages
            .iter()
            .filter(|m| {
                String::from_utf8_lossy(&m.message).contains(&format!("Subject: {token}\n"))
            })
            .collect();
        match fate {
            Fate::Accepted(id) => {
                assert_eq!(
                    carrying.len(),
                    1,
                    "{token} (acknowledged as {id}) delivered {} times",
                    carrying.len()
                );
                assert_eq!(
                    gateway_queue_id(&carrying[0].message).as_deref(),
                    Some(id.as_str())
                );
                assert!(
                    String::from_utf8_lossy(&carrying[0].message)
                        .contains(&format!("second half of {token}\n")),
                    "{token} delivered incomplete"
                );
            }
            Fate::Refused(how) => {
                assert!(
                    carrying.is_empty(),
                    "{token} was refused ({how}) but delivered"
                );
            }
        }
    }
    let accepted = fates
        .iter()
        .filter(|(_, f)| matches!(f, Fate::Accepted(_)))
        .count();
    eprintln!(
        "SIGTERM: exited 0 after {:.1} s (grace {} s); 1 acknowledged before it delivered after \
         restart; of 5 clients in DATA, {accepted} acknowledged and delivered, {} refused and \
         not delivered: {fates:?}",
        exited_after.as_secs_f64(),
        GRACE.as_secs(),
        fates.len() - accepted
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Full spool file system

/// A tmpfs mounted for the duration of a test; unmounted on drop (lazily if still busy).
struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    fn new(path: &Path, size: &str) -> TmpfsMount {
        fs::create_dir_all(path).expect("create the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "ravelin-test",
            ])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {}: {}. This test needs root with the right to \
             mount (CAP_SYS_ADMIN), as the test command has in CI",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        TmpfsMount {
            path: path.to_path_buf(),
        }
    }

    fn available(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.path).expect("statvfs of the tmpfs");
        st.blocks_available() as u64 * st.fragment_size() as u64
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A message of about `size` octets in 76-character lines.
fn big_message(token: &str, size: usize) -> Vec<u8> {
    let mut m =
        format!("Subject: {token}\r\nMessage-ID: <{token}@example.net>\r\n\r\n").into_bytes();
    let mut n = 0u64;
    while m.len() < size {
        n += 1;
        m.extend_from_slice(format!("{token} line {n:08} {}\r\n", "x".repeat(48)).as_bytes());
    }
    m
}

#[test]
fn full_spool_answers_452_and_keeps_nothing() {
    assert!(
        is_root(),
        "this test mounts a tmpfs as the spool and needs root (CI runs the tests as root)"
    );
    let mut sink = SmtpSink::start();
    let mut mount = None;
    let mut gw = Ravelin::start_with(RavelinConfig::inbound(sink.addr).tls("off"), |spool| {
        mount = Some(TmpfsMount::new(spool, "2m"));
    });
    // Declared after the gateway, so it is unmounted (lazily) before the gateway's directory
    // is removed, even when an assertion fails.
    let mount = mount.expect("mounted");
    let (from, to) = ("sender@example.net", "user@example.org");

    // Leave about 600 KiB free and send 1 MiB.
    let message = big_message("disk-full", 1 << 20);
    let filler = gw.spool().join("filler");
    let free = mount.available();
    let fill = free.saturating_sub(600 << 10);
    fs::write(&filler, vec![0u8; fill as usize]).expect("write the filler");
    let free = mount.available();
    assert!(
        free < message.len() as u64,
        "{free} octets free, the message has {}",
        message.len()
    );

    let reply = send_message(gw.addr(), from, to, &message);
    assert_eq!(
        reply.code, 452,
        "a message larger than the free space: {reply:?}"
    );
    assert!(reply.text().starts_with("4.3.1"), "{reply:?}");
    assert_eq!(
        spool_files(&gw, "queue"),
        Vec::<String>::new(),
        "queue/ keeps a trace"
    );
    assert_eq!(
        spool_files(&gw, "incoming"),
        Vec::<String>::new(),
        "incoming/ keeps a trace"
    );
    gw.wait_for_event("spool_error", WAIT, |v| v["decision"] == "tempfail");
    assert!(
        mount.available() >= free.saturating_sub(64 << 10),
        "the refused message still takes space: {} octets free, {free} before",
        mount.available()
    );

    // Space freed: the same message is accepted and delivered intact.
    fs::remove_file(&filler).expect("remove the filler");
    let id = send_accepted(gw.addr(), from, to, &message);
    let delivered = sink.wait_for_messages(1, WAIT);
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        gateway_queue_id(&delivered[0].message).as_deref(),
        Some(id.as_str())
    );
    assert!(
        delivered[0].message.ends_with(&crlf_to_lf(&message)),
        "the message arrived changed ({} octets)",
        delivered[0].message.len()
    );
    wait_queue_empty(&gw, WAIT);
    eprintln!(
        "disk full: {} octets refused with 452 4.3.1 at {free} octets free, nothing left in the \
         spool; accepted as {id} and delivered after freeing {fill} octets",
        message.len()
    );

    // Full to the last byte while a message waits for a backend that is down.
    let sink_addr = sink.addr;
    sink.stop();
    let waiting = send_accepted(
        gw.addr(),
        from,
        to,
        &simple_message(from, to, "waiting-on-full-disk"),
    );
    gw.wait_for_event("deferred", WAIT, |v| v["queue_id"] == waiting.as_str());
    fill_up(&filler);
    assert_eq!(mount.available(), 0, "the spool still has room");
    // A new message gets 452 at once, and the session goes on.
    let small = simple_message(from, to, "on-a-full-disk");
    let mut c = open_data(gw.addr(), from, to);
    c.send(&small).expect("send the message data");
    c.send(b".\r\n").expect("send the end of data");
    let reply = c.read_reply().expect("reply to the end of data");
    assert_eq!(reply.code, 452, "on a full disk: {reply:?}");
    for (line, code) in [("RSET", 250), ("NOOP", 250), ("QUIT", 221)] {
        let r = c.command(line).expect("the session goes on");
        assert_eq!(r.code, code, "{line} after 452: {r:?}");
    }
    assert_eq!(spool_files(&gw, "incoming"), Vec::<String>::new());
    // The waiting message's next attempt cannot record its state: logged, and tried again.
    let state_error = gw.wait_for_event("spool_error", WAIT, |v| v["queue_id"] == waiting.as_str());
    assert_eq!(spool_files(&gw, "queue"), vec![waiting.clone()]);

    // Space and backend return: the waiting message goes out once, the refused one is
    // accepted again, and the queue empties.
    fs::remove_file(&filler).expect("remove the filler");
    let sink = SmtpSink::start_on(sink_addr, &[]);
    let again = send_accepted(gw.addr(), from, to, &small);
    sink.wait_for_messages(2, WAIT);
    wait_queue_empty(&gw, WAIT);
    let delivered = delivered_ids(&sink);
    let want: BTreeMap<String, usize> = [(waiting.clone(), 1), (again.clone(), 1)].into();
    assert_eq!(delivered, want, "each message exactly once");
    eprintln!(
        "disk full to the last byte: 452 and the session went on; {waiting}'s state write \
         failed ({}), it was retried and delivered once space returned; {again} accepted",
        state_error["error"]
    );
    gw.kill();
    drop(mount);
}

/// Writes zeros to `path` until the file system is full.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open the filler");
    let chunk = vec![0u8; 64 << 10];
    let mut size = chunk.len();
    while size > 0 {
        match f.write(&chunk[..size]) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => size /= 2,
            Err(e) => panic!("fill the spool: {e}"),
        }
    }
    let _ = f.sync_all();
}
