//! `ravelin demo`: the gateway at work, offline, in a few seconds.
//!
//! Starts a gateway on a loopback port in front of a built-in SMTP sink (itself a
//! `ravelin_wire` server session that accepts everything), then plays a legitimate sender and a
//! set of attackers against it: a pregreet talker, open-relay tricks, SMTP smuggling, an
//! unknown recipient (the gateway knows its users from a recipients file), VRFY / EXPN
//! harvesting, an oversized message, a bare-LF command and unauthorised pipelining. It
//! prints what the gateway answered, checks that only the legitimate message reached the sink,
//! then audits the gateway with `ravelin audit --active` and shows every finding a loopback
//! demo cannot pass with its reason. It exits 1 if anything behaved otherwise (an attack let
//! through, good mail refused, an unexplained audit finding, mail delivered by the audit). The spool lives in a temporary directory that is
//! removed at the end.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ravelin_audit::run::{self, AuditOptions};
use ravelin_audit::target::{Target, TargetDefaults};
use ravelin_audit::{Finding, Severity, Status};
use ravelin_gateway::config::Config;
use ravelin_gateway::server::Gateway;
use ravelin_wire::ReplyParser;
use ravelin_wire::server::{Event, ServerConfig, ServerSession, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Messages the sink received.
type Inbox = Arc<Mutex<Vec<Vec<u8>>>>;

/// One scenario: what the client sends, step by step, and what must happen.
struct Scenario {
    name: &'static str,
    steps: Vec<Vec<u8>>,
    /// Send the first step before reading the greeting.
    talk_first: bool,
    /// Reply code expected to the last step.
    expect: u16,
    attack: bool,
}

fn scenario(name: &'static str, attack: bool, expect: u16, steps: &[&[u8]]) -> Scenario {
    Scenario {
        name,
        steps: steps.iter().map(|s| s.to_vec()).collect(),
        talk_first: false,
        expect,
        attack,
    }
}

fn scenarios() -> Vec<Scenario> {
    const EHLO: &[u8] = b"EHLO client.demo.test\r\n";
    const MAIL: &[u8] = b"MAIL FROM:<sender@elsewhere.test>\r\n";
    const RCPT: &[u8] = b"RCPT TO:<alice@demo.example>\r\n";
    let relay = |name, rcpt: &'static [u8]| scenario(name, true, 554, &[EHLO, MAIL, rcpt]);
    let mut smuggle = scenario(
        "SMTP smuggling (<LF>.<LF> ending)",
        true,
        550,
        &[EHLO, MAIL, RCPT, b"DATA\r\n", b"Subject: first\r\n\r\nhello\n.\nMAIL FROM:<ceo@demo.example>\r\nRCPT TO:<alice@demo.example>\r\nDATA\r\nSubject: SMUGGLED\r\n\r\npay this invoice\r\n.\r\n"],
    );
    smuggle.steps.truncate(5);
    let mut pregreet = scenario(
        "Talking before the greeting",
        true,
        554,
        &[b"EHLO impatient.test\r\n"],
    );
    pregreet.talk_first = true;
    let mut oversized = scenario(
        "Oversized message (streamed)",
        true,
        552,
        &[EHLO, MAIL, RCPT, b"DATA\r\n"],
    );
    let line = format!("{}\r\n", "x".repeat(998));
    oversized
        .steps
        .push(format!("Subject: big\r\n\r\n{}.\r\n", line.repeat(1100)).into_bytes());
    // The pregreet talker comes first: once a client has waited for a greeting, the screen
    // remembers it and greets it at once, and a client greeted at once cannot talk first.
    vec![
        pregreet,
        scenario(
            "Legitimate message",
            false,
            250,
            &[EHLO, MAIL, RCPT, b"DATA\r\n", b"From: <sender@elsewhere.test>\r\nTo: <alice@demo.example>\r\nSubject: Hello from the demo\r\n\r\nThis one is delivered.\r\n.\r\n"],
        ),
        relay("Open relay to a foreign domain", b"RCPT TO:<victim@elsewhere.test>\r\n"),
        relay("Relay: percent hack", b"RCPT TO:<victim%elsewhere.test@demo.example>\r\n"),
        relay("Relay: bang path", b"RCPT TO:<elsewhere.test!victim@demo.example>\r\n"),
        relay("Relay: quoted local part", b"RCPT TO:<\"victim@elsewhere.test\"@demo.example>\r\n"),
        relay("Relay: double @", b"RCPT TO:<victim@elsewhere.test@demo.example>\r\n"),
        relay("Relay: source route", b"RCPT TO:<@demo.example:victim@elsewhere.test>\r\n"),
        relay("Relay: IP literal", b"RCPT TO:<victim@[127.0.0.1]>\r\n"),
        smuggle,
        scenario("Unknown recipient", true, 550, &[EHLO, MAIL, b"RCPT TO:<nobody-here@demo.example>\r\n"]),
        scenario("VRFY harvesting", true, 252, &[EHLO, b"VRFY root\r\n"]),
        scenario("EXPN harvesting", true, 502, &[EHLO, b"EXPN staff\r\n"]),
        scenario("Oversized message (declared SIZE)", true, 552, &[EHLO, b"MAIL FROM:<s@elsewhere.test> SIZE=99999999\r\n"]),
        oversized,
        scenario("Bare LF in a command", true, 550, &[EHLO, b"MAIL FROM:<s@elsewhere.test>\nRCPT TO:<alice@demo.example>\r\n"]),
        scenario("Unauthorised pipelining", true, 554, &[b"EHLO fast.test\r\nMAIL FROM:<s@elsewhere.test>\r\n"]),
    ]
}

/// The built-in sink: an SMTP server that accepts every message.
async fn sink(listener: TcpListener, inbox: Inbox) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let mut config = ServerConfig::new("sink.demo.example");
            config.max_message_size = 50 * 1024 * 1024;
            let mut s = ServerSession::new(config);
            s.greet();
            let mut message = Vec::new();
            let mut buf = vec![0u8; 16384];
            loop {
                while let Some(ev) = s.poll() {
                    match ev {
                        Event::Mail { .. } | Event::Rcpt { .. } | Event::DataStart => {
                            s.decide(Verdict::Accept)
                        }
                        Event::Data(d) => message.extend_from_slice(&d),
                        Event::DataEnd { .. } => {
                            if let Ok(mut i) = inbox.lock() {
                                i.push(std::mem::take(&mut message));
                            }
                            s.decide(Verdict::Accept);
                        }
                        _ => {}
                    }
                }
                let out = s.take_output();
                if tcp.write_all(&out).await.is_err() || s.is_closed() {
                    return;
                }
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => s.eof(),
                    Ok(n) => s.push_input(&buf[..n]),
                }
            }
        });
    }
}

