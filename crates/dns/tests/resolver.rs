//! The resolver against the in-process authoritative server: every typed lookup, the three
//! negative outcomes, CNAME following, size limits, and zone replacement; each through both
//! transports (hickory's pool, which the gateway uses, and the multiplexed sockets of batch
//! runs), and the multiplexed transport against forged answers and a dead name server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ravelin_dns::testing::{Fault, TestDnsServer};
use ravelin_dns::{Failure, LookupError, Resolver, ResolverSettings};

const ZONE: &str = r#"
@           IN MX   20 mx2.example.test.
@           IN MX   10 mx1
@           IN MX   20 MX3.example.test.
@           IN TXT  "v=spf1 ip4:192.0.2.0/24 " "include:_spf.example.test -all"
@           IN TXT  "google-site-verification=abc"
@           IN CAA  0 issue "letsencrypt.org"
@           IN CAA  128 iodef "mailto:security@example.test"
mx1         IN A    192.0.2.10
mx1         IN AAAA 2001:db8::10
mx2         IN A    192.0.2.20
v6only      IN AAAA 2001:db8::30
alias       IN CNAME mx1
alias2      IN CNAME alias
dangling    IN CNAME nowhere.example.test.
loop1       IN CNAME loop2
loop2       IN CNAME loop1
_25._tcp.mx1 IN TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
_25._tcp.mx2 IN TLSA 2 0 2 aabbccdd
"#;

const NULL_MX_ZONE: &str = "@ IN MX 0 .\n@ IN A 192.0.2.99\n";

const REVERSE_ZONE: &str = "10 IN PTR mx1.example.test.\n10 IN PTR Other.Example.test.\n";

fn server() -> TestDnsServer {
    TestDnsServer::start(&[
        ("example.test", ZONE),
        ("nullmx.test", NULL_MX_ZONE),
        ("2.0.192.in-addr.arpa", REVERSE_ZONE),
    ])
    .expect("test DNS server")
}

/// The gateway's resolver (hickory's pool, a socket per query) and a batch run's (a few
/// long-lived sockets; no answer kept, so that the transport is what is tested).
fn both(server: &TestDnsServer) -> [Resolver; 2] {
    [
        server.resolver().unwrap(),
        Resolver::for_batch(&server.resolver_settings(), 0).unwrap(),
    ]
}

#[tokio::test]
async fn mx_sorted_by_preference_with_names_normalised() {
    let server = server();
    for resolver in both(&server) {
        mx_sorted(&resolver).await;
    }
}

async fn mx_sorted(resolver: &Resolver) {
    let answer = resolver.mx("example.test").await.unwrap();
    let hosts: Vec<(u16, &str)> = answer
        .records
        .iter()
        .map(|mx| (mx.preference, mx.exchange.as_str()))
        .collect();
    assert_eq!(hosts[0], (10, "mx1.example.test"));
    let mut rest = hosts[1..].to_vec();
    rest.sort();
    assert_eq!(
        rest,
        vec![(20, "mx2.example.test"), (20, "mx3.example.test")]
    );
    assert!(!answer.is_null_mx());
    assert!(
        !answer.secure,
        "an authoritative server's AD bit is never trusted"
    );
    assert_eq!(answer.canonical_name, "example.test");
    assert_eq!(answer.ttl, 300);
}

#[tokio::test]
async fn null_mx_is_recognised() {
    let server = server();
    let answer = server.resolver().unwrap().mx("nullmx.test.").await.unwrap();
    assert!(answer.is_null_mx());
    assert!(answer.records[0].is_null());
}

#[tokio::test]
async fn txt_strings_are_joined_per_record() {
    let server = server();
    let answer = server
        .resolver()
        .unwrap()
        .txt("example.test")
        .await
        .unwrap();
    let mut texts = answer.records.clone();
    texts.sort();
    assert_eq!(
        texts,
        vec![
            "google-site-verification=abc".to_string(),
            "v=spf1 ip4:192.0.2.0/24 include:_spf.example.test -all".to_string(),
        ]
    );
}

