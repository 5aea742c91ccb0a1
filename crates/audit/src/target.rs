//! What the auditor is pointed at: targets as the user writes them, and the endpoints
//! (one address and port each) they resolve to.
//!
//! A target is either a mail domain or a mail host.
//!
//! A **domain** is a bare domain name without scheme, port or `@` (`example.org`): its MX
//! hosts are looked up (RFC 5321 §5.1: without MX records, the domain's own addresses are the
//! implicit MX; a null MX means no mail), and every IPv4 and IPv6 address of every MX host is
//! an endpoint on port [`TargetDefaults::smtp_port`]; the domain's DNS checks run too.
//!
//! A **host** is written `[SCHEME://][DOMAIN@]HOST[:PORT]`, or a bare address:
//!
//! - `HOST` is a host name, an IPv4 address, or an IPv6 address (in brackets when a port
//!   follows: `[2001:db8::25]:25`).
//! - `SCHEME` says what the port is for: `smtp` (a mail exchanger; STARTTLS optional),
//!   `submission` (message submission with STARTTLS, RFC 6409) or `submissions` / `smtps`
//!   (implicit TLS, RFC 8314). Without a scheme the role follows the port: 587 is submission,
//!   465 is implicit TLS, anything else is a mail exchanger.
//! - `PORT` defaults to the scheme's port (25 for `smtp`, 587, 465), and without a scheme to
//!   [`TargetDefaults::smtp_port`] (`--smtp-port`).
//! - `DOMAIN@` names the mail domain the host serves, which the recipient checks need
//!   (`postmaster@DOMAIN` must exist, random addresses of DOMAIN must not); without it those
//!   checks are skipped with that reason.
//!
//! A host name resolves to every IPv4 and IPv6 address it has (at most
//! [`MAX_ADDRESSES_PER_HOST`]); each is one [`Endpoint`], audited on its own.
//!
//! Settings read: [`TargetDefaults`]. How it fails: [`Target::parse`] returns a message that
//! quotes the offending text and shows the accepted forms; resolution returns the resolver's
//! error as text. Nothing here panics on user input; specs longer than [`MAX_TARGET_LEN`]
//! are refused.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Longest target spec accepted (a domain is at most 253 octets, a host as much).
pub const MAX_TARGET_LEN: usize = 600;
/// Most addresses one host name is audited at.
pub const MAX_ADDRESSES_PER_HOST: usize = 16;

/// What a port is for, which decides some checks' verdicts (plaintext mail on submission
/// ports, AUTH on a mail exchanger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A mail exchanger (port 25): receives mail from the internet; TLS is opportunistic.
    Mx,
    /// Message submission with STARTTLS (port 587): TLS and AUTH are expected before mail.
    Submission,
    /// Message submission over implicit TLS (port 465).
    Submissions,
}

impl Role {
    /// The URI scheme naming this role.
    pub fn scheme(self) -> &'static str {
        match self {
            Role::Mx => "smtp",
            Role::Submission => "submission",
            Role::Submissions => "submissions",
        }
    }

    fn from_port(port: u16) -> Role {
        match port {
            587 => Role::Submission,
            465 => Role::Submissions,
            _ => Role::Mx,
        }
    }
}

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One mail host (and port) to audit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostTarget {
    pub host: Host,
    pub port: u16,
    pub role: Role,
    /// The mail domain this host serves, when the user named it.
    pub domain: Option<String>,
}

/// A target as given on the command line or in a targets file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A mail host: `host:port`, `[v6]:port`, an address, with an optional scheme and domain.
    Host(HostTarget),
    /// A mail domain (lowercase, no final dot): its MX hosts on `port`, and its DNS records.
    Domain { domain: String, port: u16 },
}

/// Defaults applied while parsing targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetDefaults {
    /// Port of a target without a port and without a scheme (`--smtp-port`, default 25).
    pub smtp_port: u16,
}

impl Default for TargetDefaults {
    fn default() -> Self {
        TargetDefaults { smtp_port: 25 }
    }
}

const FORMS: &str = "expected DOMAIN, HOST:PORT, ADDRESS, [IPv6]:PORT, DOMAIN@HOST[:PORT], \
                     optionally prefixed with smtp://, submission:// or submissions://";

