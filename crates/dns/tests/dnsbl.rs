//! DNSBL / DNSWL queries and FCrDNS against the in-process authoritative server.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ravelin_dns::testing::{Fault, TestDnsServer};
use ravelin_dns::{Failure, Fcrdns, ListOutcome, fcrdns, query_list, query_lists};

const BL: &str = r#"
2.0.0.127        IN A   127.0.0.2
2.0.0.127        IN TXT "Listed: see https://bl.test/lookup?ip=127.0.0.2"
10.2.0.192       IN A   127.0.0.2
10.2.0.192       IN A   127.0.0.4
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 IN A 127.0.0.3
"#;

const WL: &str = "10.2.0.192 IN A 127.0.10.2\n";
const PUBLIC_RESOLVER: &str = "* IN A 127.255.255.254\n";
const HIJACKED: &str = "* IN A 198.51.100.7\n";

const REVERSE_V4: &str = r#"
10 IN PTR mx1.example.test.
11 IN PTR liar.example.test.
13 IN PTR a.example.test.
13 IN PTR b.example.test.
14 IN PTR broken.example.test.
"#;

const REVERSE_V6: &str =
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 IN PTR v6.example.test.\n";

const EXAMPLE: &str = r#"
mx1    IN A    192.0.2.10
liar   IN A    192.0.2.99
a      IN A    192.0.2.200
b      IN A    192.0.2.13
broken IN A    192.0.2.14
v6     IN AAAA 2001:db8::1
"#;

