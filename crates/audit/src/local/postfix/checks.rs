//! The checks of the Postfix linter, each on the effective parameters of one smtpd service
//! ([`View`]), each returning findings that [`super::lint`] groups across services.
//!
//! Check ids are those of the remote checks where they mean the same thing (`smtp.open_relay`,
//! `smtp.smuggling`, `smtp.vrfy`, `smtp.auth_before_tls`, `smtp.banner_disclosure`,
//! `smtp.size_limit`, `smtp.pipelining_sync`, `tls.starttls`, `tls.versions`, `tls.ciphers`);
//! settings with no remote counterpart use `postfix.*` (`postfix.mynetworks`,
//! `postfix.rate_limits`, `postfix.helo_required`, `postfix.inet_interfaces`,
//! `postfix.syntax`, `postfix.services`).

use std::collections::BTreeSet;

use super::networks::{self, NetEntry};
use super::parse::split_tokens;
use super::view::{Param, Source, View};
use crate::finding::{Finding, Severity, Status};

/// Longest quotation of a configuration line in evidence.
const MAX_QUOTE_CHARS: usize = 300;
/// Deepest nesting of restriction classes followed.
const MAX_CLASS_DEPTH: usize = 8;
/// A message size limit above this (100 MiB) is reported as very large.
const LARGE_MESSAGE_LIMIT: u64 = 100 * 1024 * 1024;

/// A passed check (a finding with status pass and severity info).
fn pass(
    id: &str,
    endpoint: String,
    title: impl Into<String>,
    evidence: impl Into<String>,
) -> Finding {
    Finding::new(id, Status::Pass, Severity::Info, endpoint, title, evidence)
}

/// What a service is for, from its port (or `smtpd_tls_wrappermode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Port 25 or any other port: mail from other servers, STARTTLS offered.
    Mx,
    /// Port 587: users' mail, STARTTLS required.
    Submission,
    /// Port 465 or `smtpd_tls_wrappermode = yes`: implicit TLS.
    Submissions,
}

/// The port a master.cf service name listens on, when it says.
pub fn service_port(name: &str, kind: &str) -> Option<u16> {
    if kind == "pass" {
        // A pass service receives port-25 connections from postscreen.
        return Some(25);
    }
    let port = match name.rsplit_once(':') {
        Some((_, port)) => port,
        None => name,
    };
    match port {
        "smtp" => Some(25),
        "submission" => Some(587),
        "smtps" | "submissions" | "urd" => Some(465),
        p => p.parse().ok(),
    }
}

/// The role of a service.
pub fn role(view: &View<'_>) -> Role {
    if view.flag("smtpd_tls_wrappermode") {
        return Role::Submissions;
    }
    match service_port(&view.service.name, &view.service.kind) {
        Some(465) => Role::Submissions,
        Some(587) => Role::Submission,
        _ => Role::Mx,
    }
}

// ---------------------------------------------------------------------------------------------
// Quoting and fixes

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTE_CHARS {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX_QUOTE_CHARS).collect();
        format!("{cut}…")
    }
}

/// The endpoint of a finding about `param`: its line, or main.cf when it is not set.
fn place(view: &View<'_>, param: &Param<'_>) -> String {
    match param.source {
        Source::Override(s) | Source::Main(s) => s.origin.endpoint(),
        Source::Default => view.main.path.clone(),
    }
}

/// `param` quoted as written, or its default when it is not set.
fn quote(param: &Param<'_>) -> String {
    match param.source {
        Source::Override(s) | Source::Main(s) => {
            format!("{}: {}", s.origin.endpoint(), truncate(&s.origin.text))
        }
        Source::Default => format!(
            "{} is not set (Postfix 3.7 default: {} = {})",
            param.name, param.name, param.raw
        ),
    }
}

/// The fix for `param`, where it is written: the override's line in master.cf or main.cf.
fn fix_line(view: &View<'_>, param: &Param<'_>, value: &str) -> String {
    match param.source {
        Source::Override(_) => service_fix(view, param.name, value),
        _ => main_fix(param.name, value),
    }
}

fn main_fix(name: &str, value: &str) -> String {
    format!("In main.cf: `{name} = {value}`")
}

/// An override for this service only.
fn service_fix(view: &View<'_>, name: &str, value: &str) -> String {
    format!(
        "In master.cf, on the `{}` service: `-o {name}={value}`",
        view.service.name
    )
}

// ---------------------------------------------------------------------------------------------
// smtp.open_relay

/// The restriction lists smtpd evaluates at RCPT time (smtpd_delay_reject = yes), in order.
/// A PERMIT ends only its own list; mail is relayed unless some list rejects.
const RESTRICTION_LISTS: &[&str] = &[
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
];

/// How a restriction list treats an unknown client (not in mynetworks, not authenticated,
/// no client certificate) asking to send to a domain this server is not responsible for.
#[derive(Debug, Default)]
struct Walk {
    /// The restriction that rejects or defers it, if any.
    blocked_by: Option<String>,
    /// The restriction that permits it, if any (before any block).
    permitted_by: Option<String>,
    /// Restrictions before the block that permit some clients the linter cannot judge as
    /// trusted (a DNS whitelist, any client certificate, backup MX domains).
    conditional: Vec<String>,
    /// Lookup tables and policy services before the block: they may answer OK.
    opaque: Vec<String>,
}

