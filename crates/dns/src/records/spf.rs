//! SPF records (RFC 7208 §4.5, §4.6, §5, §6, §7): the terms of a `v=spf1` TXT record.
//!
//! [`parse`] reads one record into its terms: mechanisms with their qualifier (`all`,
//! `include`, `a`, `mx`, `ptr`, `ip4`, `ip6`, `exists`) and modifiers (`redirect`, `exp`, and
//! unknown ones, which the RFC says to ignore). Domain specifications are kept as text with
//! their macros unexpanded (`%{i}.%{d}`), but the macro syntax is checked. Everything the RFC
//! calls a syntax error (a "permerror" for a verifier) is an `Err(RecordError)` naming the
//! character column and the term: unknown mechanisms, bad addresses or prefix lengths, a
//! domain-spec that does not end in a valid top label, a bad macro, `redirect` or `exp` twice,
//! a separator other than a space. Things that are valid but worth a word are warnings: `ptr`
//! (RFC 7208 §5.5 says not to use it), terms after `all` (never evaluated), `redirect` next
//! to `all` (ignored), a record longer than 450 bytes (RFC 7208 §3.4).
//!
//! [`is_spf_record`] tells which TXT records are SPF records (for "exactly one" checks), and
//! [`SpfRecord::dns_lookups`] counts the terms that cost a DNS query towards the limit of 10
//! (RFC 7208 §4.6.4); following `include` and `redirect` is the caller's work.
//!
//! Limits: records longer than [`super::MAX_RECORD_LEN`] are refused.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Diagnostic, MAX_RECORD_LEN, RecordError, check_length, shorten};

/// The size above which RFC 7208 §3.4 warns that answers may not fit a UDP packet.
pub const RECOMMENDED_MAX_LEN: usize = 450;

/// The RFC's limit on DNS-querying terms per evaluation (§4.6.4).
pub const MAX_DNS_LOOKUPS: usize = 10;

/// A parsed SPF record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfRecord {
    /// The terms after `v=spf1`, in order.
    pub terms: Vec<Term>,
    /// Valid but questionable things in the record.
    pub warnings: Vec<Diagnostic>,
}

/// One term and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The 1-based character column where the term starts.
    pub column: usize,
    /// The term as written.
    pub text: String,
    pub kind: TermKind,
}

/// A mechanism with its qualifier, or a modifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermKind {
    Mechanism(Qualifier, Mechanism),
    Modifier(Modifier),
}

/// The result a matching mechanism gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    /// `+` (the default).
    Pass,
    /// `-`
    Fail,
    /// `~`
    SoftFail,
    /// `?`
    Neutral,
}

impl Qualifier {
    /// The qualifier character.
    pub fn symbol(self) -> char {
        match self {
            Qualifier::Pass => '+',
            Qualifier::Fail => '-',
            Qualifier::SoftFail => '~',
            Qualifier::Neutral => '?',
        }
    }
}

/// A mechanism (RFC 7208 §5). Domain specs are kept as written, macros unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include {
        domain: String,
    },
    A {
        domain: Option<String>,
        ip4_prefix: Option<u8>,
        ip6_prefix: Option<u8>,
    },
    Mx {
        domain: Option<String>,
        ip4_prefix: Option<u8>,
        ip6_prefix: Option<u8>,
    },
    Ptr {
        domain: Option<String>,
    },
    Ip4 {
        network: Ipv4Addr,
        prefix: u8,
    },
    Ip6 {
        network: Ipv6Addr,
        prefix: u8,
    },
    Exists {
        domain: String,
    },
}

impl Mechanism {
    /// The mechanism's name.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::All => "all",
            Mechanism::Include { .. } => "include",
            Mechanism::A { .. } => "a",
            Mechanism::Mx { .. } => "mx",
            Mechanism::Ptr { .. } => "ptr",
            Mechanism::Ip4 { .. } => "ip4",
            Mechanism::Ip6 { .. } => "ip6",
            Mechanism::Exists { .. } => "exists",
        }
    }

    /// True for the mechanisms that need a DNS query (§4.6.4).
    pub fn queries_dns(&self) -> bool {
        matches!(
            self,
            Mechanism::Include { .. }
                | Mechanism::A { .. }
                | Mechanism::Mx { .. }
                | Mechanism::Ptr { .. }
                | Mechanism::Exists { .. }
        )
    }
}

