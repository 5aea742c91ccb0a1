//! Tests of the state store (embedded; the Redis implementation is exercised against a real
//! redis-server by crates/ravelin/tests/state.rs) and of what sits on it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::admin::{self, Request, Response};
use super::greylist::GreyVerdict;
use super::*;
use crate::config::{AbuseKind, BansSection, GreylistSection, HumanDuration, RateLimitsSection};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn store(dir: &tempfile::TempDir) -> Store {
    Store::open_embedded(&dir.path().join("store.redb")).unwrap()
}

#[tokio::test]
async fn counters_count_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let ttl = Duration::from_millis(300);
    assert_eq!(s.incr("c", 1, ttl).await.unwrap(), 1);
    assert_eq!(s.incr("c", 2, ttl).await.unwrap(), 3);
    assert_eq!(s.get("c").await.unwrap().as_deref(), Some(&b"3"[..]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.get("c").await.unwrap(), None, "expired counter is gone");
    assert_eq!(
        s.incr("c", 1, ttl).await.unwrap(),
        1,
        "an expired counter restarts"
    );
}

#[tokio::test]
async fn values_delete_list_and_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    s.set("ban:a", b"A", None).await.unwrap();
    s.set("ban:b", b"B", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    s.set("ban:c", b"C", Some(Duration::from_millis(100)))
        .await
        .unwrap();
    s.set("bam", b"x", None).await.unwrap();
    s.set("other:a", b"x", None).await.unwrap();
    let keys = |v: Vec<Entry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.list("ban:", 10).await.unwrap()),
        ["ban:a", "ban:b", "ban:c"]
    );
    assert_eq!(keys(s.list("ban:", 2).await.unwrap()), ["ban:a", "ban:b"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(keys(s.list("ban:", 10).await.unwrap()), ["ban:a", "ban:b"]);
    assert_eq!(
        s.get_many(&["ban:b".into(), "ban:zz".into(), "ban:a".into()])
            .await
            .unwrap(),
        vec![Some(b"B".to_vec()), None, Some(b"A".to_vec())]
    );
    s.set("gone", b"x", Some(Duration::from_millis(50)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.sweep().await.unwrap(), 2, "ban:c and gone are purged");
    assert!(s.delete("ban:a").await.unwrap());
    assert!(!s.delete("ban:a").await.unwrap());
    assert!(matches!(
        s.set(&"k".repeat(MAX_KEY + 1), b"", None).await,
        Err(StateError::Invalid(_))
    ));
    assert!(matches!(
        s.set("k", &vec![0; MAX_VALUE + 1], None).await,
        Err(StateError::Invalid(_))
    ));
}

#[tokio::test]
async fn embedded_store_persists_and_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/store.redb");
    {
        let s = Store::open_embedded(&path).unwrap();
        s.set("keep", b"v", None).await.unwrap();
        s.incr("count", 5, Duration::from_secs(60)).await.unwrap();
        assert!(
            matches!(Store::open_embedded(&path), Err(StateError::Locked(_))),
            "a second open of the file is refused"
        );
        s.close().await;
    }
    let s = Store::open_embedded(&path).unwrap();
    assert_eq!(s.get("keep").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(
        s.incr("count", 1, Duration::from_secs(60)).await.unwrap(),
        6
    );
}

#[tokio::test]
async fn windows() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let w = Window::Sliding(Duration::from_secs(3600));
    for n in 1..=4 {
        assert_eq!(s.hit("k", 1, w).await.unwrap(), n);
    }
    s.reset("k", w).await.unwrap();
    assert_eq!(s.hit("k", 1, w).await.unwrap(), 1);
    let f = Window::Fixed(Duration::from_millis(200));
    assert_eq!(s.hit("f", 3, f).await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(s.hit("f", 1, f).await.unwrap(), 1, "a new fixed window");
    // Sliding: a count of the previous window still weighs on the current one.
    let sw = Window::Sliding(Duration::from_millis(400));
    s.hit("s", 100, sw).await.unwrap();
    let bucket = now_ms() / 400;
    s.set(&format!("s@{}", bucket - 1), b"100", None)
        .await
        .unwrap();
    assert!(s.hit("s", 0, sw).await.unwrap() > 100);
}

fn bans_config() -> BansSection {
    BansSection {
        exempt: vec![net("192.0.2.0/24")],
        ..BansSection::default()
    }
}

#[tokio::test]
async fn auth_failures_delay_then_ban_and_repeat_bans_grow() {
    let dir = tempfile::tempdir().unwrap();
    // The default adds no delay to the session's own; a configured one grows per failure.
    let mut config = bans_config();
    config.auth_failures.delay = Some(HumanDuration::from_secs(1));
    let bans = Bans::new(store(&dir), &config, &[]);
    let client = ip("127.0.0.5");
    for n in 1..=4u64 {
        assert_eq!(
            bans.record(client, AbuseKind::AuthFailures).await,
            Decision::Delay(Duration::from_secs(n)),
            "failure {n}"
        );
    }
    let Decision::Ban(ban) = bans.record(client, AbuseKind::AuthFailures).await else {
        panic!("the fifth failure bans");
    };
    assert_eq!(ban.target, net("127.0.0.5/32"));
    assert_eq!(ban.reason, BanReason::Abuse(AbuseKind::AuthFailures));
    assert_eq!(ban.count, 1);
    assert_eq!(ban.expires - ban.created, 3600);
    assert_eq!(bans.check(client).await.unwrap(), Some(ban.clone()));
    assert_eq!(bans.check(ip("127.0.0.6")).await.unwrap(), None);
    assert_eq!(bans.list(10).await.unwrap(), vec![ban.clone()]);

    // Lifted by hand, then earned again: twice as long.
    assert!(bans.remove(ban.target).await.unwrap());
    assert_eq!(bans.check(client).await.unwrap(), None);
    for _ in 0..4 {
        bans.record(client, AbuseKind::AuthFailures).await;
    }
    let Decision::Ban(again) = bans.record(client, AbuseKind::AuthFailures).await else {
        panic!("banned again");
    };
    assert_eq!((again.count, again.expires - again.created), (2, 7200));

    // Exempt networks are never delayed or banned.
    for _ in 0..10 {
        assert_eq!(
            bans.record(ip("192.0.2.9"), AbuseKind::AuthFailures).await,
            Decision::Allow
        );
    }
}

#[tokio::test]
async fn ipv6_bans_cover_the_prefix_and_manual_bans_any_allowed_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let bans = Bans::new(store(&dir), &bans_config(), &[]);
    // Counted per /64 too: two addresses of one /64 reach the threshold of two together, one
    // event of the next /64 and one of an IPv4 address do not add to it.
    assert_eq!(
        bans.record(ip("2001:db8:1:3::5"), AbuseKind::Pregreet)
            .await,
        Decision::Allow
    );
    assert_eq!(
        bans.record(ip("198.51.100.5"), AbuseKind::Pregreet).await,
        Decision::Allow
    );
    assert_eq!(
        bans.record(ip("2001:db8:1:2::5"), AbuseKind::Pregreet)
            .await,
        Decision::Allow
    );
    let Decision::Ban(_) = bans
        .record(ip("2001:db8:1:2::6"), AbuseKind::Pregreet)
        .await
    else {
        panic!("the second event in the /64 bans it");
    };
    let ban = bans.check(ip("2001:db8:1:2::99")).await.unwrap().unwrap();
    assert_eq!(ban.target, net("2001:db8:1:2::/64"));
    assert_eq!(ban.reason, BanReason::Abuse(AbuseKind::Pregreet));
    assert_eq!(bans.check(ip("2001:db8:1:3::5")).await.unwrap(), None);

    let manual = bans
        .add(net("203.0.113.0/24"), BanReason::Manual, None)
        .await
        .unwrap();
    assert_eq!(manual.expires - manual.created, 86_400);
    assert_eq!(
        bans.check(ip("203.0.113.77"))
            .await
            .unwrap()
            .map(|b| b.target),
        Some(net("203.0.113.0/24"))
    );
    assert_eq!(
        bans.check(ip("::ffff:203.0.113.77"))
            .await
            .unwrap()
            .map(|b| b.reason),
        Some(BanReason::Manual),
        "IPv4-mapped addresses are IPv4"
    );
    let short = bans
        .add(
            net("198.51.100.7/32"),
            BanReason::Manual,
            Some(Duration::from_secs(90)),
        )
        .await
        .unwrap();
    assert_eq!(short.expires - short.created, 90);
    for bad in ["0.0.0.0/7", "2001:db8::/63", "2000::/12"] {
        assert!(matches!(
            bans.add(net(bad), BanReason::Manual, None).await,
            Err(StateError::Invalid(_))
        ));
    }
}

#[tokio::test]
async fn kinds_have_their_own_thresholds_and_a_disabled_recorder_allows() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let bans = Bans::new(s.clone(), &bans_config(), &[]);
    let client = ip("127.0.0.9");
    for _ in 0..4 {
        assert_eq!(
            bans.record(client, AbuseKind::RelayProbing).await,
            Decision::Allow
        );
    }
    assert!(matches!(
        bans.record(client, AbuseKind::RelayProbing).await,
        Decision::Ban(Ban {
            reason: BanReason::Abuse(AbuseKind::RelayProbing),
            ..
        })
    ));
    let off = BansSection {
        enabled: false,
        ..bans_config()
    };
    let disabled = Bans::new(s, &off, &[]);
    assert_eq!(disabled.check(client).await.unwrap(), None);
    assert_eq!(
        disabled.record(client, AbuseKind::RelayProbing).await,
        Decision::Allow
    );
}

