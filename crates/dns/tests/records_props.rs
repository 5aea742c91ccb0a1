//! Property tests of the record parsers: no input makes them panic, every reported position
//! lies inside the input, and records built from valid parts parse back to those parts.

use proptest::prelude::*;

use ravelin_dns::records::mta_sts::StsMode;
use ravelin_dns::records::spf::{Mechanism, Qualifier, TermKind};
use ravelin_dns::records::{Position, RecordError, dkim, dmarc, mta_sts, spf, tlsrpt};

/// The error's position is the whole record, a column within `text` (or just past its end),
/// or a line of it.
fn position_inside(text: &str, err: &RecordError) -> bool {
    match err.position() {
        Position::Record => true,
        Position::Column(column) => column >= 1 && column <= text.chars().count() + 1,
        Position::Line(line) => line >= 1 && line <= text.split('\n').count(),
    }
}

/// Text that looks like records: their keywords and separators mixed with anything.
fn record_like() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("v=spf1".to_string()),
        Just("v=DMARC1".to_string()),
        Just("v=STSv1".to_string()),
        Just("v=TLSRPTv1".to_string()),
        Just("v=DKIM1".to_string()),
        Just(" ".to_string()),
        Just(";".to_string()),
        Just("=".to_string()),
        Just(":".to_string()),
        Just("/".to_string()),
        Just("%{".to_string()),
        Just("}".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("mx".to_string()),
        Just("include".to_string()),
        Just("ip4".to_string()),
        Just("ip6".to_string()),
        Just("p".to_string()),
        Just("rua".to_string()),
        Just("mailto:".to_string()),
        Just("@".to_string()),
        Just("*.".to_string()),
        Just("mode".to_string()),
        Just("max_age".to_string()),
        "[a-z0-9.\\-]{0,12}",
        "\\PC{0,6}",
        any::<String>(),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn no_parser_panics_and_positions_are_inside(text in record_like()) {
        if let Err(e) = spf::parse(&text) { prop_assert!(position_inside(&text, &e), "{e}"); }
        if let Err(e) = dmarc::parse(&text) { prop_assert!(position_inside(&text, &e), "{e}"); }
        if let Err(e) = mta_sts::parse_txt(&text) { prop_assert!(position_inside(&text, &e), "{e}"); }
        if let Err(e) = mta_sts::parse_policy(&text) { prop_assert!(position_inside(&text, &e), "{e}"); }
        if let Err(e) = tlsrpt::parse(&text) { prop_assert!(position_inside(&text, &e), "{e}"); }
        if let Err(e) = dkim::parse(&text) { prop_assert!(position_inside(&text, &e), "{e}"); }
        let _ = spf::is_spf_record(&text);
        let _ = dmarc::is_dmarc_record(&text);
        let _ = mta_sts::is_sts_record(&text);
        let _ = tlsrpt::is_tlsrpt_record(&text);
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        let _ = spf::parse(&text);
        let _ = dmarc::parse(&text);
        let _ = mta_sts::parse_txt(&text);
        let _ = mta_sts::parse_policy(&text);
        let _ = tlsrpt::parse(&text);
        let _ = dkim::parse(&text);
    }

    #[test]
    fn dkim_keys_of_arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        key_type in prop_oneof![Just("rsa"), Just("ed25519"), Just("x")],
    ) {
        use base64::Engine;
        let p = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let _ = dkim::parse(&format!("v=DKIM1; k={key_type}; p={p}"));
    }
}

fn domain() -> impl Strategy<Value = String> {
    (
        prop::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..4),
        "[a-z]{2,6}",
    )
        .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
}

fn qualifier() -> impl Strategy<Value = (Qualifier, &'static str)> {
    prop_oneof![
        Just((Qualifier::Pass, "")),
        Just((Qualifier::Pass, "+")),
        Just((Qualifier::Fail, "-")),
        Just((Qualifier::SoftFail, "~")),
        Just((Qualifier::Neutral, "?")),
    ]
}