/// A modifier (RFC 7208 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    Redirect(String),
    Exp(String),
    /// Any other `name=value`; verifiers ignore it.
    Unknown {
        name: String,
        value: String,
    },
}

impl SpfRecord {
    /// The mechanisms with their qualifiers, in order.
    pub fn mechanisms(&self) -> impl Iterator<Item = (Qualifier, &Mechanism)> {
        self.terms.iter().filter_map(|t| match &t.kind {
            TermKind::Mechanism(q, m) => Some((*q, m)),
            TermKind::Modifier(_) => None,
        })
    }

    /// The `redirect=` domain, if any.
    pub fn redirect(&self) -> Option<&str> {
        self.terms.iter().find_map(|t| match &t.kind {
            TermKind::Modifier(Modifier::Redirect(domain)) => Some(domain.as_str()),
            _ => None,
        })
    }

    /// The `exp=` domain, if any.
    pub fn exp(&self) -> Option<&str> {
        self.terms.iter().find_map(|t| match &t.kind {
            TermKind::Modifier(Modifier::Exp(domain)) => Some(domain.as_str()),
            _ => None,
        })
    }

    /// The qualifier of the first `all`, if there is one.
    pub fn all(&self) -> Option<Qualifier> {
        self.mechanisms()
            .find(|(_, m)| matches!(m, Mechanism::All))
            .map(|(q, _)| q)
    }

    /// The `include:` domains, in order.
    pub fn includes(&self) -> impl Iterator<Item = &str> {
        self.mechanisms().filter_map(|(_, m)| match m {
            Mechanism::Include { domain } => Some(domain.as_str()),
            _ => None,
        })
    }

    /// The terms of this record that cost a DNS query towards the limit of
    /// [`MAX_DNS_LOOKUPS`]: `include`, `a`, `mx`, `ptr`, `exists` and `redirect` (the latter
    /// only when there is no `all`, since it is then ignored). Queries made by the included
    /// records are not counted here.
    pub fn dns_lookups(&self) -> usize {
        let mechanisms = self.mechanisms().filter(|(_, m)| m.queries_dns()).count();
        let redirect = usize::from(self.redirect().is_some() && self.all().is_none());
        mechanisms + redirect
    }
}

impl fmt::Display for TermKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TermKind::Mechanism(q, m) => write!(f, "{}{}", q.symbol(), m.name()),
            TermKind::Modifier(Modifier::Redirect(d)) => write!(f, "redirect={d}"),
            TermKind::Modifier(Modifier::Exp(d)) => write!(f, "exp={d}"),
            TermKind::Modifier(Modifier::Unknown { name, value }) => write!(f, "{name}={value}"),
        }
    }
}

/// True when a TXT record is an SPF record: it starts with `v=spf1` (any case) followed by a
/// space or the end (RFC 7208 §4.5). Other TXT records are not SPF and are ignored.
pub fn is_spf_record(txt: &str) -> bool {
    let bytes = txt.as_bytes();
    bytes.len() >= 6
        && bytes[..6].eq_ignore_ascii_case(b"v=spf1")
        && (bytes.len() == 6 || bytes[6] == b' ')
}