/// Whether restriction `name` takes the next token as its argument.
fn takes_argument(name: &str) -> bool {
    (name.starts_with("check_") && (name.ends_with("_access") || name == "check_policy_service"))
        || name.starts_with("reject_rbl_")
        || name.starts_with("reject_rhsbl_")
        || matches!(
            name,
            "permit_dnswl_client" | "permit_rhswl_client" | "sleep"
        )
}

fn walk(
    view: &View<'_>,
    list: &str,
    classes: &BTreeSet<String>,
    everyone: bool,
    depth: usize,
) -> Walk {
    let mut walk = Walk::default();
    let tokens: Vec<&str> = split_tokens(list, &[','])
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let mut i = 0;
    let mut warn_only = false;
    let mut defer_if_permit = false;
    while i < tokens.len() {
        let token = tokens[i];
        let argument = if takes_argument(token) {
            i += 1;
            tokens.get(i).copied()
        } else {
            None
        };
        i += 1;
        let written = match argument {
            Some(arg) => format!("{token} {arg}"),
            None => token.to_string(),
        };
        if std::mem::take(&mut warn_only) {
            // warn_if_reject: the next restriction only logs what it would reject.
            continue;
        }
        let permit = |walk: &mut Walk, by: String| {
            if defer_if_permit {
                walk.blocked_by = Some(format!("defer_if_permit (then {by})"));
            } else {
                walk.permitted_by = Some(by);
            }
        };
        match token {
            "reject_unauth_destination"
            | "defer_unauth_destination"
            | "reject"
            | "defer"
            | "check_relay_domains" => {
                walk.blocked_by = Some(written);
                return walk;
            }
            "warn_if_reject" => warn_only = true,
            "defer_if_permit" => defer_if_permit = true,
            "permit" => {
                permit(&mut walk, written);
                return walk;
            }
            "permit_mynetworks" if everyone => {
                permit(
                    &mut walk,
                    "permit_mynetworks (mynetworks admits every address)".into(),
                );
                return walk;
            }
            "permit_tls_all_clientcerts"
            | "permit_mx_backup"
            | "permit_naked_ip_address"
            | "permit_dnswl_client"
            | "permit_rhswl_client" => walk.conditional.push(written),
            t if t.starts_with("check_") => walk.opaque.push(written),
            t if classes.contains(t) && depth < MAX_CLASS_DEPTH => {
                let inner = walk_class(view, t, classes, everyone, depth);
                walk.conditional.extend(inner.conditional);
                walk.opaque.extend(inner.opaque);
                if let Some(by) = inner.permitted_by {
                    permit(&mut walk, format!("{t} ({by})"));
                    return walk;
                }
                if let Some(by) = inner.blocked_by {
                    walk.blocked_by = Some(format!("{t} ({by})"));
                    return walk;
                }
            }
            _ => {}
        }
    }
    walk
}

fn walk_class(
    view: &View<'_>,
    class: &str,
    classes: &BTreeSet<String>,
    everyone: bool,
    depth: usize,
) -> Walk {
    walk(view, &view.value(class), classes, everyone, depth + 1)
}

/// The entries of `mynetworks` for this service, or `None` when it is not set (Postfix then
/// derives it from `mynetworks_style`).
fn mynetworks(view: &View<'_>) -> Option<Vec<NetEntry>> {
    view.is_set("mynetworks")
        .then(|| networks::parse(&view.value("mynetworks")))
}

