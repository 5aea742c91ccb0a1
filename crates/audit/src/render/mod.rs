//! Report renderers: text for people at a terminal, JSON (the DESIGN.md contract), SARIF
//! 2.1.0 for code-scanning pipelines, and one self-contained HTML file.
//!
//! Every renderer reads only the [`Report`]; none opens a connection or a file. Text taken
//! from servers (evidence) is untrusted: the text renderer shows control characters as
//! escapes (no terminal escape sequence from a banner reaches the terminal), the HTML renderer
//! escapes every string, and JSON and SARIF escape through serde_json. Nothing here fails.

mod html;
mod sarif;
mod text;

use crate::finding::{Finding, Report, Severity, Status};

/// An output format (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Sarif,
    Html,
}

impl Format {
    /// Parses the `--format` value.
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "text" => Format::Text,
            "json" => Format::Json,
            "sarif" => Format::Sarif,
            "html" => Format::Html,
            _ => return None,
        })
    }
}

/// Renders the report; `color` applies to text only (ANSI colours, for a terminal).
pub fn render(report: &Report, format: Format, color: bool) -> String {
    match format {
        Format::Text => text::render(report, color),
        Format::Json => json(report),
        Format::Sarif => sarif::render(report),
        Format::Html => html::render(report),
    }
}

/// Writes the report to `out` as [`render`] would return it. JSON is written as it is
/// serialised, so a large batch report is not held a second time as one string; the other
/// formats are rendered first. Fails only when `out` does.
pub fn write(
    report: &Report,
    format: Format,
    color: bool,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            out.write_all(b"\n")
        }
        _ => out.write_all(render(report, format, color).as_bytes()),
    }
}

/// The JSON document of the DESIGN.md contract, pretty-printed, with a final newline.
pub fn json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).unwrap_or_else(|e| {
        // Serialising plain strings and enums cannot fail; say so if it ever does.
        format!("{{\"error\":\"cannot serialise the report: {e}\"}}")
    });
    s.push('\n');
    s
}

/// The family of a check id: the part before the first dot (`smtp`, `tls`, `dns`, …).
pub fn family(id: &str) -> &str {
    id.split('.').next().unwrap_or(id)
}

/// What a check is about, for rule descriptions; `None` for ids no family describes.
pub fn describe(id: &str) -> Option<&'static str> {
    crate::registry()
        .find(|c| c.id == id)
        .map(|c| c.description)
        .or_else(|| crate::smtp::describe(id))
}

/// Counts of findings by status, and of failed/warned findings by severity.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub total: usize,
    pub by_status: [usize; 6],
    /// Failed and warned findings by severity (info, low, medium, high, critical).
    pub by_severity: [usize; 5],
}

const STATUSES: [Status; 6] = [
    Status::Fail,
    Status::Warn,
    Status::Pass,
    Status::Info,
    Status::Skipped,
    Status::Error,
];

const SEVERITIES: [Severity; 5] = [
    Severity::Critical,
    Severity::High,
    Severity::Medium,
    Severity::Low,
    Severity::Info,
];

fn status_index(s: Status) -> usize {
    STATUSES.iter().position(|x| *x == s).unwrap_or(0)
}

fn severity_index(s: Severity) -> usize {
    SEVERITIES.iter().position(|x| *x == s).unwrap_or(0)
}

impl Summary {
    pub fn of(report: &Report) -> Summary {
        let mut s = Summary::default();
        for f in report.targets.iter().flat_map(|t| &t.findings) {
            s.add(f);
        }
        s
    }

    fn add(&mut self, f: &Finding) {
        self.total += 1;
        self.by_status[status_index(f.status)] += 1;
        if matches!(f.status, Status::Fail | Status::Warn) {
            self.by_severity[severity_index(f.severity)] += 1;
        }
    }

    pub fn count(&self, status: Status) -> usize {
        self.by_status[status_index(status)]
    }

    /// `"40 findings: 3 fail, 2 warn, 30 pass, …"` with the severities of fail and warn.
    pub fn line(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for s in STATUSES {
            let n = self.count(s);
            if n > 0 {
                parts.push(format!("{n} {}", s.as_str()));
            }
        }
        let severities: Vec<String> = SEVERITIES
            .iter()
            .filter(|s| self.by_severity[severity_index(**s)] > 0)
            .map(|s| format!("{} {}", self.by_severity[severity_index(*s)], s.as_str()))
            .collect();
        let mut line = format!("{} findings", self.total);
        if !parts.is_empty() {
            line.push_str(": ");
            line.push_str(&parts.join(", "));
        }
        if !severities.is_empty() {
            line.push_str(&format!(" (problems: {})", severities.join(", ")));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::TargetReport;

    /// A report with one finding of every status and hostile text in it.
    pub(crate) fn sample() -> Report {
        let mut r = Report::new();
        let ep = "mx1.example.org[192.0.2.1]:25";
        let f = |id: &str, status, severity, title: &str, evidence: &str| {
            Finding::new(id, status, severity, ep, title, evidence)
        };
        r.targets.push(TargetReport {
            target: "example.org@mx1.example.org:25".into(),
            endpoints: vec![ep.into()],
            findings: vec![
                f(
                    "smtp.open_relay",
                    Status::Fail,
                    Severity::Critical,
                    "open relay",
                    "accepted: RCPT TO:<relaytest@example.com> → 250 2.1.5 Ok",
                )
                .fix("smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination"),
                f(
                    "smtp.banner_disclosure",
                    Status::Warn,
                    Severity::Low,
                    "the server reveals <software>",
                    "greeting: 220 mx <script>alert(1)</script> \u{1b}[31mred & \"quoted\"",
                ),
                f(
                    "smtp.vrfy",
                    Status::Pass,
                    Severity::Info,
                    "VRFY is refused",
                    "",
                ),
                f(
                    "smtp.greeting_delay",
                    Status::Info,
                    Severity::Info,
                    "no delay",
                    "",
                ),
                f(
                    "smtp.smuggling",
                    Status::Skipped,
                    Severity::Info,
                    "not applicable",
                    "",
                ),
                f(
                    "smtp.size_limit",
                    Status::Error,
                    Severity::Info,
                    "check could not run",
                    "timeout",
                ),
            ],
        });
        r.targets.push(TargetReport {
            target: "nowhere.invalid:25".into(),
            endpoints: vec![],
            findings: vec![Finding::new(
                "smtp.connect",
                Status::Error,
                Severity::Info,
                "nowhere.invalid:25",
                "the mail server could not be audited",
                "cannot resolve",
            )],
        });
        r
    }

    #[test]
    fn summary_counts_statuses_and_problem_severities() {
        let s = Summary::of(&sample());
        assert_eq!(s.total, 7);
        assert_eq!(s.count(Status::Error), 2);
        assert_eq!(
            s.line(),
            "7 findings: 1 fail, 1 warn, 1 pass, 1 info, 1 skipped, 2 error \
             (problems: 1 critical, 1 low)"
        );
    }

    #[test]
    fn json_is_the_contract() {
        let v: serde_json::Value = serde_json::from_str(&json(&sample())).unwrap();
        assert_eq!(v["tool"], "ravelin");
        assert_eq!(v["targets"][0]["findings"][0]["id"], "smtp.open_relay");
        assert_eq!(v["targets"][0]["findings"][0]["status"], "fail");
        assert_eq!(v["targets"][0]["findings"][0]["severity"], "critical");
        assert_eq!(Format::parse("sarif"), Some(Format::Sarif));
        assert_eq!(Format::parse("xml"), None);
    }
}