/// Plays one scenario; returns the reply to its last step (or what went wrong).
async fn play(addr: SocketAddr, sc: &Scenario) -> (Option<u16>, String) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return (None, "cannot connect".into());
    };
    let mut parser = ReplyParser::new();
    let mut steps = sc.steps.iter();
    if sc.talk_first
        && let Some(first) = steps.next()
    {
        let _ = tcp.write_all(first).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last = read_reply(&mut tcp, &mut parser).await;
    if sc.talk_first {
        // The greeting is the answer.
        return last.map_or((None, "no reply".into()), |r| (Some(r.code), r.one_line()));
    }
    for step in steps {
        if tcp.write_all(step).await.is_err() {
            break;
        }
        last = read_reply(&mut tcp, &mut parser).await;
        match &last {
            Some(r) if r.code >= 400 => break,
            None => break,
            _ => {}
        }
    }
    let _ = tcp.write_all(b"QUIT\r\n").await;
    last.map_or((None, "connection closed".into()), |r| {
        (Some(r.code), r.one_line())
    })
}

async fn read_reply(tcp: &mut TcpStream, parser: &mut ReplyParser) -> Option<ravelin_wire::Reply> {
    let mut buf = [0u8; 4096];
    loop {
        match parser.next_reply() {
            Ok(Some(r)) => return Some(r),
            Ok(None) => {}
            Err(_) => return None,
        }
        match tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => parser.feed(&buf[..n]),
            _ => return None,
        }
    }
}