#[tokio::test]
async fn nxdomain_nodata_and_failures_are_told_apart() {
    let server = server();
    for resolver in both(&server) {
        negative_outcomes(&server, &resolver).await;
    }
}

async fn negative_outcomes(server: &TestDnsServer, resolver: &Resolver) {
    assert_eq!(
        resolver.txt("missing.example.test").await,
        Err(LookupError::NxDomain)
    );
    assert_eq!(
        resolver.txt("mx1.example.test").await,
        Err(LookupError::NoRecords)
    );
    assert_eq!(
        resolver.ipv4("v6only.example.test").await,
        Err(LookupError::NoRecords)
    );

    server.set_fault("broken.example.test", Some(Fault::ServFail));
    assert_eq!(
        resolver.txt("broken.example.test").await,
        Err(LookupError::Failed(Failure::ServerFailure))
    );
    server.set_fault("refused.example.test", Some(Fault::Refused));
    assert_eq!(
        resolver.txt("refused.example.test").await,
        Err(LookupError::Failed(Failure::Refused))
    );
    // A name outside every zone: an authoritative server refuses it.
    let outside = resolver.txt("elsewhere.invalid-zone").await;
    assert!(
        matches!(outside, Err(LookupError::Failed(_))),
        "{outside:?}"
    );
    assert!(outside.unwrap_err().is_temporary());

    server.set_fault("slow.example.test", Some(Fault::Silent));
    assert_eq!(
        resolver.txt("slow.example.test").await,
        Err(LookupError::Failed(Failure::Timeout))
    );
    server.set_fault("slow.example.test", None);
    assert_eq!(
        resolver.txt("slow.example.test").await,
        Err(LookupError::NxDomain)
    );
}

/// Settings naming a port of 127.0.0.1 nobody answers on (bound, then closed), one attempt
/// waiting `timeout_ms`.
fn closed_port(timeout_ms: u64) -> ResolverSettings {
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = ResolverSettings::with_nameservers(vec![addr]);
    settings.timeout = std::time::Duration::from_millis(timeout_ms);
    settings.attempts = 1;
    settings
}

#[tokio::test]
async fn no_server_listening_is_a_temporary_failure() {
    let settings = closed_port(300);
    for resolver in [
        Resolver::new(&settings).unwrap(),
        Resolver::for_batch(&settings, 0).unwrap(),
    ] {
        let result = resolver.mx("example.test").await;
        assert!(matches!(result, Err(LookupError::Failed(_))), "{result:?}");
    }
}

#[tokio::test]
async fn addresses_of_both_families() {
    let server = server();
    for resolver in both(&server) {
        addresses(&server, &resolver).await;
        server.set_fault("mx2.example.test", None);
    }
}

async fn addresses(server: &TestDnsServer, resolver: &Resolver) {
    let v4 = resolver.ipv4("mx1.example.test").await.unwrap();
    assert_eq!(v4.records, vec![Ipv4Addr::new(192, 0, 2, 10)]);
    let v6 = resolver.ipv6("mx1.example.test").await.unwrap();
    assert_eq!(
        v6.records,
        vec!["2001:db8::10".parse::<Ipv6Addr>().unwrap()]
    );

    let both = resolver.ips("mx1.example.test", false).await.unwrap();
    assert_eq!(
        both.records,
        vec![
            IpAddr::from([192, 0, 2, 10]),
            "2001:db8::10".parse::<IpAddr>().unwrap()
        ]
    );
    let both = resolver.ips("mx1.example.test", true).await.unwrap();
    assert!(both.records[0].is_ipv6());
    let one = resolver.ips("v6only.example.test", false).await.unwrap();
    assert_eq!(one.records.len(), 1);
    assert_eq!(
        resolver.ips("nothing.example.test", false).await,
        Err(LookupError::NxDomain)
    );
    assert_eq!(
        resolver.ips("example.test", false).await,
        Err(LookupError::NoRecords)
    );
    server.set_fault("mx2.example.test", Some(Fault::ServFail));
    assert_eq!(
        resolver.ips("mx2.example.test", false).await,
        Err(LookupError::Failed(Failure::ServerFailure))
    );
}

