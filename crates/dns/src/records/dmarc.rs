//! DMARC policy records (RFC 7489 §6.3, with `np` from RFC 9091 and `t` from DMARCbis): the
//! TXT record at `_dmarc.DOMAIN`.
//!
//! [`parse`] reads the tags `v`, `p`, `sp`, `np`, `pct`, `rua`, `ruf`, `adkim`, `aspf`, `fo`,
//! `rf`, `ri` and `t`; other tags are kept in [`DmarcRecord::unknown`] (receivers ignore
//! them). It is an error when the record does not start with `v=DMARC1`, when the tag list is
//! broken, and when `p` is missing or invalid without a valid `rua` (RFC 7489 §6.6.3: with a
//! valid `rua`, the record is read as `p=none`, and a diagnostic says so). Invalid values of
//! the other tags are diagnostics, and the RFC's default is used in their place.
//!
//! Limits: records longer than [`super::MAX_RECORD_LEN`] are refused; at most
//! [`MAX_REPORT_URIS`] addresses per list are kept.

use std::fmt;

use super::{
    Diagnostic, MAX_RECORD_LEN, RecordError, ReportUri, check_length, report_uris, shorten,
    tag_list,
};

/// The most `rua` or `ruf` addresses kept (RFC 7489 lets receivers bound this; 2 is common).
pub const MAX_REPORT_URIS: usize = 16;

/// A requested handling of mail that fails DMARC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Policy {
    None,
    Quarantine,
    Reject,
}

impl Policy {
    fn parse(value: &str) -> Option<Policy> {
        match value.to_ascii_lowercase().as_str() {
            "none" => Some(Policy::None),
            "quarantine" => Some(Policy::Quarantine),
            "reject" => Some(Policy::Reject),
            _ => None,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        })
    }
}

/// Identifier alignment mode (`adkim`, `aspf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    Relaxed,
    Strict,
}

/// A parsed DMARC record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcRecord {
    /// `p`: the policy for the domain itself.
    pub policy: Policy,
    /// `sp`: the policy for subdomains, when published.
    pub subdomain_policy: Option<Policy>,
    /// `np` (RFC 9091): the policy for non-existent subdomains, when published.
    pub nonexistent_policy: Option<Policy>,
    /// `pct`: the percentage of failing mail the policy applies to (default 100).
    pub pct: u8,
    /// `rua`: where aggregate reports go.
    pub rua: Vec<ReportUri>,
    /// `ruf`: where failure reports go.
    pub ruf: Vec<ReportUri>,
    /// `adkim` (default relaxed).
    pub adkim: Alignment,
    /// `aspf` (default relaxed).
    pub aspf: Alignment,
    /// `fo`: failure reporting options as published (default `0`).
    pub failure_options: String,
    /// `rf`: failure report format (default `afrf`).
    pub report_format: String,
    /// `ri`: aggregate report interval in seconds (default 86400).
    pub report_interval: u32,
    /// `t=y` (DMARCbis): the policy is being tested; receivers apply one level less.
    pub testing: bool,
    /// Tags this parser does not know, as `(name, value)`.
    pub unknown: Vec<(String, String)>,
    /// Problems that did not make the record unusable.
    pub diagnostics: Vec<Diagnostic>,
}

impl DmarcRecord {
    /// The policy for subdomains: `sp`, or `p` when `sp` is absent.
    pub fn effective_subdomain_policy(&self) -> Policy {
        self.subdomain_policy.unwrap_or(self.policy)
    }
}

/// True when a TXT record is a DMARC record: it starts with `v=DMARC1` followed by `;`,
/// whitespace or the end. Other TXT records at `_dmarc` are discarded (RFC 7489 §6.6.3).
pub fn is_dmarc_record(txt: &str) -> bool {
    let trimmed = txt.trim_start();
    let Some(rest) = trimmed.strip_prefix("v") else {
        return false;
    };
    let rest = rest.trim_start();
    let Some(rest) = rest.strip_prefix('=') else {
        return false;
    };
    let rest = rest.trim_start();
    rest.strip_prefix("DMARC1")
        .is_some_and(|after| after.is_empty() || after.starts_with([';', ' ', '\t']))
}

