//! SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format) for code-scanning
//! pipelines such as GitHub's.
//!
//! One run; the tool's rules are the check ids that occur in the report, in order of first
//! appearance, each with its description, the fix as help text and GitHub's
//! `security-severity` property. Every finding is a result: failed and warned checks have
//! `kind: "fail"` and a level from their severity (critical/high → error, medium → warning,
//! low/info → note); passes are `pass`, infos `informational`, skipped checks
//! `notApplicable` and checks that could not run `review`, all with level `none` as the
//! specification requires for kinds other than `fail`. The location of a result is its
//! endpoint as an artifact URI (`smtp://192.0.2.1:25`), with the endpoint as written in the
//! report as a logical location.

use serde_json::{Value, json};

use super::{describe, family};
use crate::finding::{Finding, Report, Severity, Status};

const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

fn kind(s: Status) -> &'static str {
    match s {
        Status::Fail | Status::Warn => "fail",
        Status::Pass => "pass",
        Status::Info => "informational",
        Status::Skipped => "notApplicable",
        Status::Error => "review",
    }
}

fn level(f: &Finding) -> &'static str {
    match (f.status, f.severity) {
        (Status::Fail | Status::Warn, Severity::Critical | Severity::High) => "error",
        (Status::Fail | Status::Warn, Severity::Medium) => "warning",
        (Status::Fail | Status::Warn, _) => "note",
        _ => "none",
    }
}

/// GitHub's numeric `security-severity` (over 9 critical, 7–8.9 high, 4–6.9 medium, below 4
/// low).
fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
        Severity::Info => "0.0",
    }
}

/// Percent-encodes what may not appear in a URI as it is.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An endpoint as a URI: `name[addr]:port` and `addr:port` become `smtp://addr:port`, a host
/// (`name[addr]` or an address) `smtp://addr`, an absolute path a `file://` URI, a target
/// spec (`[scheme://][domain@]host[:port]`) an `smtp://` URI, and a bare domain a `dns:` URI.
pub fn endpoint_uri(endpoint: &str) -> String {
    // `name[addr]`, `name[addr]:port` or a bare address: the address and the port, if any.
    let (addr, port) = match endpoint.split_once('[') {
        Some((name, rest)) if !name.is_empty() => match rest.rsplit_once(']') {
            Some((ip, "")) => (ip, None),
            Some((ip, tail)) => match tail.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None => (endpoint, None),
            },
            None => (endpoint, None),
        },
        _ => (endpoint, None),
    };
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return match port {
            Some(port) => format!(
                "smtp://{}",
                std::net::SocketAddr::new(ip, port.parse().unwrap_or(25))
            ),
            None if ip.is_ipv6() => format!("smtp://[{ip}]"),
            None => format!("smtp://{ip}"),
        };
    }
    if let Ok(addr) = endpoint.parse::<std::net::SocketAddr>() {
        return format!("smtp://{addr}");
    }
    if endpoint.starts_with('/') {
        return format!("file://{}", encode(endpoint));
    }
    if endpoint.contains("://") {
        return encode(endpoint);
    }
    if endpoint.contains(':') || endpoint.contains('@') {
        return format!("smtp://{}", encode(endpoint));
    }
    format!("dns:{}", encode(endpoint))
}