/// Parses an SPF record.
pub fn parse(text: &str) -> Result<SpfRecord, RecordError> {
    check_length(text, MAX_RECORD_LEN, "SPF record")?;
    if !is_spf_record(text) {
        return Err(RecordError::at(
            text,
            0,
            "an SPF record starts with \"v=spf1\" followed by a space",
        ));
    }
    if let Some((at, c)) = text
        .char_indices()
        .find(|(_, c)| *c != ' ' && (c.is_whitespace() || c.is_control()))
    {
        return Err(RecordError::at(
            text,
            at,
            format!("{c:?} is not allowed: terms are separated by spaces only"),
        ));
    }
    let mut record = SpfRecord {
        terms: Vec::new(),
        warnings: Vec::new(),
    };
    let mut offset = 6usize;
    for piece in text[6..].split(' ') {
        let at = offset;
        offset += piece.len() + 1;
        if piece.is_empty() {
            continue;
        }
        let kind = parse_term(text, piece, at)?;
        let column = super::column(text, at);
        match &kind {
            TermKind::Modifier(Modifier::Redirect(_)) if record.redirect().is_some() => {
                return Err(RecordError::at(
                    text,
                    at,
                    "\"redirect\" appears twice (RFC 7208 §6: at most once)",
                ));
            }
            TermKind::Modifier(Modifier::Exp(_)) if record.exp().is_some() => {
                return Err(RecordError::at(
                    text,
                    at,
                    "\"exp\" appears twice (RFC 7208 §6: at most once)",
                ));
            }
            TermKind::Mechanism(_, Mechanism::Ptr { .. }) => {
                record.warnings.push(Diagnostic::at(
                    text,
                    at,
                    "\"ptr\" is slow and unreliable; RFC 7208 §5.5 says not to use it (list the addresses with ip4/ip6 or a instead)",
                ));
            }
            _ => {}
        }
        if let TermKind::Mechanism(..) = kind
            && record.all().is_some()
        {
            record.warnings.push(Diagnostic::at(
                text,
                at,
                format!(
                    "\"{}\" comes after \"all\" and is never evaluated",
                    shorten(piece)
                ),
            ));
        }
        record.terms.push(Term {
            column,
            text: piece.to_string(),
            kind,
        });
    }
    if record.redirect().is_some() && record.all().is_some() {
        record.warnings.push(Diagnostic::whole(
            "\"redirect\" is ignored because the record has an \"all\" mechanism",
        ));
    }
    if text.len() > RECOMMENDED_MAX_LEN {
        record.warnings.push(Diagnostic::whole(format!(
            "the record is {} bytes long; RFC 7208 §3.4 recommends keeping SPF answers under 450 bytes",
            text.len()
        )));
    }
    Ok(record)
}

/// One term starting at byte offset `at` of `text`.
fn parse_term(text: &str, term: &str, at: usize) -> Result<TermKind, RecordError> {
    // A modifier is `name=`: the first character that cannot be in a name is `=`.
    let name_end = term
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(term.len());
    if term[name_end..].starts_with('=') {
        return parse_modifier(text, term, at, name_end);
    }

    let (qualifier, body, body_at) = match term.as_bytes()[0] {
        b'+' => (Qualifier::Pass, &term[1..], at + 1),
        b'-' => (Qualifier::Fail, &term[1..], at + 1),
        b'~' => (Qualifier::SoftFail, &term[1..], at + 1),
        b'?' => (Qualifier::Neutral, &term[1..], at + 1),
        _ => (Qualifier::Pass, term, at),
    };
    let name_len = body
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(body.len());
    let name = body[..name_len].to_ascii_lowercase();
    let rest = &body[name_len..];
    let rest_at = body_at + name_len;
    let mechanism = match name.as_str() {
        "all" => {
            if !rest.is_empty() {
                return Err(RecordError::at(
                    text,
                    rest_at,
                    format!("\"all\" takes no argument, found \"{}\"", shorten(rest)),
                ));
            }
            Mechanism::All
        }
        "include" | "exists" => {
            let domain = required_domain(text, rest, rest_at, &name)?;
            if name == "include" {
                Mechanism::Include { domain }
            } else {
                Mechanism::Exists { domain }
            }
        }
        "a" | "mx" => {
            let (spec, cidr, cidr_at) = split_cidr(rest, rest_at);
            let domain = optional_domain(text, spec, rest_at, &name)?;
            let (ip4_prefix, ip6_prefix) = dual_cidr(text, cidr, cidr_at)?;
            if name == "a" {
                Mechanism::A {
                    domain,
                    ip4_prefix,
                    ip6_prefix,
                }
            } else {
                Mechanism::Mx {
                    domain,
                    ip4_prefix,
                    ip6_prefix,
                }
            }
        }
        "ptr" => Mechanism::Ptr {
            domain: optional_domain(text, rest, rest_at, "ptr")?,
        },
        "ip4" => {
            let (network, prefix) = ip_network::<Ipv4Addr>(text, rest, rest_at, "ip4", 32)?;
            Mechanism::Ip4 { network, prefix }
        }
        "ip6" => {
            let (network, prefix) = ip_network::<Ipv6Addr>(text, rest, rest_at, "ip6", 128)?;
            Mechanism::Ip6 { network, prefix }
        }
        "" => {
            return Err(RecordError::at(
                text,
                at,
                format!("\"{}\" is not a mechanism or modifier", shorten(term)),
            ));
        }
        other => {
            return Err(RecordError::at(
                text,
                body_at,
                format!(
                    "unknown mechanism \"{}\" (known: all, include, a, mx, ptr, ip4, ip6, exists)",
                    shorten(other)
                ),
            ));
        }
    };
    Ok(TermKind::Mechanism(qualifier, mechanism))
}