/// Parses a DMARC record.
pub fn parse(text: &str) -> Result<DmarcRecord, RecordError> {
    check_length(text, MAX_RECORD_LEN, "DMARC record")?;
    let tags = tag_list(text)?;
    match tags.first() {
        Some(first) if first.name == "v" && first.value == "DMARC1" => {}
        Some(first) if first.name == "v" => {
            return Err(RecordError::at(
                text,
                first.value_at,
                format!(
                    "the version must be exactly \"DMARC1\", not \"{}\"",
                    shorten(first.value)
                ),
            ));
        }
        _ => {
            return Err(RecordError::at(
                text,
                0,
                "a DMARC record starts with \"v=DMARC1\"",
            ));
        }
    }

    let mut record = DmarcRecord {
        policy: Policy::None,
        subdomain_policy: None,
        nonexistent_policy: None,
        pct: 100,
        rua: Vec::new(),
        ruf: Vec::new(),
        adkim: Alignment::Relaxed,
        aspf: Alignment::Relaxed,
        failure_options: "0".to_string(),
        report_format: "afrf".to_string(),
        report_interval: 86400,
        testing: false,
        unknown: Vec::new(),
        diagnostics: Vec::new(),
    };
    let mut policy: Option<Policy> = None;
    let mut policy_problem: Option<Diagnostic> = None;
    let d = &mut record.diagnostics;
    for (index, tag) in tags.iter().enumerate().skip(1) {
        let value = tag.value;
        let bad = |what: &str, default: &str| {
            Diagnostic::at(
                text,
                tag.value_at,
                format!(
                    "{}: \"{}\" is not {what}; receivers use {default}",
                    tag.name,
                    shorten(value)
                ),
            )
        };
        match tag.name {
            "p" => {
                if index != 1 {
                    d.push(Diagnostic::at(
                        text,
                        tag.name_at,
                        "\"p\" should come right after \"v=DMARC1\" (RFC 7489 §6.4)",
                    ));
                }
                match Policy::parse(value) {
                    Some(p) => policy = Some(p),
                    None => {
                        policy_problem = Some(Diagnostic::at(
                            text,
                            tag.value_at,
                            format!(
                                "p: \"{}\" is not none, quarantine or reject",
                                shorten(value)
                            ),
                        ))
                    }
                }
            }
            "sp" => match Policy::parse(value) {
                Some(p) => record.subdomain_policy = Some(p),
                None => {
                    policy_problem.get_or_insert(Diagnostic::at(
                        text,
                        tag.value_at,
                        format!(
                            "sp: \"{}\" is not none, quarantine or reject",
                            shorten(value)
                        ),
                    ));
                }
            },
            "np" => match Policy::parse(value) {
                Some(p) => record.nonexistent_policy = Some(p),
                None => d.push(bad("none, quarantine or reject", "the sp or p policy")),
            },
            "pct" => match value.parse::<u8>() {
                Ok(pct) if pct <= 100 && !value.starts_with('+') => record.pct = pct,
                _ => d.push(bad("a whole number from 0 to 100", "100")),
            },
            "rua" | "ruf" => {
                let mut uris =
                    report_uris(text, value, tag.value_at, tag.name, true, &["mailto"], d);
                if uris.len() > MAX_REPORT_URIS {
                    d.push(Diagnostic::at(
                        text,
                        tag.value_at,
                        format!(
                            "{}: more than {MAX_REPORT_URIS} addresses; the rest are ignored",
                            tag.name
                        ),
                    ));
                    uris.truncate(MAX_REPORT_URIS);
                }
                if tag.name == "rua" {
                    record.rua = uris;
                } else {
                    record.ruf = uris;
                }
            }
            "adkim" | "aspf" => {
                let mode = match value.to_ascii_lowercase().as_str() {
                    "r" => Alignment::Relaxed,
                    "s" => Alignment::Strict,
                    _ => {
                        d.push(bad("r or s", "r (relaxed)"));
                        Alignment::Relaxed
                    }
                };
                if tag.name == "adkim" {
                    record.adkim = mode;
                } else {
                    record.aspf = mode;
                }
            }
            "fo" => {
                let valid = value
                    .split(':')
                    .all(|o| matches!(o.trim(), "0" | "1" | "d" | "s"));
                if valid {
                    record.failure_options = value.to_string();
                } else {
                    d.push(bad("a colon-separated list of 0, 1, d and s", "0"));
                }
            }
            "rf" => {
                let valid = value
                    .split(':')
                    .all(|f| f.trim().eq_ignore_ascii_case("afrf"));
                if valid {
                    record.report_format = value.to_string();
                } else {
                    d.push(bad("afrf", "afrf"));
                }
            }
            "ri" => match value.parse::<u32>() {
                Ok(ri) if !value.starts_with('+') => record.report_interval = ri,
                _ => d.push(bad("a number of seconds", "86400")),
            },
            "t" => match value.to_ascii_lowercase().as_str() {
                "y" => record.testing = true,
                "n" => record.testing = false,
                _ => d.push(bad("y or n", "n")),
            },
            "v" => {}
            other => record.unknown.push((other.to_string(), value.to_string())),
        }
    }

    match (policy, policy_problem) {
        (Some(p), None) => record.policy = p,
        (p, problem) => {
            let problem = problem
                .unwrap_or_else(|| Diagnostic::at(text, 0, "the required tag \"p\" is missing"));
            if record.rua.is_empty() {
                return Err(RecordError(Diagnostic {
                    position: problem.position,
                    message: format!(
                        "{}; without a valid rua the record is not used (RFC 7489 §6.6.3)",
                        problem.message
                    ),
                }));
            }
            record.diagnostics.push(Diagnostic {
                position: problem.position,
                message: format!(
                    "{}; receivers read the record as p=none because rua is valid (RFC 7489 §6.6.3)",
                    problem.message
                ),
            });
            record.policy = Policy::None;
            if p.is_some() {
                // An invalid sp with a valid p: the RFC still says to use p=none.
                record.subdomain_policy = None;
            }
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_record() {
        let record = parse(
            "v=DMARC1; p=reject; sp=quarantine; np=reject; pct=50; \
             rua=mailto:dmarc@example.org,mailto:agg@reports.example.net!10m; \
             ruf=mailto:forensic@example.org; adkim=s; aspf=r; fo=1:d; rf=afrf; ri=3600; t=y; \
             psd=n",
        )
        .unwrap();
        assert_eq!(record.policy, Policy::Reject);
        assert_eq!(record.subdomain_policy, Some(Policy::Quarantine));
        assert_eq!(record.nonexistent_policy, Some(Policy::Reject));
        assert_eq!(record.pct, 50);
        assert_eq!(record.rua.len(), 2);
        assert_eq!(record.rua[1].max_size, Some(10 << 20));
        assert_eq!(
            record.rua[1].mailto_domain().as_deref(),
            Some("reports.example.net")
        );
        assert_eq!(record.ruf.len(), 1);
        assert_eq!(record.adkim, Alignment::Strict);
        assert_eq!(record.aspf, Alignment::Relaxed);
        assert_eq!(record.failure_options, "1:d");
        assert_eq!(record.report_interval, 3600);
        assert!(record.testing);
        assert_eq!(record.unknown, vec![("psd".to_string(), "n".to_string())]);
        assert!(record.diagnostics.is_empty(), "{:?}", record.diagnostics);
    }

    #[test]
    fn defaults() {
        let record = parse("v=DMARC1; p=none").unwrap();
        assert_eq!(record.policy, Policy::None);
        assert_eq!(record.effective_subdomain_policy(), Policy::None);
        assert_eq!(record.pct, 100);
        assert_eq!(record.adkim, Alignment::Relaxed);
        assert!(!record.testing);
        assert!(record.rua.is_empty());
        let record = parse("v=DMARC1;p=quarantine;").unwrap();
        assert_eq!(record.effective_subdomain_policy(), Policy::Quarantine);
    }

    #[test]
    fn fatal_errors() {
        let cases = [
            ("p=reject; v=DMARC1", 1, "starts with"),
            ("v=DMARC2; p=reject", 3, "exactly"),
            ("v=DMARC1; p=block", 13, "without a valid rua"),
            ("v=DMARC1; pct=10", 1, "missing"),
            ("v=DMARC1; p=reject; sp=maybe", 24, "without a valid rua"),
            ("v=DMARC1; p=reject; p=none", 21, "twice"),
            ("v=DMARC1; p", 11, "tag=value"),
            ("", 1, "starts with"),
        ];
        for (text, column, words) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.message().contains(words), "{text}: {err}");
            assert_eq!(err.position(), super::super::col(column), "{text}: {err}");
        }
    }

    #[test]
    fn a_bad_policy_with_rua_reads_as_none() {
        let record = parse("v=DMARC1; p=block; rua=mailto:d@example.org").unwrap();
        assert_eq!(record.policy, Policy::None);
        assert!(record.diagnostics[0].message.contains("p=none"));
    }

    #[test]
    fn bad_values_fall_back_to_defaults_with_a_diagnostic() {
        let record = parse(
            "v=DMARC1; rua=mailto:d@example.org, http://x.example/, mailto:nobody; \
             p=reject; pct=101; adkim=x; aspf=strict; fo=2; rf=iodef; ri=-1; t=maybe; np=all",
        )
        .unwrap();
        assert_eq!(record.policy, Policy::Reject);
        assert_eq!(record.pct, 100);
        assert_eq!(record.adkim, Alignment::Relaxed);
        assert_eq!(record.rua.len(), 1);
        let messages: Vec<String> = record.diagnostics.iter().map(|d| d.to_string()).collect();
        for words in [
            "right after",
            "scheme \"http\"",
            "not a mail address",
            "pct",
            "adkim",
            "aspf",
            "fo",
            "rf",
            "ri",
            "t:",
            "np",
        ] {
            assert!(
                messages.iter().any(|m| m.contains(words)),
                "{words} in {messages:#?}"
            );
        }
    }

    #[test]
    fn dmarc_records_are_recognised() {
        assert!(is_dmarc_record("v=DMARC1; p=none"));
        assert!(is_dmarc_record("v = DMARC1;p=none"));
        assert!(is_dmarc_record("v=DMARC1"));
        assert!(!is_dmarc_record("v=DMARC10; p=none"));
        assert!(!is_dmarc_record("v=spf1 -all"));
        assert!(!is_dmarc_record("p=none; v=DMARC1"));
    }
}
