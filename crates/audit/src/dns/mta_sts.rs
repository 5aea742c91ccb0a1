//! `dns.mta_sts`: MTA-STS (RFC 8461). The `_mta-sts.DOMAIN` TXT record is read and selected
//! as RFC 8461 §3.1 says (`ravelin_dns::records::mta_sts::select_txt`); the policy is fetched
//! from `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` with certificate validation, no
//! redirects and a size limit (`ravelin_dns::mta_sts::PolicyFetcher`, the gateway's own
//! fetcher), then judged against the real MX set.
//!
//! Fails on: an invalid record, a policy that cannot be fetched or parsed, an MX host no
//! `mx` pattern matches (enforce: compliant senders refuse to deliver to it); warns on: no
//! MTA-STS at all, `mode: testing` or `none`, `max_age` under one day, a Content-Type other
//! than text/plain, the policy parser's diagnostics. [`certificates`] then cross-checks the
//! policy against what the MX endpoints presented: under `enforce` (or `testing`), an MX
//! without STARTTLS or with a certificate that fails `tls.cert_chain` or `tls.cert_hostname`
//! is one compliant senders refuse to deliver to (or report), which fails the check.
//!
//! Settings read: [`super::DnsOptions`] (`mta_sts_port`, `mta_sts_ca_file`,
//! `mta_sts_timeout`, and the run's TLS configuration in `mta_sts_tls`). How it fails: a
//! temporary failure of the TXT lookup is an `error`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ravelin_dns::mta_sts::{FetchError, FetchSettings, PolicyFetcher};
use ravelin_dns::records::mta_sts::{StsMode, is_sts_record, select_txt};

use super::{DnsCtx, MxSet, txt, verdict};
use crate::finding::{Finding, Severity, Status};

const ID: &str = "dns.mta_sts";
const FIX: &str = "Publish `_mta-sts.DOMAIN TXT \"v=STSv1; id=20240101T000000;\"` and serve \
    https://mta-sts.DOMAIN/.well-known/mta-sts.txt (text/plain, a certificate valid for \
    mta-sts.DOMAIN, no redirect) with `version: STSv1`, `mode: enforce`, one `mx:` line per MX \
    host (or a `*.DOMAIN` pattern) and `max_age: 604800` or more; change the id whenever the \
    policy changes.";

/// Where the evidence names the policy's mode (read back by [`certificates`]).
const MODE: &str = "policy: mode ";

/// Policies cached for less than a day protect little between fetches.
const MIN_MAX_AGE: u32 = 86_400;

/// The TLS client configurations of a run's policy fetches, one per CA file (`None`: the
/// system's trust store), built at first use. Clones share them.
#[derive(Clone, Default)]
pub struct TlsConfigs(Arc<Mutex<Vec<BuiltConfig>>>);

/// A CA file and the configuration trusting it.
type BuiltConfig = (Option<PathBuf>, Arc<rustls::ClientConfig>);

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfigs")
    }
}

impl TlsConfigs {
    /// The configuration trusting `ca_file` (or the system's store): the one built before,
    /// or a new one; the error when the trust anchors cannot be loaded (not kept, so a
    /// later fetch reports it too).
    fn get(&self, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, FetchError> {
        let mut built = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, config)) = built.iter().find(|(file, _)| file.as_deref() == ca_file) {
            return Ok(config.clone());
        }
        let config = PolicyFetcher::tls_config(ca_file)?;
        built.push((ca_file.map(Path::to_path_buf), config.clone()));
        Ok(config)
    }
}