/// A valid SPF mechanism as text and as the parser should read it.
fn mechanism() -> impl Strategy<Value = (String, Mechanism)> {
    prop_oneof![
        domain().prop_map(|d| (format!("include:{d}"), Mechanism::Include { domain: d })),
        domain().prop_map(|d| (
            format!("exists:%{{i}}.{d}"),
            Mechanism::Exists {
                domain: format!("%{{i}}.{d}")
            }
        )),
        (
            proptest::option::of(domain()),
            proptest::option::of(0u8..=32),
            proptest::option::of(0u8..=128)
        )
            .prop_map(|(d, v4, v6)| {
                let mut text = "a".to_string();
                if let Some(d) = &d {
                    text.push_str(&format!(":{d}"));
                }
                if let Some(v4) = v4 {
                    text.push_str(&format!("/{v4}"));
                }
                if let Some(v6) = v6 {
                    text.push_str(&format!("//{v6}"));
                }
                (
                    text,
                    Mechanism::A {
                        domain: d,
                        ip4_prefix: v4,
                        ip6_prefix: v6,
                    },
                )
            }),
        (
            proptest::option::of(domain()),
            proptest::option::of(0u8..=32)
        )
            .prop_map(|(d, v4)| {
                let mut text = "mx".to_string();
                if let Some(d) = &d {
                    text.push_str(&format!(":{d}"));
                }
                if let Some(v4) = v4 {
                    text.push_str(&format!("/{v4}"));
                }
                (
                    text,
                    Mechanism::Mx {
                        domain: d,
                        ip4_prefix: v4,
                        ip6_prefix: None,
                    },
                )
            }),
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(o, p)| {
            let network = std::net::Ipv4Addr::from(o);
            (
                format!("ip4:{network}/{p}"),
                Mechanism::Ip4 { network, prefix: p },
            )
        }),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(o, p)| {
            let network = std::net::Ipv6Addr::from(o);
            (
                format!("ip6:{network}/{p}"),
                Mechanism::Ip6 { network, prefix: p },
            )
        }),
    ]
}

proptest! {
    #[test]
    fn spf_records_built_from_valid_terms_parse_back(
        terms in prop::collection::vec((qualifier(), mechanism()), 0..12),
        all in proptest::option::of(qualifier()),
        spaces in 1usize..3,
    ) {
        let separator = " ".repeat(spaces);
        let mut text = "v=spf1".to_string();
        for ((_, symbol), (mechanism, _)) in &terms {
            text.push_str(&separator);
            text.push_str(symbol);
            text.push_str(mechanism);
        }
        if let Some((_, symbol)) = &all {
            text.push_str(&format!(" {symbol}all"));
        }
        let record = spf::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let expected: Vec<TermKind> = terms
            .iter()
            .map(|((q, _), (_, m))| TermKind::Mechanism(*q, m.clone()))
            .chain(all.map(|(q, _)| TermKind::Mechanism(q, Mechanism::All)))
            .collect();
        let parsed: Vec<TermKind> = record.terms.iter().map(|t| t.kind.clone()).collect();
        prop_assert_eq!(parsed, expected);
        let lookups = terms.iter().filter(|(_, (_, m))| m.queries_dns()).count();
        prop_assert_eq!(record.dns_lookups(), lookups);
    }

    #[test]
    fn dmarc_records_built_from_valid_tags_parse_back(
        policy in prop_oneof![Just("none"), Just("quarantine"), Just("reject")],
        sp in proptest::option::of(prop_oneof![Just("none"), Just("quarantine"), Just("reject")]),
        pct in 0u8..=100,
        rua in prop::collection::vec(domain(), 0..3),
        strict in any::<bool>(),
    ) {
        let mut text = format!("v=DMARC1; p={policy}; pct={pct}");
        if let Some(sp) = sp { text.push_str(&format!("; sp={sp}")); }
        if !rua.is_empty() {
            let list: Vec<String> = rua.iter().map(|d| format!("mailto:dmarc@{d}")).collect();
            text.push_str(&format!("; rua={}", list.join(",")));
        }
        if strict { text.push_str("; adkim=s; aspf=s"); }
        let record = dmarc::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(record.policy.to_string(), policy);
        prop_assert_eq!(record.subdomain_policy.map(|p| p.to_string()), sp.map(str::to_string));
        prop_assert_eq!(record.pct, pct);
        prop_assert_eq!(record.rua.len(), rua.len());
        prop_assert!(record.diagnostics.is_empty(), "{:?}", record.diagnostics);
    }

    #[test]
    fn sts_policies_match_their_own_hosts(
        hosts in prop::collection::vec(domain(), 1..5),
        wildcard in domain(),
        max_age in 0u32..=31_557_600,
        crlf in any::<bool>(),
        label in "[a-z0-9]{1,10}",
    ) {
        let newline = if crlf { "\r\n" } else { "\n" };
        let mut lines = vec!["version: STSv1".to_string(), "mode: enforce".to_string()];
        for host in &hosts { lines.push(format!("mx: {host}")); }
        lines.push(format!("mx: *.{wildcard}"));
        lines.push(format!("max_age: {max_age}"));
        let text = lines.join(newline) + newline;
        let policy = mta_sts::parse_policy(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(policy.mode, StsMode::Enforce);
        prop_assert_eq!(policy.max_age, max_age);
        for host in &hosts {
            prop_assert!(policy.matches_mx(host));
            let upper = format!("{}.", host.to_uppercase());
            prop_assert!(policy.matches_mx(&upper), "{}", upper);
        }
        let one_label = format!("{label}.{wildcard}");
        prop_assert!(policy.matches_mx(&one_label), "{}", one_label);
        let too_deep = format!("{label}.{label}.{wildcard}");
        prop_assert_eq!(policy.matches_mx(&too_deep), hosts.contains(&too_deep));
    }
}
