//! End-to-end proofs of the screen and the reputation checks ([screen], [dnsbl]) against real
//! peers: `ravelin serve`, clients on distinct 127.0.0.x source addresses (all loopback on
//! Linux; the loopback exemption of `[screen] exempt` is cleared here), and an in-process
//! authoritative DNS server holding test block and allow lists and reverse zones, which the
//! gateway's `[dns] nameservers` points at.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ravelin_dns::testing::{Fault, TestDnsServer};
use support::*;

/// The greet wait of the tests that exercise it ...
const GREET_WAIT: &str = "3s";
/// ... what a client that waited it has certainly waited ...
const WAITED: Duration = Duration::from_millis(2900);
/// ... and what a client greeted at once (or not held by a silent DNS list) stays under.
const AT_ONCE: Duration = Duration::from_secs(2);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// Connects from `from` and reads the first reply, with the time it took.
fn first_reply(from: &str, addr: SocketAddr) -> (RawReply, Duration, RawClient) {
    let start = Instant::now();
    let mut c = RawClient::connect_from(ip(from), addr).expect("connect");
    let reply = c.read_reply().expect("a first reply");
    (reply, start.elapsed(), c)
}

/// A greeted client from `from` whose greeting came at once (no greet wait).
fn greeted_at_once(from: &str, addr: SocketAddr) -> RawClient {
    let (reply, took, c) = first_reply(from, addr);
    assert_eq!(reply.code, 220, "{from}: {reply:?}");
    assert!(took < AT_ONCE, "{from} waited {took:?}");
    c
}

/// Asserts that a client from `from` is refused at connect with `554 text` and closed.
fn refused_at_connect(from: &str, addr: SocketAddr, text: &str) {
    let (reply, _, mut c) = first_reply(from, addr);
    assert_eq!(
        (reply.code, reply.text().as_str()),
        (554, text),
        "{reply:?}"
    );
    assert!(c.is_closed(), "{from} is closed after the refusal");
}

/// An inbound gateway with the screen applying to loopback clients, the reverse-DNS weights
/// `[no_ptr, ptr_not_confirmed]`, and bans counting loopback too.
fn screened(sink: SocketAddr, greet_wait: &str, ptr: [i32; 2]) -> RavelinConfig {
    RavelinConfig::inbound(sink)
        .set("screen", &format!("greet_wait = \"{greet_wait}\""))
        .set("screen", "exempt = []")
        .set("bans", "exempt = []")
        .set("dnsbl", &format!("no_ptr = {}", ptr[0]))
        .set("dnsbl", &format!("ptr_not_confirmed = {}", ptr[1]))
}

/// Sends one message through a greeted client; the reply to the end of data.
fn send_mail(c: &mut RawClient, helo: &str) -> RawReply {
    assert_eq!(c.command(&format!("EHLO {helo}")).expect("EHLO").code, 250);
    let mail = c.command("MAIL FROM:<a@sender.test>").expect("MAIL");
    if mail.code != 250 {
        return mail;
    }
    assert_eq!(
        c.command("RCPT TO:<u@example.org>").expect("RCPT").code,
        250
    );
    assert_eq!(c.command("DATA").expect("DATA").code, 354);
    c.send(b"Subject: t\r\nFrom: a@sender.test\r\n\r\nhello\r\n.\r\n")
        .expect("data");
    c.read_reply().expect("end of data")
}

/// A client that talks before the banner is refused and the pregreet counts toward a ban; a
/// patient client waits once, gets through, and is not made to wait again (verdict cache).
#[test]
fn greet_wait_refuses_pregreet_and_remembers_patient_clients() {
    let sink = SmtpSink::start();
    let gw = Ravelin::start(screened(sink.addr, GREET_WAIT, [0, 0]));
    let addr = gw.addr();

    for _ in 0..2 {
        let mut c = RawClient::connect_from(ip("127.0.0.20"), addr).expect("connect");
        c.send(b"EHLO early.test\r\n").expect("send");
        let reply = c.read_reply().expect("reply");
        assert_eq!(reply.code, 554, "{reply:?}");
        assert!(reply.text().starts_with("5.5.1"), "{reply:?}");
    }
    gw.wait_for_event("pregreet", Duration::from_secs(5), |v| {
        v["client"] == "127.0.0.20"
    });
    // Two pregreets are the default [bans.pregreet] threshold: now refused at connect.
    let (reply, took, _) = first_reply("127.0.0.20", addr);
    assert_eq!(reply.code, 554, "{reply:?}");
    assert!(
        took < Duration::from_secs(1),
        "a banned client is refused at once"
    );

    let (reply, took, mut c) = first_reply("127.0.0.21", addr);
    assert_eq!(reply.code, 220, "{reply:?}");
    assert!(
        took >= WAITED,
        "the first connection waits greet_wait, took {took:?}"
    );
    assert_eq!(send_mail(&mut c, "patient.client.test").code, 250);
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);
    let mut c = greeted_at_once("127.0.0.21", addr);
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);
    // Another client is still screened.
    let (_, took, _) = first_reply("127.0.0.22", addr);
    assert!(took >= WAITED, "took {took:?}");
    // One that hangs up during the wait has not passed: it waits again next time.
    drop(RawClient::connect_from(ip("127.0.0.24"), addr).expect("connect"));
    gw.wait_for_event("disconnect", Duration::from_secs(10), |v| {
        v["client"] == "127.0.0.24"
    });
    let (reply, took, _) = first_reply("127.0.0.24", addr);
    assert_eq!(reply.code, 220, "{reply:?}");
    assert!(took >= WAITED, "took {took:?}");
    sink.wait_for_messages(1, Duration::from_secs(20));
}

