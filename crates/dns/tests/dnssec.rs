//! DNSSEC status of answers, proved with real peers: zones signed with ldns-signzone, served
//! by NSD, validated by unbound on loopback with the test trust anchors.

use std::net::Ipv4Addr;

use ravelin_dns::testing::{DnssecWorld, TestDnsServer};
use ravelin_dns::{AdTrust, Failure, LookupError, Resolver};

const MAIL_ZONE: &str = r#"
@            IN MX   10 mx
mx           IN A    192.0.2.25
mx           IN AAAA 2001:db8::25
_25._tcp.mx  IN TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
alias        IN CNAME mx
"#;

fn world(hickory: Option<&TestDnsServer>) -> DnssecWorld {
    let mut builder = DnssecWorld::builder()
        .signed_zone("signed.test", MAIL_ZONE)
        .bogus_zone("bogus.test", MAIL_ZONE)
        .unsigned_zone("plain.test", MAIL_ZONE);
    if let Some(server) = hickory {
        builder = builder.stub("dynamic.test", server.addr());
    }
    builder
        .start()
        .expect("DNSSEC world (scripts/install-test-deps.sh installs its tools)")
}

#[tokio::test]
async fn signed_answers_are_secure() {
    let world = world(None);
    let resolver = world.resolver().unwrap();
    assert!(resolver.trusts_ad());

    let tlsa = resolver.tlsa("mx.signed.test", 25).await.unwrap();
    assert!(
        tlsa.secure,
        "TLSA from a signed zone through a validating resolver"
    );
    assert_eq!(tlsa.records[0].usage, 3);

    let mx = resolver.mx("signed.test").await.unwrap();
    assert!(mx.secure);
    assert_eq!(mx.records[0].exchange, "mx.signed.test");

    let a = resolver.ipv4("mx.signed.test").await.unwrap();
    assert!(a.secure);
    assert_eq!(a.records, vec![Ipv4Addr::new(192, 0, 2, 25)]);
    let both = resolver.ips("mx.signed.test", false).await.unwrap();
    assert!(both.secure);
    assert_eq!(both.records.len(), 2);

    let via_cname = resolver.ipv4("alias.signed.test").await.unwrap();
    assert!(via_cname.secure);
    assert_eq!(via_cname.canonical_name, "mx.signed.test");

    // Secure denial: the name does not exist, or has no such record.
    assert_eq!(
        resolver.tlsa("mx.signed.test", 587).await,
        Err(LookupError::NxDomain)
    );
    assert_eq!(
        resolver.txt("mx.signed.test").await,
        Err(LookupError::NoRecords)
    );
}

#[tokio::test]
async fn unsigned_answers_are_not_secure() {
    let hickory = TestDnsServer::start(&[("dynamic.test", MAIL_ZONE)]).unwrap();
    let world = world(Some(&hickory));
    let resolver = world.resolver().unwrap();
    let tlsa = resolver.tlsa("mx.plain.test", 25).await.unwrap();
    assert!(!tlsa.secure);
    let mx = resolver.mx("plain.test").await.unwrap();
    assert!(!mx.secure);
    let from_hickory = resolver.tlsa("mx.dynamic.test", 25).await.unwrap();
    assert!(!from_hickory.secure);
    assert_eq!(from_hickory.records[0].selector, 1);
}

#[tokio::test]
async fn bogus_answers_are_failures_never_insecure() {
    let world = world(None);
    let resolver = world.resolver().unwrap();
    for result in [
        resolver.tlsa("mx.bogus.test", 25).await.map(|_| ()),
        resolver.mx("bogus.test").await.map(|_| ()),
        resolver.ipv4("mx.bogus.test").await.map(|_| ()),
    ] {
        assert_eq!(result, Err(LookupError::Failed(Failure::ServerFailure)));
    }
}

#[tokio::test]
async fn the_ad_bit_is_believed_only_when_trusted() {
    let world = world(None);
    let mut settings = world.resolver_settings();
    settings.ad_trust = AdTrust::Never;
    let untrusting = Resolver::new(&settings).unwrap();
    assert!(!untrusting.trusts_ad());
    assert!(!untrusting.tlsa("mx.signed.test", 25).await.unwrap().secure);

    // A name server off the loopback makes the default trust refuse the AD bit; the address
    // is never queried.
    settings.ad_trust = AdTrust::Loopback;
    settings.nameservers.push("192.0.2.53:53".parse().unwrap());
    assert!(!Resolver::new(&settings).unwrap().trusts_ad());
    settings.ad_trust = AdTrust::Always;
    assert!(Resolver::new(&settings).unwrap().trusts_ad());
}

#[test]
fn the_world_publishes_its_trust_anchors_and_stops_cleanly() {
    let world = world(None);
    let ds = world.trust_anchor("signed.test").unwrap();
    assert!(ds.starts_with("signed.test.") && ds.contains("DS"), "{ds}");
    assert!(world.trust_anchor("bogus.test.").is_some());
    assert!(world.trust_anchor("plain.test").is_none());
    let dir = world.dir().to_path_buf();
    let unbound = world.resolver_addr();
    drop(world);
    assert!(!dir.exists(), "the world's directory is removed");
    // Nothing answers on unbound's address any more.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1];
    socket.send_to(&query, unbound).unwrap();
    let mut buf = [0u8; 512];
    assert!(socket.recv_from(&mut buf).is_err());
}
