//! End-to-end proofs of the gateway's IPv6 prefix handling with real IPv6 clients: an IPv6
//! offender is counted and banned with its whole `[bans] ipv6_prefix` network (/64 by
//! default), the connections a /64 holds are counted together (`[rate_limits]
//! connections_per_prefix`), the connection rate counts the configured `[rate_limits]
//! ipv6_prefix`, greylisting takes a retry from the same /64, IPv6 networks in the screen's
//! allow and block files apply to every address in them, and a dual-stack `[::]` listener
//! treats its IPv4 clients as IPv4.
//!
//! The host has no IPv6 loopback addresses but ::1, so each test runs on a thread of its own
//! in a network namespace of its own ([`in_network_namespace`]: root only) whose `lo` carries
//! documentation addresses (2001:db8::/32): the gateway listens on [`SERVER`], and clients
//! bind a chosen source address before they connect. The gateway, the `ravelin ban` commands,
//! smtp-sink and swaks are started from that thread and so live in the namespace too. Not
//! root, the tests say so on stderr and pass without running (CI runs as root).

mod support;

use std::fs;
use std::net::SocketAddr;
use std::time::Duration;

use ravelin_dns::testing::TestDnsServer;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Where the gateway listens, in its own /64.
const SERVER: &str = "2001:db8:ffff::25";

/// Runs `body` in a new network namespace holding [`SERVER`] and `clients`; not root, says
/// that the test is skipped and returns.
fn in_namespace(clients: &[&str], body: impl FnOnce() + Send) {
    if !is_root() {
        eprintln!(
            "skipped: this test needs root to make its own network namespace (CI runs as root)"
        );
        return;
    }
    let mut addresses = vec![parse_ip(SERVER)];
    addresses.extend(clients.iter().map(|c| parse_ip(c)));
    in_network_namespace(&addresses, body);
}

/// A backend nobody listens on, for tests that deliver nothing.
const NO_BACKEND: &str = "127.0.0.1:9";

/// An inbound configuration relaying to `backend` (default [`NO_BACKEND`]) whose screen spares
/// the test clients (2001:db8::/32) the greet wait; bans and limits apply to them.
fn unscreened(backend: Option<SocketAddr>) -> RavelinConfig {
    let backend = backend.unwrap_or_else(|| NO_BACKEND.parse().expect("address"));
    RavelinConfig::inbound(backend).set("screen", "exempt = [\"2001:db8::/32\"]")
}

/// `config` listening on [`SERVER`], started; the gateway is checked to be in the
/// namespace of the calling thread.
fn start(config: RavelinConfig) -> Ravelin {
    let mut config = config;
    config.listeners[0].address = SocketAddr::new(parse_ip(SERVER), free_port());
    let ravelin = Ravelin::start(config);
    let pid = ravelin.pid().expect("running");
    assert_eq!(
        process_netns(pid),
        thread_netns(),
        "the gateway started from the namespaced thread is in its namespace"
    );
    ravelin
}