/// The loopback exemption is the default: a local client is greeted at once.
#[test]
fn loopback_is_exempt_by_default() {
    let sink = SmtpSink::start();
    let gw = Ravelin::start(RavelinConfig::inbound(sink.addr).set("screen", "greet_wait = \"3s\""));
    let mut c = greeted_at_once("127.0.0.23", gw.addr());
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);
}

/// Block-listed clients are refused at connect, allow-listed ones skip the greet wait; both
/// files are read again when they change.
#[test]
fn block_and_allow_files_apply_and_reload() {
    let sink = SmtpSink::start();
    let lists = tempfile::tempdir().expect("tempdir");
    let block = lists.path().join("block.cidr");
    let allow = lists.path().join("allow.cidr");
    std::fs::write(&block, "# bad hosts\n127.0.0.30/32\n").expect("write");
    std::fs::write(&allow, "127.0.0.31 # partner\n").expect("write");
    let gw = Ravelin::start(
        screened(sink.addr, GREET_WAIT, [0, 0])
            .set(
                "screen",
                &format!("block_file = {}", toml_string(&block.to_string_lossy())),
            )
            .set(
                "screen",
                &format!("allow_file = {}", toml_string(&allow.to_string_lossy())),
            ),
    );
    let addr = gw.addr();

    refused_at_connect(
        "127.0.0.30",
        addr,
        "5.7.1 Service unavailable; client [127.0.0.30] blocked by local policy",
    );
    gw.wait_for_event("blocked", Duration::from_secs(5), |v| {
        v["client"] == "127.0.0.30"
    });

    let mut c = greeted_at_once("127.0.0.31", addr);
    assert_eq!(send_mail(&mut c, "partner.test").code, 250);
    let (_, took, _) = first_reply("127.0.0.32", addr);
    assert!(took >= WAITED, "took {took:?}");

    // Swap: .32 blocked, .30 no longer; .33 allowed.
    std::fs::write(&block, "127.0.0.32\n").expect("write");
    std::fs::write(&allow, "127.0.0.31\n127.0.0.33/32\n").expect("write");
    std::thread::sleep(Duration::from_millis(1200));
    let (reply, _, _) = first_reply("127.0.0.32", addr);
    assert_eq!(reply.code, 554, "{reply:?}");
    let mut c = greeted_at_once("127.0.0.33", addr);
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);
    let (reply, _, _) = first_reply("127.0.0.30", addr);
    assert_eq!(reply.code, 220, "{reply:?}");

    // A bad file keeps the list in force and is logged.
    std::fs::write(&block, "127.0.0.32\nnot-a-network\n").expect("write");
    std::thread::sleep(Duration::from_millis(1200));
    let (reply, _, _) = first_reply("127.0.0.32", addr);
    assert_eq!(reply.code, 554, "{reply:?}");
    gw.wait_for_event("screen_list_error", Duration::from_secs(5), |v| {
        v["reason"].as_str().is_some_and(|r| r.contains("line 2"))
    });
    sink.wait_for_messages(1, Duration::from_secs(20));
}

