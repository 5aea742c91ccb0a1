//! End-to-end proofs of the state store: bans and rate limits survive a restart of
//! `ravelin serve` with the embedded store and `ravelin ban` works beside the running
//! gateway; two gateway nodes on one real redis-server share bans (made by abuse) and rate
//! limits; with Redis stopped mid-run mail is still accepted and the outage logged, and when
//! it is back the limits apply again. Also the Redis store's operations against the real
//! server. Clients play distinct hosts from 127.0.0.x (loopback is exempt by default, so the
//! configurations here clear the exemptions).

mod support;

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ravelin_gateway::state::{StateError, Store, Window};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// A config with no exemptions, relay probing banning at the 3rd refused recipient and at
/// most 2 messages per client address per hour.
fn config(backend: SocketAddr) -> RavelinConfig {
    RavelinConfig::inbound(backend)
        .set("bans", "exempt = []")
        .set("rate_limits", "exempt = []")
        .set("rate_limits", "messages_per_address = 2")
        .extra("[bans.relay_probing]\nthreshold = 3")
}

/// MAIL FROM from `from`: the reply code (RSET after each).
fn mail_code(from: &str, addr: SocketAddr) -> u16 {
    let mut c = session_from(from, addr);
    let reply = c.command("MAIL FROM:<s@example.net>").expect("MAIL");
    if reply.code == 451 {
        assert!(reply.text().starts_with("4.7.1"), "{reply:?}");
    }
    let _ = c.command("QUIT");
    reply.code
}

