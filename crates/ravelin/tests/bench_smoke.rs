//! Smoke run of the relay benchmark (bench/relay-throughput.sh) in its small size, so the
//! script keeps working as the gateway changes. It runs the whole script — Postfix relay
//! instance, this build of the gateway, one smtp-sink, smtp-source — on 200 messages over 5
//! sessions and checks that it exits 0 and that the sink received every message from each
//! relay exactly once. It asserts nothing about speed: that is for the full-size run
//! recorded in docs/BENCHMARKS.md, on a quiet machine.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

const MESSAGES: u32 = 200;
const SESSIONS: u32 = 5;
/// Generous: a debug build on a loaded two-core machine.
const LIMIT: Duration = Duration::from_secs(240);

/// The number in `text` right after `before` (e.g. the N in "received N of").
fn number_after(text: &str, before: &str) -> Option<u64> {
    let rest = &text[text.find(before)? + before.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
fn relay_benchmark_smoke_run_delivers_everything_through_both_relays() {
    let script = repo_root().join("bench/relay-throughput.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .args(["--messages", &MESSAGES.to_string()])
        .args(["--sessions", &SESSIONS.to_string()])
        .arg("--ravelin")
        .arg(env!("CARGO_BIN_EXE_ravelin"));
    let out = run(cmd, LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = describe(&out);
    assert!(out.status.success(), "the benchmark failed:\n{report}");

    for relay in ["postfix", "ravelin"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{relay} ")))
            .unwrap_or_else(|| panic!("no result line for {relay}:\n{report}"));
        assert_eq!(
            number_after(line, ": "),
            Some(u64::from(MESSAGES)),
            "{relay} did not report {MESSAGES} messages: {line}"
        );
        assert_eq!(
            number_after(line, "the sink received"),
            Some(u64::from(MESSAGES)),
            "the sink did not get every message from {relay} exactly once: {line}"
        );
        assert!(
            number_after(line, "= ").is_some_and(|rate| rate > 0),
            "no rate for {relay}: {line}"
        );
    }
    assert!(
        stdout.contains("ratio ravelin/postfix: throughput "),
        "no ratio:\n{report}"
    );
    let row = format!("| {MESSAGES} | 10 KiB | {SESSIONS} |");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("| 20") && l.contains(&row)),
        "no table row for docs/BENCHMARKS.md:\n{report}"
    );
}

/// Smoke run of the inbound-checks benchmark (bench/inbound-checks.py): unbound with the test
/// zones, the Postfix + policyd-spf + OpenDKIM + OpenDMARC stack in its mount namespace, this
/// build of the gateway with [checks] and [dnsbl] on. The script itself proves on each side
/// that a signed message gets spf, dkim and dmarc "pass", that a DMARC failure and a listed
/// client are refused, and that every delivered message carries the three passes; here we
/// check that it exits 0 and says so for both sides.
#[test]
fn inbound_checks_benchmark_smoke_run_checks_every_message_on_both_sides() {
    const CHECKED: u32 = 50;
    let script = repo_root().join("bench/inbound-checks.py");
    let mut cmd = Command::new(venv_python());
    cmd.arg(&script)
        .args(["--messages", &CHECKED.to_string()])
        .args(["--sessions", "5"])
        .arg("--ravelin")
        .arg(env!("CARGO_BIN_EXE_ravelin"));
    let out = run(cmd, LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = describe(&out);
    assert!(out.status.success(), "the benchmark failed:\n{report}");
    for side in ["postfix", "ravelin"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{side}: ")))
            .unwrap_or_else(|| panic!("no result line for {side}:\n{report}"));
        assert_eq!(
            number_after(line, "the sink got"),
            Some(u64::from(CHECKED + 1)),
            "not every message from {side} carried spf, dkim and dmarc pass: {line}"
        );
        assert!(
            number_after(line, "= ").is_some_and(|rate| rate > 0),
            "no rate for {side}: {line}"
        );
    }
    assert!(
        stdout.contains("ratio ravelin/postfix: "),
        "no ratio:\n{report}"
    );
}