pub fn open_relay(view: &View<'_>) -> Finding {
    const ID: &str = "smtp.open_relay";
    let everyone = mynetworks(view).is_some_and(|n| networks::is_everyone(&n));
    let classes: BTreeSet<String> = split_tokens(&view.value("smtpd_restriction_classes"), &[','])
        .into_iter()
        .map(|(_, t)| t.to_string())
        .collect();
    let mut blocking: Vec<(Param<'_>, Walk)> = Vec::new();
    let mut permits = Vec::new();
    for name in RESTRICTION_LISTS {
        let param = view.param(name);
        let walked = walk(view, &view.expand(&param.raw), &classes, everyone, 0);
        if walked.blocked_by.is_some() {
            blocking.push((param, walked));
        } else if let Some(by) = &walked.permitted_by {
            permits.push(format!("{name}: `{by}` permits it first"));
        }
    }
    let relay = view.param("smtpd_relay_restrictions");
    let recipient = view.param("smtpd_recipient_restrictions");
    let good = "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination";
    if blocking.is_empty() {
        let mut evidence = format!("{}; {}", quote(&relay), quote(&recipient));
        if !permits.is_empty() {
            evidence.push_str("; ");
            evidence.push_str(&permits.join("; "));
        }
        let at = if matches!(relay.source, Source::Default)
            && !matches!(recipient.source, Source::Default)
        {
            &recipient
        } else {
            &relay
        };
        return Finding::new(
            ID,
            Status::Fail,
            Severity::Critical,
            place(view, at),
            "Open relay: no restriction refuses mail for other domains from unknown clients",
            evidence,
        )
        .fix(fix_line(view, &relay, good));
    }
    if let Some((param, walked)) = blocking
        .iter()
        .find(|(_, w)| w.conditional.is_empty() && w.opaque.is_empty())
    {
        let by = walked.blocked_by.as_deref().unwrap_or_default();
        return pass(
            ID,
            place(view, param),
            format!("Relaying is refused to unknown clients ({by})"),
            quote(param),
        );
    }
    // Every list that blocks lets some clients through first.
    let (param, _) = &blocking[0];
    let conditional: Vec<&str> = blocking
        .iter()
        .flat_map(|(_, w)| &w.conditional)
        .map(String::as_str)
        .collect();
    let opaque: Vec<&str> = blocking
        .iter()
        .flat_map(|(_, w)| &w.opaque)
        .map(String::as_str)
        .collect();
    let by = blocking[0].1.blocked_by.as_deref().unwrap_or_default();
    let move_fix = format!(
        "Put `{by}` before {} (e.g. {})",
        conditional
            .iter()
            .chain(&opaque)
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", "),
        fix_line(view, param, good)
    );
    if !conditional.is_empty() {
        return Finding::new(
            ID,
            Status::Warn,
            Severity::Medium,
            place(view, param),
            format!(
                "Relaying is allowed to clients matched by {}",
                conditional.join(", ")
            ),
            format!("{}: they come before {by}", quote(param)),
        )
        .fix(move_fix);
    }
    Finding::new(
        ID,
        Status::Warn,
        Severity::Low,
        place(view, param),
        "The relay decision depends on lookup tables or policy services that come before the reject",
        format!(
            "{}: {} may answer OK before {by}; make sure they do so only for trusted clients",
            quote(param),
            opaque.join(", ")
        ),
    )
    .fix(move_fix)
}

// ---------------------------------------------------------------------------------------------
// postfix.mynetworks

pub fn mynetworks_breadth(view: &View<'_>) -> Finding {
    const ID: &str = "postfix.mynetworks";
    let param = view.param("mynetworks");
    let good = "127.0.0.0/8 [::1]/128";
    let Some(entries) = mynetworks(view) else {
        let style = view.param("mynetworks_style");
        let value = view.expand(&style.raw).trim().to_ascii_lowercase();
        let evidence = format!("mynetworks is not set; {}", quote(&style));
        let endpoint = place(view, &style);
        let fix = format!(
            "{}, plus the address of each host that relays through this server",
            main_fix("mynetworks", good)
        );
        return match value.as_str() {
            "host" => pass(
                ID,
                endpoint,
                "mynetworks trusts only this host's own addresses",
                evidence,
            ),
            "class" => Finding::new(
                ID,
                Status::Fail,
                Severity::High,
                endpoint,
                "mynetworks trusts the whole address class of every interface",
                evidence,
            )
            .fix(fix),
            _ => Finding::new(
                ID,
                Status::Warn,
                Severity::Medium,
                endpoint,
                "mynetworks trusts every subnet this host is attached to",
                evidence,
            )
            .fix(fix),
        };
    };
    let broad = networks::broad(&entries);
    let opaque = networks::opaque(&entries);
    let mut evidence = quote(&param);
    if !opaque.is_empty() {
        evidence.push_str(&format!("; not inspected: {}", opaque.join(", ")));
    }
    let Some(severity) = broad.iter().map(|b| b.severity).max() else {
        return pass(
            ID,
            place(view, &param),
            "mynetworks trusts no network wider than a /24 (IPv4) or /64 (IPv6)",
            evidence,
        );
    };
    let wide: Vec<&str> = broad.iter().map(|b| b.text.as_str()).collect();
    let keep: Vec<String> = entries
        .iter()
        .filter_map(|e| match e {
            NetEntry::Block { text, .. } if !wide.contains(&text.as_str()) => Some(text.clone()),
            NetEntry::Opaque(t) => Some(t.clone()),
            NetEntry::Block { .. } => None,
        })
        .collect();
    let value = if keep.is_empty() {
        good.to_string()
    } else {
        keep.join(" ")
    };
    Finding::new(
        ID,
        Status::Fail,
        severity,
        place(view, &param),
        format!(
            "mynetworks trusts networks wider than a /24: {} (permit_mynetworks lets them relay)",
            wide.join(", ")
        ),
        evidence,
    )
    .fix(format!(
        "{}, adding only the /32 of each host that relays through this server",
        fix_line(view, &param, &value)
    ))
}

// ---------------------------------------------------------------------------------------------
// smtp.smuggling