/// The `dns.mta_sts` finding.
pub async fn check(ctx: &DnsCtx<'_>, mx: &MxSet) -> Finding {
    let name = format!("_mta-sts.{}", ctx.domain);
    let records = match txt(ctx.resolver, &name).await {
        Ok(records) => records,
        Err(e) if e.is_negative() => Vec::new(),
        Err(e) => return ctx.lookup_error(ID, &format!("TXT {name}"), &e),
    };
    if !records.iter().any(|r| is_sts_record(r)) {
        return ctx
            .finding(
                ID,
                Status::Warn,
                Severity::Low,
                "no MTA-STS: senders cannot insist on TLS to the MX hosts",
                format!("TXT {name}: no record starting with v=STSv1"),
            )
            .fix(FIX);
    }
    let record = match select_txt(&records) {
        Ok(record) => record,
        Err(e) => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::Medium,
                    "the MTA-STS record is invalid: senders ignore the policy",
                    format!("TXT {name}: {}\n{e}", records.join(" | ")),
                )
                .fix(FIX);
        }
    };
    let settings = FetchSettings {
        timeout: ctx.options.mta_sts_timeout,
        port: ctx.options.mta_sts_port,
        ca_file: ctx.options.mta_sts_ca_file.clone(),
    };
    let fetched = match ctx.options.mta_sts_tls.get(settings.ca_file.as_deref()) {
        Ok(config) => {
            PolicyFetcher::with_client_config(ctx.resolver.clone(), settings, config)
                .fetch(ctx.domain)
                .await
        }
        Err(e) => {
            return ctx.finding(
                ID,
                Status::Error,
                Severity::Info,
                "check could not run",
                e.to_string(),
            );
        }
    };
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(e) => {
            return ctx
                .finding(
                    ID,
                    Status::Fail,
                    Severity::High,
                    "the MTA-STS policy cannot be fetched: senders cannot apply it",
                    format!(
                        "TXT {name}: id={}\nhttps://mta-sts.{}/.well-known/mta-sts.txt: {e}",
                        record.id, ctx.domain
                    ),
                )
                .fix(FIX);
        }
    };
    let policy = &fetched.policy;
    let mut problems: Vec<(Severity, String)> = Vec::new();
    match policy.mode {
        StsMode::Enforce => {}
        StsMode::Testing => problems.push((
            Severity::Low,
            "mode: testing — failures are only reported, TLS is not enforced".into(),
        )),
        StsMode::None => {
            problems.push((Severity::Low, "mode: none — the policy is withdrawn".into()))
        }
    }
    if policy.max_age < MIN_MAX_AGE {
        problems.push((
            Severity::Low,
            format!(
                "max_age: {} seconds, under a day: a downgrade attacker needs to wait only that long (RFC 8461 recommends weeks)",
                policy.max_age
            ),
        ));
    }
    if let Some(ct) = &fetched.content_type
        && !ct.to_ascii_lowercase().starts_with("text/plain")
    {
        problems.push((
            Severity::Low,
            format!("Content-Type: {ct}; RFC 8461 §3.3 says text/plain"),
        ));
    }
    for d in &policy.diagnostics {
        problems.push((Severity::Low, format!("policy {d}")));
    }
    if policy.mode != StsMode::None {
        for host in &mx.hosts {
            if !policy.matches_mx(&host.name) {
                let severity = if policy.mode == StsMode::Enforce {
                    Severity::High
                } else {
                    Severity::Medium
                };
                problems.push((
                    severity,
                    format!(
                        "MX {} matches no mx pattern ({}): compliant senders refuse to deliver to it",
                        host.name,
                        policy.mx.join(", ")
                    ),
                ));
            }
        }
    }
    let evidence = format!(
        "TXT {name}: id={}\n{MODE}{}, max_age {}, mx {}",
        record.id,
        policy.mode,
        policy.max_age,
        policy.mx.join(", ")
    );
    let base = ctx.finding(
        ID,
        Status::Pass,
        Severity::Info,
        "MTA-STS is enforced and covers every MX host",
        evidence,
    );
    verdict(
        base,
        problems,
        Severity::Medium,
        "the MTA-STS policy has problems",
        FIX,
    )
}

/// Adds to a `dns.mta_sts` finding the MX endpoints whose TLS a compliant sender would refuse
/// under the policy: no STARTTLS, or a certificate failing `tls.cert_chain` or
/// `tls.cert_hostname` (RFC 8461 §4.2). Under `enforce` that fails the check at high
/// severity, under `testing` at medium; other findings and other modes are left alone.
pub fn certificates(finding: &mut Finding, endpoint_findings: &[Finding]) {
    if finding.id != ID || !matches!(finding.status, Status::Pass | Status::Warn) {
        return;
    }
    let severity = if finding.evidence.contains(&format!("{MODE}enforce")) {
        Severity::High
    } else if finding.evidence.contains(&format!("{MODE}testing")) {
        Severity::Medium
    } else {
        return;
    };
    let refused: Vec<String> = endpoint_findings
        .iter()
        .filter(|f| {
            matches!(
                f.id.as_str(),
                "tls.starttls" | "tls.cert_chain" | "tls.cert_hostname"
            ) && f.status == Status::Fail
        })
        .map(|f| {
            format!(
                "MX {}: {} ({}): MTA-STS senders refuse to deliver there",
                f.endpoint, f.title, f.id
            )
        })
        .collect();
    if refused.is_empty() {
        return;
    }
    let base = finding.clone();
    *finding = verdict(
        base,
        refused.into_iter().map(|line| (severity, line)).collect(),
        Severity::Medium,
        "MTA-STS senders cannot deliver to every MX host",
        FIX,
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ravelin_tls::testing::TestPki;

    use super::TlsConfigs;

    #[test]
    fn a_run_builds_one_tls_configuration_per_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = |name: &str| {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            let files = TestPki::new(&format!("mta-sts.{name}.example"))
                .unwrap()
                .write_to(&sub)
                .unwrap();
            Some(files.ca)
        };
        let (first, second) = (ca("one"), ca("two"));
        let configs = TlsConfigs::default();
        let shared = configs.clone();
        let a = configs.get(first.as_deref()).unwrap();
        assert!(Arc::ptr_eq(&a, &shared.get(first.as_deref()).unwrap()));
        let b = configs.get(second.as_deref()).unwrap();
        assert!(
            !Arc::ptr_eq(&a, &b),
            "another CA file, another configuration"
        );
        // A CA file that cannot be read is reported each time, never replaced by another.
        let missing = Some(dir.path().join("missing.pem"));
        for _ in 0..2 {
            let e = configs.get(missing.as_deref()).unwrap_err().to_string();
            assert!(e.contains("missing.pem"), "{e}");
        }
    }
}
