//! Which checks a run makes (`--check` and `--skip-check`): patterns over check ids, where a
//! pattern names one check (`dns.spf`) or every check below it (`dns`, `smtp.smuggling`).
//!
//! A check that is not selected is not run: the DNS checks send no lookup; the SMTP checks
//! that name the domain (recipients, relay, smuggling: the ones that can leave a message
//! behind with `--active`), the TLS checks and the port scan make no connection; and a domain
//! target for which no selected check needs its mail hosts is audited without connecting to
//! them. A mail host whose checks are wanted still gets the passive SMTP session that tells
//! whether it answers (its findings are left out of the report when not selected). How it
//! fails: a pattern that names no check, or patterns that together select none, are refused
//! by [`Selection::new`], so a typo never silently selects nothing.

use std::sync::OnceLock;

/// Every check id ([`crate::check_ids`]), listed once per process.
fn all_ids() -> &'static [String] {
    static IDS: OnceLock<Vec<String>> = OnceLock::new();
    IDS.get_or_init(crate::check_ids)
}

/// The check ids of a run: those matching an `only` pattern (every id when there is none),
/// minus those matching a `skip` pattern.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    only: Vec<String>,
    skip: Vec<String>,
}

/// The check families of a mail host itself, the only checks of a host target.
const HOST_FAMILIES: &[&str] = &["smtp", "tls", "ports"];

/// The DNS checks that also read what a domain's mail hosts present: `dns.ptr` compares the
/// PTR name with the host's banner and EHLO name, `dns.dane` matches the certificate the host
/// presents, and `dns.mta_sts` checks the MX hosts' certificates against an enforced policy.
/// With [`HOST_FAMILIES`], the checks that need a connection: a domain target whose selected
/// checks are all outside them is audited like `--dns-only`.
const DNS_READING_HOSTS: &[&str] = &["dns.ptr", "dns.dane", "dns.mta_sts"];

/// The family of the smuggling sequences, and the id of the notice that they were skipped.
const SMUGGLING: &str = "smtp.smuggling";

impl Selection {
    /// A selection from the patterns of `--check` (`only`) and `--skip-check` (`skip`),
    /// lowercased; an error names the first pattern that matches no check id, or says that
    /// the patterns leave none.
    pub fn new(only: &[String], skip: &[String]) -> Result<Selection, String> {
        let ids = all_ids();
        let known = |pattern: &String| -> Result<String, String> {
            let pattern = pattern.trim().to_ascii_lowercase();
            if ids.iter().any(|id| matches(&pattern, id)) {
                Ok(pattern)
            } else {
                let mut families: Vec<&str> = Vec::new();
                for family in ids.iter().filter_map(|id| id.split('.').next()) {
                    if !families.contains(&family) {
                        families.push(family);
                    }
                }
                Err(format!(
                    "'{pattern}' names no check: give a check id (dns.spf) or a family ({}); \
                     `ravelin audit --list-checks` lists every id",
                    families.join(", ")
                ))
            }
        };
        let selection = Selection {
            only: only.iter().map(known).collect::<Result<_, _>>()?,
            skip: skip.iter().map(known).collect::<Result<_, _>>()?,
        };
        if !ids.iter().any(|id| selection.wants(id)) {
            return Err("these patterns leave no check to make".to_string());
        }
        Ok(selection)
    }

    /// Whether the check `id` is selected. `smtp.smuggling`, the id of the notice that the
    /// sequences were not tested, is selected with any of its sequences.
    pub fn wants(&self, id: &str) -> bool {
        if self.is_everything() {
            return true;
        }
        if id == SMUGGLING {
            return self.wants_any_under(SMUGGLING);
        }
        self.wants_id(id)
    }

    /// Whether any check of the family `family` (or the check `family` itself) is selected.
    pub fn wants_any_under(&self, family: &str) -> bool {
        if self.is_everything() {
            return true;
        }
        all_ids()
            .iter()
            .any(|id| matches(family, id) && self.wants_id(id))
    }