pub fn smuggling(view: &View<'_>) -> Finding {
    const ID: &str = "smtp.smuggling";
    let param = view.param("smtpd_forbid_bare_newline");
    let value = view.expand(&param.raw).trim().to_ascii_lowercase();
    let endpoint = place(view, &param);
    match value.as_str() {
        "no" | "false" => {
            return Finding::new(
                ID,
                Status::Fail,
                Severity::High,
                endpoint,
                "Bare LF is accepted as a line ending: SMTP smuggling is possible (CVE-2023-51764)",
                quote(&param),
            )
            .fix(format!(
                "{} (Postfix 3.5.23, 3.6.13, 3.7.9, 3.8.4 or later; `reject` refuses bare LF outright)",
                fix_line(view, &param, "yes")
            ));
        }
        "yes" | "true" | "normalize" | "reject" => {}
        _ => {
            return Finding::new(
                ID,
                Status::Error,
                Severity::Medium,
                endpoint,
                "smtpd_forbid_bare_newline has a value Postfix does not know",
                quote(&param),
            )
            .fix(fix_line(view, &param, "yes"));
        }
    }
    let exclusions = view.param("smtpd_forbid_bare_newline_exclusions");
    let listed = view.expand(&exclusions.raw);
    let uses_default_mynetworks =
        exclusions.raw.contains("mynetworks") && !view.is_set("mynetworks");
    let broad: Vec<String> = if uses_default_mynetworks {
        match view.value("mynetworks_style").trim() {
            "host" => Vec::new(),
            style => vec![format!("$mynetworks (mynetworks_style = {style})")],
        }
    } else {
        networks::broad(&networks::parse(&listed))
            .into_iter()
            .map(|b| b.text)
            .collect()
    };
    if !broad.is_empty() {
        return Finding::new(
            ID,
            Status::Warn,
            Severity::Medium,
            place(view, &exclusions),
            format!(
                "Clients in {} are exempt from the bare-LF protection",
                broad.join(", ")
            ),
            format!("{}; {}", quote(&param), quote(&exclusions)),
        )
        .fix(fix_line(view, &exclusions, ""));
    }
    let exempt = if listed.trim().is_empty() {
        "no client is exempt".to_string()
    } else {
        format!("exempt: {}", listed.trim())
    };
    pass(
        ID,
        endpoint,
        format!("Only CRLF.CRLF ends DATA (smtpd_forbid_bare_newline = {value}); {exempt}"),
        quote(&param),
    )
}

// ---------------------------------------------------------------------------------------------
// TLS

/// `smtpd_tls_security_level`, including the legacy `smtpd_use_tls` / `smtpd_enforce_tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    None,
    May,
    Encrypt,
}

/// The TLS settings of one service.
pub struct Tls<'v> {
    pub level: Level,
    /// The parameter that decided the level.
    pub level_param: Param<'v>,
    pub wrapper: bool,
    pub has_cert: bool,
}

impl Tls<'_> {
    /// Whether TLS is required before mail (encrypt or implicit TLS).
    pub fn mandatory(&self) -> bool {
        self.wrapper || self.level == Level::Encrypt
    }

    /// Whether the service speaks TLS at all.
    pub fn active(&self) -> bool {
        self.has_cert && (self.wrapper || self.level != Level::None)
    }
}

pub fn tls<'v>(view: &'v View<'_>) -> Tls<'v> {
    let param = view.param("smtpd_tls_security_level");
    let level = match view.expand(&param.raw).trim().to_ascii_lowercase().as_str() {
        "may" => (Level::May, param),
        "encrypt" => (Level::Encrypt, param),
        "" if view.flag("smtpd_enforce_tls") => (Level::Encrypt, view.param("smtpd_enforce_tls")),
        "" if view.flag("smtpd_use_tls") => (Level::May, view.param("smtpd_use_tls")),
        _ => (Level::None, param),
    };
    let has_cert = [
        "smtpd_tls_chain_files",
        "smtpd_tls_cert_file",
        "smtpd_tls_eccert_file",
        "smtpd_tls_dcert_file",
    ]
    .iter()
    .any(|name| !view.value(name).trim().is_empty());
    Tls {
        level: level.0,
        level_param: level.1,
        wrapper: view.flag("smtpd_tls_wrappermode"),
        has_cert,
    }
}

const CERT_FIX: &str =
    "In main.cf: `smtpd_tls_chain_files = /etc/postfix/key.pem, /etc/postfix/fullchain.pem`";

