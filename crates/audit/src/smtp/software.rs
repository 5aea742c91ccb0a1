//! Mail server products and versions as servers reveal them, and the known-vulnerable
//! versions `smtp.software` reports.
//!
//! [`detect`] finds product names (and the version that follows them) in the greeting, the
//! EHLO reply and the HELP text: `ESMTP Postfix 3.4.14`, `ESMTP Exim 4.96`,
//! `ESMTP Sendmail 8.15.2/8.15.2`, `Microsoft ESMTP MAIL Service, Version: 10.0.17763.1`.
//! Product names must be whole words, so a host called `postfix.example.org` is not a
//! product. [`windows`] names a Windows build from the NTLM challenge and its end of support.
//!
//! [`ADVISORIES`] is a small table of versions with known vulnerabilities that matter at the
//! SMTP edge, each with its source. A version is affected when it is at or above the
//! advisory's first affected version and below the fixed version of its own branch (or below
//! the oldest fixed version when its branch got no fix). Versions a distribution patched
//! without changing the number cannot be told apart from a banner; the findings say so.
//!
//! Nothing here fails: text without a product yields nothing.

use std::cmp::Ordering;
use std::fmt;

use crate::finding::Severity;

/// A product the auditor recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Product {
    Postfix,
    Exim,
    Sendmail,
    /// Microsoft Exchange (its greeting: "Microsoft ESMTP MAIL Service ready at …").
    Exchange,
    /// The IIS SMTP service ("Microsoft ESMTP MAIL Service, Version: …").
    IisSmtp,
    Qmail,
    OpenSmtpd,
    Haraka,
    HMailServer,
    MDaemon,
    Zimbra,
    Courier,
    Kerio,
    IceWarp,
    CommuniGate,
    Axigen,
    SmarterMail,
    Domino,
    Ravelin,
}

impl Product {
    pub fn name(self) -> &'static str {
        match self {
            Product::Postfix => "Postfix",
            Product::Exim => "Exim",
            Product::Sendmail => "Sendmail",
            Product::Exchange => "Microsoft Exchange",
            Product::IisSmtp => "Microsoft IIS SMTP service",
            Product::Qmail => "qmail",
            Product::OpenSmtpd => "OpenSMTPD",
            Product::Haraka => "Haraka",
            Product::HMailServer => "hMailServer",
            Product::MDaemon => "MDaemon",
            Product::Zimbra => "Zimbra",
            Product::Courier => "Courier",
            Product::Kerio => "Kerio Connect",
            Product::IceWarp => "IceWarp",
            Product::CommuniGate => "CommuniGate Pro",
            Product::Axigen => "Axigen",
            Product::SmarterMail => "SmarterMail",
            Product::Domino => "HCL/IBM Domino",
            Product::Ravelin => "Ravelin",
        }
    }
}

/// Words that name a product when they stand alone (compared case-insensitively).
const WORDS: &[(&str, Product)] = &[
    ("postfix", Product::Postfix),
    ("exim", Product::Exim),
    ("sendmail", Product::Sendmail),
    ("qmail", Product::Qmail),
    ("opensmtpd", Product::OpenSmtpd),
    ("haraka", Product::Haraka),
    ("hmailserver", Product::HMailServer),
    ("mdaemon", Product::MDaemon),
    ("zimbra", Product::Zimbra),
    ("courier", Product::Courier),
    ("kerio", Product::Kerio),
    ("icewarp", Product::IceWarp),
    ("communigate", Product::CommuniGate),
    ("axigen", Product::Axigen),
    ("smartermail", Product::SmarterMail),
    ("domino", Product::Domino),
    ("ravelin", Product::Ravelin),
];

/// A dotted version number (at most six parts; each at most 999 999). Missing parts count
/// as zero: 4.97 equals 4.97.0.
#[derive(Debug, Clone)]
pub struct Version(Vec<u32>);

impl Version {
    /// Parses the leading `N(.N)*` of `s` (`8.15.2/8.15.2` → 8.15.2, `3.7.11-Debian` → 3.7.11).
    pub fn parse(s: &str) -> Option<Version> {
        let lead: String = s
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let parts: Vec<u32> = lead
            .split('.')
            .take_while(|p| !p.is_empty())
            .take(6)
            .map_while(|p| p.parse::<u32>().ok().filter(|n| *n < 1_000_000))
            .collect();
        // A lone number is not a version ("ESMTP 2024"), two parts at least.
        (parts.len() >= 2).then_some(Version(parts))
    }

    fn part(&self, i: usize) -> u32 {
        self.0.get(i).copied().unwrap_or(0)
    }