#[test]
fn bans_and_limits_survive_a_restart_with_the_embedded_store() {
    let sink = SmtpSink::start();
    let mut ravelin = Ravelin::start(config(sink.addr));
    let addr = ravelin.addr();

    probe_relay("127.0.0.5", addr);
    assert_banned("127.0.0.5", addr);
    let banned = ravelin.wait_for_event("banned", WAIT, |e| e["client"] == "127.0.0.5");
    assert_eq!(banned["reason"], "relay_probing");
    assert!(banned["expires"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(mail_code("127.0.0.6", addr), 250);
    assert_eq!(mail_code("127.0.0.6", addr), 250);
    assert_eq!(
        mail_code("127.0.0.6", addr),
        451,
        "the third message in the hour"
    );
    ravelin.wait_for_event("rate_limit", WAIT, |e| {
        e["client"] == "127.0.0.6" && e["limit"] == "messages_per_address"
    });

    // The CLI beside the running gateway (through its admin socket).
    let list = ravelin.ban_list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["target"], "127.0.0.5/32");
    assert_eq!(list[0]["reason"], "relay_probing");
    assert_eq!(list[0]["count"], 1);
    let out = ravelin.command(&["ban", "add", "127.0.0.8", "--duration", "2h", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(added["reason"], "manual");
    assert_eq!(
        added["expires"].as_u64().unwrap() - added["created"].as_u64().unwrap(),
        7200
    );
    assert_banned("127.0.0.8", addr);
    ravelin.wait_for_event("ban_added", WAIT, |e| e["client"] == "127.0.0.8/32");

    ravelin.restart();
    assert_banned("127.0.0.5", addr);
    assert_banned("127.0.0.8", addr);
    assert_eq!(
        mail_code("127.0.0.6", addr),
        451,
        "the window survived the restart"
    );
    assert_eq!(
        mail_code("127.0.0.7", addr),
        250,
        "other clients are served"
    );

    let out = ravelin.command(&["ban", "remove", "127.0.0.5"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(first_reply("127.0.0.5", addr).code, 220, "ban lifted");

    // Without a running gateway the command opens the store itself.
    ravelin.terminate();
    let list = ravelin.ban_list();
    let targets: Vec<_> = list.iter().map(|b| b["target"].clone()).collect();
    assert_eq!(targets, ["127.0.0.8/32"]);
    let out = ravelin.command(&["ban", "add", "2001:db8::/48", "--reason", "harvesting"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = ravelin.command(&["ban", "add", "2001:db8::/47"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(ravelin.ban_list().len(), 2);
    ravelin.restart();
    assert_banned("127.0.0.8", addr);
}

fn redis_config(backend: SocketAddr, redis: &RedisServer) -> RavelinConfig {
    config(backend)
        .set("state", &format!("store = {}", toml_string(&redis.url(0))))
        .set("state", "timeout = \"300ms\"")
}

#[test]
fn two_nodes_share_bans_and_limits_through_redis_and_fail_open_without_it() {
    let sink = SmtpSink::start();
    let mut redis = RedisServer::start();
    let a = Ravelin::start(redis_config(sink.addr, &redis));
    let b = Ravelin::start(redis_config(sink.addr, &redis));

    // A ban earned by abuse on node A refuses the client on node B.
    probe_relay("127.0.0.5", a.addr());
    assert_banned("127.0.0.5", b.addr());
    b.wait_for_event("banned", WAIT, |e| {
        e["client"] == "127.0.0.5" && e["reason"] == "relay_probing"
    });
    assert_eq!(first_reply("127.0.0.9", b.addr()).code, 220);

    // A rate limit counted on A limits on B.
    assert_eq!(mail_code("127.0.0.6", a.addr()), 250);
    assert_eq!(mail_code("127.0.0.6", a.addr()), 250);
    assert_eq!(mail_code("127.0.0.6", b.addr()), 451);

    // Redis gone: mail is still accepted, and the outage is logged once.
    redis.stop();
    for n in 0..3 {
        let out = swaks_send(
            a.addr(),
            "s@example.net",
            "user@example.org",
            format!("Subject: during the outage {n}\r\n\r\nbody\r\n").as_bytes(),
            &["--local-interface", "127.0.0.6"],
        );
        assert!(out.status.success(), "{}", describe(&out));
    }
    a.wait_for_event("state_unavailable", WAIT, |_| true);
    assert_eq!(
        a.events("state_unavailable").len(),
        1,
        "logged once per outage"
    );
    sink.wait_for_messages(3, WAIT);

    // Redis back (empty: it keeps nothing): the limits apply again.
    redis.restart();
    for node in [&a, &b] {
        wait_until("the node to reach Redis again", WAIT, || {
            let _ = mail_code("127.0.0.20", node.addr());
            (!node.events("state_recovered").is_empty()).then_some(())
        });
    }
    assert_eq!(mail_code("127.0.0.10", a.addr()), 250);
    assert_eq!(mail_code("127.0.0.10", b.addr()), 250);
    assert_eq!(mail_code("127.0.0.10", a.addr()), 451);
    probe_relay("127.0.0.11", b.addr());
    assert_banned("127.0.0.11", a.addr());

    // The CLI reaches the shared list through either node's configuration.
    let list = b.ban_list();
    assert!(
        list.iter().any(|x| x["target"] == "127.0.0.11/32"),
        "{list:?}"
    );
}

/// A Redis password (in the store URL) works and appears nowhere: not in the log of a normal
/// run, nor in the log of an outage and a recovery, nor in `ravelin config check`'s answer to
/// a bad URL that carries it.
#[test]
fn the_redis_password_is_never_logged() {
    let password = "redis-pw-90210-secret";
    let sink = SmtpSink::start();
    let mut redis = RedisServer::start_with(Some(password));
    let gw = Ravelin::start(redis_config(sink.addr, &redis));
    probe_relay("127.0.0.5", gw.addr());
    assert_banned("127.0.0.5", gw.addr());
    redis.stop();
    assert_eq!(mail_code("127.0.0.6", gw.addr()), 250);
    gw.wait_for_event("state_unavailable", WAIT, |_| true);
    redis.restart();
    wait_until("the node to reach Redis again", WAIT, || {
        let _ = mail_code("127.0.0.20", gw.addr());
        (!gw.events("state_recovered").is_empty()).then_some(())
    });
    let log = gw.log_text();
    assert!(
        log.contains(&redis.addr.to_string()) || log.contains("redis"),
        "{log}"
    );
    assert!(
        !log.contains(password),
        "the Redis password is in the log:\n{log}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = config(sink.addr)
        .set("state", &format!("store = \"redis://:{password}@\""))
        .render(dir.path());
    fs::write(&bad, text).unwrap();
    let out = ravelin_cli(
        &["config", "check", "--config", &bad.to_string_lossy()],
        WAIT,
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a URL without a host passed: {said}");
    assert!(
        !said.contains(password),
        "config check shows the password: {said}"
    );
}

/// The Redis implementation of the store interface, against the real server.
#[test]
fn redis_store_operations() {
    let mut redis = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let s = Store::open_redis(&redis.url(1), "t:", Duration::from_secs(2)).expect("open");
        let ttl = Duration::from_millis(300);
        assert_eq!(s.incr("c", 1, ttl).await.unwrap(), 1);
        assert_eq!(s.incr("c", 2, ttl).await.unwrap(), 3);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(s.get("c").await.unwrap(), None);
        assert_eq!(s.incr("c", 1, ttl).await.unwrap(), 1);
        s.set("ban:a", b"A", None).await.unwrap();
        s.set("ban:b", b"B", Some(Duration::from_secs(60)))
            .await
            .unwrap();
        s.set("ban:c*", b"C", Some(Duration::from_millis(100)))
            .await
            .unwrap();
        s.set("other", b"O", None).await.unwrap();
        let keys = |v: Vec<ravelin_gateway::state::Entry>| {
            v.into_iter().map(|e| e.key).collect::<Vec<_>>()
        };
        assert_eq!(
            keys(s.list("ban:", 10).await.unwrap()),
            ["ban:a", "ban:b", "ban:c*"]
        );
        assert_eq!(keys(s.list("ban:", 1).await.unwrap()), ["ban:a"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(keys(s.list("ban:", 10).await.unwrap()), ["ban:a", "ban:b"]);
        assert_eq!(
            s.get_many(&["ban:b".into(), "nope".into()]).await.unwrap(),
            vec![Some(b"B".to_vec()), None]
        );
        assert!(s.delete("ban:a").await.unwrap());
        assert!(!s.delete("ban:a").await.unwrap());
        let w = Window::Sliding(Duration::from_secs(60));
        assert_eq!(s.hit("h", 2, w).await.unwrap(), 2);
        assert_eq!(s.hit("h", 1, w).await.unwrap(), 3);

        redis.stop();
        assert!(matches!(
            s.get("ban:b").await,
            Err(StateError::Unavailable(_))
        ));
        redis.restart();
        let back = async {
            loop {
                if s.set("k", b"v", None).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::time::timeout(WAIT, back)
            .await
            .expect("the store reconnects when Redis is back");
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    });
}

/// Where abuse is detected, it is recorded: pregreets, bare LF (protocol abuse) and sessions
/// closed for too many errors each ban the client after their threshold, and the ban shows
/// in the log with its reason.
#[test]
fn pregreet_protocol_abuse_and_errors_earn_bans() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(
        config(sink.addr)
            .set("screen", "greet_wait = \"300ms\"")
            .set("screen", "exempt = []")
            .set("dnsbl", "no_ptr = 0")
            .set("dnsbl", "ptr_not_confirmed = 0")
            .set("limits", "soft_errors = 9")
            .set("limits", "hard_errors = 10"),
    );
    let addr = ravelin.addr();

    for _ in 0..2 {
        let mut c = RawClient::connect_from(ip("127.0.0.12"), addr).expect("connect");
        c.send(b"EHLO early.test\r\n").expect("send");
        let reply = c.read_reply().expect("reply");
        assert_eq!(
            (reply.code, &reply.text()[..5]),
            (554, "5.5.1"),
            "{reply:?}"
        );
    }
    assert_banned("127.0.0.12", addr);

    for _ in 0..3 {
        let mut c = session_from("127.0.0.13", addr);
        c.send(b"MAIL FROM:<a@example.net>\n").expect("send");
        c.send(b"\r\n").expect("send");
        let reply = c.read_reply().expect("reply");
        assert_eq!(reply.code, 550, "{reply:?}");
        assert!(c.is_closed());
    }
    assert_banned("127.0.0.13", addr);

    for _ in 0..3 {
        let mut c = session_from("127.0.0.14", addr);
        for _ in 0..9 {
            assert_eq!(c.command("FROB").expect("reply").code, 500);
        }
        assert_eq!(c.command("FROB").expect("reply").code, 421);
        assert!(c.is_closed());
    }
    assert_banned("127.0.0.14", addr);
    assert_eq!(first_reply("127.0.0.15", addr).code, 220);

    let reasons: Vec<(String, String)> = ravelin
        .events("ban_added")
        .iter()
        .map(|e| {
            (
                e["client"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("127.0.0.12/32".into(), "pregreet".into()),
            ("127.0.0.13/32".into(), "protocol_abuse".into()),
            ("127.0.0.14/32".into(), "too_many_errors".into()),
        ]
    );
}

/// Greylisting: a new triplet gets 450 4.7.1, a retry after the delay passes, and the
/// client's /24 is then allowlisted for other senders and recipients.
#[test]
fn greylisting_defers_new_triplets_and_allowlists_clients_that_retry() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(
        config(sink.addr)
            .set("greylist", "enabled = true")
            .set("greylist", "delay = \"1s\"")
            .set("greylist", "exempt = []"),
    );
    let addr = ravelin.addr();
    let rcpt = |from_ip: &str, sender: &str, to: &str| {
        let mut c = session_from(from_ip, addr);
        assert_eq!(
            c.command(&format!("MAIL FROM:<{sender}>"))
                .expect("MAIL")
                .code,
            250
        );
        let reply = c.command(&format!("RCPT TO:<{to}>")).expect("RCPT");
        let _ = c.command("QUIT");
        reply
    };
    let first = rcpt("127.0.3.1", "a@example.net", "u@example.org");
    assert_eq!(
        (first.code, &first.text()[..5]),
        (450, "4.7.1"),
        "{first:?}"
    );
    assert_eq!(
        rcpt("127.0.3.1", "a@example.net", "u@example.org").code,
        450
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        rcpt("127.0.3.2", "a@example.net", "u@example.org").code,
        250
    );
    assert_eq!(
        rcpt("127.0.3.9", "b@example.com", "v@example.org").code,
        250
    );
    assert_eq!(
        rcpt("127.0.4.1", "b@example.com", "v@example.org").code,
        450
    );
    ravelin.wait_for_event("greylist", WAIT, |e| e["decision"] == "pass");
}

/// Connection limits at accept time: a third concurrent connection from one address, and a
/// connection past the per-address rate, get `421 4.7.0` and are closed; others are served.
#[test]
fn connection_concurrency_and_rate_are_limited_at_connect() {
    let sink = SmtpSink::start();
    let ravelin = Ravelin::start(
        config(sink.addr)
            .set("rate_limits", "connections_per_address = 2")
            .set("rate_limits", "connection_rate_per_address = 4")
            .set("rate_limits", "connection_window = \"1h\""),
    );
    let addr = ravelin.addr();
    let held = [
        session_from("127.0.0.30", addr),
        session_from("127.0.0.30", addr),
    ];
    let third = first_reply("127.0.0.30", addr);
    assert_eq!(
        (third.code, &third.text()[..5]),
        (421, "4.7.0"),
        "{third:?}"
    );
    assert_eq!(first_reply("127.0.0.31", addr).code, 220);
    drop(held);
    wait_until("the slots to be given back", WAIT, || {
        (ravelin.events("disconnect").len() >= 4).then_some(())
    });
    // Two connections counted so far (the one refused for concurrency was not): two more
    // are within the rate of four, the next is over it.
    for _ in 0..2 {
        assert_eq!(first_reply("127.0.0.30", addr).code, 220);
    }
    let over = first_reply("127.0.0.30", addr);
    assert_eq!((over.code, &over.text()[..5]), (421, "4.7.0"), "{over:?}");
    let limits: Vec<_> = ravelin
        .events("connection_limit")
        .iter()
        .map(|e| e["limit"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        limits,
        ["connections_per_address", "connection_rate_per_address"]
    );
}