fn parse_modifier(
    text: &str,
    term: &str,
    at: usize,
    name_end: usize,
) -> Result<TermKind, RecordError> {
    let name = &term[..name_end];
    let value = &term[name_end + 1..];
    let value_at = at + name_end + 1;
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(RecordError::at(
            text,
            at,
            format!("\"{}\" is not a valid modifier name", shorten(name)),
        ));
    }
    match name.to_ascii_lowercase().as_str() {
        "redirect" | "exp" => {
            if value.is_empty() {
                return Err(RecordError::at(
                    text,
                    value_at,
                    format!("\"{name}=\" needs a domain"),
                ));
            }
            domain_spec(text, value, value_at)?;
            Ok(TermKind::Modifier(
                if name.eq_ignore_ascii_case("redirect") {
                    Modifier::Redirect(value.to_string())
                } else {
                    Modifier::Exp(value.to_string())
                },
            ))
        }
        _ => {
            macro_string(text, value, value_at, true)?;
            Ok(TermKind::Modifier(Modifier::Unknown {
                name: name.to_string(),
                value: value.to_string(),
            }))
        }
    }
}

/// `:address[/prefix]` after `ip4` (IPv4, prefix up to 32) or `ip6` (IPv6, up to 128); the
/// prefix defaults to the whole address.
fn ip_network<A: std::str::FromStr>(
    text: &str,
    rest: &str,
    rest_at: usize,
    name: &str,
    max: u8,
) -> Result<(A, u8), RecordError> {
    let family = if max == 32 { "IPv4" } else { "IPv6" };
    let value = rest.strip_prefix(':').ok_or_else(|| {
        RecordError::at(
            text,
            rest_at,
            format!("\"{name}\" needs \":\" and an {family} network"),
        )
    })?;
    let (address, prefix) = match value.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (value, None),
    };
    let network: A = address.parse().map_err(|_| {
        RecordError::at(
            text,
            rest_at + 1,
            format!("\"{}\" is not an {family} address", shorten(address)),
        )
    })?;
    let prefix = match prefix {
        Some(p) => cidr_length(text, p, rest_at + 2 + address.len(), max)?,
        None => max,
    };
    Ok((network, prefix))
}

/// `:domain-spec` required after `include` and `exists`.
fn required_domain(text: &str, rest: &str, at: usize, name: &str) -> Result<String, RecordError> {
    match rest.strip_prefix(':') {
        Some(spec) if !spec.is_empty() => {
            domain_spec(text, spec, at + 1)?;
            Ok(spec.to_string())
        }
        _ => Err(RecordError::at(
            text,
            at,
            format!("\"{name}\" needs \":\" and a domain"),
        )),
    }
}

/// An optional `:domain-spec` after `a`, `mx`, `ptr`.
fn optional_domain(
    text: &str,
    spec: &str,
    at: usize,
    name: &str,
) -> Result<Option<String>, RecordError> {
    if spec.is_empty() {
        return Ok(None);
    }
    match spec.strip_prefix(':') {
        Some(domain) if !domain.is_empty() => {
            domain_spec(text, domain, at + 1)?;
            Ok(Some(domain.to_string()))
        }
        Some(_) => Err(RecordError::at(
            text,
            at,
            format!("\"{name}:\" needs a domain after the colon"),
        )),
        None => Err(RecordError::at(
            text,
            at,
            format!(
                "unexpected \"{}\" after \"{name}\" (write {name}:domain or {name}/prefix)",
                shorten(spec)
            ),
        )),
    }
}