    fn same_branch(&self, other: &Version) -> bool {
        self.part(0) == other.part(0) && self.part(1) == other.part(1)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.0.len().max(other.0.len());
        (0..n)
            .map(|i| self.part(i).cmp(&other.part(i)))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// A product seen in a server's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub product: Product,
    pub version: Option<Version>,
    /// Where it was seen: "greeting", "EHLO", "HELP", "NTLM".
    pub source: &'static str,
    /// The words that gave it away.
    pub excerpt: String,
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '[' | ']' | '<' | '>' | '"')
}

/// Every product (with its version when one follows) named in `text`.
pub fn detect(text: &str, source: &'static str) -> Vec<Detected> {
    let words: Vec<&str> = text.split(is_separator).filter(|w| !w.is_empty()).collect();
    let mut found: Vec<Detected> = Vec::new();
    let mut push = |d: Detected| {
        if !found
            .iter()
            .any(|f| f.product == d.product && f.version == d.version)
        {
            found.push(d);
        }
    };
    let lower = text.to_ascii_lowercase();
    if let Some(at) = lower.find("microsoft esmtp mail service") {
        let rest = &text[at..];
        // "…, Version: 10.0.17763.1 ready at …" is the IIS SMTP service; Exchange says only
        // "ready at".
        let version = rest
            .split(is_separator)
            .skip_while(|w| !w.eq_ignore_ascii_case("version:"))
            .nth(1)
            .and_then(Version::parse);
        let product = if version.is_some() {
            Product::IisSmtp
        } else {
            Product::Exchange
        };
        push(Detected {
            product,
            version,
            source,
            excerpt: excerpt(rest, 60),
        });
    }
    for (i, word) in words.iter().enumerate() {
        let bare = word.trim_end_matches([':', '.']);
        let Some(&(_, product)) = WORDS.iter().find(|(w, _)| bare.eq_ignore_ascii_case(w)) else {
            continue;
        };
        // The version is the next word, or the one after "version"/"v".
        let mut next = words.get(i + 1).copied();
        if next.is_some_and(|n| {
            n.eq_ignore_ascii_case("version") || n.eq_ignore_ascii_case("version:")
        }) {
            next = words.get(i + 2).copied();
        }
        let version = next
            .map(|n| n.trim_start_matches(['v', 'V']))
            .and_then(Version::parse);
        let shown: Vec<&str> = words[i..(i + 2).min(words.len())].to_vec();
        push(Detected {
            product,
            version,
            source,
            excerpt: shown.join(" "),
        });
    }
    found
}

fn excerpt(s: &str, max: usize) -> String {
    let t: String = s.chars().take(max).collect();
    if t.len() < s.len() {
        format!("{t}…")
    } else {
        t
    }
}

/// A known vulnerability of a product's versions.
#[derive(Debug)]
pub struct Advisory {
    pub product: Product,
    pub id: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    /// First affected version, when older versions are not affected.
    pub introduced: Option<&'static str>,
    /// The first fixed version of each maintained branch, ascending.
    pub fixed: &'static [&'static str],
    /// What to do, in the product administrators' words.
    pub fix: &'static str,
    pub source: &'static str,
}

impl Advisory {
    /// Whether `v` is affected (see the module documentation).
    pub fn affects(&self, v: &Version) -> bool {
        if let Some(intro) = self.introduced.and_then(Version::parse)
            && *v < intro
        {
            return false;
        }
        let fixed: Vec<Version> = self
            .fixed
            .iter()
            .filter_map(|f| Version::parse(f))
            .collect();
        if let Some(f) = fixed.iter().find(|f| f.same_branch(v)) {
            return v < f;
        }
        fixed.first().is_some_and(|oldest| v < oldest)
    }
}