pub fn render(report: &Report) -> String {
    let findings: Vec<&Finding> = report.targets.iter().flat_map(|t| &t.findings).collect();
    let mut rule_ids: Vec<&str> = Vec::new();
    for f in &findings {
        if !rule_ids.contains(&f.id.as_str()) {
            rule_ids.push(&f.id);
        }
    }
    let rules: Vec<Value> = rule_ids
        .iter()
        .map(|id| {
            let of_rule: Vec<&&Finding> = findings.iter().filter(|f| f.id == *id).collect();
            let worst = of_rule
                .iter()
                .filter(|f| matches!(f.status, Status::Fail | Status::Warn))
                .map(|f| f.severity)
                .max()
                .unwrap_or(Severity::Info);
            let description = describe(id)
                .map(str::to_string)
                .or_else(|| of_rule.first().map(|f| f.title.clone()))
                .unwrap_or_default();
            let help = of_rule
                .iter()
                .find(|f| !f.fix.is_empty())
                .map(|f| f.fix.clone())
                .unwrap_or_else(|| description.clone());
            let default_level = match worst {
                Severity::Critical | Severity::High => "error",
                Severity::Medium => "warning",
                _ => "note",
            };
            json!({
                "id": id,
                "name": id,
                "shortDescription": { "text": description },
                "help": { "text": help },
                "defaultConfiguration": { "level": default_level },
                "properties": {
                    "tags": ["security", "mail", family(id)],
                    "security-severity": security_severity(worst),
                }
            })
        })
        .collect();
    let results: Vec<Value> = report
        .targets
        .iter()
        .flat_map(|t| t.findings.iter().map(move |f| (t, f)))
        .map(|(t, f)| {
            let index = rule_ids.iter().position(|id| *id == f.id).unwrap_or(0);
            let mut text = f.title.clone();
            if !f.evidence.is_empty() {
                text.push_str("\n\n");
                text.push_str(&f.evidence);
            }
            json!({
                "ruleId": f.id,
                "ruleIndex": index,
                "kind": kind(f.status),
                "level": level(f),
                "message": { "text": text },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": endpoint_uri(&f.endpoint) }
                    },
                    "logicalLocations": [{ "name": f.endpoint, "kind": "resource" }]
                }],
                "properties": {
                    "status": f.status.as_str(),
                    "severity": f.severity.as_str(),
                    "target": t.target,
                    "fix": f.fix,
                }
            })
        })
        .collect();
    let doc = json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": report.tool,
                    "version": report.version,
                    "rules": rules,
                }
            },
            "invocations": [{ "executionSuccessful": true }],
            "results": results,
        }]
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    #[test]
    fn rules_results_levels_and_locations() {
        let v: Value = serde_json::from_str(&render(&sample())).unwrap();
        assert_eq!(v["version"], "2.1.0");
        let run = &v["runs"][0];
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 7);
        assert_eq!(rules[0]["id"], "smtp.open_relay");
        assert_eq!(rules[0]["defaultConfiguration"]["level"], "error");
        assert_eq!(rules[0]["properties"]["security-severity"], "9.5");
        let results = run["results"].as_array().unwrap();
        assert_eq!(results.len(), 7);
        assert_eq!(results[0]["kind"], "fail");
        assert_eq!(results[0]["level"], "error");
        assert_eq!(results[1]["level"], "note");
        assert_eq!(results[2]["kind"], "pass");
        assert_eq!(results[2]["level"], "none");
        assert_eq!(results[4]["kind"], "notApplicable");
        assert_eq!(results[5]["kind"], "review");
        assert_eq!(
            results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "smtp://192.0.2.1:25"
        );
        assert_eq!(results[6]["ruleIndex"], 6);
    }

    #[test]
    fn endpoints_become_uris() {
        assert_eq!(
            endpoint_uri("mx[2001:db8::1]:25"),
            "smtp://[2001:db8::1]:25"
        );
        assert_eq!(endpoint_uri("[::1]:587"), "smtp://[::1]:587");
        assert_eq!(endpoint_uri("192.0.2.1:25"), "smtp://192.0.2.1:25");
        assert_eq!(endpoint_uri("mx[192.0.2.1]"), "smtp://192.0.2.1");
        assert_eq!(endpoint_uri("192.0.2.1"), "smtp://192.0.2.1");
        assert_eq!(endpoint_uri("mx[2001:db8::1]"), "smtp://[2001:db8::1]");
        assert_eq!(endpoint_uri("2001:db8::1"), "smtp://[2001:db8::1]");
        assert_eq!(endpoint_uri("[x]"), "dns:[x]");
        assert_eq!(
            endpoint_uri("/etc/postfix/main.cf"),
            "file:///etc/postfix/main.cf"
        );
        assert_eq!(
            endpoint_uri("example.org@127.0.0.1:2525"),
            "smtp://example.org@127.0.0.1:2525"
        );
        assert_eq!(endpoint_uri("example.org"), "dns:example.org");
        assert_eq!(endpoint_uri("a b\"c"), "dns:a%20b%22c");
    }

    #[test]
    fn dns_checks_get_their_rules_and_dns_locations() {
        use crate::finding::TargetReport;
        let mut report = Report::new();
        report.targets.push(TargetReport {
            target: "example.org".into(),
            endpoints: vec!["mx1.example.org[192.0.2.1]:25".into()],
            findings: vec![
                Finding::new(
                    "dns.spf",
                    Status::Fail,
                    Severity::High,
                    "example.org",
                    "+all",
                    "v=spf1 +all",
                ),
                Finding::new(
                    "reputation.dnsbl",
                    Status::Pass,
                    Severity::Info,
                    "mx1.example.org[192.0.2.1]:25",
                    "not listed",
                    "",
                ),
            ],
        });
        let v: Value = serde_json::from_str(&render(&report)).unwrap();
        let run = &v["runs"][0];
        let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
        let ids: Vec<&str> = rules.iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids, ["dns.spf", "reputation.dnsbl"]);
        assert_eq!(
            rules[0]["shortDescription"]["text"],
            crate::dns::describe("dns.spf").unwrap()
        );
        assert_eq!(
            rules[1]["shortDescription"]["text"],
            crate::dns::describe("reputation.dnsbl").unwrap()
        );
        let results = run["results"].as_array().unwrap();
        assert_eq!(
            results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "dns:example.org"
        );
        assert_eq!(results[1]["ruleIndex"], 1);
    }
}
