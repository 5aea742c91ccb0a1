//! What a server's greeting, EHLO reply and HELP text give away: product and version,
//! internal host names and private addresses (`smtp.banner_disclosure`), and the server's
//! clock (`smtp.clock_skew`).
//!
//! Internal host names are single-label names in the host-name position of the greeting or
//! EHLO reply (`220 EXCH01 …`), and names under suffixes that only exist inside networks
//! (`.local`, `.lan`, `.internal`, `.corp`, `.localdomain`, `.home.arpa`, …). Private
//! addresses are IPv4 and IPv6 addresses in private, shared, link-local, loopback and
//! unique-local ranges, except the auditor's own address (servers echo the client's address in
//! EHLO) and the endpoint's own.
//!
//! Dates are read from the greeting in the RFC 5322 form servers use
//! (`Mon, 3 Jun 2024 10:00:00 +0200`; Sendmail, Exim and Exchange write one).
//!
//! [`banner_finding`], [`clock_finding`] and [`software_finding`] turn what the discovery
//! session (and the NTLM challenge) showed into findings; they open no connection.
//!
//! Nothing here fails or panics; text without findings yields nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ntlm::Challenge;
use super::software::{self, Detected, Product, Version};
use super::{Ctx, Discovery};
use crate::finding::{Finding, Severity, Status};

/// The texts a server shows before any transaction: `(where, text, whether the first word is
/// its host name)`.
fn shown_texts(d: &Discovery) -> Vec<(&'static str, String, bool)> {
    let mut texts = vec![
        ("greeting", d.greeting.lines.join(" "), true),
        ("EHLO", d.ehlo.first_line().to_string(), true),
    ];
    if let Some(Ok(tls)) = &d.tls_ehlo
        && tls.first_line() != d.ehlo.first_line()
    {
        texts.push(("EHLO after STARTTLS", tls.first_line().to_string(), true));
    }
    if let Some(help) = d.help.as_ref().filter(|h| h.is_positive()) {
        texts.push(("HELP", help.lines.join(" "), false));
    }
    texts
}

const BANNER_FIX: &str = "Show only the public host name. Postfix (main.cf): \
    `smtpd_banner = $myhostname ESMTP` with `myhostname` set to the public name. \
    Exchange: `Set-ReceiveConnector \"<SERVER>\\Default Frontend <SERVER>\" \
    -Banner \"220 mail.example.org ESMTP\" -Fqdn mail.example.org` (and the same -Fqdn on every \
    internet-facing connector). Sendmail: `define(`confSMTP_LOGIN_MSG', `$j ESMTP')`. \
    Exim: `smtp_banner = $smtp_active_hostname ESMTP`.";

/// `smtp.banner_disclosure`: product, version, internal names and private addresses.
pub fn banner_finding(ctx: &Ctx<'_>, d: &Discovery) -> Finding {
    let id = "smtp.banner_disclosure";
    let mut ignore = vec![ctx.endpoint.addr.ip()];
    ignore.extend(d.local);
    let mut items: Vec<(Severity, String)> = Vec::new();
    let mut kinds: Vec<&str> = Vec::new();
    for (place, text, host_position) in shown_texts(d) {
        for p in software::detect(&text, place) {
            match &p.version {
                Some(v) => {
                    items.push((
                        Severity::Medium,
                        format!("{place} names {} {v}: \"{}\"", p.product.name(), p.excerpt),
                    ));
                    kinds.push("software version");
                }
                None => {
                    items.push((
                        Severity::Low,
                        format!("{place} names {}: \"{}\"", p.product.name(), p.excerpt),
                    ));
                    kinds.push("software");
                }
            }
        }
        for leak in leaks(&text, host_position, &ignore) {
            match leak {
                Leak::InternalName(n) => {
                    items.push((
                        Severity::Medium,
                        format!("{place} names the internal host {n}"),
                    ));
                    kinds.push("internal host names");
                }
                Leak::PrivateAddress(ip) => {
                    items.push((
                        Severity::Medium,
                        format!("{place} shows the private address {ip}"),
                    ));
                    kinds.push("private addresses");
                }
            }
        }
    }
    let shown = format!(
        "greeting: {}; EHLO: {}",
        d.greeting.one_line(),
        d.ehlo.first_line()
    );
    let mut unique: Vec<&str> = Vec::new();
    for k in kinds {
        if !unique.contains(&k) {
            unique.push(k);
        }
    }
    let title = format!("the server reveals {}", unique.join(", "));
    match ctx.problems(id, items, Severity::Medium, title, &shown) {
        Some(f) => f.fix(BANNER_FIX),
        None => ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "greeting and EHLO show only a host name",
            shown,
        ),
    }
}

