//! The MTA-STS policy fetch and cache against a real HTTPS server on loopback (certificates
//! from a test CA) and the in-process DNS server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ravelin_dns::mta_sts::{
    FetchError, FetchSettings, POLICY_PATH, PolicyCache, PolicyFetcher, PolicySource, StsLookup,
};
use ravelin_dns::records::mta_sts::StsMode;
use ravelin_dns::testing::{CannedResponse, TestDnsServer, TestHttpsServer};
use ravelin_tls::testing::TestPki;

const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mx.example.test\r\nmax_age: 86400\r\n";

fn zone(id: Option<&str>) -> String {
    let mut zone = "mta-sts IN A 127.0.0.1\n".to_string();
    if let Some(id) = id {
        zone.push_str(&format!("_mta-sts IN TXT \"v=STSv1; id={id};\"\n"));
    }
    zone
}

/// A DNS server for example.test, an HTTPS server with a certificate for
/// mta-sts.example.test, and a fetcher that trusts the test CA and uses the server's port.
struct World {
    dns: TestDnsServer,
    https: TestHttpsServer,
    fetcher: PolicyFetcher,
    _dir: tempfile::TempDir,
}

fn world_with_cert(cert_host: &str, trusted_ca: Option<&TestPki>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(cert_host).unwrap();
    let files = pki.write_to(dir.path()).unwrap();
    let ca = match trusted_ca {
        Some(other) => {
            let path = dir.path().join("trusted-ca.pem");
            std::fs::write(&path, &other.ca_pem).unwrap();
            path
        }
        None => files.ca.clone(),
    };
    let dns = TestDnsServer::start(&[("example.test", &zone(Some("1")))]).unwrap();
    let https = TestHttpsServer::start(&files.cert, &files.key).unwrap();
    let fetcher = PolicyFetcher::new(
        dns.resolver().unwrap(),
        FetchSettings {
            timeout: Duration::from_secs(5),
            port: https.addr().port(),
            ca_file: Some(ca),
        },
    )
    .unwrap();
    World {
        dns,
        https,
        fetcher,
        _dir: dir,
    }
}

fn world() -> World {
    world_with_cert("mta-sts.example.test", None)
}

#[tokio::test]
async fn a_served_policy_is_fetched_and_parsed() {
    let w = world();
    w.https.serve_policy(POLICY);
    let fetched = w.fetcher.fetch("example.test").await.unwrap();
    assert_eq!(fetched.policy.mode, StsMode::Enforce);
    assert!(fetched.policy.matches_mx("mx1.example.test"));
    assert!(fetched.policy.matches_mx("a.mx.example.test"));
    assert_eq!(fetched.content_type.as_deref(), Some("text/plain"));
    assert_eq!(fetched.body, POLICY);
    assert_eq!(w.https.requests(), 1);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let w = world_with_cert("www.example.test", None);
    w.https.serve_policy(POLICY);
    let err = w.fetcher.fetch("example.test").await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err}");
    assert_eq!(
        w.https.requests(),
        0,
        "nothing is sent over an unverified connection"
    );
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let other = TestPki::new("mta-sts.example.test").unwrap();
    let w = world_with_cert("mta-sts.example.test", Some(&other));
    w.https.serve_policy(POLICY);
    let err = w.fetcher.fetch("example.test").await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let w = world();
    w.https.respond("/policy.txt", CannedResponse::text(POLICY));
    for status in [301, 302, 307, 308] {
        w.https.respond(
            POLICY_PATH,
            CannedResponse::redirect(status, "https://mta-sts.example.test/policy.txt"),
        );
        let before = w.https.requests();
        let err = w.fetcher.fetch("example.test").await.unwrap_err();
        assert_eq!(
            err,
            FetchError::Redirect {
                status,
                location: Some("https://mta-sts.example.test/policy.txt".to_string())
            }
        );
        assert_eq!(
            w.https.requests(),
            before + 1,
            "the redirect was not followed"
        );
    }
}

