//! The finding model: what every check produces and every renderer reads.
//!
//! A [`Finding`] has a stable check id (`smtp.vrfy`, `tls.versions`, `dns.spf`, …; the
//! prefixes are those of PRODUCT.md), a [`Status`], a [`Severity`], the endpoint it concerns,
//! a one-line title, the evidence (what was seen, verbatim where short) and the fix (what to
//! change, in the words of the administrators concerned). A [`Report`] is one run: the tool
//! name and version and one [`TargetReport`] per target. Serialised with serde exactly as the
//! JSON contract of DESIGN.md says; nothing here fails.

use serde::{Deserialize, Serialize};

/// The outcome of one check on one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Warn,
    Info,
    Skipped,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Warn => "warn",
            Status::Info => "info",
            Status::Skipped => "skipped",
            Status::Error => "error",
        }
    }
}

/// How much a failed or warned check matters. Ordered from least to most severe, so
/// `severity >= threshold` selects what `--fail-on` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses the lower-case name used on the command line and in the JSON.
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// One result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable check id, e.g. `smtp.vrfy` or `smtp.smuggling.lf-dot-lf`.
    pub id: String,
    pub status: Status,
    pub severity: Severity,
    /// What was tested: `mx1.example.org[192.0.2.1]:25`, a domain, or a configuration file.
    pub endpoint: String,
    pub title: String,
    /// What was seen (verbatim where short).
    pub evidence: String,
    /// What to change; empty when nothing needs changing.
    pub fix: String,
}

impl Finding {
    /// A finding with an empty fix; set it with [`Finding::fix`].
    pub fn new(
        id: impl Into<String>,
        status: Status,
        severity: Severity,
        endpoint: impl Into<String>,
        title: impl Into<String>,
        evidence: impl Into<String>,
    ) -> Finding {
        Finding {
            id: id.into(),
            status,
            severity,
            endpoint: endpoint.into(),
            title: title.into(),
            evidence: evidence.into(),
            fix: String::new(),
        }
    }

    /// Sets the fix.
    pub fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = fix.into();
        self
    }

    /// Whether this finding counts against a `--fail-on` threshold: a failed or warned check
    /// at or above it.
    pub fn fails_at(&self, threshold: Severity) -> bool {
        matches!(self.status, Status::Fail | Status::Warn) && self.severity >= threshold
    }
}

/// The findings for one target (a domain, a host, or a configuration directory).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TargetReport {
    pub target: String,
    /// Every endpoint tested, as `host[address]:port`.
    pub endpoints: Vec<String>,
    pub findings: Vec<Finding>,
}

/// One run of the auditor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub targets: Vec<TargetReport>,
}

impl Report {
    /// An empty report naming this tool and version.
    pub fn new() -> Report {
        Report {
            tool: "ravelin".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            targets: Vec::new(),
        }
    }

    /// Whether any finding counts against `threshold` (the exit code of `--fail-on`).
    pub fn fails_at(&self, threshold: Severity) -> bool {
        self.targets
            .iter()
            .flat_map(|t| &t.findings)
            .any(|f| f.fails_at(threshold))
    }
}

impl Default for Report {
    fn default() -> Report {
        Report::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_design_contract() {
        let mut report = Report::new();
        report.targets.push(TargetReport {
            target: "example.org".into(),
            endpoints: vec!["mx1.example.org[192.0.2.1]:25".into()],
            findings: vec![
                Finding::new(
                    "smtp.vrfy",
                    Status::Fail,
                    Severity::Medium,
                    "mx1.example.org[192.0.2.1]:25",
                    "VRFY reveals mailboxes",
                    "VRFY postmaster → 250 2.0.0 postmaster",
                )
                .fix("Postfix: disable_vrfy_command = yes"),
            ],
        });
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["tool"], "ravelin");
        let f = &json["targets"][0]["findings"][0];
        assert_eq!(f["id"], "smtp.vrfy");
        assert_eq!(f["status"], "fail");
        assert_eq!(f["severity"], "medium");
        assert_eq!(f["fix"], "Postfix: disable_vrfy_command = yes");
        assert!(report.fails_at(Severity::Medium));
        assert!(!report.fails_at(Severity::High));
    }

    #[test]
    fn passes_and_infos_never_fail_a_run() {
        let f = Finding::new(
            "smtp.greeting_delay",
            Status::Info,
            Severity::Critical,
            "e",
            "t",
            "",
        );
        assert!(!f.fails_at(Severity::Info));
        assert_eq!(Severity::parse("high"), Some(Severity::High));
        assert_eq!(Severity::parse("severe"), None);
    }
}