fn server() -> TestDnsServer {
    TestDnsServer::start(&[
        ("bl.test", BL),
        ("wl.test", WL),
        ("public.test", PUBLIC_RESOLVER),
        ("hijacked.test", HIJACKED),
        ("slow.test", ""),
        ("2.0.192.in-addr.arpa", REVERSE_V4),
        ("8.b.d.0.1.0.0.2.ip6.arpa", REVERSE_V6),
        ("example.test", EXAMPLE),
    ])
    .expect("test DNS server")
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn listed_with_codes_and_reason() {
    let server = server();
    let resolver = server.resolver().unwrap();
    let outcome = query_list(&resolver, "bl.test", ip("127.0.0.2"), true).await;
    assert_eq!(
        outcome,
        ListOutcome::Listed {
            codes: vec![Ipv4Addr::new(127, 0, 0, 2)],
            reason: Some("Listed: see https://bl.test/lookup?ip=127.0.0.2".to_string()),
        }
    );
    let ListOutcome::Listed { mut codes, reason } =
        query_list(&resolver, "bl.test.", ip("192.0.2.10"), false).await
    else {
        panic!("192.0.2.10 is listed");
    };
    codes.sort();
    assert_eq!(
        codes,
        vec![Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 4)]
    );
    assert_eq!(reason, None, "no reason asked");
    // A listing without a TXT record: the reason is simply absent.
    let outcome = query_list(&resolver, "bl.test", ip("192.0.2.10"), true).await;
    assert!(
        matches!(outcome, ListOutcome::Listed { reason: None, .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn ipv6_is_queried_in_nibble_form() {
    let server = server();
    let resolver = server.resolver().unwrap();
    let outcome = query_list(&resolver, "bl.test", ip("2001:db8::1"), false).await;
    assert_eq!(
        outcome,
        ListOutcome::Listed {
            codes: vec![Ipv4Addr::new(127, 0, 0, 3)],
            reason: None
        }
    );
    assert_eq!(
        query_list(&resolver, "bl.test", ip("2001:db8::2"), false).await,
        ListOutcome::NotListed
    );
}

#[tokio::test]
async fn not_listed_error_codes_and_failures() {
    let server = server();
    let resolver = server.resolver().unwrap();
    assert_eq!(
        query_list(&resolver, "bl.test", ip("192.0.2.77"), true).await,
        ListOutcome::NotListed
    );
    assert_eq!(
        query_list(&resolver, "public.test", ip("192.0.2.77"), true).await,
        ListOutcome::ListError {
            code: ip("127.255.255.254")
        }
    );
    assert_eq!(
        query_list(&resolver, "hijacked.test", ip("192.0.2.77"), true).await,
        ListOutcome::ListError {
            code: ip("198.51.100.7")
        }
    );
    server.set_fault("77.2.0.192.slow.test", Some(Fault::ServFail));
    assert_eq!(
        query_list(&resolver, "slow.test", ip("192.0.2.77"), true).await,
        ListOutcome::Failed(Failure::ServerFailure)
    );
    let outcome = query_list(&resolver, "bad..zone", ip("192.0.2.77"), true).await;
    assert!(
        matches!(outcome, ListOutcome::Failed(Failure::Other(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn many_lists_under_one_deadline() {
    let server = server();
    let resolver = server.resolver().unwrap();
    // The slow list never answers; the deadline is shorter than the resolver's timeout.
    server.set_fault("10.2.0.192.slow.test", Some(Fault::Silent));
    let zones: Vec<String> = [
        "bl.test",
        "wl.test",
        "public.test",
        "slow.test",
        "hijacked.test",
    ]
    .iter()
    .map(|z| z.to_string())
    .collect();
    let outcomes = query_lists(
        &resolver,
        &zones,
        ip("192.0.2.10"),
        Duration::from_millis(400),
        false,
    )
    .await;
    let by_zone: Vec<(&str, &ListOutcome)> = outcomes
        .iter()
        .map(|o| (o.zone.as_str(), &o.outcome))
        .collect();
    assert_eq!(by_zone.len(), 5);
    assert_eq!(by_zone[0].0, "bl.test");
    assert!(matches!(by_zone[0].1, ListOutcome::Listed { .. }));
    assert_eq!(
        by_zone[1],
        (
            "wl.test",
            &ListOutcome::Listed {
                codes: vec![Ipv4Addr::new(127, 0, 10, 2)],
                reason: None
            }
        )
    );
    assert!(matches!(by_zone[2].1, ListOutcome::ListError { .. }));
    assert_eq!(
        by_zone[3],
        ("slow.test", &ListOutcome::Failed(Failure::Timeout))
    );
    assert!(matches!(by_zone[4].1, ListOutcome::ListError { .. }));
}

#[tokio::test]
async fn fcrdns_outcomes() {
    let server = server();
    let resolver = server.resolver().unwrap();

    let confirmed = fcrdns(&resolver, ip("192.0.2.10")).await;
    assert_eq!(
        confirmed,
        Fcrdns::Confirmed {
            confirmed: vec!["mx1.example.test".to_string()],
            unconfirmed: vec![]
        }
    );
    assert_eq!(confirmed.verified_name(), Some("mx1.example.test"));

    assert_eq!(
        fcrdns(&resolver, ip("192.0.2.11")).await,
        Fcrdns::NotConfirmed {
            names: vec!["liar.example.test".to_string()]
        }
    );
    assert_eq!(fcrdns(&resolver, ip("192.0.2.12")).await, Fcrdns::NoPtr);

    let Fcrdns::Confirmed {
        confirmed,
        unconfirmed,
    } = fcrdns(&resolver, ip("192.0.2.13")).await
    else {
        panic!("one of two names confirms");
    };
    assert_eq!(confirmed, vec!["b.example.test".to_string()]);
    assert_eq!(unconfirmed, vec!["a.example.test".to_string()]);

    server.set_fault("broken.example.test", Some(Fault::ServFail));
    assert_eq!(
        fcrdns(&resolver, ip("192.0.2.14")).await,
        Fcrdns::Failed(Failure::ServerFailure)
    );
    server.set_fault("14.2.0.192.in-addr.arpa", Some(Fault::ServFail));
    assert_eq!(
        fcrdns(&resolver, ip("192.0.2.14")).await,
        Fcrdns::Failed(Failure::ServerFailure)
    );

    assert_eq!(
        fcrdns(&resolver, ip("2001:db8::1")).await.verified_name(),
        Some("v6.example.test")
    );
}
