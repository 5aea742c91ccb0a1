//! Postfix network lists (`mynetworks`, `smtpd_forbid_bare_newline_exclusions`): which
//! entries are wider than a trusted network should be.
//!
//! An entry is an address (`192.0.2.1`, `[2001:db8::1]`), a CIDR block (`192.0.2.0/24`,
//! `[2001:db8::]/64`, with or without brackets), a `!` negation, a lookup table
//! (`hash:/etc/postfix/network_table`, `cidr:...`) or a file name (`/etc/postfix/trusted`),
//! or a host name. Tables, files and names are reported as opaque: the linter does not read
//! them. The rule: an IPv4 block wider than /24 or an IPv6 block wider than /64 is too broad,
//! loopback excepted; `0.0.0.0/0` and `::/0` are everyone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::parse::split_tokens;
use crate::finding::Severity;

/// Widest IPv4 block accepted as a trusted network.
pub const MAX_V4_PREFIX: u8 = 24;
/// Widest IPv6 block accepted as a trusted network.
pub const MAX_V6_PREFIX: u8 = 64;

/// One entry of a network list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEntry {
    Block {
        network: IpAddr,
        prefix: u8,
        negated: bool,
        text: String,
    },
    /// A table, a file or a host name: not inspected.
    Opaque(String),
}

/// A block of a network list that is too broad, and how much it matters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broad {
    pub text: String,
    pub severity: Severity,
}

/// Parses a network list (already `$`-expanded).
pub fn parse(list: &str) -> Vec<NetEntry> {
    split_tokens(list, &[','])
        .into_iter()
        .map(|(_, token)| parse_entry(token))
        .collect()
}

fn parse_entry(token: &str) -> NetEntry {
    let (negated, body) = match token.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, token),
    };
    let (addr, prefix) = match body.rsplit_once('/') {
        Some((a, p)) if !a.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (a, Some(p)),
        _ => (body, None),
    };
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let Ok(network) = addr.parse::<IpAddr>() else {
        return NetEntry::Opaque(token.to_string());
    };
    let max = if network.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix.map(str::parse::<u8>) {
        None => max,
        Some(Ok(p)) if p <= max => p,
        Some(_) => return NetEntry::Opaque(token.to_string()),
    };
    NetEntry::Block {
        network,
        prefix,
        negated,
        text: token.to_string(),
    }
}

fn v4_within(ip: Ipv4Addr, prefix: u8, net: [u8; 4], net_prefix: u8) -> bool {
    let mask = |p: u8| if p == 0 { 0 } else { u32::MAX << (32 - p) };
    prefix >= net_prefix && u32::from(ip) & mask(net_prefix) == u32::from(Ipv4Addr::from(net))
}

fn v6_within(ip: Ipv6Addr, prefix: u8, net: Ipv6Addr, net_prefix: u8) -> bool {
    let mask = |p: u8| if p == 0 { 0 } else { u128::MAX << (128 - p) };
    prefix >= net_prefix && u128::from(ip) & mask(net_prefix) == u128::from(net)
}

/// Whether the block lies inside loopback.
fn is_loopback(network: IpAddr, prefix: u8) -> bool {
    match network {
        IpAddr::V4(ip) => v4_within(ip, prefix, [127, 0, 0, 0], 8),
        IpAddr::V6(ip) => {
            (ip == Ipv6Addr::LOCALHOST && prefix == 128)
                || v6_within(
                    ip,
                    prefix,
                    Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 0),
                    104,
                )
        }
    }
}

/// Whether the block lies inside private, shared or link-local address space.
fn is_internal(network: IpAddr, prefix: u8) -> bool {
    match network {
        IpAddr::V4(ip) => [
            ([10, 0, 0, 0], 8),
            ([172, 16, 0, 0], 12),
            ([192, 168, 0, 0], 16),
            ([100, 64, 0, 0], 10),
            ([169, 254, 0, 0], 16),
        ]
        .iter()
        .any(|(net, p)| v4_within(ip, prefix, *net, *p)),
        IpAddr::V6(ip) => [
            (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
            (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        ]
        .iter()
        .any(|(net, p)| v6_within(ip, prefix, *net, *p)),
    }
}

/// The entries of `entries` that trust too much: everyone (critical), public space wider
/// than /24 or /64 (high), private space wider than that (medium). Negations never count.
pub fn broad(entries: &[NetEntry]) -> Vec<Broad> {
    entries
        .iter()
        .filter_map(|entry| {
            let NetEntry::Block {
                network,
                prefix,
                negated: false,
                text,
            } = entry
            else {
                return None;
            };
            let limit = if network.is_ipv4() {
                MAX_V4_PREFIX
            } else {
                MAX_V6_PREFIX
            };
            if *prefix >= limit || is_loopback(*network, *prefix) {
                return None;
            }
            let severity = if *prefix == 0 {
                Severity::Critical
            } else if is_internal(*network, *prefix) {
                Severity::Medium
            } else {
                Severity::High
            };
            Some(Broad {
                text: text.clone(),
                severity,
            })
        })
        .collect()
}

/// Whether the list admits every address (`0.0.0.0/0` or `::/0`).
pub fn is_everyone(entries: &[NetEntry]) -> bool {
    entries.iter().any(|e| {
        matches!(
            e,
            NetEntry::Block {
                prefix: 0,
                negated: false,
                ..
            }
        )
    })
}

/// The opaque entries (tables, files, names).
pub fn opaque(entries: &[NetEntry]) -> Vec<&str> {
    entries
        .iter()
        .filter_map(|e| match e {
            NetEntry::Opaque(t) => Some(t.as_str()),
            NetEntry::Block { .. } => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broad_of(list: &str) -> Vec<(String, Severity)> {
        broad(&parse(list))
            .into_iter()
            .map(|b| (b.text, b.severity))
            .collect()
    }

    #[test]
    fn narrow_lists_pass() {
        assert!(
            broad_of(
                "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.0.2.0/24, 198.51.100.7 \
                 [fe80::]/64 2001:db8:1::/64"
            )
            .is_empty()
        );
    }

    #[test]
    fn broad_blocks_fail_by_how_much_they_open() {
        assert_eq!(
            broad_of("0.0.0.0/0, 10.0.0.0/8 192.0.0.0/16 [2001:db8::]/32 !172.16.0.0/12"),
            [
                ("0.0.0.0/0".to_string(), Severity::Critical),
                ("10.0.0.0/8".to_string(), Severity::Medium),
                ("192.0.0.0/16".to_string(), Severity::High),
                ("[2001:db8::]/32".to_string(), Severity::High),
            ]
        );
        assert!(is_everyone(&parse("::/0")));
        assert!(!is_everyone(&parse("!0.0.0.0/0 127.0.0.1")));
    }

    #[test]
    fn tables_and_names_are_opaque() {
        let entries =
            parse("hash:/etc/postfix/network_table, /etc/postfix/trusted gw.example 1.2.3.4/99");
        assert_eq!(
            opaque(&entries),
            [
                "hash:/etc/postfix/network_table",
                "/etc/postfix/trusted",
                "gw.example",
                "1.2.3.4/99"
            ]
        );
    }
}