#[tokio::test]
async fn rate_limits_per_address_and_sender_domain() {
    let dir = tempfile::tempdir().unwrap();
    let config = RateLimitsSection {
        messages_per_address: 2,
        recipients_per_address: 0,
        recipients_per_sender_domain: 3,
        connection_rate_per_address: 2,
        connection_rate_per_prefix: 3,
        exempt: vec![net("10.0.0.0/8")],
        ..RateLimitsSection::default()
    };
    let limits = RateLimits::new(store(&dir), &config, &[net("192.0.2.25/32")]);
    let a = ip("127.0.0.7");
    assert!(limits.message(a, Some("example.net"), None).await.is_ok());
    assert!(limits.message(a, None, None).await.is_ok());
    let e = limits.message(a, None, None).await.unwrap_err();
    assert_eq!(
        (e.limit, e.subject.as_str(), e.count, e.max),
        ("messages_per_address", "127.0.0.7/32", 3, 2)
    );
    assert!(limits.message(ip("127.0.0.8"), None, None).await.is_ok());
    // IPv6: the client is its /64; rotating addresses inside it does not reset the count.
    assert!(
        limits
            .message(ip("2001:db8:1:2::5"), None, None)
            .await
            .is_ok()
    );
    assert!(
        limits
            .message(ip("2001:db8:1:2::6"), None, None)
            .await
            .is_ok()
    );
    let e = limits
        .message(ip("2001:db8:1:2:a:b:c:d"), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        (e.limit, e.subject.as_str(), e.count),
        ("messages_per_address", "2001:db8:1:2::/64", 3)
    );
    assert!(
        limits
            .message(ip("2001:db8:1:3::5"), None, None)
            .await
            .is_ok()
    );
    for client in ["127.0.0.10", "127.0.0.11", "127.0.0.12"] {
        assert!(
            limits
                .recipient(ip(client), Some("Example.NET"), None)
                .await
                .is_ok()
        );
    }
    let e = limits
        .recipient(ip("127.0.0.13"), Some("example.net"), None)
        .await
        .unwrap_err();
    assert_eq!(
        (e.limit, e.subject.as_str()),
        ("recipients_per_sender_domain", "@example.net")
    );
    for _ in 0..10 {
        assert!(limits.message(ip("10.1.2.3"), None, None).await.is_ok());
        assert!(limits.message(ip("192.0.2.25"), None, None).await.is_ok());
    }
    assert!(limits.connection(ip("127.1.0.1")).await.is_ok());
    assert!(limits.connection(ip("127.1.0.1")).await.is_ok());
    assert_eq!(
        limits.connection(ip("127.1.0.1")).await.unwrap_err().limit,
        "connection_rate_per_address"
    );
    assert!(limits.connection(ip("127.1.0.2")).await.is_ok());
    assert_eq!(
        limits.connection(ip("127.1.0.3")).await.unwrap_err().limit,
        "connection_rate_per_prefix",
        "the fourth connection from 127.1.0.0/24 that got as far as the prefix count"
    );
}