/// Larger differences than this (seconds) warn; Kerberos tolerates 5 minutes.
const SKEW_WARN: i64 = 60;
const SKEW_FAIL: i64 = 300;

/// `smtp.clock_skew`: the server's clock (greeting date or NTLM timestamp) against ours.
pub fn clock_finding(ctx: &Ctx<'_>, d: &Discovery, ntlm: Option<&Challenge>) -> Finding {
    let id = "smtp.clock_skew";
    let greeting_text = d.greeting.lines.join(" ");
    let mut readings: Vec<(&str, i64)> = Vec::new();
    if let Some(t) = find_date(&greeting_text) {
        readings.push(("greeting date", t));
    }
    if let Some(t) = ntlm.and_then(|c| c.timestamp) {
        // The NTLM challenge comes later than the greeting; its own clock reading is
        // compared with our clock at the greeting within the precision that matters here.
        readings.push(("NTLM timestamp", t));
    }
    if readings.is_empty() {
        return ctx.skipped(
            id,
            "the server shows no clock (no date in the greeting, no NTLM timestamp)",
        );
    }
    let (source, server) = readings
        .iter()
        .copied()
        .max_by_key(|(_, t)| (t - d.greeting_at).abs())
        .unwrap_or(readings[0]);
    let skew = server - d.greeting_at;
    let evidence = format!(
        "{source}: server {} vs ours {} ({skew:+} s)",
        ravelin_wire::date::rfc5322(server.max(0) as u64),
        ravelin_wire::date::rfc5322(d.greeting_at.max(0) as u64)
    );
    let fix = "Synchronise the clock with NTP. Linux: chrony or systemd-timesyncd. \
               Windows / Exchange: `w32tm /config /syncfromflags:domhier /update` on members, \
               and an external NTP source on the domain's PDC emulator \
               (`w32tm /config /manualpeerlist:pool.ntp.org /syncfromflags:manual /reliable:yes /update`).";
    match skew.abs() {
        s if s <= SKEW_WARN => ctx.finding(
            id,
            Status::Pass,
            Severity::Info,
            "the server's clock agrees with ours",
            evidence,
        ),
        s if s <= SKEW_FAIL => ctx
            .finding(
                id,
                Status::Warn,
                Severity::Low,
                format!("the server's clock is off by {s} s"),
                evidence,
            )
            .fix(fix),
        s => ctx
            .finding(
                id,
                Status::Fail,
                Severity::Medium,
                format!("the server's clock is off by {s} s (more than Kerberos tolerates)"),
                evidence,
            )
            .fix(fix),
    }
}

