//! The HTML report: one self-contained file (inline CSS, no script, no external resource)
//! an administrator can hand to a manager.
//!
//! At the top: what was audited, the summary, and the problems (failed and warned checks)
//! from the most to the least severe. Below: every target with all its findings, evidence
//! and fix folded in `<details>`. Every string from the report is escaped ([`escape`]), so
//! nothing a server sent can become markup.

use std::fmt::Write;

use super::{Summary, describe, family};
use crate::finding::{Finding, Report, Status};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // C0 controls as their visible "control pictures" (U+2400…), others replaced.
            c if c.is_control() && c != '\n' && c != '\t' => {
                out.push(
                    char::from_u32(0x2400 + c as u32)
                        .filter(|_| (c as u32) < 0x20)
                        .unwrap_or('\u{fffd}'),
                );
            }
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#1d2329;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h3{font-size:1em;margin:1.2em 0 .4em;color:#57606a;text-transform:uppercase;letter-spacing:.05em}
.meta{color:#57606a}.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:1em 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.5em .9em;min-width:6em}.card b{display:block;font-size:1.5em}
table{border-collapse:collapse;width:100%;margin:.4em 0}td,th{text-align:left;padding:.35em .5em;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-size:.85em;color:#57606a}.id{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;white-space:nowrap}
.badge{display:inline-block;border-radius:1em;padding:0 .6em;font-size:.8em;font-weight:600;white-space:nowrap}
.fail{background:#ffebe9;color:#a40e26}.warn{background:#fff8c5;color:#7d4e00}.pass{background:#dafbe1;color:#116329}
.info{background:#ddf4ff;color:#0550ae}.skipped{background:#f6f8fa;color:#57606a}.error{background:#fbefff;color:#8250df}
.sev-critical{color:#a40e26;font-weight:700}.sev-high{color:#bc4c00;font-weight:600}.sev-medium{color:#7d4e00}.sev-low{color:#57606a}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;border-radius:6px;padding:.6em;margin:.3em 0;font-size:.85em}
details summary{cursor:pointer;color:#0969da}footer{margin-top:3em;color:#57606a;font-size:.85em}
";

pub fn render(report: &Report) -> String {
    let summary = Summary::of(report);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Mail security audit — {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&targets_line(report))
    );
    let _ = write!(
        h,
        "<h1>Mail security audit</h1>\n<p class=\"meta\">{} — {} {}</p>\n",
        escape(&targets_line(report)),
        escape(&report.tool),
        escape(&report.version)
    );
    h.push_str("<div class=\"cards\">\n");
    for (status, label) in [
        (Status::Fail, "failed"),
        (Status::Warn, "warnings"),
        (Status::Pass, "passed"),
        (Status::Info, "information"),
        (Status::Skipped, "skipped"),
        (Status::Error, "not run"),
    ] {
        let _ = writeln!(
            h,
            "<div class=\"card {}\"><b>{}</b>{label}</div>",
            status.as_str(),
            summary.count(status)
        );
    }
    h.push_str("</div>\n");
    let _ = writeln!(h, "<p>{}</p>", escape(&summary.line()));

    let mut problems: Vec<(&str, &Finding)> = report
        .targets
        .iter()
        .flat_map(|t| t.findings.iter().map(move |f| (t.target.as_str(), f)))
        .filter(|(_, f)| matches!(f.status, Status::Fail | Status::Warn))
        .collect();
    problems.sort_by_key(|p| std::cmp::Reverse(p.1.severity));
    h.push_str("<h2>What to fix first</h2>\n");
    if problems.is_empty() {
        h.push_str("<p>No failed or warned check.</p>\n");
    } else {
        h.push_str(
            "<table>\n<tr><th>Severity</th><th>Check</th><th>Target</th><th>Problem</th></tr>\n",
        );
        for (target, f) in &problems {
            let _ = writeln!(
                h,
                "<tr><td class=\"sev-{sev}\">{sev}</td><td class=\"id\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(&f.id),
                escape(target),
                escape(&f.title),
                sev = f.severity.as_str()
            );
        }
        h.push_str("</table>\n");
    }

    for t in &report.targets {
        let _ = writeln!(h, "<h2>{}</h2>", escape(&t.target));
        if !t.endpoints.is_empty() {
            let _ = writeln!(
                h,
                "<p class=\"meta\">Endpoints: {}</p>",
                escape(&t.endpoints.join(", "))
            );
        }
        let mut families: Vec<&str> = Vec::new();
        for f in &t.findings {
            if !families.contains(&family(&f.id)) {
                families.push(family(&f.id));
            }
        }
        for fam in families {
            let _ = writeln!(h, "<h3>{}</h3>", escape(fam));
            h.push_str("<table>\n<tr><th>Status</th><th>Check</th><th>Result</th></tr>\n");
            for f in t.findings.iter().filter(|f| family(&f.id) == fam) {
                row(&mut h, f, t.endpoints.len() > 1);
            }
            h.push_str("</table>\n");
        }
    }
    let _ = write!(
        h,
        "<footer>Generated by {} {}. Evidence is quoted as the servers sent it.</footer>\n\
         </body>\n</html>\n",
        escape(&report.tool),
        escape(&report.version)
    );
    h
}

fn targets_line(report: &Report) -> String {
    let names: Vec<&str> = report.targets.iter().map(|t| t.target.as_str()).collect();
    match names.len() {
        0 => "no targets".into(),
        1..=3 => names.join(", "),
        n => format!("{}, … ({n} targets)", names[..3].join(", ")),
    }
}

fn row(h: &mut String, f: &Finding, show_endpoint: bool) {
    let severity = match f.status {
        Status::Fail | Status::Warn => {
            format!(" <span class=\"sev-{0}\">{0}</span>", f.severity.as_str())
        }
        _ => String::new(),
    };
    let _ = write!(
        h,
        "<tr><td><span class=\"badge {s}\">{s}</span>{severity}</td><td class=\"id\" title=\"{}\">{}</td><td>{}",
        escape(describe(&f.id).unwrap_or("")),
        escape(&f.id),
        escape(&f.title),
        s = f.status.as_str()
    );
    if show_endpoint {
        let _ = write!(h, " <span class=\"meta\">({})</span>", escape(&f.endpoint));
    }
    let open = if matches!(f.status, Status::Fail | Status::Warn) {
        " open"
    } else {
        ""
    };
    if !f.evidence.is_empty() || !f.fix.is_empty() {
        let _ = write!(h, "<details{open}><summary>details</summary>");
        if !f.evidence.is_empty() {
            let _ = write!(h, "<div>Evidence</div><pre>{}</pre>", escape(&f.evidence));
        }
        if !f.fix.is_empty() {
            let _ = write!(h, "<div>Fix</div><pre>{}</pre>", escape(&f.fix));
        }
        h.push_str("</details>");
    }
    h.push_str("</td></tr>\n");
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn escapes_everything_from_servers() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("\u{1b}[31m\u{7f}"), "\u{241b}[31m\u{fffd}");
        let html = render(&sample());
        assert!(!html.contains("<script"), "server text became markup");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("the server reveals &lt;software&gt;"));
        assert!(!html.contains('\u{1b}'));
    }

    #[test]
    fn is_one_self_contained_document() {
        let html = render(&sample());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        for external in ["<link", "<img", "src=", "http://", "https://", "@import"] {
            assert!(!html.contains(external), "external resource: {external}");
        }
        assert!(html.contains("What to fix first"));
        let critical = html.find("sev-critical\">critical").unwrap();
        let low = html.find("sev-low\">low").unwrap();
        assert!(critical < low, "problems are sorted by severity");
    }
}