#[tokio::test]
async fn per_user_limits_hold_from_every_address_even_exempt_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = RateLimitsSection {
        messages_per_user: 2,
        recipients_per_user: 3,
        ..RateLimitsSection::default()
    };
    // Loopback is exempt from the address limits by default; not from the user's.
    let limits = RateLimits::new(store(&dir), &config, &[]);
    assert!(
        limits
            .message(ip("127.0.0.1"), None, Some("Alice"))
            .await
            .is_ok()
    );
    assert!(
        limits
            .message(ip("192.0.2.9"), None, Some("alice"))
            .await
            .is_ok()
    );
    let e = limits
        .message(ip("198.51.100.3"), None, Some("ALICE"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.limit, e.subject.as_str(), e.count, e.max),
        ("messages_per_user", "user:alice", 3, 2)
    );
    assert!(
        limits
            .message(ip("127.0.0.1"), None, Some("bob"))
            .await
            .is_ok()
    );
    assert!(limits.message(ip("127.0.0.1"), None, None).await.is_ok());
    for _ in 0..3 {
        assert!(
            limits
                .recipient(ip("127.0.0.1"), None, Some("bob"))
                .await
                .is_ok()
        );
    }
    let e = limits
        .recipient(ip("127.0.0.1"), None, Some("bob"))
        .await
        .unwrap_err();
    assert_eq!(e.limit, "recipients_per_user");
}