#[tokio::test]
async fn cname_chains_are_followed_and_bounded() {
    let server = server();
    for resolver in both(&server) {
        cname_chains(&resolver).await;
    }
}

async fn cname_chains(resolver: &Resolver) {
    let answer = resolver.ipv4("alias2.example.test").await.unwrap();
    assert_eq!(answer.records, vec![Ipv4Addr::new(192, 0, 2, 10)]);
    assert_eq!(answer.canonical_name, "mx1.example.test");

    let cname = resolver.cname("alias.example.test").await.unwrap();
    assert_eq!(cname.records, vec!["mx1.example.test".to_string()]);

    assert_eq!(
        resolver.ipv4("dangling.example.test").await,
        Err(LookupError::NxDomain)
    );
    let looped = resolver.ipv4("loop1.example.test").await;
    assert!(matches!(looped, Err(LookupError::Failed(_))), "{looped:?}");
}

#[tokio::test]
async fn ptr_names() {
    let server = server();
    let answer = server
        .resolver()
        .unwrap()
        .ptr("192.0.2.10".parse().unwrap())
        .await
        .unwrap();
    let mut names = answer.records.clone();
    names.sort();
    assert_eq!(names, vec!["mx1.example.test", "other.example.test"]);
}

#[tokio::test]
async fn tlsa_and_caa() {
    let server = server();
    for resolver in both(&server) {
        tlsa_caa(&resolver).await;
    }
}

async fn tlsa_caa(resolver: &Resolver) {
    let tlsa = resolver.tlsa("mx1.example.test", 25).await.unwrap();
    assert_eq!(tlsa.records.len(), 1);
    let record = &tlsa.records[0];
    assert_eq!((record.usage, record.selector, record.matching), (3, 1, 1));
    assert_eq!(record.data.len(), 32);
    assert_eq!(record.data[..2], [0x01, 0x23]);
    let tlsa = resolver.tlsa("mx2.example.test.", 25).await.unwrap();
    assert_eq!(tlsa.records[0].data, vec![0xaa, 0xbb, 0xcc, 0xdd]);
    assert_eq!(
        resolver.tlsa("mx1.example.test", 587).await,
        Err(LookupError::NxDomain)
    );

    let caa = resolver.caa("example.test").await.unwrap();
    let mut tags: Vec<(bool, &str)> = caa
        .records
        .iter()
        .map(|c| (c.critical, c.tag.as_str()))
        .collect();
    tags.sort();
    assert_eq!(tags, vec![(false, "issue"), (true, "iodef")]);
    let issue = caa.records.iter().find(|c| c.tag == "issue").unwrap();
    assert!(issue.value.contains("letsencrypt.org"), "{:?}", issue.value);
}

#[tokio::test]
async fn answers_are_limited_in_size() {
    let mut zone = String::new();
    for i in 0..300u32 {
        zone.push_str(&format!("many IN A 10.0.{}.{}\n", i / 256, i % 256));
    }
    let server = TestDnsServer::start(&[("big.test", &zone)]).unwrap();
    // 300 addresses do not fit the 1 232 bytes announced for UDP: the truncated answer is
    // asked again over TCP.
    for resolver in both(&server) {
        let answer = resolver.ipv4("many.big.test").await.unwrap();
        assert_eq!(answer.records.len(), ravelin_dns::resolver::MAX_RECORDS);
    }
}

#[tokio::test]
async fn zones_can_be_replaced_while_serving() {
    let server = server();
    let resolver = server.resolver().unwrap();
    assert_eq!(
        resolver.txt("_mta-sts.example.test").await,
        Err(LookupError::NxDomain)
    );
    let updated = format!("{ZONE}\n_mta-sts IN TXT \"v=STSv1; id=2\"\n");
    server.set_zone("example.test", &updated).unwrap();
    let answer = resolver.txt("_mta-sts.example.test").await.unwrap();
    assert_eq!(answer.records, vec!["v=STSv1; id=2".to_string()]);
    assert!(server.queries() >= 2);
    // The other zones are still served.
    assert!(resolver.mx("nullmx.test").await.unwrap().is_null_mx());
}