pub fn starttls(view: &View<'_>, role: Role) -> Finding {
    const ID: &str = "tls.starttls";
    let tls = tls(view);
    let endpoint = place(view, &tls.level_param);
    let evidence = quote(&tls.level_param);
    let no_cert = || {
        Finding::new(
            ID,
            Status::Fail,
            Severity::High,
            endpoint.clone(),
            "TLS is configured but no certificate is: Postfix cannot offer it",
            format!("{evidence}; none of smtpd_tls_chain_files, smtpd_tls_cert_file, smtpd_tls_eccert_file is set"),
        )
        .fix(CERT_FIX)
    };
    match role {
        Role::Submissions if !tls.wrapper => {
            let wrapper = view.param("smtpd_tls_wrappermode");
            Finding::new(
                ID,
                Status::Fail,
                Severity::High,
                view.service.origin.endpoint(),
                "Port 465 without implicit TLS: clients expect TLS from the first byte",
                quote(&wrapper),
            )
            .fix(service_fix(view, "smtpd_tls_wrappermode", "yes"))
        }
        _ if tls.level == Level::None && !tls.wrapper => Finding::new(
            ID,
            Status::Fail,
            Severity::High,
            endpoint,
            "STARTTLS is not offered: mail and logins cross the network in clear text",
            evidence,
        )
        .fix({
            let level = match role {
                Role::Submission => service_fix(view, "smtpd_tls_security_level", "encrypt"),
                _ => fix_line(view, &tls.level_param, "may"),
            };
            if tls.has_cert {
                level
            } else {
                format!("{level}; {CERT_FIX}")
            }
        }),
        _ if !tls.has_cert => no_cert(),
        Role::Submissions => {
            let wrapper = view.param("smtpd_tls_wrappermode");
            pass(
                ID,
                place(view, &wrapper),
                "Implicit TLS (smtpd_tls_wrappermode = yes)",
                quote(&wrapper),
            )
        }
        Role::Submission if tls.level == Level::May => Finding::new(
            ID,
            Status::Fail,
            Severity::Medium,
            endpoint,
            "Submission does not require STARTTLS: users' mail can be sent in clear text",
            evidence,
        )
        .fix(service_fix(view, "smtpd_tls_security_level", "encrypt")),
        Role::Submission => pass(ID, endpoint, "Submission requires STARTTLS", evidence),
        Role::Mx if tls.level == Level::Encrypt => Finding::new(
            ID,
            Status::Info,
            Severity::Info,
            endpoint,
            "This port requires STARTTLS: servers that cannot do TLS are refused (RFC 3207 forbids that on a public MX)",
            evidence,
        )
        .fix(fix_line(view, &tls.level_param, "may")),
        Role::Mx => pass(ID, endpoint, "STARTTLS is offered", evidence),
    }
}

/// The protocol names Postfix knows, oldest first.
const PROTOCOLS: &[&str] = &["SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"];
/// Index of TLSv1.2 in [`PROTOCOLS`]: everything below is legacy.
const FIRST_GOOD_PROTOCOL: usize = 4;