/// Known-vulnerable versions. Sources are the vendors' advisories.
pub const ADVISORIES: &[Advisory] = &[
    // SMTP smuggling in Postfix: the fix (smtpd_forbid_bare_newline) shipped in 3.8.4, 3.7.9,
    // 3.6.13 and 3.5.23 on 2023-12-22, off by default before 3.9.
    // Source: https://www.postfix.org/smtp-smuggling.html
    Advisory {
        product: Product::Postfix,
        id: "CVE-2023-51764",
        title: "SMTP smuggling: forged messages through bare-LF end-of-data sequences",
        severity: Severity::Medium,
        introduced: None,
        fixed: &["3.5.23", "3.6.13", "3.7.9", "3.8.4"],
        fix: "Upgrade Postfix to 3.9 or later (or at least 3.8.4 / 3.7.9 / 3.6.13 / 3.5.23) and \
              set `smtpd_forbid_bare_newline = normalize` with \
              `smtpd_forbid_bare_newline_exclusions = $mynetworks` in main.cf \
              (the default from 3.9 on).",
        source: "https://www.postfix.org/smtp-smuggling.html",
    },
    // SMTP smuggling in Sendmail: 8.18.1 (2024-01-31) rejects bare CR and LF by default.
    // Source: https://ftp.sendmail.org/RELEASE_NOTES and
    // https://nvd.nist.gov/vuln/detail/CVE-2023-51765
    Advisory {
        product: Product::Sendmail,
        id: "CVE-2023-51765",
        title: "SMTP smuggling: forged messages through non-standard end-of-data sequences",
        severity: Severity::Medium,
        introduced: None,
        fixed: &["8.18.1"],
        fix: "Upgrade Sendmail to 8.18.1 or later, which refuses bare CR and LF in SMTP \
              (do not set the 'o' and 'O' srv_features that re-allow them).",
        source: "https://nvd.nist.gov/vuln/detail/CVE-2023-51765",
    },
    // SMTP smuggling in Exim, fixed in 4.97.1 (2023-12-25).
    // Source: https://www.exim.org/static/doc/security/CVE-2023-51766.txt
    Advisory {
        product: Product::Exim,
        id: "CVE-2023-51766",
        title: "SMTP smuggling: forged messages through LF.CRLF end-of-data sequences",
        severity: Severity::Medium,
        introduced: None,
        fixed: &["4.97.1"],
        fix: "Upgrade Exim to 4.97.1 or later.",
        source: "https://www.exim.org/static/doc/security/CVE-2023-51766.txt",
    },
    // Exim AUTH EXTERNAL out-of-bounds write (ZDI-23-1469) and companions, fixed in 4.96.1.
    // Source: https://www.exim.org/static/doc/security/CVE-2023-zdi.txt
    Advisory {
        product: Product::Exim,
        id: "CVE-2023-42115",
        title: "remote code execution through SMTP AUTH (external authenticator)",
        severity: Severity::Critical,
        introduced: None,
        fixed: &["4.96.1"],
        fix: "Upgrade Exim to 4.96.1 or later (4.97.1 or later also fixes SMTP smuggling).",
        source: "https://www.exim.org/static/doc/security/CVE-2023-zdi.txt",
    },
    // 21Nails: 21 vulnerabilities including unauthenticated remote code execution, fixed in
    // 4.94.2. Source: https://www.qualys.com/2021/05/04/21nails/21nails.txt
    Advisory {
        product: Product::Exim,
        id: "CVE-2020-28017",
        title: "21Nails: unauthenticated remote code execution",
        severity: Severity::Critical,
        introduced: None,
        fixed: &["4.94.2"],
        fix: "Upgrade Exim to 4.97.1 or later.",
        source: "https://www.qualys.com/2021/05/04/21nails/21nails.txt",
    },
    // "Return of the WIZard": remote command execution in 4.87 to 4.91, fixed in 4.92.
    // Source: https://www.exim.org/static/doc/security/CVE-2019-10149.txt
    Advisory {
        product: Product::Exim,
        id: "CVE-2019-10149",
        title: "remote command execution through the recipient address",
        severity: Severity::Critical,
        introduced: Some("4.87"),
        fixed: &["4.92"],
        fix: "Upgrade Exim to 4.97.1 or later.",
        source: "https://www.exim.org/static/doc/security/CVE-2019-10149.txt",
    },
];

/// The advisories that affect a detected product version.
pub fn advisories_for(d: &Detected) -> Vec<&'static Advisory> {
    let Some(v) = &d.version else {
        return Vec::new();
    };
    ADVISORIES
        .iter()
        .filter(|a| a.product == d.product && a.affects(v))
        .collect()
}

/// A Windows release named from an NTLM build number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowsRelease {
    pub name: &'static str,
    /// End of extended support (ISO date), when it has passed; `None` while supported.
    pub ended: Option<&'static str>,
}