#[tokio::test]
async fn invalid_names_are_refused_before_any_query() {
    let server = server();
    let resolver = server.resolver().unwrap();
    let before = server.queries();
    assert!(matches!(
        resolver.txt("bad..example.test").await,
        Err(LookupError::InvalidName(_))
    ));
    assert!(matches!(
        resolver.mx("").await,
        Err(LookupError::InvalidName(_))
    ));
    assert_eq!(server.queries(), before);
}

#[test]
fn zone_errors_name_the_zone() {
    let err = TestDnsServer::start(&[("bad.test", "@ IN MX not-a-number\n")]).unwrap_err();
    assert!(err.to_string().contains("bad.test"), "{err}");
}

#[tokio::test]
async fn the_answer_cache_asks_each_question_once_within_its_ttl() {
    let server = server();
    let resolver = Resolver::for_batch(&server.resolver_settings(), 1000).unwrap();
    let asked = |before: usize| server.queries() - before;

    let before = server.queries();
    for _ in 0..3 {
        let answer = resolver.mx("example.test").await.unwrap();
        assert_eq!(answer.records[0].exchange, "mx1.example.test");
        assert_eq!(answer.ttl, 300);
    }
    assert_eq!(asked(before), 1, "an answer is kept for its TTL");

    // NXDOMAIN and NODATA are kept for the negative TTL of the zone's SOA.
    let before = server.queries();
    for _ in 0..3 {
        assert_eq!(
            resolver.txt("missing.example.test").await,
            Err(LookupError::NxDomain)
        );
        assert_eq!(
            resolver.txt("MX1.example.test").await,
            Err(LookupError::NoRecords)
        );
    }
    assert_eq!(asked(before), 2, "negative answers are kept too");

    // Concurrent callers of one question share one query.
    let before = server.queries();
    let answers = concurrent_ipv4(&resolver, "mx2.example.test", 16).await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().unwrap().records == [Ipv4Addr::new(192, 0, 2, 20)])
    );
    assert_eq!(asked(before), 1, "one query for 16 concurrent callers");

    // A temporary failure is never kept: the next lookup asks again and sees the repair.
    server.set_fault("broken.example.test", Some(Fault::ServFail));
    let before = server.queries();
    for _ in 0..2 {
        assert_eq!(
            resolver.txt("broken.example.test").await,
            Err(LookupError::Failed(Failure::ServerFailure))
        );
    }
    assert_eq!(asked(before), 2, "failures are asked again");
    server.set_fault("broken.example.test", None);
    assert_eq!(
        resolver.txt("broken.example.test").await,
        Err(LookupError::NxDomain)
    );

    // A lookup no other shares (a DKIM selector) passes the cache by, both ways.
    let before = server.queries();
    for _ in 0..2 {
        assert_eq!(
            resolver
                .txt_unshared("selector1._domainkey.example.test")
                .await,
            Err(LookupError::NxDomain)
        );
        assert_eq!(
            resolver.txt_unshared("MX1.example.test").await,
            Err(LookupError::NoRecords)
        );
    }
    assert_eq!(asked(before), 4, "unshared lookups are asked every time");
    assert_eq!(
        resolver.txt("selector1._domainkey.example.test").await,
        Err(LookupError::NxDomain)
    );
    assert_eq!(asked(before), 5, "and leave nothing in the cache");

    // Another thread's resolver over the same cache: its own sockets, the same answers.
    let sibling = resolver.with_own_transport().unwrap();
    assert_eq!(sibling.multiplexed(), resolver.multiplexed());
    let before = server.queries();
    assert_eq!(
        sibling.mx("example.test").await.unwrap().records[0].exchange,
        "mx1.example.test"
    );
    assert_eq!(asked(before), 0, "the sibling reads the shared cache");
    sibling.txt("new.example.test").await.unwrap_err();
    resolver.txt("new.example.test").await.unwrap_err();
    assert_eq!(asked(before), 1, "and fills it for the first resolver");

    // Without the cache (the gateway's resolver), every lookup is a query.
    let plain = server.resolver().unwrap();
    let before = server.queries();
    plain.mx("example.test").await.unwrap();
    plain.mx("example.test").await.unwrap();
    assert_eq!(asked(before), 2);
}