#[test]
fn connection_tracker_counts_held_connections() {
    let config = RateLimitsSection {
        connections_per_address: 2,
        connections_per_prefix: 3,
        exempt: vec![],
        ..RateLimitsSection::default()
    };
    let t = ConnectionTracker::new(&config, &[]);
    let a = t.try_acquire(ip("127.0.0.2")).unwrap();
    let b = t.try_acquire(ip("127.0.0.2")).unwrap();
    let e = t.try_acquire(ip("127.0.0.2")).err().unwrap();
    assert_eq!(e.limit, "connections_per_address");
    let c = t.try_acquire(ip("127.0.0.3")).unwrap();
    assert_eq!(
        t.try_acquire(ip("127.0.0.4")).err().unwrap().limit,
        "connections_per_prefix"
    );
    drop(a);
    assert_eq!(t.held(ip("127.0.0.2")), 1);
    let _d = t.try_acquire(ip("127.0.0.4")).unwrap();
    drop((b, c));
    assert_eq!(t.held(ip("127.0.0.2")), 0);
    assert!(t.try_acquire(ip("2001:db8::1")).is_ok());
    let defaults = ConnectionTracker::new(&RateLimitsSection::default(), &[]);
    let held: Vec<_> = (0..100)
        .map(|_| defaults.try_acquire(ip("127.0.0.2")).unwrap())
        .collect();
    assert_eq!(held.len(), 100, "loopback is exempt by default");
}