/// Splits `[:domain-spec][/cidr[//cidr6]]` at the CIDR part. A domain spec has no `/`
/// outside macros, and macro delimiters may include `/`, so the split is after the last `}`.
fn split_cidr(rest: &str, at: usize) -> (&str, &str, usize) {
    let search_from = rest.rfind('}').map(|i| i + 1).unwrap_or(0);
    match rest[search_from..].find('/') {
        Some(i) => {
            let split = search_from + i;
            (&rest[..split], &rest[split..], at + split)
        }
        None => (rest, "", at + rest.len()),
    }
}

/// `[/ip4-cidr][//ip6-cidr]`.
fn dual_cidr(text: &str, cidr: &str, at: usize) -> Result<(Option<u8>, Option<u8>), RecordError> {
    if cidr.is_empty() {
        return Ok((None, None));
    }
    if let Some(v6) = cidr.strip_prefix("//") {
        return Ok((None, Some(cidr_length(text, v6, at + 2, 128)?)));
    }
    let body = &cidr[1..];
    match body.split_once("//") {
        Some((v4, v6)) => Ok((
            Some(cidr_length(text, v4, at + 1, 32)?),
            Some(cidr_length(text, v6, at + 3 + v4.len(), 128)?),
        )),
        None => Ok((Some(cidr_length(text, body, at + 1, 32)?), None)),
    }
}

/// A prefix length: digits without a leading zero (except "0"), at most `max`.
fn cidr_length(text: &str, digits: &str, at: usize, max: u8) -> Result<u8, RecordError> {
    let valid_form = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    let value = if valid_form {
        digits.parse::<u8>().ok().filter(|v| *v <= max)
    } else {
        None
    };
    value.ok_or_else(|| {
        RecordError::at(
            text,
            at,
            format!(
                "\"{}\" is not a prefix length (0 to {max})",
                shorten(digits)
            ),
        )
    })
}

/// domain-spec = macro-string domain-end, where domain-end is `.toplabel[.]` or a macro.
fn domain_spec(text: &str, spec: &str, at: usize) -> Result<(), RecordError> {
    if macro_string(text, spec, at, false)? {
        return Ok(());
    }
    if spec.len() > 253 + 1 && !spec.contains('%') {
        return Err(RecordError::at(
            text,
            at,
            format!("\"{}\" is longer than a domain name may be", shorten(spec)),
        ));
    }
    let trimmed = spec.strip_suffix('.').unwrap_or(spec);
    let top = trimmed.rsplit('.').next().unwrap_or(trimmed);
    let has_dot = trimmed.contains('.');
    if !has_dot || !valid_toplabel(top) {
        return Err(RecordError::at(
            text,
            at,
            format!(
                "\"{}\" is not a domain: it must end in a top-level label such as \".org\" (or in a macro)",
                shorten(spec)
            ),
        ));
    }
    Ok(())
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
fn valid_toplabel(label: &str) -> bool {
    let bytes = label.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return false;
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    {
        return false;
    }
    if bytes.contains(&b'-') {
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric()
    } else {
        bytes.iter().any(|b| b.is_ascii_alphabetic())
    }
}

/// Checks a macro-string (RFC 7208 §7.1); true when it ends with a macro expansion. With
/// `explanation`, the letters c, r, t are allowed (they are valid only in explanation text;
/// we allow them in unknown modifiers, which verifiers ignore).
fn macro_string(
    text: &str,
    value: &str,
    at: usize,
    explanation: bool,
) -> Result<bool, RecordError> {
    let bytes = value.as_bytes();
    let mut i = 0usize;
    let mut ends_with_macro = false;
    while i < bytes.len() {
        let b = bytes[i];
        ends_with_macro = b == b'%';
        if b != b'%' {
            if !(0x21..=0x7e).contains(&b) {
                return Err(RecordError::at(
                    text,
                    at + i,
                    "only visible ASCII characters are allowed here",
                ));
            }
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'%') | Some(b'_') | Some(b'-') => i += 2,
            Some(b'{') => {
                let Some(close) = value[i..].find('}') else {
                    return Err(RecordError::at(
                        text,
                        at + i,
                        "a macro \"%{\" is not closed by \"}\"",
                    ));
                };
                let inner = &value[i + 2..i + close];
                check_macro(text, inner, at + i, explanation)?;
                i += close + 1;
            }
            _ => {
                return Err(RecordError::at(
                    text,
                    at + i,
                    "\"%\" must start a macro: %{x}, %%, %_ or %- (write %% for a percent sign)",
                ));
            }
        }
    }
    Ok(ends_with_macro)
}

