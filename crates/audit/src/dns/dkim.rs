//! `dns.dkim`: DKIM public keys (RFC 6376 §3.6, RFC 8463) published under the domain, found
//! by asking for `SELECTOR._domainkey.DOMAIN` over [`COMMON_SELECTORS`] and the selectors of
//! `--dkim-selector` (a selector cannot be listed from the DNS, so absence is only a warning:
//! the domain may sign under a selector nobody guessed). Keys are parsed by
//! `ravelin_dns::records::dkim`.
//!
//! Fails on: an RSA key under 1024 bits, a key record that does not parse; warns on: no key
//! found, only revoked keys, an RSA key under 2048 bits, an unknown key type, `t=y`, the
//! parser's diagnostics. Revoked keys next to live ones are noted, not faulted.
//!
//! First `_domainkey.DOMAIN` itself is asked (type CNAME, which no resolver follows): NXDOMAIN
//! there means that no name exists below
//! it (RFC 8020), so no key under any selector, and the common selectors are not asked (the
//! shortcut of internet.nl and of the EU's MECSA tool); the `--dkim-selector` ones still are,
//! which also gets past a DNS server that answers NXDOMAIN for names with names below them.
//!
//! Limits: at most [`MAX_SELECTORS`] selectors are asked. How it fails: selectors whose
//! lookups fail temporarily are named; when every lookup failed, the finding is `error`.

use ravelin_dns::LookupError;
use ravelin_dns::records::dkim::{self, KeyType};

use super::{DnsCtx, verdict};
use crate::finding::{Finding, Severity, Status};

const ID: &str = "dns.dkim";

/// Selectors tried on every domain: the defaults of common signers and mail services.
pub const COMMON_SELECTORS: &[&str] = &[
    "default",
    "dkim",
    "mail",
    "selector1",
    "selector2",
    "google",
    "k1",
    "k2",
    "s1",
    "s2",
    "key1",
    "key2",
    "smtp",
    "mx",
    "email",
    "dkim1",
    "mandrill",
    "mailjet",
    "zoho",
    "protonmail",
    "fm1",
    "ed25519",
    "rsa",
    "ravelin",
];

/// Most selectors asked for one domain.
pub const MAX_SELECTORS: usize = 64;

const FIX: &str = "Sign outgoing mail with DKIM (Ravelin: `ravelin dkim keygen --domain DOMAIN \
    --selector S` and publish the TXT record it prints) with RSA 2048 bits or Ed25519; \
    remove t=y once signatures verify; replace short keys by publishing a new selector and \
    moving the signer to it. If you sign under a selector not tried here, pass it with \
    --dkim-selector.";