    fn wants_id(&self, id: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|p| matches(p, id)))
            && !self.skip.iter().any(|p| matches(p, id))
    }

    /// Whether every check is selected (no pattern given).
    pub fn is_everything(&self) -> bool {
        self.only.is_empty() && self.skip.is_empty()
    }

    /// Whether a check of a mail host itself (SMTP, TLS, ports) is selected.
    pub fn wants_a_host_check(&self) -> bool {
        HOST_FAMILIES.iter().any(|f| self.wants_any_under(f))
    }

    /// Whether a selected check needs a connection to a domain's mail hosts.
    pub fn needs_connection(&self) -> bool {
        self.wants_a_host_check() || DNS_READING_HOSTS.iter().any(|f| self.wants_any_under(f))
    }

    /// Whether a selected check can run without connecting to a mail host (`--dns-only`).
    pub fn wants_a_lookup(&self) -> bool {
        all_ids().iter().any(|id| {
            (matches("dns", id) || matches("reputation", id))
                && !matches("dns.dane", id)
                && self.wants(id)
        })
    }
}

/// Whether `pattern` names `id`: the id itself, or a family it belongs to (`dns` names
/// `dns.spf`, never `dnssec`).
fn matches(pattern: &str, id: &str) -> bool {
    id.strip_prefix(pattern)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(only: &[&str], skip: &[&str]) -> Selection {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Selection::new(&owned(only), &owned(skip)).unwrap()
    }

    #[test]
    fn patterns_name_a_check_or_a_family() {
        assert!(matches("dns", "dns.spf"));
        assert!(matches("dns.spf", "dns.spf"));
        assert!(matches("smtp.smuggling", "smtp.smuggling.lf"));
        assert!(!matches("dns.sp", "dns.spf"));
        assert!(!matches("dns.dnssec", "dns.dns"));
        assert!(!matches("dns.spf", "dns"));
    }

    #[test]
    fn only_and_skip_combine() {
        let all = Selection::default();
        assert!(all.is_everything() && all.wants("dns.dkim") && all.needs_connection());

        let some = select(&["dns.spf", "DNS.DMARC"], &[]);
        assert!(some.wants("dns.spf") && some.wants("dns.dmarc"));
        assert!(!some.wants("dns.dkim") && !some.wants("tls.versions"));
        assert!(!some.needs_connection());

        let family = select(&["dns"], &["dns.dkim"]);
        assert!(family.wants("dns.caa") && !family.wants("dns.dkim"));
        // dns.ptr, dns.dane and dns.mta_sts read what the host presents.
        assert!(family.needs_connection() && family.wants_a_lookup());
        let lookups = select(&["dns"], &["dns.ptr", "dns.dane", "dns.mta_sts"]);
        assert!(!lookups.needs_connection());
        assert!(select(&[], &["dns"]).needs_connection());
        assert!(!select(&["tls", "dns.dane"], &[]).wants_a_lookup());

        // The skipped-sequences notice goes with any sequence.
        let one = crate::smtp::smuggling_ids().next().unwrap();
        let sequence = select(&[one.as_str()], &[]);
        assert!(sequence.wants("smtp.smuggling") && sequence.wants(&one));
        assert!(sequence.wants_any_under("smtp") && !sequence.wants_any_under("tls"));
        assert!(!select(&["smtp"], &["smtp.smuggling"]).wants("smtp.smuggling"));
    }

    #[test]
    fn a_pattern_that_names_no_check_is_refused() {
        let err = Selection::new(&["dns.spff".to_string()], &[]).unwrap_err();
        assert!(err.contains("'dns.spff' names no check"), "{err}");
        assert!(
            err.contains("(dns, reputation, smtp, tls, ports, postfix)"),
            "{err}"
        );
        assert!(Selection::new(&[], &["tsl".to_string()]).is_err());
        let none = Selection::new(&["dns.spf".to_string()], &["dns".to_string()]).unwrap_err();
        assert!(none.contains("no check"), "{none}");
    }
}