impl Target {
    /// Parses a target spec (see the module documentation).
    pub fn parse(spec: &str, defaults: TargetDefaults) -> Result<Target, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("empty target".into());
        }
        if spec.len() > MAX_TARGET_LEN {
            return Err(format!("target longer than {MAX_TARGET_LEN} characters"));
        }
        let bad = |why: &str| format!("target {spec:?}: {why}; {FORMS}");
        if !spec.contains([':', '@', '/', '[']) && spec.parse::<IpAddr>().is_err() {
            if !is_domain_name(spec) || !spec.contains('.') {
                return Err(bad("not a domain name"));
            }
            return Ok(Target::Domain {
                domain: spec.trim_end_matches('.').to_ascii_lowercase(),
                port: defaults.smtp_port,
            });
        }
        let (scheme, rest) = match spec.split_once("://") {
            Some((scheme, rest)) => {
                let role = match scheme.to_ascii_lowercase().as_str() {
                    "smtp" => Role::Mx,
                    "submission" => Role::Submission,
                    "submissions" | "smtps" => Role::Submissions,
                    _ => return Err(bad(&format!("unknown scheme {scheme:?}"))),
                };
                (Some(role), rest.trim_end_matches('/'))
            }
            None => (None, spec),
        };
        let (domain, hostport) = match rest.rsplit_once('@') {
            Some((domain, hostport)) => {
                if !is_domain_name(domain) {
                    return Err(bad(&format!("{domain:?} is not a domain name")));
                }
                (
                    Some(domain.trim_end_matches('.').to_ascii_lowercase()),
                    hostport,
                )
            }
            None => (None, rest),
        };
        let (host, port) = split_host_port(hostport).map_err(|why| bad(&why))?;
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) if is_domain_name(host) => {
                Host::Name(host.trim_end_matches('.').to_ascii_lowercase())
            }
            Err(_) => return Err(bad(&format!("{host:?} is not a host name or address"))),
        };
        let port = match (port, scheme) {
            (Some(p), _) => p,
            (None, Some(Role::Mx)) => 25,
            (None, Some(Role::Submission)) => 587,
            (None, Some(Role::Submissions)) => 465,
            (None, None) => defaults.smtp_port,
        };
        let role = scheme.unwrap_or_else(|| Role::from_port(port));
        Ok(Target::Host(HostTarget {
            host,
            port,
            role,
            domain,
        }))
    }

    /// The mail domain the target concerns, if known.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Target::Host(h) => h.domain.as_deref(),
            Target::Domain { domain, .. } => Some(domain),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Domain { domain, .. } => f.write_str(domain),
            Target::Host(h) => {
                if h.role != Role::from_port(h.port) {
                    write!(f, "{}://", h.role.scheme())?;
                }
                if let Some(d) = &h.domain {
                    write!(f, "{d}@")?;
                }
                match &h.host {
                    Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", h.port),
                    host => write!(f, "{host}:{}", h.port),
                }
            }
        }
    }
}

/// Splits `host[:port]` / `[v6][:port]` / bare `v6`.
fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| "unclosed '['".to_string())?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{host:?} in brackets is not an IPv6 address"));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(parse_port(p)?))),
                None => Err(format!("unexpected {after:?} after ']'")),
            },
        };
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok((s, None));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(parse_port(port)?))),
        None => Ok((s, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{p:?} is not a port (1-65535)")),
    }
}

/// A DNS name of letters, digits, hyphens and underscores in dot-separated labels of at most
/// 63 octets, at most 253 in all; one trailing dot allowed.
pub fn is_domain_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// One address and port of a target, audited on its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The host name the address belongs to; `None` when the target was an address.
    pub name: Option<String>,
    pub addr: SocketAddr,
    pub role: Role,
    /// The mail domain, when known (see the module documentation).
    pub domain: Option<String>,
}

impl Endpoint {
    /// The name to use for TLS server name indication and in messages: the host name, or
    /// the address.
    pub fn host(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.addr.ip().to_string(),
        }
    }

    /// A URI naming this endpoint, e.g. `smtp://192.0.2.1:25` or `submission://[2001:db8::1]:587`.
    pub fn uri(&self) -> String {
        format!("{}://{}", self.role.scheme(), self.addr)
    }
}