/// Connections per /24: two held from 127.0.5.x, the third from that prefix refused with
/// 421, a client of another prefix served; a slot given back serves the third.
#[test]
fn connections_per_prefix_are_limited() {
    let sink = SmtpSink::start();
    let gw = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .set("rate_limits", "exempt = []")
            .set("rate_limits", "connections_per_prefix = 2"),
    );
    let addr = gw.addr();
    let a = greeted_at_once("127.0.5.1", addr);
    let _b = greeted_at_once("127.0.5.2", addr);
    let (reply, _, _) = first_reply("127.0.5.3", addr);
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(reply.text().starts_with("4.7.0"), "{reply:?}");
    gw.wait_for_event("connection_limit", Duration::from_secs(5), |v| {
        v["limit"] == "connections_per_prefix" && v["subject"] == "127.0.5.0/24"
    });
    let _other = greeted_at_once("127.0.6.1", addr);
    drop(a);
    wait_until("the slot is given back", Duration::from_secs(10), || {
        let (reply, _, _) = first_reply("127.0.5.3", addr);
        (reply.code == 220).then_some(())
    });
}

/// The test lists: bl.test lists 127.0.0.2 and 127.0.0.4 (code 127.0.0.2) and answers the
/// Spamhaus "public resolver" error code for 127.0.0.3 and 127.0.0.9; wl.test allow-lists 127.0.0.4;
/// slow.test never answers for 127.0.0.5; reverse DNS of 127.0.0.6 (confirmed), 127.0.0.7
/// (PTR pointing elsewhere), none for 127.0.0.8.
fn dns() -> TestDnsServer {
    let dns = TestDnsServer::start(&[
        (
            "bl.test",
            "2.0.0.127 A 127.0.0.2\n\
             4.0.0.127 A 127.0.0.2\n\
             3.0.0.127 A 127.255.255.254\n\
             9.0.0.127 A 127.255.255.254\n",
        ),
        ("wl.test", "4.0.0.127 A 127.0.10.2\n"),
        ("slow.test", "99.0.0.127 A 127.0.0.2\n"),
        (
            "0.0.127.in-addr.arpa",
            "6 PTR host6.client.test.\n7 PTR host7.client.test.\n",
        ),
        ("client.test", "host6 A 127.0.0.6\nhost7 A 192.0.2.7\n"),
    ])
    .expect("test DNS server");
    dns.set_fault("5.0.0.127.slow.test", Some(Fault::Silent));
    dns
}

fn with_lists(sink: SocketAddr, dns: &TestDnsServer, ptr: [i32; 2]) -> RavelinConfig {
    screened(sink, "0s", ptr)
        .set("dns", &format!("nameservers = [\"{}\"]", dns.addr()))
        .set("dns", "timeout = \"3s\"")
        .set("dns", "attempts = 1")
        .set(
            "dnsbl",
            "sites = [\"bl.test=127.0.0.[2..11]*3\", \"wl.test=127.0.[0..255].[1..3]*-4\", \"slow.test*3\"]",
        )
        .set("dnsbl", "timeout = \"3s\"")
}

/// `[monitor]` looks the gateway's own addresses up at start: a listing is an error line and
/// a metric at 1, a clean address a metric at 0, a list error code or a silent list a warning
/// and never a listing; one summary line counts them.
#[test]
fn the_monitor_reports_the_gateways_own_listed_addresses() {
    let sink = SmtpSink::start();
    let dns = dns();
    let metrics = free_addr();
    let gw = Ravelin::start(
        screened(sink.addr, "0s", [0, 0])
            .set("dns", &format!("nameservers = [\"{}\"]", dns.addr()))
            .set("dns", "timeout = \"2s\"")
            .set("dns", "attempts = 1")
            .set(
                "monitor",
                "addresses = [\"127.0.0.2\", \"127.0.0.3\", \"127.0.0.5\", \"127.0.0.10\"]",
            )
            .set("monitor", "blocklists = [\"bl.test\", \"slow.test\"]")
            .set("metrics", &format!("listen = \"{metrics}\"")),
    );
    let summary = gw.wait_for_event("own_address_check", Duration::from_secs(20), |e| {
        e["level"] == "info"
    });
    assert_eq!(summary["addresses"], 4, "{summary}");
    assert_eq!(summary["listed"], 1, "{summary}");
    assert_eq!(summary["unknown"], 2, "{summary}");
    assert_eq!(summary["clean"], 5, "{summary}");
    let listed = gw.events("own_address_listed");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["address"], "127.0.0.2");
    assert_eq!(listed[0]["list"], "bl.test");
    assert_eq!(listed[0]["level"], "error");
    let warnings: Vec<(String, String)> = gw
        .events("own_address_check")
        .iter()
        .filter(|e| e["level"] == "warn")
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|(a, o)| a == "127.0.0.3" && o.starts_with("list error 127.255.255.254")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|(a, o)| a == "127.0.0.5" && o.starts_with("no answer")),
        "{warnings:?}"
    );
    let (status, page) = http_get(metrics, "/metrics", None);
    assert_eq!(status, 200, "{page}");
    let gauge = |address: &str, list: &str| {
        sample(
            &page,
            &format!(r#"ravelin_own_address_listed{{address="{address}",list="{list}"}}"#),
        )
    };
    assert_eq!(gauge("127.0.0.2", "bl.test"), Some(1.0), "{page}");
    assert_eq!(gauge("127.0.0.10", "bl.test"), Some(0.0), "{page}");
    assert_eq!(
        gauge("127.0.0.3", "bl.test"),
        None,
        "a list error is no answer: {page}"
    );
}