pub fn run(json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ravelin demo: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(demo(json)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ravelin demo: {e}");
            ExitCode::from(1)
        }
    }
}

async fn demo(json: bool) -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!("ravelin-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = demo_in(&dir, json).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn demo_in(dir: &std::path::Path, json: bool) -> Result<bool, String> {
    let inbox: Inbox = Arc::default();
    let sink_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let sink_addr = sink_listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(sink(sink_listener, inbox.clone()));

    // Only these exist: mail for anyone else is refused (550 5.1.1).
    let recipients = dir.join("recipients");
    std::fs::write(&recipients, "alice@demo.example\npostmaster@demo.example\n")
        .map_err(|e| format!("cannot write {}: {e}", recipients.display()))?;
    let toml = format!(
        r#"hostname = "mx.demo.example"
[server]
user = "nobody"
[[listen]]
name = "mx"
address = "127.0.0.1:0"
kind = "inbound"
tls = "offer"
[inbound]
domains = ["demo.example"]
backend = ["smtp://{sink_addr}"]
[recipients]
sources = ["file"]
file = "{recipients}"
harvest_delay = "0s"
[limits]
message_size = 1048576
[screen]
greet_wait = "500ms"
exempt = []
[dnsbl]
no_ptr = 0
ptr_not_confirmed = 0
[spool]
path = "{}"
[delivery]
retry_initial = "1s"
# Offline: there is no DNS to look SPF, DKIM and DMARC up in, and no lookup leaves the host.
[checks]
enabled = false
[dns]
nameservers = ["127.0.0.1:9"]
"#,
        dir.display(),
        recipients = recipients.display(),
    );
    let config = Config::parse(&toml, "demo.toml").map_err(|e| e.to_string())?;
    let gateway = Gateway::start(&config).await?;
    let addr = gateway.addresses()[0].1;

    let mut rows = Vec::new();
    let mut all_ok = true;
    for sc in scenarios() {
        let (code, text) = play(addr, &sc).await;
        let ok = code == Some(sc.expect);
        all_ok &= ok;
        rows.push((sc.name, sc.attack, sc.expect, code, text, ok));
    }
    // The legitimate message must reach the sink; nothing smuggled may.
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = inbox.lock().map(|i| i.clone()).unwrap_or_default();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let findings = self_audit(addr).await;
    let after_audit = inbox.lock().map(|i| i.len()).unwrap_or_default();
    let audit_ok = after_audit == delivered.len()
        && findings
            .iter()
            .all(|f| !is_problem(f) || loopback_reason(&f.id).is_some());
    gateway.shutdown(Duration::from_secs(5)).await;
    let legit = delivered
        .iter()
        .filter(|m| contains(m, b"Subject: Hello from the demo"))
        .count();
    let smuggled = delivered
        .iter()
        .filter(|m| contains(m, b"SMUGGLED"))
        .count();
    let delivery_ok = legit == 1 && smuggled == 0 && delivered.len() == 1;
    all_ok &= delivery_ok && audit_ok;

    if json {
        let scenarios: Vec<_> = rows
            .iter()
            .map(|(name, attack, expect, code, text, ok)| {
                serde_json::json!({"scenario": name, "attack": attack, "expected": expect, "code": code, "reply": text, "ok": ok})
            })
            .collect();
        let audit: Vec<_> = findings
            .iter()
            .map(|f| {
                serde_json::json!({"id": f.id, "status": f.status.as_str(), "severity": f.severity.as_str(), "title": f.title, "evidence": f.evidence, "expected_on_loopback": loopback_reason(&f.id).filter(|_| is_problem(f))})
            })
            .collect();
        let v = serde_json::json!({"scenarios": scenarios, "delivered_to_backend": delivered.len(), "smuggled_delivered": smuggled, "self_audit": {"findings": audit, "delivered_by_audit": after_audit - delivered.len(), "ok": audit_ok}, "ok": all_ok});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(all_ok);
    }
    println!("Ravelin demo: gateway on {addr} in front of a built-in sink on {sink_addr}\n");
    println!(
        "{:<38} {:<10} {:<4} Gateway's reply",
        "Scenario", "Outcome", "Code"
    );
    println!("{}", "-".repeat(110));
    for (name, attack, _, code, text, ok) in &rows {
        let outcome = match (attack, ok) {
            (true, true) => "stopped",
            (false, true) => "accepted",
            (_, false) => "UNEXPECTED",
        };
        let code = code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let text: String = text.chars().take(64).collect();
        println!("{name:<38} {outcome:<10} {code:<4} {text}");
    }
    println!("{}", "-".repeat(110));
    println!(
        "Backend received {} message(s): {} legitimate, {} smuggled.",
        delivered.len(),
        legit,
        smuggled,
    );
    print_self_audit(addr, &findings, after_audit - delivered.len());
    println!(
        "\n{}",
        if all_ok {
            "Every attack was stopped and the good mail went through."
        } else {
            "SOMETHING WENT WRONG: see the rows marked UNEXPECTED."
        }
    );
    Ok(all_ok)
}

