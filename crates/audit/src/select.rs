//! Which checks a run makes (`--check` and `--skip-check`): patterns over check ids, where a
//! pattern names one check (`dns.spf`) or every check below it (`dns`, `smtp.smuggling`).
//!
//! The DNS checks that are not selected are not run at all (their lookups are never sent),
//! and a domain target for which no selected check needs a connection is audited without
//! connecting to its mail hosts; every other check runs and its findings are left out of the
//! report. How it fails: a pattern that names no check is refused by [`Selection::new`] with
//! the families it could have meant, so a typo never silently selects nothing.

use crate::check_ids;

/// The check ids of a run: those matching an `only` pattern (every id when there is none),
/// minus those matching a `skip` pattern.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    only: Vec<String>,
    skip: Vec<String>,
}

/// The checks that talk to the mail host itself: a domain target whose selected checks are
/// all outside these is audited like `--dns-only`. `dns.ptr` compares the PTR name with the
/// host's banner and EHLO name, and `dns.dane` matches the certificate the host presents.
const NEED_A_CONNECTION: &[&str] = &["smtp", "tls", "ports", "dns.ptr", "dns.dane"];

impl Selection {
    /// A selection from the patterns of `--check` (`only`) and `--skip-check` (`skip`),
    /// lowercased; an error names the first pattern that matches no check id.
    pub fn new(only: &[String], skip: &[String]) -> Result<Selection, String> {
        let ids = check_ids();
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
        Ok(Selection {
            only: only.iter().map(known).collect::<Result<_, _>>()?,
            skip: skip.iter().map(known).collect::<Result<_, _>>()?,
        })
    }

    /// Whether the check `id` is selected.
    pub fn wants(&self, id: &str) -> bool {
        (self.only.is_empty() || self.only.iter().any(|p| matches(p, id)))
            && !self.skip.iter().any(|p| matches(p, id))
    }

    /// Whether every check is selected (no pattern given).
    pub fn is_everything(&self) -> bool {
        self.only.is_empty() && self.skip.is_empty()
    }

    /// Whether a selected check needs a connection to a domain's mail hosts.
    pub fn needs_connection(&self) -> bool {
        check_ids()
            .iter()
            .any(|id| self.wants(id) && NEED_A_CONNECTION.iter().any(|family| matches(family, id)))
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
        // dns.ptr and dns.dane read what the host presents.
        assert!(family.needs_connection());
        assert!(!select(&["dns"], &["dns.ptr", "dns.dane"]).needs_connection());
        assert!(select(&[], &["dns"]).needs_connection());
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
    }
}