/// A webhook receiver on loopback: answers 200 to every request and keeps what it got.
struct WebhookReceiver {
    addr: SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl WebhookReceiver {
    fn start() -> WebhookReceiver {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then as many body bytes as Content-Length says.
                while !ravelin_dns::testing::request_complete(&request) {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&request).to_string());
            }
        });
        WebhookReceiver { addr, requests }
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests.lock().unwrap().clone();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `[alerts]`: the error lines of the start — the gateway's own address listed, its
/// certificate 10 days from expiry — are POSTed to the webhook as JSON with the bearer token
/// of `webhook_token_file`; neither the token nor the webhook's path is logged.
#[test]
fn error_lines_are_sent_to_the_alert_webhook() {
    let sink = SmtpSink::start();
    let dns = dns();
    let hook = WebhookReceiver::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("webhook.token");
    let token = "webhook-token-0451";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let pki_dir = daemon_tempdir();
    let pki = ravelin_tls::testing::TestPki::expiring_in("mx.test.example", 10)
        .expect("test PKI")
        .write_to(pki_dir.path())
        .expect("write the test PKI");
    let gw = Ravelin::start(
        screened(sink.addr, "0s", [0, 0])
            .certificate(&pki)
            .set("dns", &format!("nameservers = [\"{}\"]", dns.addr()))
            .set("dns", "attempts = 1")
            .set("monitor", "addresses = [\"127.0.0.2\"]")
            .set("monitor", "blocklists = [\"bl.test\"]")
            .set(
                "alerts",
                &format!("webhook = \"http://{}/hooks/ravelin\"", hook.addr),
            )
            .set(
                "alerts",
                &format!(
                    "webhook_token_file = {}",
                    toml_string(&token_file.to_string_lossy())
                ),
            ),
    );
    gw.wait_for_event("own_address_listed", Duration::from_secs(10), |_| true);
    hook.wait_for(2, Duration::from_secs(10));
    // Time for a third alert to arrive, were one sent.
    std::thread::sleep(Duration::from_millis(500));
    let got = hook.wait_for(2, Duration::ZERO);
    assert_eq!(got.len(), 2, "two error lines, two alerts: {got:?}");
    let certificate = got
        .iter()
        .find(|r| r.contains("tls_certificate"))
        .unwrap_or_else(|| panic!("no certificate alert: {got:?}"));
    assert!(
        certificate.contains("expires in less than 30 days"),
        "{certificate}"
    );
    let listed = got
        .iter()
        .find(|r| r.contains("own_address_listed"))
        .unwrap_or_else(|| panic!("no blocklist alert: {got:?}"));
    let (head, body) = listed.split_once("\r\n\r\n").expect("an HTTP request");
    assert!(
        head.starts_with("POST /hooks/ravelin HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Authorization: Bearer {token}")),
        "{head}"
    );
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let alert: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(alert["event"]["event"], "own_address_listed", "{alert}");
    assert_eq!(alert["event"]["address"], "127.0.0.2", "{alert}");
    assert!(
        alert["text"]
            .as_str()
            .is_some_and(|t| t.contains("own_address_listed") && t.contains("127.0.0.2")),
        "{alert}"
    );
    assert!(!gw.log_text().contains(token), "the token is in the log");
    assert!(
        !gw.log_text().contains("/hooks/ravelin"),
        "the webhook's path is in the log"
    );
}

