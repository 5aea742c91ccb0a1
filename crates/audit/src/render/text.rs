//! The text report: findings grouped by target and family, problems with their evidence and
//! fix, everything else on one line each, and a summary line.
//!
//! Colours (ANSI) only when asked for (the command line asks when the output is a terminal).
//! Control characters in any string are shown as `\u{..}` escapes, so a server cannot send
//! escape sequences to the reader's terminal through its banner.

use std::fmt::Write;

use super::{Summary, family};
use crate::finding::{Finding, Report, Status};

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    fn status(&self, s: Status) -> String {
        let (code, label) = match s {
            Status::Fail => ("1;31", "FAIL"),
            Status::Warn => ("33", "WARN"),
            Status::Pass => ("32", "pass"),
            Status::Info => ("36", "info"),
            Status::Skipped => ("2", "skip"),
            Status::Error => ("35", "ERROR"),
        };
        self.wrap(code, &format!("{label:<5}"))
    }

    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }

    fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
}

/// `s` with control characters other than newline escaped.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\n' {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

fn block(out: &mut String, label: &str, text: &str) {
    for (i, line) in clean(text).lines().enumerate() {
        let head = if i == 0 { label } else { "" };
        let _ = writeln!(out, "           {head:<10}{line}");
    }
}

pub fn render(report: &Report, color: bool) -> String {
    let p = Paint { on: color };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} — {} target(s)",
        p.bold(&report.tool),
        report.version,
        report.targets.len()
    );
    for t in &report.targets {
        let _ = writeln!(out);
        let endpoints = if t.endpoints.is_empty() {
            String::new()
        } else {
            format!("  ({})", clean(&t.endpoints.join(", ")))
        };
        let _ = writeln!(out, "{}{}", p.bold(&clean(&t.target)), p.dim(&endpoints));
        let several = t.endpoints.len() > 1;
        let mut families: Vec<&str> = Vec::new();
        for f in &t.findings {
            let fam = family(&f.id);
            if !families.contains(&fam) {
                families.push(fam);
            }
        }
        for fam in families {
            let _ = writeln!(out, "  {}", p.bold(fam));
            for f in t.findings.iter().filter(|f| family(&f.id) == fam) {
                line(&mut out, &p, f, several);
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", p.bold(&Summary::of(report).line()));
    out
}

fn line(out: &mut String, p: &Paint, f: &Finding, show_endpoint: bool) {
    let severity = match f.status {
        Status::Fail | Status::Warn => f.severity.as_str(),
        _ => "",
    };
    let endpoint = if show_endpoint {
        format!("  [{}]", clean(&f.endpoint))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "    {} {severity:<8} {:<28} {}{}",
        p.status(f.status),
        clean(&f.id),
        clean(&f.title),
        p.dim(&endpoint)
    );
    if matches!(f.status, Status::Fail | Status::Warn | Status::Error) {
        if !f.evidence.is_empty() {
            block(out, "evidence", &f.evidence);
        }
        if !f.fix.is_empty() {
            block(out, "fix", &f.fix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn groups_and_shows_problems_with_evidence_and_fix() {
        let text = render(&sample(), false);
        assert!(text.contains("example.org@mx1.example.org:25"));
        assert!(text.contains("  smtp\n"));
        assert!(text.contains("FAIL  critical smtp.open_relay"));
        assert!(text.contains("evidence  accepted: RCPT TO:<relaytest@example.com>"));
        assert!(text.contains("fix       smtpd_relay_restrictions"));
        assert!(text.contains("pass           smtp.vrfy"));
        assert!(text.ends_with("(problems: 1 critical, 1 low)\n"));
        assert!(
            !text.contains('\u{1b}'),
            "no escape sequence without colour"
        );
    }

    #[test]
    fn colour_only_on_request_and_server_escapes_are_neutralised() {
        let text = render(&sample(), true);
        assert!(text.contains("\x1b[1;31mFAIL"));
        assert!(text.contains("\\u{1b}[31mred"));
        assert!(!text.contains("\x1b[31mred"));
    }
}
