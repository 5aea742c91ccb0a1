//! Value types of the configuration that TOML has no type for: durations ("30s", "5m"),
//! CIDR networks ("10.0.0.0/8"), backend URLs ("smtp://host:port") and the domain-name check.
//!
//! Each type parses from a string with `FromStr` and deserializes from a TOML string. A bad
//! value is an error whose text says what is wrong and, after [`FIX_SEPARATOR`], what to write
//! instead; the configuration loader splits the two into the message and the fix it prints.
//! Parsing never panics and every input is bounded (digits per number, name lengths).

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Separates what is wrong from what to write instead in the error texts of this module.
pub const FIX_SEPARATOR: &str = " — fix: ";

/// Deserializes a `T` from a TOML string through `T::from_str`, naming `expecting` when the
/// value is not a string at all.
pub(super) fn from_toml_string<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    struct StrVisitor<T> {
        expecting: &'static str,
        target: PhantomData<T>,
    }
    impl<T: FromStr<Err = String>> Visitor<'_> for StrVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            T::from_str(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(StrVisitor {
        expecting,
        target: PhantomData,
    })
}

/// A duration written as a number and a unit: `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"5d"`, or several
/// such parts added together (`"1h30m"`). `"0s"` is zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }

    /// Whether this is zero.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

/// The most digits one part of a duration may have (keeps the arithmetic far from overflow).
const MAX_DURATION_DIGITS: usize = 9;

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid duration \"{}\": {why}{FIX_SEPARATOR}write a whole number followed by \
                 ms, s, m, h or d, e.g. \"30s\", \"5m\", \"1h\", \"5d\" or \"1h30m\"",
                text.escape_debug()
            )
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad("expected a number"));
            }
            if digits > MAX_DURATION_DIGITS {
                return Err(bad("the number is too large"));
            }
            let (number, after) = rest.split_at(digits);
            let number: u64 = number.parse().map_err(|_| bad("expected a number"))?;
            let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (unit, after) = after.split_at(unit_len);
            let scale = match unit {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(bad("the number has no unit")),
                _ => return Err(bad("unknown unit")),
            };
            total = number
                .checked_mul(scale)
                .and_then(|part| total.checked_add(part))
                .ok_or_else(|| bad("the number is too large"))?;
            rest = after;
        }
        Ok(HumanDuration(Duration::from_millis(total)))
    }
}