#[tokio::test]
async fn only_200_is_accepted() {
    let w = world();
    let err = w.fetcher.fetch("example.test").await.unwrap_err();
    assert_eq!(err, FetchError::Status(404));
    w.https.respond(POLICY_PATH, CannedResponse::status(500));
    assert_eq!(
        w.fetcher.fetch("example.test").await.unwrap_err(),
        FetchError::Status(500)
    );
    let mut no_content = CannedResponse::text(POLICY);
    no_content.status = 204;
    w.https.respond(POLICY_PATH, no_content);
    assert_eq!(
        w.fetcher.fetch("example.test").await.unwrap_err(),
        FetchError::Status(204)
    );
}

#[tokio::test]
async fn oversize_policies_are_refused_with_and_without_a_length() {
    let w = world();
    let mut big = POLICY.to_string();
    while big.len() <= 64 * 1024 {
        big.push_str("mx: padding.example.test\r\n");
    }
    w.https.serve_policy(&big);
    assert_eq!(
        w.fetcher.fetch("example.test").await.unwrap_err(),
        FetchError::TooLarge
    );
    let mut streamed = CannedResponse::text(big);
    streamed.content_length = false;
    w.https.respond(POLICY_PATH, streamed);
    assert_eq!(
        w.fetcher.fetch("example.test").await.unwrap_err(),
        FetchError::TooLarge
    );
    // Just under the limit is fine (and without a length, too).
    let mut fits = POLICY.to_string();
    while fits.len() < 60 * 1024 {
        fits.push_str("mx: padding.example.test\r\n");
    }
    let mut streamed = CannedResponse::text(fits);
    streamed.content_length = false;
    w.https.respond(POLICY_PATH, streamed);
    assert!(w.fetcher.fetch("example.test").await.is_ok());
}

#[tokio::test]
async fn invalid_policies_and_missing_hosts_are_reported() {
    let w = world();
    w.https
        .serve_policy("version: STSv1\nmode: enforce\nmax_age: 86400\n");
    let err = w.fetcher.fetch("example.test").await.unwrap_err();
    assert!(matches!(err, FetchError::Policy(_)), "{err}");
    assert!(err.to_string().contains("mx"), "{err}");
    w.https
        .respond(POLICY_PATH, CannedResponse::text(vec![0xff, 0xfe, b'\n']));
    assert_eq!(
        w.fetcher.fetch("example.test").await.unwrap_err(),
        FetchError::NotText
    );
    let err = w.fetcher.fetch("nowhere.test").await.unwrap_err();
    assert!(matches!(err, FetchError::Dns(_)), "{err}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let w = world();
    // A TCP listener that accepts and never speaks TLS.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fetcher = PolicyFetcher::new(
        w.dns.resolver().unwrap(),
        FetchSettings {
            timeout: Duration::from_millis(500),
            port: silent.local_addr().unwrap().port(),
            ca_file: None,
        },
    )
    .unwrap();
    assert_eq!(
        fetcher.fetch("example.test").await.unwrap_err(),
        FetchError::Timeout
    );
}

fn policy_of(
    lookup: &StsLookup,
) -> (
    Arc<ravelin_dns::records::mta_sts::StsPolicy>,
    &str,
    PolicySource,
) {
    match lookup {
        StsLookup::Policy {
            policy, id, source, ..
        } => (policy.clone(), id.as_str(), *source),
        other => panic!("expected a policy, got {other:?}"),
    }
}