/// `n` lookups of the same IPv4 addresses at once.
async fn concurrent_ipv4(
    resolver: &Resolver,
    name: &str,
    n: usize,
) -> Vec<Result<ravelin_dns::Answer<Ipv4Addr>, LookupError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (resolver, name) = (resolver.clone(), name.to_string());
        tasks.spawn(async move { resolver.ipv4(&name).await });
    }
    tasks.join_all().await
}

/// A name server that answers each query first with forgeries (another ID, another question,
/// a query instead of a response), then with the real answer: 192.0.2.1 for any A question.
fn forging_server() -> std::net::SocketAddr {
    forging_server_on("127.0.0.1:0".parse().unwrap())
}

/// [`forging_server`] on a given address.
fn forging_server_on(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
    use hickory_resolver::proto::rr::{Name, RData, Record, rdata::A};

    let socket = std::net::UdpSocket::bind(addr).unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 2048];
        while let Ok((len, peer)) = socket.recv_from(&mut buffer) {
            let Ok(query) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            let id = query.metadata.id;
            let question = query.queries[0].clone();
            let answer = |id: u16, question: Query, kind: MessageType| {
                let mut message = Message::new(id, kind, OpCode::Query);
                message.add_query(question.clone());
                message.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A::new(203, 0, 113, 66)),
                ));
                message
            };
            let other = Query::query(
                Name::from_ascii("other.test.").unwrap(),
                question.query_type(),
            );
            let mut real = answer(id, question.clone(), MessageType::Response);
            real.answers[0] =
                Record::from_rdata(question.name().clone(), 60, RData::A(A::new(192, 0, 2, 1)));
            for forged in [
                answer(id.wrapping_add(1), question.clone(), MessageType::Response),
                answer(id, other, MessageType::Response),
                answer(id, question.clone(), MessageType::Query),
                real,
            ] {
                let _ = socket.send_to(&forged.to_vec().unwrap(), peer);
            }
        }
    });
    addr
}

#[tokio::test]
async fn batch_transport_takes_only_the_answer_to_its_question() {
    let addr = forging_server();
    let mut settings = ResolverSettings::with_nameservers(vec![addr]);
    settings.timeout = std::time::Duration::from_secs(2);
    let resolver = Resolver::for_batch(&settings, 0).unwrap();
    // Each lookup its own name, so that a forgery cannot be another lookup's real answer.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let resolver = resolver.clone();
        tasks.spawn(async move { resolver.ipv4(&format!("forged{i}.example.test")).await });
    }
    for answer in tasks.join_all().await {
        assert_eq!(answer.unwrap().records, vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }
}

#[tokio::test]
async fn batch_transport_moves_to_the_name_server_that_answers() {
    let server = server();
    // A name server that never answers: a bound socket that counts what it receives.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let received = || {
        let mut buffer = [0u8; 2048];
        std::iter::from_fn(|| silent.recv(&mut buffer).ok()).count()
    };
    let mut settings = server.resolver_settings();
    settings.nameservers = vec![silent.local_addr().unwrap(), server.addr()];
    settings.timeout = std::time::Duration::from_millis(300);
    settings.attempts = 2;
    let resolver = Resolver::for_batch(&settings, 0).unwrap();
    // The first lookup times out on the silent server and is answered by the second; the
    // next ones start where the answer came from.
    for name in ["example.test", "nullmx.test", "example.test"] {
        assert!(resolver.mx(name).await.is_ok(), "{name}");
    }
    assert_eq!(
        received(),
        1,
        "only the first lookup went to the silent server"
    );

    // With one attempt, the lookup sent to the silent server fails.
    settings.attempts = 1;
    let once = Resolver::for_batch(&settings, 0).unwrap();
    assert_eq!(
        once.mx("example.test").await,
        Err(LookupError::Failed(Failure::Timeout))
    );
}