impl fmt::Display for HumanDuration {
    /// The largest units that express the value exactly, e.g. `1h30m`, `5d`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, scale) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
            ("ms", 1),
        ] {
            if ms >= scale {
                write!(f, "{}{unit}", ms / scale)?;
                ms %= scale;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_toml_string(
            d,
            "a duration string such as \"30s\", \"5m\", \"1h\" or \"5d\"",
        )
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a
/// single host (/32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `prefix` bits containing `addr` (host bits cleared; the prefix is capped
    /// at the family's width).
    pub fn around(addr: IpAddr, prefix: u8) -> Cidr {
        match addr {
            IpAddr::V4(a) => {
                let prefix = prefix.min(32);
                let network = IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(prefix)));
                Cidr { network, prefix }
            }
            IpAddr::V6(a) => {
                let prefix = prefix.min(128);
                let network = IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(prefix)));
                Cidr { network, prefix }
            }
        }
    }

    /// The network address (host bits are always zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `addr` is inside this network. IPv4 addresses mapped into IPv6
    /// (`::ffff:192.0.2.1`, as a dual-stack socket reports them) match IPv4 networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & v4_mask(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & v6_mask(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn v4_mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn v6_mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let shown = text.escape_debug();
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!(
                "invalid network \"{shown}\": \"{}\" is not an IP address{FIX_SEPARATOR}write \
                 an address and a prefix length, e.g. \"192.0.2.0/24\" or \"2001:db8::/32\"",
                addr_text.escape_debug()
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return Err(format!(
                        "invalid network \"{shown}\": the prefix length must be a number from 0 \
                         to {max}{FIX_SEPARATOR}write e.g. \"{addr}/24\""
                    ));
                }
            },
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(prefix))),
        };
        if network != addr {
            return Err(format!(
                "invalid network \"{shown}\": the address has bits set outside the /{prefix} \
                 prefix{FIX_SEPARATOR}write \"{network}/{prefix}\" for the network, or \
                 \"{addr}/{max}\" for the single host"
            ));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_toml_string(d, "a network string such as \"192.0.2.0/24\"")
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The loopback networks (127.0.0.0/8 and ::1): local processes, exempt from abuse counting
/// and rate limits by default, as Postfix exempts `$mynetworks` from its client limits.
pub fn loopback() -> Vec<Cidr> {
    vec![
        Cidr::around(IpAddr::V4(Ipv4Addr::LOCALHOST), 8),
        Cidr::around(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    ]
}

/// A next-hop SMTP server: `smtp://host:port`, the port defaulting to 25. The host is a DNS
/// name, an IPv4 address or a bracketed IPv6 address; it is stored without brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    pub host: String,
    pub port: u16,
}

impl BackendUrl {
    /// The default SMTP port.
    pub const DEFAULT_PORT: u16 = 25;

    /// `host:port` for connecting, with IPv6 addresses in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for BackendUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let shown = text.escape_debug();
        let example = "write \"smtp://HOST\" or \"smtp://HOST:PORT\", e.g. \"smtp://10.0.0.25:25\"";
        let Some(rest) = text.strip_prefix("smtp://") else {
            let why = match text.split_once("://") {
                Some((scheme, _)) => format!(
                    "the scheme \"{}\" is not supported (only smtp://; TLS to the next hop is \
                     chosen with the *_tls setting)",
                    scheme.escape_debug()
                ),
                None => "it does not start with smtp://".to_string(),
            };
            return Err(format!(
                "invalid backend \"{shown}\": {why}{FIX_SEPARATOR}{example}"
            ));
        };
        let bad = |why: &str| format!("invalid backend \"{shown}\": {why}{FIX_SEPARATOR}{example}");
        if rest.contains(['/', '@', '?', '#']) {
            return Err(bad("only a host and a port may follow smtp://"));
        }
        let (host, port_text) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (v6, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("the IPv6 address has no closing ]"))?;
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(bad("the bracketed host is not an IPv6 address"));
            }
            match after {
                "" => (v6, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (v6, Some(p)),
                    None => return Err(bad("unexpected text after the IPv6 address")),
                },
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port_text {
            None => Self::DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && !p.starts_with('+') => n,
                _ => return Err(bad("the port must be a number from 1 to 65535")),
            },
        };
        let is_ip = host.contains(':') || host.parse::<Ipv4Addr>().is_ok();
        if !is_ip && !is_domain(host, false) {
            return Err(bad("the host is neither a DNS name nor an IP address"));
        }
        Ok(BackendUrl {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "smtp://{}", self.authority())
    }
}

impl<'de> Deserialize<'de> for BackendUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_toml_string(d, "a URL string such as \"smtp://10.0.0.25:25\"")
    }
}