#[tokio::test]
async fn the_cache_fetches_only_when_the_id_changes_or_the_policy_expires() {
    let w = world();
    w.https.serve_policy(POLICY);
    let cache = PolicyCache::new(w.fetcher.clone());
    let start = SystemTime::now();

    let first = cache.lookup_at("example.test", start).await;
    let (policy, id, source) = policy_of(&first);
    assert_eq!((id, source), ("1", PolicySource::Fetched));
    assert_eq!(policy.max_age, 86400);
    assert_eq!(w.https.requests(), 1);

    // Same id, within max_age: no fetch.
    let again = cache
        .lookup_at("Example.Test.", start + Duration::from_secs(3600))
        .await;
    assert_eq!(policy_of(&again).2, PolicySource::Cached);
    assert_eq!(w.https.requests(), 1);

    // A new id: fetched again, and the new policy replaces the old one.
    w.https.serve_policy(&POLICY.replace("enforce", "testing"));
    w.dns.set_zone("example.test", &zone(Some("2"))).unwrap();
    let changed = cache
        .lookup_at("example.test", start + Duration::from_secs(7200))
        .await;
    let (policy, id, source) = policy_of(&changed);
    assert_eq!((id, source), ("2", PolicySource::Fetched));
    assert_eq!(policy.mode, StsMode::Testing);
    assert_eq!(w.https.requests(), 2);

    // The TXT record disappears: the unexpired policy stays in force.
    w.dns.set_zone("example.test", &zone(None)).unwrap();
    let gone = cache
        .lookup_at("example.test", start + Duration::from_secs(10_000))
        .await;
    assert_eq!(policy_of(&gone).2, PolicySource::CachedFallback);
    assert_eq!(w.https.requests(), 2);

    // Past max_age with the same id: fetched again.
    w.dns.set_zone("example.test", &zone(Some("2"))).unwrap();
    let later = start + Duration::from_secs(7200 + 86400 + 1);
    let refreshed = cache.lookup_at("example.test", later).await;
    assert_eq!(policy_of(&refreshed).2, PolicySource::Fetched);
    assert_eq!(w.https.requests(), 3);

    // A failing fetch with an unexpired policy: the cached one is used.
    w.https.respond(POLICY_PATH, CannedResponse::status(500));
    w.dns.set_zone("example.test", &zone(Some("3"))).unwrap();
    let failing = cache.lookup_at("example.test", later).await;
    assert_eq!(policy_of(&failing).2, PolicySource::CachedFallback);

    // Expired and the fetch fails: reported as such, with the expired policy.
    let much_later = later + Duration::from_secs(86400 + 1);
    match cache.lookup_at("example.test", much_later).await {
        StsLookup::ExpiredFetchFailed { expired, error } => {
            assert_eq!(expired.mode, StsMode::Testing);
            assert_eq!(error, FetchError::Status(500));
        }
        other => panic!("expected an expired policy with a failed fetch, got {other:?}"),
    }
}

#[tokio::test]
async fn no_record_no_policy_and_failures_without_a_cache() {
    let w = world();
    let cache = PolicyCache::new(w.fetcher.clone());
    w.dns.set_zone("example.test", &zone(None)).unwrap();
    assert_eq!(cache.lookup("example.test").await, StsLookup::NoPolicy);
    assert_eq!(w.https.requests(), 0, "no TXT record, no fetch");

    // Two STS records: the domain has no MTA-STS (RFC 8461 §3.1).
    let two = format!(
        "{}_mta-sts IN TXT \"v=STSv1; id=1\"\n_mta-sts IN TXT \"v=STSv1; id=2\"\n",
        zone(None)
    );
    w.dns.set_zone("example.test", &two).unwrap();
    assert_eq!(cache.lookup("example.test").await, StsLookup::NoPolicy);

    w.dns.set_zone("example.test", &zone(Some("7"))).unwrap();
    match cache.lookup("example.test").await {
        StsLookup::FetchFailed { id, error } => {
            assert_eq!(id, "7");
            assert_eq!(error, FetchError::Status(404));
        }
        other => panic!("expected a failed fetch, got {other:?}"),
    }

    w.dns.set_fault(
        "_mta-sts.example.test",
        Some(ravelin_dns::testing::Fault::ServFail),
    );
    assert!(matches!(
        cache.lookup("example.test").await,
        StsLookup::DnsFailed(_)
    ));
}