impl fmt::Display for Endpoint {
    /// `name[address]:port` as in the JSON contract, or `address:port` without a name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}[{}]:{}", self.addr.ip(), self.addr.port()),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Resolves a host target to its endpoints with the system resolver: the address itself, or
/// every address of the name (IPv4 and IPv6, duplicates removed, at most
/// [`MAX_ADDRESSES_PER_HOST`]).
pub async fn resolve_with_system(target: &HostTarget) -> Result<Vec<Endpoint>, String> {
    let addrs: Vec<IpAddr> = match &target.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    Ok(endpoints_of(target, addrs))
}

/// The endpoints of a host target at the given addresses (deduplicated, capped).
pub fn endpoints_of(target: &HostTarget, addrs: Vec<IpAddr>) -> Vec<Endpoint> {
    let mut seen = Vec::new();
    for ip in addrs {
        if !seen.contains(&ip) && seen.len() < MAX_ADDRESSES_PER_HOST {
            seen.push(ip);
        }
    }
    let name = match &target.host {
        Host::Name(n) => Some(n.clone()),
        Host::Ip(_) => None,
    };
    seen.into_iter()
        .map(|ip| Endpoint {
            name: name.clone(),
            addr: SocketAddr::new(ip, target.port),
            role: target.role,
            domain: target.domain.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<HostTarget, String> {
        match Target::parse(s, TargetDefaults { smtp_port: 2525 })? {
            Target::Host(h) => Ok(h),
            Target::Domain { .. } => Err(format!("{s} parsed as a domain")),
        }
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            Target::parse("Example.ORG.", TargetDefaults { smtp_port: 2525 }).unwrap(),
            Target::Domain {
                domain: "example.org".into(),
                port: 2525
            }
        );
        let h = parse("mx.example.org:25").unwrap();
        assert_eq!(h.host, Host::Name("mx.example.org".into()));
        assert_eq!((h.port, h.role, h.domain), (25, Role::Mx, None));
        assert_eq!(parse("192.0.2.1").unwrap().port, 2525);

        let h = parse("127.0.0.1:587").unwrap();
        assert_eq!(h.host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!((h.port, h.role), (587, Role::Submission));

        let h = parse("[::1]:465").unwrap();
        assert_eq!((h.port, h.role), (465, Role::Submissions));
        assert_eq!(parse("::1").unwrap().port, 2525);

        let h = parse("submission://Example.ORG@127.0.0.2:10587").unwrap();
        assert_eq!(h.domain.as_deref(), Some("example.org"));
        assert_eq!((h.port, h.role), (10587, Role::Submission));

        let h = parse("smtps://mail.example.org").unwrap();
        assert_eq!((h.port, h.role), (465, Role::Submissions));
        let h = parse("smtp://mail.example.org").unwrap();
        assert_eq!((h.port, h.role), (25, Role::Mx));
    }

    #[test]
    fn refuses_malformed_targets() {
        for bad in [
            "",
            "http://x",
            "host:0",
            "host:99999",
            "host:abc",
            "[::1",
            "[nope]:25",
            "a b",
            "-bad.example",
            "x@",
            "@host",
            "ex ample@host",
            "localhost",
            "bad_.exa mple",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse(&"a".repeat(700)).is_err());
    }

    #[test]
    fn displays_round_trip() {
        for spec in [
            "mx.example.org:25",
            "[::1]:25",
            "example.org@127.0.0.1:2525",
            "submission://127.0.0.1:10587",
            "example.org",
        ] {
            let t = Target::parse(spec, TargetDefaults::default()).unwrap();
            assert_eq!(t.to_string(), spec);
        }
    }

    #[test]
    fn endpoints_are_named_as_the_contract_says() {
        let Ok(Target::Host(h)) = Target::parse("mx1.example.org:25", TargetDefaults::default())
        else {
            panic!("not a host")
        };
        let eps = endpoints_of(
            &h,
            vec![
                "192.0.2.1".parse().unwrap(),
                "192.0.2.1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ],
        );
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].to_string(), "mx1.example.org[192.0.2.1]:25");
        assert_eq!(eps[1].to_string(), "mx1.example.org[2001:db8::1]:25");
        assert_eq!(eps[1].uri(), "smtp://[2001:db8::1]:25");
    }
}