impl Serialize for BackendUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether `name` is a DNS host name: labels of letters, digits and hyphens (1 to 63 each, no
/// hyphen first or last), at most 253 characters, no trailing dot, a top label that is not all
/// digits. With `need_dot`, at least two labels are required (a fully qualified name).
pub fn is_domain(name: &str, need_dot: bool) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    if need_dot && labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|top| !top.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Result<u64, String> {
        text.parse::<HumanDuration>().map(|d| d.get().as_secs())
    }

    #[test]
    fn durations() {
        assert_eq!(secs("30s"), Ok(30));
        assert_eq!(secs("5m"), Ok(300));
        assert_eq!(secs("1h"), Ok(3600));
        assert_eq!(secs("5d"), Ok(432_000));
        assert_eq!(secs("0s"), Ok(0));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().get(),
            Duration::from_millis(250)
        );
        for bad in [
            "", "30", "s", "5 m", " 5m", "5m ", "5x", "5us", "-5s", "1.5h", "5m3",
        ] {
            let err = secs(bad).unwrap_err();
            assert!(
                err.contains("invalid duration") && err.contains(FIX_SEPARATOR),
                "{err}"
            );
        }
        assert!(secs("9999999999s").unwrap_err().contains("too large"));
        assert!(secs("999999999d999999999d999999999d").is_ok());
        assert!(secs("30").unwrap_err().contains("no unit"));
        for text in ["0s", "30s", "5m", "1h30m", "5d", "1d1h1m1s", "1s500ms"] {
            assert_eq!(text.parse::<HumanDuration>().unwrap().to_string(), text);
        }
        assert_eq!(HumanDuration::from_secs(90).to_string(), "1m30s");
    }

    fn net(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidr_contains() {
        let n = net("10.0.0.0/8");
        assert!(n.contains(ip("10.0.0.1")));
        assert!(n.contains(ip("10.255.255.255")));
        assert!(!n.contains(ip("11.0.0.0")));
        assert!(!n.contains(ip("9.255.255.255")));
        assert!(
            n.contains(ip("::ffff:10.1.2.3")),
            "IPv4-mapped IPv6 matches"
        );
        assert!(!n.contains(ip("::1")));

        let host = net("192.0.2.25");
        assert_eq!(host.to_string(), "192.0.2.25/32");
        assert!(host.contains(ip("192.0.2.25")));
        assert!(!host.contains(ip("192.0.2.26")));

        let all = net("0.0.0.0/0");
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")));

        let v6 = net("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(net("::/0").contains(ip("::1")));
        assert!(net("::1/128").contains(ip("::1")));
    }

    #[test]
    fn cidr_errors() {
        let err = "10.0.0.25/24".parse::<Cidr>().unwrap_err();
        assert!(err.contains("\"10.0.0.0/24\""), "{err}");
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "example.org/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::/129",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn backend_urls() {
        let b: BackendUrl = "smtp://10.0.0.25:2525".parse().unwrap();
        assert_eq!((b.host.as_str(), b.port), ("10.0.0.25", 2525));
        let b: BackendUrl = "smtp://Mail.Example.org".parse().unwrap();
        assert_eq!((b.host.as_str(), b.port), ("mail.example.org", 25));
        assert_eq!(b.to_string(), "smtp://mail.example.org:25");
        let b: BackendUrl = "smtp://[::1]:2525".parse().unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 2525));
        assert_eq!(b.authority(), "[::1]:2525");
        assert_eq!(b.ip(), Some(ip("::1")));
        let err = "smtps://mail.example.org"
            .parse::<BackendUrl>()
            .unwrap_err();
        assert!(err.contains("scheme \"smtps\" is not supported"), "{err}");
        for bad in [
            "mail.example.org",
            "smtp://",
            "smtp://host:0",
            "smtp://host:70000",
            "smtp://host:25/path",
            "smtp://user@host",
            "smtp://[::1",
            "smtp://[nothex]:25",
            "smtp://bad_host",
            "smtp://::1",
        ] {
            assert!(bad.parse::<BackendUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn domains() {
        assert!(is_domain("mx1.example.org", true));
        assert!(is_domain("localhost", false));
        assert!(!is_domain("localhost", true));
        assert!(!is_domain("example.org.", true));
        assert!(!is_domain("-a.example.org", true));
        assert!(!is_domain("a_b.example.org", true));
        assert!(!is_domain("192.0.2.1", true));
        assert!(!is_domain(&format!("{}.org", "a".repeat(64)), true));
        assert!(!is_domain(&format!("{}org", "a.".repeat(127)), true));
        assert!(is_domain(&format!("{}org", "a.".repeat(125)), true));
    }
}