/// `smtp.software`: known-vulnerable versions among the products the server named.
pub fn software_finding(ctx: &Ctx<'_>, d: &Discovery, ntlm: Option<&Challenge>) -> Finding {
    let id = "smtp.software";
    let mut seen: Vec<Detected> = Vec::new();
    for (place, text, _) in shown_texts(d) {
        for p in software::detect(&text, place) {
            if !seen
                .iter()
                .any(|s| s.product == p.product && s.version == p.version)
            {
                seen.push(p);
            }
        }
    }
    let mut problems: Vec<(Severity, String, String)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for p in &seen {
        let shown = match &p.version {
            Some(v) => format!("{} {v} ({})", p.product.name(), p.source),
            None => format!("{} ({}, no version shown)", p.product.name(), p.source),
        };
        let advisories = software::advisories_for(p);
        for a in &advisories {
            problems.push((
                a.severity,
                format!("{shown}: {} {} — {}", a.id, a.title, a.source),
                a.fix.to_string(),
            ));
        }
        if advisories.is_empty() {
            notes.push(shown);
        }
        let before_39 = p
            .version
            .as_ref()
            .is_some_and(|v| Version::parse("3.9").is_some_and(|nine| *v < nine));
        if p.product == Product::Postfix && advisories.is_empty() && before_39 {
            notes.push(
                "Postfix before 3.9 has the smuggling fix switched off unless \
                 smtpd_forbid_bare_newline is set (run with --active to test it)"
                    .into(),
            );
        }
    }
    if let Some(v) = ntlm.and_then(|c| c.version) {
        match software::windows(v.build) {
            Some(w) => match w.ended {
                Some(date) => problems.push((
                    Severity::High,
                    format!("NTLM reveals {} ({v}), out of support since {date}", w.name),
                    "Move the server (Exchange) to a supported Windows Server release; until \
                     then keep it off the internet behind the gateway."
                        .into(),
                )),
                None => notes.push(format!("NTLM reveals {} ({v})", w.name)),
            },
            None => notes.push(format!("NTLM reveals Windows {v}")),
        }
    }
    let Some(worst) = problems.iter().map(|(s, _, _)| *s).max() else {
        let versioned = seen.iter().any(|p| p.version.is_some());
        return if seen.is_empty() && notes.is_empty() {
            ctx.finding(
                id,
                Status::Pass,
                Severity::Info,
                "no product or version shown",
                format!("greeting: {}", d.greeting.one_line()),
            )
        } else if versioned || ntlm.and_then(|c| c.version).is_some() {
            ctx.finding(
                id,
                Status::Pass,
                Severity::Info,
                "no known vulnerability for the version shown",
                format!(
                    "{}\n(distribution back-ports cannot be seen from outside)",
                    notes.join("\n")
                ),
            )
        } else {
            ctx.finding(
                id,
                Status::Info,
                Severity::Info,
                "product shown without a version; nothing to compare",
                notes.join("\n"),
            )
        };
    };
    let mut fixes: Vec<String> = Vec::new();
    for (_, _, f) in &problems {
        if !fixes.contains(f) {
            fixes.push(f.clone());
        }
    }
    let mut lines: Vec<String> = problems.into_iter().map(|(_, l, _)| l).collect();
    lines.extend(notes);
    ctx.finding(
        id,
        Status::Fail,
        worst,
        "the server runs a version with known vulnerabilities",
        lines.join("\n"),
    )
    .fix(fixes.join(" "))
}

/// Name suffixes that exist only inside networks.
const INTERNAL_SUFFIXES: &[&str] = &[
    ".local",
    ".localdomain",
    ".lan",
    ".internal",
    ".intranet",
    ".corp",
    ".home",
    ".home.arpa",
    ".private",
    ".priv",
    ".ad",
    ".localhost",
    ".domain",
];

/// One thing a server revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leak {
    InternalName(String),
    PrivateAddress(IpAddr),
}

fn word_chars(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')
}

/// Internal names and private addresses in `text`. `host_position` says whether the first
/// word is the server's own host name (greeting, first EHLO line). `ignore` are addresses
/// not to report (ours, the endpoint's).
pub fn leaks(text: &str, host_position: bool, ignore: &[IpAddr]) -> Vec<Leak> {
    let mut out: Vec<Leak> = Vec::new();
    let mut push = |l: Leak| {
        if !out.contains(&l) {
            out.push(l);
        }
    };
    for (i, raw) in text
        .split(|c: char| !word_chars(c))
        .filter(|w| !w.is_empty())
        .enumerate()
    {
        let word = raw.trim_end_matches(['.', ':']);
        let word = word
            .strip_prefix("IPv6:")
            .or_else(|| word.strip_prefix("ipv6:"))
            .unwrap_or(word);
        if let Ok(ip) = word.parse::<IpAddr>() {
            if is_private(ip) && !ignore.contains(&ip) {
                push(Leak::PrivateAddress(ip));
            }
            continue;
        }
        if !word.contains(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let lower = word.to_ascii_lowercase();
        let internal_suffix = lower.contains('.')
            && INTERNAL_SUFFIXES.iter().any(|s| lower.ends_with(s))
            && crate::target::is_domain_name(&lower);
        let single_label = i == 0
            && host_position
            && !lower.contains('.')
            && crate::target::is_domain_name(&lower);
        if internal_suffix || single_label || lower == "localhost" {
            push(Leak::InternalName(word.to_string()));
        }
    }
    out
}

/// Addresses that mean nothing outside the server's own network.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private_v4(v4),
            None => is_private_v6(v6),
        },
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        // 100.64.0.0/10, shared address space (RFC 6598).
        || (a == 100 && (64..128).contains(&b))
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        // fc00::/7 unique local, fe80::/10 link-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
}