/// Relay probing by one address bans its /64: the other addresses of that /64 are refused
/// with `554 5.7.1`, one of the next /64 sends mail; `ravelin ban list` shows the /64. A ban
/// added by hand for a /64 works the same way, and one for a single address covers only it.
#[test]
fn an_ipv6_offender_is_banned_with_its_64() {
    let offender = "2001:db8:1:2::5";
    let neighbour = "2001:db8:1:2:ffff:ffff:ffff:fffe";
    let next_network = "2001:db8:1:3::5";
    let manual = ["2001:db8:1:4::1", "2001:db8:1:4::2"];
    let single = ["2001:db8:1:5::1", "2001:db8:1:5::2"];
    let clients = [
        offender,
        neighbour,
        next_network,
        manual[0],
        manual[1],
        single[0],
        single[1],
    ];
    in_namespace(&clients, || {
        let sink = SmtpSink::start();
        let ravelin =
            start(unscreened(Some(sink.addr)).extra("[bans.relay_probing]\nthreshold = 3"));
        let addr = ravelin.addr();

        probe_relay(offender, addr);
        let added = ravelin.wait_for_event("ban_added", WAIT, |_| true);
        assert_eq!(added["client"], "2001:db8:1:2::/64", "{added}");
        assert_eq!(added["reason"], "relay_probing");

        assert_banned(offender, addr);
        assert_banned(neighbour, addr);
        let banned = ravelin.wait_for_event("banned", WAIT, |e| e["client"] == neighbour);
        assert_eq!(banned["ban"], "2001:db8:1:2::/64", "{banned}");
        let out = swaks_send(
            addr,
            "s@example.net",
            "user@example.org",
            b"Subject: from the next /64\r\n\r\nbody\r\n",
            &["--local-interface", next_network],
        );
        assert!(out.status.success(), "{}", describe(&out));
        let delivered = sink.wait_for_messages(1, WAIT);
        let text = String::from_utf8_lossy(&delivered[0].message_crlf()).into_owned();
        assert!(
            text.contains(&format!("([IPv6:{next_network}])")),
            "the Received line names the IPv6 client: {text}"
        );

        let list = ravelin.ban_list();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["target"], "2001:db8:1:2::/64");
        assert_eq!(list[0]["reason"], "relay_probing");

        // By hand: a /64, and a single address (exactly what the operator wrote).
        for target in ["2001:db8:1:4::/64", single[0]] {
            let out = ravelin.command(&["ban", "add", target]);
            assert!(out.status.success(), "{}", describe(&out));
        }
        assert_banned(manual[0], addr);
        assert_banned(manual[1], addr);
        assert_banned(single[0], addr);
        assert_eq!(first_reply(single[1], addr).code, 220);
        let targets: Vec<_> = ravelin
            .ban_list()
            .iter()
            .map(|b| b["target"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            targets,
            [
                "2001:db8:1:2::/64",
                "2001:db8:1:4::/64",
                "2001:db8:1:5::1/128"
            ]
        );

        let out = ravelin.command(&["ban", "remove", "2001:db8:1:2::/64"]);
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(first_reply(neighbour, addr).code, 220, "ban lifted");
    });
}