/// The protocols a Postfix protocol list allows (`>=TLSv1.2`, `!SSLv3, !TLSv1`, `TLSv1.2
/// TLSv1.3`, combinations), as indexes into [`PROTOCOLS`].
pub fn allowed_protocols(list: &str) -> Result<BTreeSet<usize>, String> {
    let index = |name: &str| {
        PROTOCOLS
            .iter()
            .position(|p| p.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown protocol {name:?}"))
    };
    let (mut min, mut max) = (0, PROTOCOLS.len() - 1);
    let mut included = BTreeSet::new();
    let mut excluded = BTreeSet::new();
    for (_, token) in split_tokens(list, &[',', ':']) {
        if let Some(name) = token.strip_prefix(">=") {
            min = index(name)?;
        } else if let Some(name) = token.strip_prefix("<=") {
            max = index(name)?;
        } else if let Some(name) = token.strip_prefix('!') {
            excluded.insert(index(name)?);
        } else {
            included.insert(index(token)?);
        }
    }
    Ok((0..PROTOCOLS.len())
        .filter(|p| included.is_empty() || included.contains(p))
        .filter(|p| !excluded.contains(p) && (min..=max).contains(p))
        .collect())
}

/// Whether the OpenSSL security level may have been lowered (so OpenSSL 3 accepts short keys,
/// NULL and anonymous suites again): `@SECLEVEL=0` in a cipher list, or a custom OpenSSL
/// configuration.
fn seclevel_lowered(view: &View<'_>, grade: &str) -> Option<String> {
    let list = format!("tls_{grade}_cipherlist");
    let param = view.param(&list);
    if view
        .expand(&param.raw)
        .to_ascii_uppercase()
        .contains("@SECLEVEL=0")
    {
        return Some(quote(&param));
    }
    let config = view.param("tls_config_file");
    let file = view.value("tls_config_file");
    (!matches!(file.trim(), "" | "default")).then(|| quote(&config))
}

pub fn versions(view: &View<'_>) -> Option<Finding> {
    const ID: &str = "tls.versions";
    let tls = tls(view);
    if !tls.active() {
        return None;
    }
    let (protocols, grade) = if tls.mandatory() {
        (
            "smtpd_tls_mandatory_protocols",
            "smtpd_tls_mandatory_ciphers",
        )
    } else {
        ("smtpd_tls_protocols", "smtpd_tls_ciphers")
    };
    let param = view.param(protocols);
    let endpoint = place(view, &param);
    let allowed = match allowed_protocols(&view.expand(&param.raw)) {
        Ok(allowed) => allowed,
        Err(why) => {
            return Some(
                Finding::new(
                    ID,
                    Status::Error,
                    Severity::Medium,
                    endpoint,
                    format!("{protocols} cannot be read: {why}"),
                    quote(&param),
                )
                .fix(fix_line(view, &param, ">=TLSv1.2")),
            );
        }
    };
    let legacy: Vec<&str> = allowed
        .iter()
        .filter(|p| **p < FIRST_GOOD_PROTOCOL)
        .map(|p| PROTOCOLS[*p])
        .collect();
    if !allowed.iter().any(|p| *p >= FIRST_GOOD_PROTOCOL) {
        return Some(
            Finding::new(
                ID,
                Status::Fail,
                Severity::High,
                endpoint,
                "Neither TLS 1.2 nor TLS 1.3 is allowed",
                quote(&param),
            )
            .fix(fix_line(view, &param, ">=TLSv1.2")),
        );
    }
    if legacy.is_empty() {
        return Some(pass(
            ID,
            endpoint,
            "Only TLS 1.2 and later are allowed",
            quote(&param),
        ));
    }
    // OpenSSL 3 servers accept TLS 1.0 and 1.1 even at their default security level (they
    // do not apply it to their own SHA-1 handshake signatures): what the list allows is what
    // clients get. A lowered security level is named too, since it widens the rest.
    let grade = view.value(grade).trim().to_ascii_lowercase();
    let mut evidence = quote(&param);
    if let Some(lowered) = seclevel_lowered(view, &grade) {
        evidence.push_str(&format!("; {lowered}"));
    }
    Some(
        Finding::new(
            ID,
            Status::Fail,
            Severity::Medium,
            endpoint,
            format!("{} allowed", legacy.join(", ")),
            evidence,
        )
        .fix(fix_line(view, &param, ">=TLSv1.2")),
    )
}

pub fn ciphers(view: &View<'_>) -> Option<Finding> {
    const ID: &str = "tls.ciphers";
    let tls = tls(view);
    if !tls.active() {
        return None;
    }
    let name = if tls.mandatory() {
        "smtpd_tls_mandatory_ciphers"
    } else {
        "smtpd_tls_ciphers"
    };
    let param = view.param(name);
    let grade = view.expand(&param.raw).trim().to_ascii_lowercase();
    let endpoint = place(view, &param);
    Some(match grade.as_str() {
        "null" => Finding::new(
            ID,
            Status::Fail,
            Severity::High,
            endpoint,
            "Cipher grade null: TLS without encryption",
            quote(&param),
        )
        .fix(fix_line(view, &param, "medium")),
        "export" | "low" => Finding::new(
            ID,
            Status::Fail,
            Severity::Medium,
            endpoint,
            format!("Cipher grade {grade}: weak ciphers are accepted"),
            quote(&param),
        )
        .fix(fix_line(view, &param, "medium")),
        "medium" | "high" => {
            let mut problems = Vec::new();
            let mut evidence = vec![quote(&param)];
            let mut fixes = Vec::new();
            let (status, severity) = match (
                excluded(view, &tls, "aNULL"),
                seclevel_lowered(view, &grade),
            ) {
                (true, None) => {
                    return Some(pass(
                        ID,
                        endpoint,
                        format!("Cipher grade {grade}, anonymous suites excluded"),
                        evidence.join("; "),
                    ));
                }
                (anonymous_excluded, lowered) => {
                    let mut worst = (Status::Warn, Severity::Low);
                    if !anonymous_excluded {
                        problems.push("anonymous suites are accepted (Postfix enables them on the server side)");
                        evidence.push(quote(&view.param("smtpd_tls_exclude_ciphers")));
                        fixes.push(fix_line(
                            view,
                            &view.param("smtpd_tls_exclude_ciphers"),
                            "aNULL",
                        ));
                        worst = (Status::Fail, Severity::Low);
                    }
                    if let Some(lowered) = lowered {
                        problems.push("OpenSSL's security level is lowered: legacy suites and short keys are accepted");
                        evidence.push(lowered);
                        fixes.push(format!(
                            "In main.cf: remove `tls_{grade}_cipherlist` (Postfix's default list) or drop @SECLEVEL=0 from it"
                        ));
                        worst = (Status::Fail, Severity::Medium);
                    }
                    worst
                }
            };
            Finding::new(
                ID,
                status,
                severity,
                endpoint,
                problems.join("; "),
                evidence.join("; "),
            )
            .fix(fixes.join("; "))
        }
        _ => Finding::new(
            ID,
            Status::Error,
            Severity::Low,
            endpoint,
            format!("{name} has a value Postfix does not know"),
            quote(&param),
        )
        .fix(fix_line(view, &param, "medium")),
    })
}

/// Whether the OpenSSL cipher `name` (e.g. `aNULL`, `kRSA`) is excluded for this service:
/// in `smtpd_tls_exclude_ciphers`, or in `smtpd_tls_mandatory_exclude_ciphers` when TLS is
/// mandatory. Anonymous suites are also off when client certificates are asked for.
fn excluded(view: &View<'_>, tls: &Tls<'_>, name: &str) -> bool {
    let mut lists = vec!["smtpd_tls_exclude_ciphers"];
    if tls.mandatory() {
        lists.push("smtpd_tls_mandatory_exclude_ciphers");
    }
    (name == "aNULL" && view.flag("smtpd_tls_ask_ccert"))
        || lists.iter().any(|list| {
            split_tokens(&view.value(list), &[',', ':'])
                .iter()
                .any(|(_, t)| t.eq_ignore_ascii_case(name))
        })
}

/// `tls.kex`: RSA key exchange (no forward secrecy) is accepted whenever the certificate is
/// RSA, unless excluded; the linter cannot see the certificate's key type, so it warns.
pub fn kex(view: &View<'_>) -> Option<Finding> {
    const ID: &str = "tls.kex";
    let tls = tls(view);
    if !tls.active() {
        return None;
    }
    let exclude = view.param("smtpd_tls_exclude_ciphers");
    if excluded(view, &tls, "kRSA") {
        return Some(pass(
            ID,
            place(view, &exclude),
            "RSA key exchange is excluded",
            quote(&exclude),
        ));
    }
    let value = view.expand(&exclude.raw);
    let wanted = if value.trim().is_empty() {
        "kRSA".to_string()
    } else {
        format!("{}, kRSA", value.trim())
    };
    Some(
        Finding::new(
            ID,
            Status::Warn,
            Severity::Low,
            place(view, &exclude),
            "RSA key exchange (no forward secrecy) is accepted when the certificate is RSA",
            quote(&exclude),
        )
        .fix(fix_line(view, &exclude, &wanted)),
    )
}

// ---------------------------------------------------------------------------------------------
// smtp.auth_before_tls, smtp.vrfy, smtp.banner_disclosure

pub fn auth_before_tls(view: &View<'_>) -> Finding {
    const ID: &str = "smtp.auth_before_tls";
    let sasl = view.param("smtpd_sasl_auth_enable");
    if !view.flag("smtpd_sasl_auth_enable") {
        return pass(ID, place(view, &sasl), "AUTH is not offered", quote(&sasl));
    }
    let tls = tls(view);
    if tls.mandatory() && tls.active() {
        let decided_by = if tls.wrapper {
            view.param("smtpd_tls_wrappermode")
        } else {
            tls.level_param
        };
        return pass(
            ID,
            place(view, &decided_by),
            "AUTH comes after TLS: TLS is required first",
            quote(&decided_by),
        );
    }
    let only = view.param("smtpd_tls_auth_only");
    if view.flag("smtpd_tls_auth_only") {
        return pass(
            ID,
            place(view, &only),
            "AUTH is offered only inside TLS",
            quote(&only),
        );
    }
    Finding::new(
        ID,
        Status::Fail,
        Severity::High,
        place(view, &only),
        "AUTH is offered before STARTTLS: passwords can cross the network in clear text",
        format!("{}; {}", quote(&sasl), quote(&only)),
    )
    .fix(fix_line(view, &only, "yes"))
}

/// A parameter that should be `yes`.
struct YesWanted {
    id: &'static str,
    name: &'static str,
    pass: &'static str,
    fail: &'static str,
    status: Status,
    severity: Severity,
    /// Appended to the fix (e.g. the versions that know the parameter).
    note: &'static str,
}

fn yes_wanted(view: &View<'_>, check: &YesWanted) -> Finding {
    let param = view.param(check.name);
    if view.flag(check.name) {
        return pass(check.id, place(view, &param), check.pass, quote(&param));
    }
    Finding::new(
        check.id,
        check.status,
        check.severity,
        place(view, &param),
        check.fail,
        quote(&param),
    )
    .fix(format!("{}{}", fix_line(view, &param, "yes"), check.note))
}

pub fn vrfy(view: &View<'_>) -> Finding {
    yes_wanted(
        view,
        &YesWanted {
            id: "smtp.vrfy",
            name: "disable_vrfy_command",
            pass: "VRFY is disabled",
            fail: "VRFY is enabled: anyone can test which addresses exist",
            status: Status::Fail,
            severity: Severity::Medium,
            note: "",
        },
    )
}

pub fn banner(view: &View<'_>) -> Finding {
    const ID: &str = "smtp.banner_disclosure";
    let param = view.param("smtpd_banner");
    let raw = param.raw.to_ascii_lowercase();
    let expanded = view.expand(&param.raw);
    let reveals = raw.contains("mail_name")
        || raw.contains("mail_version")
        || expanded.to_ascii_lowercase().contains("postfix");
    let evidence = format!("{} → \"220 {}\"", quote(&param), truncate(&expanded));
    if reveals {
        return Finding::new(
            ID,
            Status::Fail,
            Severity::Low,
            place(view, &param),
            "The banner names the mail software",
            evidence,
        )
        .fix(fix_line(view, &param, "$myhostname ESMTP"));
    }
    pass(
        ID,
        place(view, &param),
        "The banner names no software",
        evidence,
    )
}

// ---------------------------------------------------------------------------------------------
// postfix.rate_limits, smtp.size_limit, postfix.helo_required, smtp.pipelining_sync

/// The anvil-enforced limits checked, and the value suggested for each.
const RATE_LIMITS: &[(&str, &str)] = &[
    ("smtpd_client_connection_rate_limit", "60"),
    ("smtpd_client_message_rate_limit", "100"),
    ("smtpd_client_connection_count_limit", "20"),
    ("smtpd_client_auth_rate_limit", "10"),
];

pub fn rate_limits(view: &View<'_>, anvil_missing: bool) -> Finding {
    const ID: &str = "postfix.rate_limits";
    let sasl = view.flag("smtpd_sasl_auth_enable");
    let mut unlimited = Vec::new();
    let mut evidence = Vec::new();
    for (name, suggested) in RATE_LIMITS {
        if *name == "smtpd_client_auth_rate_limit" && !sasl {
            continue;
        }
        let param = view.param(name);
        let value = view.expand(&param.raw);
        evidence.push(match param.source {
            Source::Default => format!("{name} = {value} (default)"),
            _ => quote(&param),
        });
        if value.trim().parse::<u64>().is_ok_and(|v| v == 0) {
            unlimited.push((param, *suggested));
        }
    }
    let evidence = evidence.join("; ");
    if anvil_missing {
        return Finding::new(
            ID,
            Status::Fail,
            Severity::Medium,
            view.service.origin.file.clone(),
            "master.cf has no anvil service: Postfix enforces no client rate or connection limit",
            evidence,
        )
        .fix("In master.cf: `anvil     unix  -       -       y       -       1       anvil`");
    }
    let Some((first, _)) = unlimited.first() else {
        let first = view.param(RATE_LIMITS[0].0);
        return pass(
            ID,
            place(view, &first),
            "Client connection, message and AUTH rates are limited",
            evidence,
        );
    };
    let names: Vec<&str> = unlimited.iter().map(|(p, _)| p.name).collect();
    let fixes: Vec<String> = unlimited
        .iter()
        .map(|(p, v)| fix_line(view, p, v))
        .collect();
    Finding::new(
        ID,
        Status::Warn,
        Severity::Low,
        place(view, first),
        format!("No limit per client: {}", names.join(", ")),
        evidence,
    )
    .fix(format!(
        "{} (per anvil_rate_time_unit, 60s by default; clients in smtpd_client_event_limit_exceptions are exempt)",
        fixes.join("; ")
    ))
}

pub fn size_limit(view: &View<'_>) -> Finding {
    const ID: &str = "smtp.size_limit";
    let param = view.param("message_size_limit");
    let endpoint = place(view, &param);
    let fix = fix_line(view, &param, "26214400");
    match view.expand(&param.raw).trim().parse::<u64>() {
        Ok(0) => Finding::new(
            ID,
            Status::Fail,
            Severity::Medium,
            endpoint,
            "No message size limit",
            quote(&param),
        )
        .fix(fix),
        Ok(n) if n > LARGE_MESSAGE_LIMIT => Finding::new(
            ID,
            Status::Warn,
            Severity::Low,
            endpoint,
            format!("Very large message size limit ({} MiB)", n / (1024 * 1024)),
            quote(&param),
        )
        .fix(fix),
        Ok(n) => pass(
            ID,
            endpoint,
            format!("Messages are limited to {n} bytes"),
            quote(&param),
        ),
        Err(_) => Finding::new(
            ID,
            Status::Error,
            Severity::Low,
            endpoint,
            "message_size_limit is not a number",
            quote(&param),
        )
        .fix(fix),
    }
}

pub fn helo_required(view: &View<'_>) -> Finding {
    yes_wanted(
        view,
        &YesWanted {
            id: "postfix.helo_required",
            name: "smtpd_helo_required",
            pass: "HELO/EHLO is required",
            fail: "Clients may send mail without HELO/EHLO",
            status: Status::Warn,
            severity: Severity::Low,
            note: "",
        },
    )
}

pub fn pipelining(view: &View<'_>) -> Finding {
    yes_wanted(
        view,
        &YesWanted {
            id: "smtp.pipelining_sync",
            name: "smtpd_forbid_unauth_pipelining",
            pass: "Commands sent ahead of PIPELINING are refused",
            fail: "Clients may send commands before the server asks for them (spambot behaviour, smuggling helper)",
            status: Status::Warn,
            severity: Severity::Low,
            note: " (Postfix 3.7.6, 3.8.1 or later)",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lists() {
        let names = |list: &str| -> Vec<&str> {
            allowed_protocols(list)
                .unwrap()
                .into_iter()
                .map(|p| PROTOCOLS[p])
                .collect()
        };
        assert_eq!(names(">=TLSv1.2"), ["TLSv1.2", "TLSv1.3"]);
        assert_eq!(names(">=TLSv1"), ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]);
        assert_eq!(
            names("!SSLv2, !SSLv3"),
            ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
        );
        assert_eq!(
            names("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1"),
            ["TLSv1.2", "TLSv1.3"]
        );
        assert_eq!(names("TLSv1.2 TLSv1.3"), ["TLSv1.2", "TLSv1.3"]);
        assert_eq!(names(">=TLSv1 <=TLSv1.1"), ["TLSv1", "TLSv1.1"]);
        assert!(allowed_protocols("TLSv9").is_err());
    }

    #[test]
    fn service_ports() {
        assert_eq!(service_port("smtp", "inet"), Some(25));
        assert_eq!(service_port("submission", "inet"), Some(587));
        assert_eq!(service_port("127.0.0.1:smtps", "inet"), Some(465));
        assert_eq!(service_port("[::1]:2525", "inet"), Some(2525));
        assert_eq!(service_port("smtpd", "pass"), Some(25));
        assert_eq!(service_port("pickup", "unix"), None);
    }
}