/// The Windows release of a build number, for the builds Exchange runs on.
/// Sources: https://learn.microsoft.com/lifecycle/products/ (Windows Server 2008 R2:
/// 2020-01-14; Windows Server 2012 and 2012 R2: 2023-10-10; Windows Server 2008: 2020-01-14;
/// Windows Server 2003: 2015-07-14).
pub fn windows(build: u16) -> Option<WindowsRelease> {
    let (name, ended) = match build {
        3790 => ("Windows Server 2003", Some("2015-07-14")),
        6001..=6003 => ("Windows Server 2008", Some("2020-01-14")),
        7600 | 7601 => ("Windows Server 2008 R2 / Windows 7", Some("2020-01-14")),
        9200 => ("Windows Server 2012 / Windows 8", Some("2023-10-10")),
        9600 => ("Windows Server 2012 R2 / Windows 8.1", Some("2023-10-10")),
        14393 => ("Windows Server 2016 / Windows 10 1607", None),
        17763 => ("Windows Server 2019 / Windows 10 1809", None),
        20348 => ("Windows Server 2022", None),
        26100 => ("Windows Server 2025 / Windows 11 24H2", None),
        _ => return None,
    };
    Some(WindowsRelease { name, ended })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_and_orders_versions() {
        assert_eq!(v("8.15.2/8.15.2").to_string(), "8.15.2");
        assert_eq!(v("3.7.11-Debian").to_string(), "3.7.11");
        assert!(Version::parse("2024").is_none());
        assert!(Version::parse("abc").is_none());
        assert!(v("4.97.1") > v("4.97"));
        assert!(v("4.97") == v("4.97.0"));
        assert!(v("3.10.0") > v("3.9.9"));
    }

    #[test]
    fn detects_products_and_versions() {
        let d = detect("mx.example.org ESMTP Postfix 3.4.14", "greeting");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].product, Product::Postfix);
        assert_eq!(d[0].version, Some(v("3.4.14")));

        let d = detect("mx.example.org ESMTP Postfix (Debian/GNU)", "greeting");
        assert_eq!(
            (d[0].product, d[0].version.clone()),
            (Product::Postfix, None)
        );

        let d = detect(
            "mail.example.org ESMTP Exim 4.96 Mon, 03 Jun 2024 10:00:00 +0000",
            "greeting",
        );
        assert_eq!(d[0].version, Some(v("4.96")));

        let d = detect(
            "mx.example.org ESMTP Sendmail 8.15.2/8.15.2; Mon, 3 Jun 2024",
            "greeting",
        );
        assert_eq!(
            (d[0].product, d[0].version.clone()),
            (Product::Sendmail, Some(v("8.15.2")))
        );

        let d = detect(
            "EXCH01.corp.local Microsoft ESMTP MAIL Service ready at Mon, 3 Jun 2024 10:00:00 +0200",
            "greeting",
        );
        assert_eq!(
            (d[0].product, d[0].version.clone()),
            (Product::Exchange, None)
        );

        let d = detect(
            "srv Microsoft ESMTP MAIL Service, Version: 10.0.17763.1697 ready",
            "greeting",
        );
        assert_eq!(d[0].product, Product::IisSmtp);
        assert_eq!(d[0].version, Some(v("10.0.17763.1697")));
    }

    #[test]
    fn host_names_are_not_products() {
        assert!(detect("postfix.example.org ESMTP", "greeting").is_empty());
        assert!(detect("mx.exim-users.example ESMTP ready", "greeting").is_empty());
    }

    #[test]
    fn matches_the_smuggling_advisories() {
        let check = |text: &str| -> Vec<&str> {
            detect(text, "greeting")
                .iter()
                .flat_map(advisories_for)
                .map(|a| a.id)
                .collect()
        };
        assert_eq!(check("x ESMTP Postfix 3.4.14"), vec!["CVE-2023-51764"]);
        assert_eq!(check("x ESMTP Postfix 3.7.8"), vec!["CVE-2023-51764"]);
        assert!(check("x ESMTP Postfix 3.7.9").is_empty());
        assert!(check("x ESMTP Postfix 3.9.0").is_empty());
        assert_eq!(
            check("x ESMTP Sendmail 8.17.2/8.17.2"),
            vec!["CVE-2023-51765"]
        );
        assert!(check("x ESMTP Sendmail 8.18.1/8.18.1").is_empty());
        assert_eq!(check("x ESMTP Exim 4.97"), vec!["CVE-2023-51766"]);
        assert!(check("x ESMTP Exim 4.97.1").is_empty());
        assert_eq!(
            check("x ESMTP Exim 4.90"),
            vec![
                "CVE-2023-51766",
                "CVE-2023-42115",
                "CVE-2020-28017",
                "CVE-2019-10149"
            ]
        );
        // 4.86 predates the WIZard bug.
        assert!(!check("x ESMTP Exim 4.86").contains(&"CVE-2019-10149"));
    }

    #[test]
    fn names_windows_builds() {
        assert_eq!(windows(9600).unwrap().ended, Some("2023-10-10"));
        assert_eq!(windows(17763).unwrap().ended, None);
        assert!(windows(12345).is_none());
    }
}