/// The inside of `%{...}`: letter, digits, optional `r`, delimiters.
fn check_macro(text: &str, inner: &str, at: usize, explanation: bool) -> Result<(), RecordError> {
    let mut chars = inner.chars();
    let letter = chars.next().map(|c| c.to_ascii_lowercase());
    let valid_letter = match letter {
        Some('s' | 'l' | 'o' | 'd' | 'i' | 'p' | 'h' | 'v') => true,
        Some('c' | 'r' | 't') => explanation,
        _ => false,
    };
    if !valid_letter {
        return Err(RecordError::at(
            text,
            at,
            format!(
                "\"%{{{}}}\" is not a valid macro (letters: s l o d i p h v; c r t only in explanations)",
                shorten(inner)
            ),
        ));
    }
    let rest: &str = chars.as_str();
    let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
    let after_digits = &rest[digits..];
    let after_r = after_digits
        .strip_prefix(['r', 'R'])
        .unwrap_or(after_digits);
    let labels_valid = digits == 0
        || (digits <= 3
            && rest[..digits]
                .parse::<u32>()
                .is_ok_and(|n| (1..=128).contains(&n)));
    if !labels_valid {
        return Err(RecordError::at(
            text,
            at,
            format!(
                "\"%{{{}}}\": the number of labels must be 1 to 128",
                shorten(inner)
            ),
        ));
    }
    if !after_r
        .chars()
        .all(|c| matches!(c, '.' | '-' | '+' | ',' | '/' | '_' | '='))
    {
        return Err(RecordError::at(
            text,
            at,
            format!(
                "\"%{{{}}}\": only the delimiters . - + , / _ = may follow the letter",
                shorten(inner)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mechanisms(record: &SpfRecord) -> Vec<String> {
        record.terms.iter().map(|t| t.kind.to_string()).collect()
    }

    #[test]
    fn a_typical_record() {
        let record = parse(
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx:mail.example.org/28//64 \
             include:_spf.example.net ~all",
        )
        .unwrap();
        assert_eq!(
            mechanisms(&record),
            vec!["+ip4", "+ip6", "+a", "+mx", "+include", "~all"]
        );
        assert_eq!(record.all(), Some(Qualifier::SoftFail));
        assert_eq!(record.dns_lookups(), 3);
        assert_eq!(
            record.includes().collect::<Vec<_>>(),
            vec!["_spf.example.net"]
        );
        assert!(record.warnings.is_empty(), "{:?}", record.warnings);
        assert_eq!(
            record.terms[0].kind,
            TermKind::Mechanism(
                Qualifier::Pass,
                Mechanism::Ip4 {
                    network: Ipv4Addr::new(192, 0, 2, 0),
                    prefix: 24
                }
            )
        );
        assert_eq!(
            record.terms[3].kind,
            TermKind::Mechanism(
                Qualifier::Pass,
                Mechanism::Mx {
                    domain: Some("mail.example.org".to_string()),
                    ip4_prefix: Some(28),
                    ip6_prefix: Some(64)
                }
            )
        );
        assert_eq!(record.terms[1].column, 25);
    }

    #[test]
    fn modifiers_and_macros() {
        let record =
            parse("v=spf1 exists:%{i}.%{l1r+-}._spf.%{d} redirect=_spf.example.org exp=explain._spf.%{d} foo=bar")
                .unwrap();
        assert_eq!(record.redirect(), Some("_spf.example.org"));
        assert_eq!(record.exp(), Some("explain._spf.%{d}"));
        assert_eq!(record.dns_lookups(), 2);
        assert!(matches!(
            record.terms[3].kind,
            TermKind::Modifier(Modifier::Unknown { .. })
        ));
        assert!(parse("v=spf1 a:%{ir}.example.org -all").is_ok());
        assert!(parse("v=spf1 include:%{d2}").is_ok());
    }

    #[test]
    fn syntax_errors_name_the_column() {
        let cases = [
            ("v=spf1 foo -all", 8, "unknown mechanism"),
            ("v=spf1 ip4:192.0.2.300 -all", 12, "not an IPv4"),
            ("v=spf1 ip4:192.0.2.0/33", 22, "prefix length"),
            ("v=spf1 ip6:2001:db8::/129", 23, "prefix length"),
            ("v=spf1 ip4:192.0.2.0/024", 22, "prefix length"),
            ("v=spf1 include", 15, "needs"),
            ("v=spf1 include:example", 16, "top-level label"),
            ("v=spf1 a:example.123", 10, "top-level label"),
            ("v=spf1 redirect=a.example redirect=b.example", 27, "twice"),
            ("v=spf1 exp=a.example exp=b.example", 22, "twice"),
            ("v=spf1 a:%{x}.example.org", 10, "not a valid macro"),
            ("v=spf1 a:%{c}.example.org", 10, "only in explanations"),
            ("v=spf1 a:100%.example.org", 13, "must start a macro"),
            ("v=spf1 a:%{d.example.org", 10, "not closed"),
            ("v=spf1 all:x", 11, "no argument"),
            ("v=spf1\ta", 1, "starts with"),
            ("v=spf1 a\t-all", 9, "spaces only"),
            ("v=spf1 a:%{d0}.example.org", 10, "1 to 128"),
            ("v=spf1 a:%{d129}.example.org", 10, "1 to 128"),
            ("v=spf1 a:%{dx}.example.org", 10, "delimiters"),
            ("v=spf10 a", 1, "starts with"),
            ("spf1 a", 1, "starts with"),
            ("v=spf1 -", 8, "not a mechanism"),
            ("v=spf1 mxfoo", 8, "unknown mechanism"),
            ("v=spf1 a/", 10, "prefix length"),
            ("v=spf1 a:", 9, "needs a domain"),
        ];
        for (record, column, words) in cases {
            let err = parse(record).unwrap_err();
            assert!(
                err.message().contains(words),
                "{record}: {err} should say {words:?}"
            );
            assert_eq!(err.position(), super::super::col(column), "{record}: {err}");
        }
    }

    #[test]
    fn warnings() {
        let record = parse("v=spf1 ptr -all a redirect=x.example").unwrap();
        let messages: Vec<&str> = record.warnings.iter().map(|w| w.message.as_str()).collect();
        assert!(messages.iter().any(|m| m.contains("RFC 7208 §5.5")));
        assert!(messages.iter().any(|m| m.contains("never evaluated")));
        assert!(messages.iter().any(|m| m.contains("ignored")));
        assert_eq!(record.dns_lookups(), 2, "ptr and a; redirect is ignored");
        let long = format!("v=spf1 {}-all", "ip4:192.0.2.1 ".repeat(40));
        assert!(parse(&long).unwrap().warnings[0].message.contains("450"));
    }

    #[test]
    fn spf_records_are_recognised() {
        assert!(is_spf_record("v=spf1"));
        assert!(is_spf_record("V=SPF1 -all"));
        assert!(!is_spf_record("v=spf10"));
        assert!(!is_spf_record("v=spf1-all"));
        assert!(!is_spf_record("google-site-verification=x"));
        assert!(parse("v=spf1").unwrap().terms.is_empty());
        assert!(parse("v=spf1   ").unwrap().terms.is_empty());
    }

    #[test]
    fn length_limit() {
        let huge = format!("v=spf1 {}", "a ".repeat(MAX_RECORD_LEN));
        assert!(parse(&huge).unwrap_err().message().contains("bytes long"));
    }
}
