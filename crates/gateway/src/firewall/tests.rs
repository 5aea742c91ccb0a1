//! The firewall against the hand-written header fixtures of Exchange 2010–2019 and Postfix
//! (tests/fixtures/headers/, see its README) and against each rule on its own.

use std::path::PathBuf;

use ravelin_wire::headers::{HeaderBlock, HeaderLimits};

use super::*;

const HOSTNAME: &str = "mx1.example.org";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/headers")
}

/// A fixture file with CRLF line ends.
fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    crlf(&text)
}

fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 20);
    for &b in text {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The non-empty lines of a list file.
fn list(name: &str) -> Vec<String> {
    String::from_utf8(fixture(name))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

fn firewall(edit: impl FnOnce(&mut HeaderFirewallSection)) -> HeaderFirewall {
    let mut section = HeaderFirewallSection::default();
    edit(&mut section);
    HeaderFirewall::new(&section, HOSTNAME)
}

fn parse(message: &[u8]) -> HeaderBlock<'_> {
    HeaderBlock::parse(message, &HeaderLimits::default()).expect("fixture parses")
}

fn names(header: &[u8]) -> Vec<String> {
    parse(header)
        .fields()
        .map(|f| f.name().to_string())
        .collect()
}

const OUTBOUND_FIXTURES: &[&str] = &[
    "exchange2010",
    "exchange2013",
    "exchange2016",
    "exchange2019",
    "postfix",
    "postfix-forwarded",
];

#[test]
fn outbound_fixtures_leak_nothing_and_keep_the_message_fields() {
    let fw = firewall(|_| {});
    for name in OUTBOUND_FIXTURES {
        let message = fixture(&format!("{name}.eml"));
        let block = parse(&message);
        let out = fw.outbound(&block);
        let text = String::from_utf8_lossy(&out.header).to_ascii_lowercase();
        for leak in list(&format!("{name}.leaks")) {
            assert!(
                !text.contains(&leak.to_ascii_lowercase()),
                "{name}: {leak:?} survives in\n{}",
                String::from_utf8_lossy(&out.header)
            );
        }
        let kept = names(&out.header);
        for field in list(&format!("{name}.kept")) {
            assert!(
                kept.contains(&field),
                "{name}: {field} was removed: {kept:?}"
            );
        }
        assert!(
            out.header.ends_with(b"\r\n\r\n"),
            "{name}: the empty line is kept"
        );
        assert!(!out.removed.is_empty(), "{name}: nothing removed");
        // Every field not removed or rewritten is byte for byte the original.
        let original: Vec<&[u8]> = block.fields().map(|f| f.raw()).collect();
        let again = parse(&out.header);
        for f in again.fields() {
            assert!(
                original.contains(&f.raw()) || out.rewritten.iter().any(|r| f.is(r)),
                "{name}: {:?} is neither original nor reported rewritten",
                f.name()
            );
        }
    }
}

#[test]
fn exchange_internal_hops_all_go_and_message_ids_name_the_gateway() {
    let fw = firewall(|_| {});
    for name in [
        "exchange2010",
        "exchange2013",
        "exchange2016",
        "exchange2019",
    ] {
        let message = fixture(&format!("{name}.eml"));
        let out = fw.outbound(&parse(&message));
        let again = parse(&out.header);
        assert_eq!(again.all("Received").count(), 0, "{name}");
        let id = again.get("Message-ID").expect("Message-ID kept");
        let value = String::from_utf8_lossy(id.value()).into_owned();
        assert!(value.ends_with("@mx1.example.org>"), "{name}: {value}");
        assert!(out.rewritten.iter().any(|r| r == "Message-ID"), "{name}");
    }
}

#[test]
fn the_left_side_of_a_message_id_and_foreign_ids_are_kept() {
    let fw = firewall(|_| {});
    let message = fixture("exchange2019.eml");
    let out = fw.outbound(&parse(&message));
    let again = parse(&out.header);
    assert_eq!(
        again.get("Message-ID").unwrap().value(),
        b" <5d6e7f80a1b2c3d4e5f60718293a4b5c@mx1.example.org>"
    );
    assert_eq!(
        again.get("In-Reply-To").unwrap().value(),
        b" <0a1b2c3d4e5f@mx1.example.org>"
    );
    // The partner's id is untouched and the folding is kept.
    assert_eq!(
        again.get("References").unwrap().value(),
        b" <CAF9q2=Lp@mail.partner.example>\r\n <0a1b2c3d4e5f@mx1.example.org>"
    );
    // X-Mailer stays unless remove_mailer is set.
    assert!(again.get("X-Mailer").is_some());
    let out = firewall(|s| s.remove_mailer = true).outbound(&parse(&message));
    assert!(parse(&out.header).get("X-Mailer").is_none());
}

#[test]
fn forwarded_mail_keeps_the_hops_outside() {
    let message = fixture("postfix-forwarded.eml");
    let block = parse(&message);
    let out = firewall(|_| {}).outbound(&block);
    let again = parse(&out.header);
    let kept: Vec<String> = again
        .all("Received")
        .map(|f| String::from_utf8_lossy(f.value()).into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:#?}");
    assert!(kept[0].starts_with(" from mail.partner.example ([198.51.100.7])"));
    assert!(kept[1].starts_with(" from [192.0.2.44]"));
    // The partner's message id is not ours to rewrite.
    assert_eq!(
        again.get("Message-ID").unwrap().raw(),
        block.get("Message-ID").unwrap().raw()
    );
    assert!(out.rewritten.is_empty());

    let out = firewall(|s| s.received = ReceivedMode::All).outbound(&block);
    assert_eq!(parse(&out.header).all("Received").count(), 0);
}

#[test]
fn configured_names_and_networks_are_internal() {
    let message = crlf(
        b"Received: from gw.corp.example.org (gw.corp.example.org [203.0.113.200])\n\
          \tby mail.example.org with ESMTP id 1; Mon, 23 Nov 2026 17:40:00 +0000\n\
          Received: from edge.example.org ([198.51.100.200]) by mail.example.org with ESMTP id 2;\n\
          \tMon, 23 Nov 2026 17:40:00 +0000\n\
          X-Scanned-By: av01.corp.example.org\n\
          X-Spam-Host: EXCH01\n\
          X-Unrelated: nothing internal here\n\
          From: a@example.org\n\n",
    );
    let block = parse(&message);
    // Nothing is internal by default: public addresses and dotted names.
    let out = firewall(|_| {}).outbound(&block);
    assert_eq!(names(&out.header).len(), 6);

    let out = firewall(|s| {
        s.internal_domains = vec!["corp.example.org".into()];
        s.internal_hosts = vec!["exch01".into()];
    })
    .outbound(&block);
    // The first hop is internal by name; the host that received it, mail.example.org, is
    // learnt from it, which makes the second hop internal as well.
    assert_eq!(
        out.removed,
        ["Received", "Received", "X-Scanned-By", "X-Spam-Host"],
        "{}",
        String::from_utf8_lossy(&out.header)
    );

    let out = firewall(|s| {
        s.internal_networks = vec!["198.51.100.192/26".parse().unwrap()];
    })
    .outbound(&block);
    // Only the second hop is internal: the first one, above it, ends the run at the top.
    assert!(out.removed.is_empty(), "{:?}", out.removed);
    let out = firewall(|s| {
        s.internal_networks = vec![
            "198.51.100.192/26".parse().unwrap(),
            "203.0.113.0/24".parse().unwrap(),
        ];
    })
    .outbound(&block);
    assert_eq!(out.removed, ["Received", "Received"]);
}

#[test]
fn fields_under_an_existing_dkim_signature_are_left_alone() {
    let message = crlf(
        b"DKIM-Signature: v=1; a=rsa-sha256; d=partner.example; s=sel;\n\
          \th=From:Date:Subject:Message-ID:X-MS-Exchange-SenderADCheck; bh=x; b=y\n\
          X-MS-Exchange-SenderADCheck: 1\n\
          X-MS-Exchange-CrossTenant-Id: 0f1e2d3c\n\
          Message-ID: <a@EXCH01>\n\
          From: kim@partner.example\n\n",
    );
    let out = firewall(|_| {}).outbound(&parse(&message));
    assert_eq!(
        names(&out.header),
        [
            "DKIM-Signature",
            "X-MS-Exchange-SenderADCheck",
            "Message-ID",
            "From"
        ]
    );
    assert_eq!(out.removed, ["X-MS-Exchange-CrossTenant-Id"]);
    assert!(out.rewritten.is_empty());
}

#[test]
fn message_ids_with_internal_right_sides_are_rewritten() {
    let message = crlf(
        b"Message-ID: <1@[10.0.0.5]>\nIn-Reply-To: <2@EXCH01> (comment <3@[192.0.2.1]>)\n\
          References: <4@partner.example> <5@[IPv6:fd00::1]> <broken\n\n",
    );
    let out = firewall(|_| {}).outbound(&parse(&message));
    assert_eq!(
        String::from_utf8_lossy(&out.header),
        "Message-ID: <1@mx1.example.org>\r\nIn-Reply-To: <2@mx1.example.org> (comment <3@[192.0.2.1]>)\r\n\
         References: <4@partner.example> <5@mx1.example.org> <broken\r\n\r\n"
    );
    assert_eq!(out.rewritten, ["Message-ID", "In-Reply-To", "References"]);
}

#[test]
fn disabled_outbound_changes_nothing() {
    let message = fixture("exchange2016.eml");
    let block = parse(&message);
    let out = firewall(|s| s.enabled = false).outbound(&block);
    assert_eq!(out.header, message);
    assert!(out.removed.is_empty());
}

#[test]
fn inbound_forgeries_are_removed() {
    let message = fixture("inbound-forged.eml");
    let block = parse(&message);
    let out = firewall(|_| {}).inbound(&block, HOSTNAME);
    let kept = names(&out.header);
    for forbidden in list("inbound-forged.forbidden") {
        assert!(
            !kept.iter().any(|k| k.eq_ignore_ascii_case(&forbidden)),
            "{forbidden} survives: {kept:?}"
        );
    }
    let again = parse(&out.header);
    let results: Vec<&[u8]> = again
        .all("Authentication-Results")
        .map(|f| f.value())
        .collect();
    assert_eq!(
        results,
        [&b" mail.attacker.example; spf=none smtp.mailfrom=attacker.example"[..]]
    );
    for field in [
        "Received",
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Content-Type",
    ] {
        assert!(again.get(field).is_some(), "{field} removed");
    }
    assert!(out.header.ends_with(b"\r\n\r\n"));

    // Disabled: the Exchange fields pass, our authserv-id is still protected.
    let out = firewall(|s| s.enabled = false).inbound(&block, HOSTNAME);
    let again = parse(&out.header);
    assert_eq!(again.all("Authentication-Results").count(), 1);
    assert!(again.get("X-MS-Exchange-Organization-AuthAs").is_some());
}

#[test]
fn inbound_keeps_exchange_online_dkim_inputs() {
    let message = crlf(b"X-MS-Exchange-SenderADCheck: 1\nX-MS-Exchange-Organization-SCL: -1\n\n");
    let out = firewall(|_| {}).inbound(&parse(&message), HOSTNAME);
    assert_eq!(names(&out.header), ["X-MS-Exchange-SenderADCheck"]);
}

#[test]
fn authserv_ids() {
    let cases: &[(&[u8], Option<&str>)] = &[
        (b" mx1.example.org; spf=pass", Some("mx1.example.org")),
        (b" mx1.example.org 1; none", Some("mx1.example.org")),
        (b"mx1.example.org;none", Some("mx1.example.org")),
        (
            b" (a (nested) comment)\r\n \"MX1.example.org\"; x",
            Some("MX1.example.org"),
        ),
        (b" \"quoted\\\"id\"; x", Some("quoted\"id")),
        (b" (unterminated mx1.example.org; x", None),
        (b" \"unterminated", None),
        (b"   ", None),
        (b" ; spf=pass", None),
        (b"\xff\xfe", None),
    ];
    for (value, want) in cases {
        assert_eq!(
            authserv_id_of(value).as_deref(),
            *want,
            "{:?}",
            String::from_utf8_lossy(value)
        );
    }
    assert!(same_authserv_id("MX1.example.org.", "mx1.example.org"));
    assert!(!same_authserv_id("mx1.example.org.evil", "mx1.example.org"));
}

#[test]
fn public_and_internal_addresses() {
    for internal in [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.2.15",
        "100.64.0.1",
        "0.1.2.3",
        "::1",
        "fe80::1",
        "fd00:10:1::51",
        "fec0::1",
        "::ffff:10.0.0.1",
    ] {
        assert!(!is_public(internal.parse().unwrap()), "{internal}");
    }
    for public in [
        "192.0.2.1",
        "198.51.100.7",
        "8.8.8.8",
        "2001:db8::1",
        "2a00:1450::1",
    ] {
        assert!(is_public(public.parse().unwrap()), "{public}");
    }
    assert_eq!(
        parse_ip("IPv6:fe80::1%12"),
        Some("fe80::1".parse().unwrap())
    );
    assert_eq!(parse_ip("EXCH01"), None);
}

#[test]
fn dotless_hops_ignore_comments() {
    assert!(has_dotless_hop(
        "from scanner01 (192.168.20.15) by x.example.org"
    ));
    assert!(has_dotless_hop("from a.example.org by EXCH01; date"));
    assert!(!has_dotless_hop(
        "by app01.corp.example.org (Postfix, from userid 1001) id 3F2A"
    ));
    assert!(!has_dotless_hop(
        "from [192.0.2.44] (unknown [192.0.2.44]) by b.example"
    ));
    assert!(!has_dotless_hop(
        "by 2002:a05:6a10:8e09:b0:4f2:3c1b with SMTP id x"
    ));
}

#[test]
fn a_long_chain_of_learnt_hops_is_followed_to_its_end() {
    // Each hop is internal only through the name learnt from the hop above it.
    let mut message = b"Received: from h0.corp.example ([10.0.0.1]) by h1.corp.example with SMTP;\r\n\tMon, 23 Nov 2026 17:40:00 +0000\r\n".to_vec();
    for n in 1..900 {
        message.extend_from_slice(
            format!("Received: from h{n}.corp.example by h{}.corp.example with SMTP;\r\n\tMon, 23 Nov 2026 17:40:00 +0000\r\n", n + 1)
                .as_bytes(),
        );
    }
    message.extend_from_slice(b"Received: from mail.partner.example ([198.51.100.7]) by mx.partner.example;\r\n\tMon, 23 Nov 2026 17:39:00 +0000\r\nFrom: a@example.org\r\n\r\n");
    let out = firewall(|_| {}).outbound(&parse(&message));
    assert_eq!(out.removed.len(), 900);
    assert_eq!(names(&out.header), ["Received", "From"]);
}

#[test]
fn only_the_signed_instances_are_protected() {
    // The forwarded message's signature covers its one (bottom) Received field; the internal
    // hop added above it is not signed and goes.
    let message = crlf(
        b"Received: from relay.corp.example.org ([10.2.0.5]) by mx1.example.org; Mon, 23 Nov 2026 17:40:00 +0000\n\
          DKIM-Signature: v=1; a=rsa-sha256; d=partner.example; s=sel; h=Received:From; bh=x; b=y\n\
          Received: from [192.168.1.5] by mail.partner.example; Mon, 23 Nov 2026 17:39:00 +0000\n\
          From: kim@partner.example\n\n",
    );
    let out = firewall(|_| {}).outbound(&parse(&message));
    assert_eq!(out.removed, ["Received"]);
    let again = parse(&out.header);
    let kept: Vec<&[u8]> = again.all("Received").map(|f| f.value()).collect();
    assert_eq!(
        kept,
        [&b" from [192.168.1.5] by mail.partner.example; Mon, 23 Nov 2026 17:39:00 +0000"[..]]
    );
}