/// The `dns.dkim` finding.
pub async fn check(ctx: &DnsCtx<'_>) -> Finding {
    let branch = format!("_domainkey.{}", ctx.domain);
    // A CNAME query: its NXDOMAIN is about `_domainkey.DOMAIN` itself, never about the target
    // of a CNAME there (names below a CNAME's owner may still exist).
    let nothing_below = matches!(
        ctx.resolver.cname(&branch).await,
        Err(LookupError::NxDomain)
    );
    let mut selectors: Vec<String> = if nothing_below {
        Vec::new()
    } else {
        COMMON_SELECTORS.iter().map(|s| s.to_string()).collect()
    };
    for s in &ctx.options.dkim_selectors {
        let s = s.trim_end_matches('.').to_ascii_lowercase();
        if !selectors.contains(&s) {
            selectors.push(s);
        }
    }
    selectors.truncate(MAX_SELECTORS);
    // All selectors at once, polled within this task (a task each would cost more than the
    // lookups). A selector's name is the domain's own: no other lookup of a batch shares its
    // answer, so the run's answer cache is passed by.
    let answers = futures_util::future::join_all(selectors.iter().map(|selector| {
        let name = format!("{selector}._domainkey.{}", ctx.domain);
        async move {
            ctx.resolver
                .txt_unshared(&name)
                .await
                .map(|answer| answer.records)
        }
    }))
    .await;
    let mut found: Vec<String> = Vec::new();
    let mut problems: Vec<(Severity, String)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut live = 0usize;
    let mut revoked = 0usize;
    for (selector, answer) in selectors.iter().zip(answers) {
        let records = match answer {
            Ok(records) => records,
            Err(e) if e.is_negative() => continue,
            Err(e) => {
                failed.push(format!("{selector}: {e}"));
                continue;
            }
        };
        let Some(text) = records
            .iter()
            .find(|r| r.contains("p=") || r.starts_with("v=DKIM1"))
        else {
            continue;
        };
        let key = match dkim::parse(text) {
            Ok(key) => key,
            Err(e) => {
                problems.push((
                    Severity::High,
                    format!("{selector}: the key record does not parse ({e}): verifiers fail every signature"),
                ));
                found.push(format!("{selector}: invalid"));
                continue;
            }
        };
        if key.revoked {
            revoked += 1;
            found.push(format!("{selector}: revoked (empty p=)"));
            continue;
        }
        live += 1;
        let kind = match (&key.key_type, key.rsa_bits) {
            (KeyType::Rsa, Some(bits)) => {
                if bits < 1024 {
                    problems.push((
                        Severity::High,
                        format!("{selector}: RSA {bits} bits, under 1024: verifiers treat signatures as invalid (RFC 8301)"),
                    ));
                } else if bits < 2048 {
                    problems.push((
                        Severity::Medium,
                        format!("{selector}: RSA {bits} bits, under the 2048 recommended"),
                    ));
                }
                format!("RSA {bits}")
            }
            (KeyType::Rsa, None) => "RSA".to_string(),
            (KeyType::Ed25519, _) => "Ed25519".to_string(),
            (KeyType::Other(k), _) => {
                problems.push((
                    Severity::Medium,
                    format!("{selector}: key type {k:?} is unknown to verifiers"),
                ));
                format!("k={k}")
            }
        };
        if key.testing {
            problems.push((
                Severity::Low,
                format!(
                    "{selector}: t=y, the domain is testing DKIM: verifiers may ignore failures"
                ),
            ));
        }
        for d in &key.diagnostics {
            problems.push((Severity::Low, format!("{selector}: {d}")));
        }
        found.push(format!("{selector}: {kind}"));
    }
    if live == 0 && revoked == 0 && problems.is_empty() {
        if !failed.is_empty() && failed.len() == selectors.len() && !nothing_below {
            return ctx.finding(
                ID,
                Status::Error,
                Severity::Info,
                "check could not run: DNS lookups failed",
                format!(
                    "the lookups of all {} selectors failed, the first: {}",
                    failed.len(),
                    failed[0]
                ),
            );
        }
        let mut evidence = if nothing_below {
            let mut text = format!(
                "{branch} does not exist (NXDOMAIN), so no selector below it does (RFC 8020)"
            );
            if !selectors.is_empty() {
                text.push_str(&format!(
                    "; no key under the selectors given either: {}",
                    selectors.join(", ")
                ));
            }
            text
        } else {
            format!(
                "no key under {} selectors: {}",
                selectors.len(),
                selectors.join(", ")
            )
        };
        for f in &failed {
            evidence.push_str(&format!("\nlookup failed: {f}"));
        }
        return ctx
            .finding(
                ID,
                Status::Warn,
                Severity::Medium,
                "no DKIM key found under the selectors tried",
                evidence,
            )
            .fix(FIX);
    }
    if live == 0 && revoked > 0 {
        problems.push((
            Severity::Medium,
            "every key found is revoked: nothing can verify the domain's signatures".into(),
        ));
    }
    for f in failed {
        problems.push((Severity::Low, format!("lookup failed: {f}")));
    }
    let base = ctx.finding(
        ID,
        Status::Pass,
        Severity::Info,
        "DKIM keys are published and strong",
        found.join("\n"),
    );
    verdict(
        base,
        problems,
        Severity::High,
        "DKIM keys have problems",
        FIX,
    )
}