#[tokio::test]
async fn greylisting_defers_then_passes_and_allowlists_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let config = GreylistSection {
        enabled: true,
        delay: HumanDuration(Duration::from_millis(300)),
        exempt: vec![],
        ..GreylistSection::default()
    };
    let g = Greylist::new(store(&dir), &config, &[]);
    let (from, to) = ("s@example.net", "u@example.org");
    assert!(matches!(
        g.check(ip("127.0.0.20"), from, to).await,
        GreyVerdict::Defer(_)
    ));
    assert!(
        matches!(
            g.check(ip("127.0.0.21"), from, to).await,
            GreyVerdict::Defer(_)
        ),
        "too early, from another host of the same /24"
    );
    assert!(matches!(
        g.check(ip("127.0.1.20"), from, to).await,
        GreyVerdict::Defer(_)
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(g.check(ip("127.0.0.22"), from, to).await, GreyVerdict::Pass);
    assert_eq!(
        g.check(ip("127.0.0.20"), "other@example.com", "v@example.org")
            .await,
        GreyVerdict::Pass,
        "the network that retried is allowlisted"
    );
    assert!(matches!(
        g.check(ip("127.0.2.1"), "other@example.com", "v@example.org")
            .await,
        GreyVerdict::Defer(_)
    ));
}

#[tokio::test]
async fn admin_socket_serves_ban_requests() {
    let dir = tempfile::tempdir().unwrap();
    let bans = Arc::new(Bans::new(store(&dir), &bans_config(), &[]));
    let path = admin::socket_path(dir.path());
    let (stop, stop_rx) = watch::channel(false);
    let task = admin::start(path.clone(), bans.clone(), stop_rx).unwrap();
    let added = admin::request(
        &path,
        &Request::BanAdd {
            target: net("127.0.0.44/32"),
            reason: BanReason::Manual,
            duration_secs: Some(600),
        },
    )
    .await
    .unwrap();
    let Response::Ban { ban } = added else {
        panic!("{added:?}")
    };
    assert_eq!(ban.expires - ban.created, 600);
    assert_eq!(
        bans.check(ip("127.0.0.44")).await.unwrap(),
        Some(ban.clone())
    );
    assert_eq!(
        admin::request(&path, &Request::BanList { limit: 10 })
            .await
            .unwrap(),
        Response::Bans { bans: vec![ban] }
    );
    let refused = admin::request(
        &path,
        &Request::BanAdd {
            target: net("0.0.0.0/4"),
            reason: BanReason::Manual,
            duration_secs: None,
        },
    )
    .await
    .unwrap();
    assert!(matches!(refused, Response::Error { .. }), "{refused:?}");
    assert_eq!(
        admin::request(
            &path,
            &Request::BanRemove {
                target: net("127.0.0.44/32")
            }
        )
        .await
        .unwrap(),
        Response::Removed { removed: true }
    );
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::UnixStream::connect(&path).await.unwrap();
        raw.write_all(b"{\"op\":\"format_disk\"}\n").await.unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("\"result\":\"error\""), "{answer}");
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    assert!(!path.exists(), "the socket is removed at shutdown");
    let gone = admin::request(&path, &Request::BanList { limit: 1 })
        .await
        .unwrap_err();
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test]
async fn unreachable_redis_fails_fast_and_callers_fail_open() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Store::open_redis(
        &format!("redis://127.0.0.1:{port}/0"),
        "t:",
        Duration::from_millis(500),
    )
    .unwrap();
    assert!(matches!(
        s.incr("k", 1, Duration::from_secs(1)).await,
        Err(StateError::Unavailable(_))
    ));
    // While it is down, further operations do not even try.
    assert!(matches!(
        s.get("k").await,
        Err(StateError::Unavailable(why)) if why.starts_with("down for")
    ));
    let bans = Bans::new(s.clone(), &bans_config(), &[]);
    for _ in 0..10 {
        assert_eq!(
            bans.record(ip("127.0.0.5"), AbuseKind::AuthFailures).await,
            Decision::Allow
        );
    }
    assert!(bans.check(ip("127.0.0.5")).await.is_err());
}