/// A date in RFC 5322 form found in `text`, as seconds since the Unix epoch: an optional
/// `Day,` then `D Mon YYYY HH:MM[:SS] ±HHMM` (or a zone name: UT, GMT, UTC, Z).
pub fn find_date(text: &str) -> Option<i64> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    (0..words.len()).find_map(|i| words.get(i..i + 5).and_then(parse_date_words))
}

fn parse_date_words(w: &[&str]) -> Option<i64> {
    let day: i64 = w[0].parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = month_number(w[1])?;
    let year: i64 = w[2].parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let mut hms = w[3].split(':');
    let hour: i64 = hms.next()?.parse().ok().filter(|h| (0..24).contains(h))?;
    let minute: i64 = hms.next()?.parse().ok().filter(|m| (0..60).contains(m))?;
    let second: i64 = match hms.next() {
        Some(s) => s.parse().ok().filter(|s| (0..=60).contains(s))?,
        None => 0,
    };
    if hms.next().is_some() {
        return None;
    }
    let offset = zone_offset(w[4])?;
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn month_number(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let lower = s.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == lower)
        .map(|i| i as i64 + 1)
}

/// The zone as seconds east of UTC.
fn zone_offset(s: &str) -> Option<i64> {
    match s.to_ascii_uppercase().as_str() {
        "UT" | "GMT" | "UTC" | "Z" => return Some(0),
        _ => {}
    }
    let b = s.as_bytes();
    if b.len() != 5 || !matches!(b[0], b'+' | b'-') || !b[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hours: i64 = s[1..3].parse().ok()?;
    let minutes: i64 = s[3..5].parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let secs = hours * 3600 + minutes * 60;
    Some(if b[0] == b'-' { -secs } else { secs })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_internal_names_and_private_addresses() {
        let ours: IpAddr = "192.168.1.50".parse().unwrap();
        let l = leaks(
            "EXCH01 Microsoft ESMTP MAIL Service ready; relay via exch02.corp.local [10.1.2.3] \
             Hello [192.168.1.50]",
            true,
            &[ours],
        );
        assert_eq!(
            l,
            vec![
                Leak::InternalName("EXCH01".into()),
                Leak::InternalName("exch02.corp.local".into()),
                Leak::PrivateAddress("10.1.2.3".parse().unwrap()),
            ]
        );
        let l = leaks("mx.example.org Hello [IPv6:fd00::25]", true, &[]);
        assert_eq!(l, vec![Leak::PrivateAddress("fd00::25".parse().unwrap())]);
    }

    #[test]
    fn public_names_and_addresses_are_not_leaks() {
        assert!(leaks("mx.example.org ESMTP Postfix", true, &[]).is_empty());
        assert!(leaks("mx.example.org Hello [198.51.100.7]", true, &[]).is_empty());
        assert!(leaks("backend.test.example ESMTP", true, &[]).is_empty());
        // A single word is a host name only in the host-name position.
        assert!(leaks("See RFC 5321", false, &[]).is_empty());
        assert!(leaks("2.0.0 Ok", false, &[]).is_empty());
        assert!(!is_private("100.128.0.1".parse().unwrap()));
        assert!(is_private("100.64.0.1".parse().unwrap()));
        assert!(is_private("::ffff:10.0.0.1".parse().unwrap()));
        assert!(is_private("fe80::1".parse().unwrap()));
        assert!(!is_private("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn reads_banner_dates() {
        // 2024-06-03 10:00:00 +0200 = 08:00:00 UTC = 1717401600.
        assert_eq!(
            find_date("mx ESMTP Sendmail 8.15.2/8.15.2; Mon, 3 Jun 2024 10:00:00 +0200"),
            Some(1_717_401_600)
        );
        assert_eq!(
            find_date("mx ESMTP Exim 4.96 Mon, 03 Jun 2024 08:00:00 GMT"),
            Some(1_717_401_600)
        );
        assert_eq!(
            find_date("Microsoft ESMTP MAIL Service ready at Mon, 3 Jun 2024 03:00 -0500"),
            Some(1_717_401_600)
        );
        assert_eq!(find_date("1 Jan 1970 00:00:00 +0000"), Some(0));
        assert_eq!(find_date("mx.example.org ESMTP"), None);
        assert_eq!(find_date("31 Foo 2024 10:00:00 +0000"), None);
        assert_eq!(find_date("3 Jun 2024 25:00:00 +0000"), None);
        assert_eq!(find_date("3 Jun 2024 10:00:00 +9999"), None);
    }
}