#[tokio::test]
async fn batch_transport_asks_another_name_server_after_servfail() {
    let failing = server();
    failing.set_fault("example.test", Some(Fault::ServFail));
    let good = server();
    let mut settings = good.resolver_settings();
    settings.nameservers = vec![failing.addr(), good.addr()];
    settings.attempts = 2;
    let resolver = Resolver::for_batch(&settings, 0).unwrap();
    let answer = resolver.mx("example.test").await.unwrap();
    assert_eq!(answer.records[0].exchange, "mx1.example.test");
    // Both failing: the last answer's code is the outcome.
    good.set_fault("example.test", Some(Fault::ServFail));
    let resolver = Resolver::for_batch(&settings, 0).unwrap();
    assert_eq!(
        resolver.mx("example.test").await,
        Err(LookupError::Failed(Failure::ServerFailure))
    );
}

#[tokio::test]
async fn batch_transport_survives_icmp_errors() {
    // A closed port: each query there brings back an ICMP port unreachable, which the next
    // receive on the socket reports as an error. The sockets must keep working: once a
    // server listens on that port, every lookup is answered.
    let settings = closed_port(200);
    let addr = settings.nameservers[0];
    let resolver = Resolver::for_batch(&settings, 0).unwrap();
    for i in 0..8 {
        let lookup = resolver.ipv4(&format!("closed{i}.example.test")).await;
        assert!(matches!(lookup, Err(LookupError::Failed(_))), "{lookup:?}");
    }
    forging_server_on(addr);
    for i in 0..8 {
        let answer = resolver
            .ipv4(&format!("open{i}.example.test"))
            .await
            .unwrap();
        assert_eq!(answer.records, vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }
}

#[tokio::test]
async fn batch_transport_answers_a_burst_of_different_questions() {
    // Many questions at once go out in batches and their answers come back in batches; with
    // one attempt each, an answer lost or handed to the wrong query would be a timeout. (Kept
    // below what the test server's own receive buffer holds.)
    let server = server();
    let mut settings = server.resolver_settings();
    settings.attempts = 1;
    settings.timeout = std::time::Duration::from_secs(5);
    let resolver = Resolver::for_batch(&settings, 0).unwrap();
    assert!(resolver.multiplexed());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..150 {
        let resolver = resolver.clone();
        tasks.spawn(async move {
            let name = format!("s{i}._domainkey.example.test");
            (i, resolver.txt(&name).await.map(|_| ()))
        });
    }
    let mut outcomes = tasks.join_all().await;
    outcomes.sort_by_key(|(i, _)| *i);
    assert_eq!(outcomes.len(), 150);
    for (i, outcome) in outcomes {
        assert_eq!(outcome, Err(LookupError::NxDomain), "question {i}");
    }
    let answer = resolver.mx("example.test").await.unwrap();
    assert_eq!(answer.records[0].exchange, "mx1.example.test");
}

#[test]
fn only_local_name_servers_get_the_long_lived_sockets() {
    use std::net::SocketAddr;
    let local: SocketAddr = "127.0.0.1:53".parse().unwrap();
    let remote: SocketAddr = "192.0.2.53:53".parse().unwrap();
    let batch = |servers: Vec<SocketAddr>| {
        Resolver::for_batch(&ResolverSettings::with_nameservers(servers), 10).unwrap()
    };
    assert!(batch(vec![local]).multiplexed());
    assert!(batch(vec!["10.1.2.3:53".parse().unwrap()]).multiplexed());
    assert!(batch(vec!["[fd00::53]:53".parse().unwrap()]).multiplexed());
    assert!(!batch(vec![remote]).multiplexed());
    assert!(!batch(vec![local, remote]).multiplexed());
    assert!(
        !Resolver::new(&ResolverSettings::with_nameservers(vec![local]))
            .unwrap()
            .multiplexed()
    );
}
