//! Smoke runs of the benchmarks in bench/ in their small size, so the scripts keep working as
//! the gateway changes: the relay benchmark (bench/relay-throughput.sh: Postfix relay
//! instance, this build of the gateway, one smtp-sink, smtp-source; 200 messages over 5
//! sessions, every message received exactly once from each relay) and the inbound-checks
//! benchmark (bench/inbound-checks.py: 50 messages, every one checked on both sides) and the
//! batch-audit benchmark (bench/audit-batch.py: 40 domains, every report complete, without
//! an error finding, and agreeing with lone audits of 5 of them). Each
//! checks that the script exits 0 and what it reports; none asserts anything about speed: that
//! is for the full-size runs recorded in docs/BENCHMARKS.md, on a quiet machine.

mod support;

use std::path::PathBuf;
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

/// Runs a benchmark script in the smoke size with this build of the gateway and asserts that it
/// exited 0; returns its stdout and a description of the run for failure messages.
fn smoke_run(program: PathBuf, script: &str, messages: u32, sessions: u32) -> (String, String) {
    let mut cmd = Command::new(program);
    cmd.arg(repo_root().join(script))
        .args(["--messages", &messages.to_string()])
        .args(["--sessions", &sessions.to_string()])
        .arg("--ravelin")
        .arg(env!("CARGO_BIN_EXE_ravelin"));
    let out = run(cmd, LIMIT);
    let report = describe(&out);
    assert!(out.status.success(), "the benchmark failed:\n{report}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), report)
}

/// The line of `stdout` that starts with `prefix` (one side's result), with a positive rate.
fn result_line<'a>(stdout: &'a str, prefix: &str, report: &str) -> &'a str {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no result line starting {prefix:?}:\n{report}"));
    assert!(
        number_after(line, "= ").is_some_and(|rate| rate > 0),
        "no rate: {line}"
    );
    line
}

#[test]
fn relay_benchmark_smoke_run_delivers_everything_through_both_relays() {
    let (stdout, report) = smoke_run(
        "bash".into(),
        "bench/relay-throughput.sh",
        MESSAGES,
        SESSIONS,
    );
    for relay in ["postfix", "ravelin"] {
        let line = result_line(&stdout, &format!("{relay} "), &report);
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
    let (stdout, report) = smoke_run(venv_python(), "bench/inbound-checks.py", CHECKED, 5);
    for side in ["postfix", "ravelin"] {
        let line = result_line(&stdout, &format!("{side}: "), &report);
        assert_eq!(
            number_after(line, "the sink got"),
            Some(u64::from(CHECKED + 1)),
            "not every message from {side} carried spf, dkim and dmarc pass: {line}"
        );
    }
    assert!(
        stdout.contains("ratio ravelin/postfix: "),
        "no ratio:\n{report}"
    );
}

/// Smoke run of the batch-audit benchmark (bench/audit-batch.py) with 40 domains and this
/// build as both the auditor and the 10 MX hosts: NSD on 127.0.53.1:53, nginx serving the
/// MTA-STS policies, `ravelin audit --dns-only` and checkdmarc on the same domains, the full audit, the
/// lone audits it is compared with, and the DNS part again through the 20 ms proxy. The script
/// itself fails on a missing or reordered report entry, an `error` finding, a lone audit that
/// disagrees with the batch, or a checkdmarc result missing; here we check that it exits 0 and
/// reports a rate for every part.
#[test]
fn audit_batch_benchmark_smoke_run_audits_every_domain_without_errors() {
    let mut cmd = Command::new(venv_python());
    cmd.arg(repo_root().join("bench/audit-batch.py"))
        .args(["--domains", "40", "--latency-sample", "5"])
        .arg("--ravelin")
        .arg(env!("CARGO_BIN_EXE_ravelin"));
    let out = run(cmd, LIMIT);
    let report = describe(&out);
    assert!(out.status.success(), "the benchmark failed:\n{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for prefix in [
        "ravelin audit --dns-only: 40 domains",
        "checkdmarc: 40 domains",
        "ravelin audit (full, passive): 40 domains",
        "with 20 ms per DNS round trip: ravelin audit --dns-only 40 domains",
    ] {
        result_line(&stdout, prefix, &report);
    }
    assert!(
        stdout.contains("CPU during ravelin audit --dns-only: ravelin"),
        "{report}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("5 domains audited alone: 5 agree"),
        "{report}"
    );
}