/// Audits the demo gateway as `ravelin audit --active --no-port-scan demo.example@ADDR`
/// would, offline: the target is an address, so no DNS is needed.
async fn self_audit(addr: SocketAddr) -> Vec<Finding> {
    let target = match Target::parse(
        &format!("demo.example@{addr}"),
        TargetDefaults { smtp_port: 25 },
    ) {
        Ok(t) => t,
        Err(e) => {
            return vec![Finding::new(
                "demo.self_audit",
                Status::Error,
                Severity::High,
                addr.to_string(),
                "The demo could not audit itself",
                e,
            )];
        }
    };
    let mut options = AuditOptions {
        // The demo's address is this machine's 127.0.0.1: whatever else listens on its mail
        // ports is not the demo's to report.
        port_scan: false,
        ..AuditOptions::default()
    };
    options.smtp.active = true;
    options.smtp.smuggling_wait = Duration::from_secs(2);
    let report = run::audit(vec![target], options, |_| {}).await;
    report
        .targets
        .into_iter()
        .flat_map(|t| t.findings)
        .collect()
}

fn is_problem(f: &Finding) -> bool {
    matches!(f.status, Status::Fail | Status::Warn | Status::Error)
}

/// Why a finding is expected of a gateway on loopback with the demo's settings, if it is.
fn loopback_reason(id: &str) -> Option<&'static str> {
    Some(match id {
        "tls.cert_chain" => {
            "the demo makes a self-signed certificate; `[tls] certificate` takes a CA-signed one"
        }
        _ => return None,
    })
}

fn print_self_audit(addr: SocketAddr, findings: &[Finding], delivered: usize) {
    let passed = findings.iter().filter(|f| f.status == Status::Pass).count();
    println!(
        "\nRavelin audits itself (ravelin audit --active --no-port-scan demo.example@{addr}): {} checks, {passed} passed, {delivered} message(s) delivered by the audit.",
        findings.len()
    );
    for f in findings.iter().filter(|f| is_problem(f)) {
        let title: String = f.title.chars().take(70).collect();
        match loopback_reason(&f.id) {
            Some(why) => println!(
                "  {:<5} {:<28} {title}\n        expected on loopback: {why}",
                f.status.as_str(),
                f.id
            ),
            None => println!(
                "  {:<5} {:<28} {title}  UNEXPECTED\n        {}",
                f.status.as_str(),
                f.id,
                f.evidence
            ),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