/// Listed → refused at connect with Postfix's text; not listed → served; an error code is
/// not a listing (and is logged once); the allow list's negative weight rescues; a list that
/// does not answer never blocks.
#[test]
fn dnsbl_scores_listed_clients() {
    let sink = SmtpSink::start();
    let dns = dns();
    let gw = Ravelin::start(with_lists(sink.addr, &dns, [0, 0]));
    let addr = gw.addr();

    refused_at_connect(
        "127.0.0.2",
        addr,
        "5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test",
    );
    let ev = gw.wait_for_event("dnsbl", Duration::from_secs(5), |v| {
        v["client"] == "127.0.0.2"
    });
    assert_eq!(ev["decision"], "reject");
    assert_eq!(ev["score"], 3);
    assert_eq!(ev["zones"], "bl.test(+3)");

    let (reply, took, mut c) = first_reply("127.0.0.10", addr);
    assert_eq!(reply.code, 220, "{reply:?}");
    assert!(took < AT_ONCE, "not held by the silent list: {took:?}");
    assert_eq!(send_mail(&mut c, "clean.client.test").code, 250);
    // Its score is remembered: the next connection asks no list.
    let asked = dns.queries();
    let (reply, _, _) = first_reply("127.0.0.10", addr);
    assert_eq!(reply.code, 220, "{reply:?}");
    gw.wait_for_event("dnsbl", Duration::from_secs(5), |v| {
        v["client"] == "127.0.0.10" && v["cached"] == true
    });
    assert_eq!(dns.queries(), asked);

    for client in ["127.0.0.3", "127.0.0.9"] {
        let (reply, _, mut c) = first_reply(client, addr);
        assert_eq!(reply.code, 220, "an error code is not a listing: {reply:?}");
        assert_eq!(c.command("QUIT").expect("QUIT").code, 221);
        gw.wait_for_event("dnsbl", Duration::from_secs(5), |v| v["client"] == client);
    }
    // Two lookups met the error code; it is logged once.
    let misconfigured = gw.events("dnsbl_misconfigured");
    assert_eq!(misconfigured.len(), 1, "{misconfigured:?}");
    assert_eq!(misconfigured[0]["zone"], "bl.test");
    assert_eq!(misconfigured[0]["code"], "127.255.255.254");

    let (reply, _, mut c) = first_reply("127.0.0.4", addr);
    assert_eq!(reply.code, 220, "the allow list rescues: {reply:?}");
    let ev = gw.wait_for_event("dnsbl", Duration::from_secs(5), |v| {
        v["client"] == "127.0.0.4"
    });
    assert_eq!(ev["score"], -1);
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);

    let (reply, took, mut c) = first_reply("127.0.0.5", addr);
    assert_eq!(reply.code, 220, "a silent list never blocks: {reply:?}");
    assert!(
        took < Duration::from_secs(6),
        "bounded by [dnsbl] timeout: {took:?}"
    );
    let ev = gw.wait_for_event("dnsbl", Duration::from_secs(5), |v| {
        v["client"] == "127.0.0.5"
    });
    assert_eq!(ev["unanswered"], "slow.test");
    assert_eq!(c.command("QUIT").expect("QUIT").code, 221);
    sink.wait_for_messages(1, Duration::from_secs(20));
}

/// Reverse DNS and HELO weights: a PTR that does not resolve back scores at connect; a HELO
/// claiming our name scores at MAIL; a confirmed client with a proper HELO is served.
#[test]
fn reverse_dns_and_helo_add_to_the_score() {
    let sink = SmtpSink::start();
    let dns = dns();
    let gw = Ravelin::start(with_lists(sink.addr, &dns, [2, 3]));
    let addr = gw.addr();

    refused_at_connect(
        "127.0.0.7",
        addr,
        "5.7.1 Service unavailable; client [127.0.0.7] blocked: ptr_not_confirmed",
    );

    // No PTR (2) + a HELO that is not a FQDN (1) reaches 3 at MAIL.
    let (reply, _, mut c) = first_reply("127.0.0.8", addr);
    assert_eq!(reply.code, 220, "{reply:?}");
    let mail = send_mail(&mut c, "localhost");
    assert_eq!(mail.code, 554, "{mail:?}");
    assert_eq!(
        mail.text(),
        "5.7.1 Service unavailable; client [127.0.0.8] blocked: no_ptr, helo_not_fqdn"
    );
    // A proper name afterwards is served.
    assert_eq!(send_mail(&mut c, "mail.client8.test").code, 250);

    let (reply, _, mut c) = first_reply("127.0.0.6", addr);
    assert_eq!(reply.code, 220, "{reply:?}");
    let mail = send_mail(&mut c, "mx.test.example");
    assert_eq!(mail.code, 554, "HELO with our own name: {mail:?}");
    assert!(mail.text().ends_with("blocked: helo_our_name"), "{mail:?}");
    assert_eq!(send_mail(&mut c, "host6.client.test").code, 250);
    sink.wait_for_messages(2, Duration::from_secs(20));
}