/// Abuse is counted per ban target: relay attempts from three addresses of one /64, one
/// each, reach the threshold of three and ban the /64, so a client that changes its address
/// within its /64 after each attempt cannot probe for ever.
#[test]
fn abuse_from_the_addresses_of_one_64_adds_up() {
    let rotating: Vec<String> = (1..=4).map(|n| format!("2001:db8:3:1::{n}")).collect();
    let clients: Vec<&str> = rotating.iter().map(String::as_str).collect();
    in_namespace(&clients, || {
        let ravelin = start(unscreened(None).extra("[bans.relay_probing]\nthreshold = 3"));
        let addr = ravelin.addr();
        for (n, from) in rotating[..3].iter().enumerate() {
            let mut c = session_from(from, addr);
            assert_eq!(
                c.command("MAIL FROM:<p@probe.test>").expect("MAIL").code,
                250
            );
            let reply = c.command("RCPT TO:<someone@elsewhere.test>").expect("RCPT");
            assert_eq!(
                (reply.code, &reply.text()[..5]),
                (554, "5.7.1"),
                "{reply:?}"
            );
            if n < 2 {
                let _ = c.command("QUIT");
            } else {
                assert!(c.is_closed(), "the third attempt in the /64 bans it");
            }
        }
        let counts: Vec<_> = ravelin
            .events("abuse")
            .iter()
            .map(|e| e["count"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(counts, [1, 2, 3], "one count for the /64");
        let added = ravelin.wait_for_event("ban_added", WAIT, |_| true);
        assert_eq!(added["client"], "2001:db8:3:1::/64", "{added}");
        assert_banned(&rotating[3], addr);
    });
}

/// With two connections per address and three per prefix, three connections held by three
/// addresses of one /64 make a fourth address of that /64 get `421 4.7.0`; a client of
/// another /64 is served, and a slot given back serves the /64 again.
#[test]
fn connections_are_counted_per_64() {
    let same: Vec<String> = (1..=4).map(|n| format!("2001:db8:2:1::{n}")).collect();
    let other = "2001:db8:2:2::1";
    let mut clients: Vec<&str> = same.iter().map(String::as_str).collect();
    clients.push(other);
    in_namespace(&clients, || {
        let ravelin = start(
            unscreened(None)
                .set("rate_limits", "connections_per_address = 2")
                .set("rate_limits", "connections_per_prefix = 3"),
        );
        let addr = ravelin.addr();
        let mut held: Vec<RawClient> = same[..3].iter().map(|a| session_from(a, addr)).collect();
        let fourth = first_reply(&same[3], addr);
        assert_eq!(
            (fourth.code, &fourth.text()[..5]),
            (421, "4.7.0"),
            "{fourth:?}"
        );
        let limit = ravelin.wait_for_event("connection_limit", WAIT, |_| true);
        assert_eq!(limit["limit"], "connections_per_prefix", "{limit}");
        assert_eq!(limit["subject"], "2001:db8:2:1::/64", "{limit}");
        assert_eq!(limit["client"], same[3].as_str(), "{limit}");
        assert_eq!(first_reply(other, addr).code, 220, "another /64 is served");

        // One slot given back: the /64 is served again.
        let _ = held.pop().expect("held").command("QUIT");
        ravelin.wait_for_event("disconnect", WAIT, |e| e["client"] == same[2].as_str());
        assert_eq!(first_reply(&same[3], addr).code, 220);
        assert_eq!(ravelin.events("connection_limit").len(), 1);
    });
}

/// `[rate_limits] ipv6_prefix` sets the prefix that is counted: with /48 and two new
/// connections per prefix, addresses of two /64s of one /48 use up its rate and a third
/// /64 of it gets `421 4.7.0` (`connection_rate_per_prefix`), while the next /48 is served.
#[test]
fn the_connection_rate_counts_the_configured_ipv6_prefix() {
    let same_48 = ["2001:db8:4:1::1", "2001:db8:4:2::1", "2001:db8:4:3::1"];
    let next_48 = "2001:db8:5:1::1";
    let mut clients = same_48.to_vec();
    clients.push(next_48);
    in_namespace(&clients, || {
        let ravelin = start(
            unscreened(None)
                .set("rate_limits", "ipv6_prefix = 48")
                .set("rate_limits", "connection_rate_per_prefix = 2")
                .set("rate_limits", "connection_window = \"1h\""),
        );
        let addr = ravelin.addr();
        assert_eq!(first_reply(same_48[0], addr).code, 220);
        assert_eq!(first_reply(same_48[1], addr).code, 220);
        let over = first_reply(same_48[2], addr);
        assert_eq!((over.code, &over.text()[..5]), (421, "4.7.0"), "{over:?}");
        let limit = ravelin.wait_for_event("connection_limit", WAIT, |_| true);
        assert_eq!(limit["limit"], "connection_rate_per_prefix", "{limit}");
        assert_eq!(limit["subject"], "2001:db8:4::/48", "{limit}");
        assert_eq!(
            first_reply(next_48, addr).code,
            220,
            "the next /48 is served"
        );
    });
}

/// Greylisting counts a /64 as one client (`[greylist] ipv6_prefix`): a new triplet from
/// one address is deferred with `450 4.7.1`, and the retry after the delay passes from
/// another address of the /64, as a sender's pool of outbound addresses retries.
#[test]
fn greylisting_takes_a_retry_from_the_same_64() {
    let first = "2001:db8:6:1::1";
    let retry = "2001:db8:6:1::2";
    let other = "2001:db8:6:2::1";
    in_namespace(&[first, retry, other], || {
        let ravelin = start(
            unscreened(None)
                .set("greylist", "enabled = true")
                .set("greylist", "delay = \"1s\""),
        );
        let addr = ravelin.addr();
        let rcpt = |from: &str| {
            let mut c = session_from(from, addr);
            assert_eq!(
                c.command("MAIL FROM:<a@example.net>").expect("MAIL").code,
                250
            );
            let reply = c.command("RCPT TO:<u@example.org>").expect("RCPT");
            let _ = c.command("QUIT");
            reply
        };
        let deferred = rcpt(first);
        assert_eq!(
            (deferred.code, &deferred.text()[..5]),
            (450, "4.7.1"),
            "{deferred:?}"
        );
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(rcpt(other).code, 450, "another /64 is a new triplet");
        assert_eq!(rcpt(retry).code, 250, "the same /64 retried");
        ravelin.wait_for_event("greylist", WAIT, |e| {
            e["decision"] == "pass" && e["client"] == retry
        });
    });
}

/// IPv6 networks in the screen's files: a client in a blocked /48 is refused at connect with
/// `554 5.7.1` (even inside an allowed /32), one of the neighbouring /48 is served at once
/// (the allow file spares it the greet wait).
#[test]
fn screen_files_hold_ipv6_networks() {
    let blocked = "2001:db8:bad::7";
    let allowed = "2001:db8:bad1::7";
    in_namespace(&[blocked, allowed], || {
        let lists = tempfile::tempdir().expect("temporary directory");
        let allow = lists.path().join("allow.txt");
        let block = lists.path().join("block.txt");
        fs::write(&allow, "2001:db8::/32\n").expect("write the allow file");
        fs::write(&block, "# a hostile network\n2001:db8:bad::/48\n").expect("write");
        let ravelin = start(
            RavelinConfig::inbound(NO_BACKEND.parse().expect("address"))
                .set(
                    "screen",
                    &format!("allow_file = {}", toml_string(&allow.to_string_lossy())),
                )
                .set(
                    "screen",
                    &format!("block_file = {}", toml_string(&block.to_string_lossy())),
                ),
        );
        let addr = ravelin.addr();
        let refused = first_reply(blocked, addr);
        assert_eq!(refused.code, 554, "{refused:?}");
        assert_eq!(
            refused.text(),
            format!("5.7.1 Service unavailable; client [{blocked}] blocked by local policy")
        );
        ravelin.wait_for_event("blocked", WAIT, |e| e["client"] == blocked);
        assert_eq!(first_reply(allowed, addr).code, 220);
        assert!(
            ravelin.events("screen").is_empty(),
            "the allowed client did not wait: {:?}",
            ravelin.events("screen")
        );
    });
}

/// A listener on the IPv6 wildcard (`[::]:PORT`) is dual-stack: the kernel hands it IPv4
/// clients as `::ffff:a.b.c.d`. The gateway treats such a client as the IPv4 client it is:
/// SPF's `a` mechanism matches its A record (not an AAAA lookup that cannot), the Received
/// line names `[198.51.100.5]`, and the log names 198.51.100.5.
#[test]
fn a_dual_stack_listener_treats_ipv4_clients_as_ipv4() {
    let client = "198.51.100.5";
    in_namespace(&[client], || {
        let dns = TestDnsServer::start(&[
            ("test", ""),
            (
                "v4.test",
                "@ IN A 198.51.100.5\n@ IN TXT \"v=spf1 a -all\"\n",
            ),
        ])
        .expect("test DNS server");
        let sink = SmtpSink::start();
        let port = free_port();
        let mut config = RavelinConfig::inbound(sink.addr)
            .checks(dns.addr())
            .set("screen", "exempt = [\"198.51.100.0/24\"]");
        config.listeners[0].address = SocketAddr::new(parse_ip("::"), port);
        let ravelin = Ravelin::start(config);
        let out = swaks_send(
            SocketAddr::new(parse_ip("127.0.0.1"), port),
            "s@v4.test",
            "user@example.org",
            b"From: s@v4.test\r\nSubject: over IPv4 to [::]\r\n\r\nbody\r\n",
            &["--local-interface", client, "--helo", "v4.test"],
        );
        assert!(out.status.success(), "{}", describe(&out));
        let delivered = sink.wait_for_messages(1, WAIT);
        let text = String::from_utf8_lossy(&delivered[0].message_crlf()).into_owned();
        assert!(
            text.contains(&format!("([{client}])")),
            "the Received line names the IPv4 client: {text}"
        );
        assert!(
            text.contains("spf=pass") && !text.contains("spf=fail"),
            "SPF a matched the client: {text}"
        );
        let connect = ravelin.wait_for_event("connect", WAIT, |_| true);
        assert_eq!(connect["client"], client, "{connect}");
    });
}
