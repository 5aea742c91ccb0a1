//! End-to-end tests of the delivery agent against Postfix's smtp-sink on loopback.
//!
//! Each test starts its own smtp-sink on a free port with the behaviour it needs (rejecting
//! RCPT, closing with 421, no PIPELINING, slow greeting), delivers through
//! `ravelin_gateway::delivery`, and checks the outcomes and what smtp-sink wrote to its dump
//! files and counters. smtp-sink comes from Debian's postfix package, installed by
//! scripts/install-test-deps.sh; without it these tests fail.

use std::io::Cursor;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ravelin_gateway::delivery::{Delivery, DeliverySettings, Outcome, Route, TlsPolicy};

struct Sink {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    counters: PathBuf,
}

fn smtp_sink_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("smtp-sink"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("smtp-sink not found (Debian package postfix): run scripts/install-test-deps.sh")
        })
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

impl Sink {
    /// Starts smtp-sink with `extra` options, dumping each message into a fresh directory.
    fn start(extra: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("temporary directory");
        // smtp-sink drops to an unprivileged user when run as root; that user writes dumps.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod the dump directory");
        let counters = dir.path().join("counters");
        let out = std::fs::File::create(&counters).unwrap();
        let port = free_port();
        let mut cmd = Command::new(smtp_sink_binary());
        if nix::unistd::geteuid().is_root() {
            cmd.args(["-u", "nobody"]);
        }
        let dump = format!("{}/m.", dir.path().join("dump").display());
        cmd.args(["-c", "-d", &dump])
            .args(extra)
            .arg(format!("127.0.0.1:{port}"))
            .arg("50")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .expect("start smtp-sink: run scripts/install-test-deps.sh");
        let sink = Sink {
            child,
            port,
            dir,
            counters,
        };
        // Listening shows as the port being taken; connecting would count as a session.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpListener::bind(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "smtp-sink did not start listening on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sink
    }

    /// The dumped messages, waiting briefly for `n` of them to appear.
    async fn dumps(&self, n: usize) -> Vec<String> {
        let dump = self.dir.path().join("dump");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dump)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.sort();
            if files.len() >= n || Instant::now() > deadline {
                return files.iter().map(|f| read_lossy(f)).collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the dump directory is (or, within 5 s, becomes) empty. smtp-sink opens a dump
    /// file at MAIL and removes it when the transaction is aborted, which can happen a moment
    /// after our client has moved on.
    async fn no_dumps(&self) -> bool {
        let dump = self.dir.path().join("dump");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let empty = std::fs::read_dir(&dump)
                .map(|mut d| d.next().is_none())
                .unwrap_or(true);
            if empty || Instant::now() > deadline {
                return empty;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last `(sessions, quits, messages)` counters smtp-sink printed.
    fn counters(&self) -> (u32, u32, u32) {
        let text = read_lossy(&self.counters);
        let Some(pos) = text.rfind("sess=") else {
            return (0, 0, 0);
        };
        let nums: Vec<u32> = text[pos..]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .take(3)
            .map(|s| s.parse().unwrap())
            .collect();
        (nums[0], nums[1], nums[2])
    }

    /// Waits until the counters read `want`; returns what they last read.
    async fn wait_counters(&self, want: (u32, u32, u32)) -> (u32, u32, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c = self.counters();
            if c == want || Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

fn settings() -> DeliverySettings {
    DeliverySettings {
        helo_name: "gw.example.net".into(),
        connect_timeout: Duration::from_secs(3),
        command_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_connections_per_route: 4,
    }
}

fn route(ports: &[u16]) -> Route {
    Route {
        hosts: ports
            .iter()
            .map(|&p| ("127.0.0.1".to_string(), p))
            .collect(),
        tls: TlsPolicy::None,
        auth: None,
    }
}

fn agent(local: Route, remote: Option<Route>) -> Delivery {
    Delivery::new(settings(), local, vec!["example.org".into()], remote).expect("delivery settings")
}

/// A message with dot lines, 8-bit text and more than one body chunk.
fn message() -> Vec<u8> {
    let mut m = b"From: s@example.net\r\nTo: u@example.org\r\nSubject: test\r\n\r\n".to_vec();
    m.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\nnot the end\r\ncaf\xc3\xa9\r\n");
    for i in 0..3000 {
        m.extend_from_slice(format!("line {i} {}\r\n", "x".repeat(60)).as_bytes());
    }
    m
}

/// What smtp-sink writes for a message: LF line endings, dots unstuffed, a blank line after.
fn as_dumped(m: &[u8]) -> String {
    String::from_utf8_lossy(m).replace("\r\n", "\n") + "\n"
}

async fn send(d: &Delivery, rcpts: &[&str], body: &[u8]) -> Vec<(String, Outcome)> {
    let rcpts: Vec<String> = rcpts.iter().map(|r| r.to_string()).collect();
    d.deliver(
        "s@example.net",
        &rcpts,
        Cursor::new(body.to_vec()),
        body.len() as u64,
        "TESTQ1",
    )
    .await
}

fn delivered(o: &Outcome) -> bool {
    matches!(o, Outcome::Delivered(r) if r.code == 250)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_the_exact_message() {
    let sink = Sink::start(&[]);
    let d = agent(route(&[sink.port]), None);
    let body = message();
    let out = send(&d, &["u@example.org", "v@EXAMPLE.org"], &body).await;
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(_, o)| delivered(o)), "{out:?}");
    let dumps = sink.dumps(1).await;
    assert_eq!(dumps.len(), 1);
    let dump = &dumps[0];
    assert!(
        dump.ends_with(&as_dumped(&body)),
        "dump differs from the message"
    );
    assert!(
        dump.contains("X-Mail-Args: <s@example.net> BODY=8BITMIME\n"),
        "{dump:.400}"
    );
    assert!(dump.contains("X-Rcpt-Args: <u@example.org>\nX-Rcpt-Args: <v@EXAMPLE.org>\n"));
    assert!(dump.contains("X-Helo-Args: gw.example.net\n"));
}

#[tokio::test]
async fn pipelined_and_lockstep_sessions_deliver_alike() {
    for extra in [&[][..], &["-p"][..]] {
        let sink = Sink::start(extra);
        let d = agent(route(&[sink.port]), None);
        let body = b"Subject: x\r\n\r\nhello\r\n".to_vec();
        let out = send(
            &d,
            &["a@example.org", "b@example.org", "c@example.org"],
            &body,
        )
        .await;
        assert!(out.iter().all(|(_, o)| delivered(o)), "{extra:?}: {out:?}");
        let dump = &sink.dumps(1).await[0];
        assert_eq!(dump.matches("X-Rcpt-Args:").count(), 3);
        // 7-bit body: no BODY parameter.
        assert!(dump.contains("X-Mail-Args: <s@example.net>\n"));
        assert!(dump.ends_with(&as_dumped(&body)));
    }
}

#[tokio::test]
async fn fails_over_from_dead_and_refusing_hosts() {
    let closed = free_port();
    let greeting_4xx = Sink::start(&["-r", "connect"]);
    let closing_at_rcpt = Sink::start(&["-Q", "rcpt"]);
    let live = Sink::start(&[]);
    let d = agent(
        route(&[closed, greeting_4xx.port, closing_at_rcpt.port, live.port]),
        None,
    );
    let out = send(&d, &["u@example.org"], b"Subject: x\r\n\r\nfailover\r\n").await;
    assert!(delivered(&out[0].1), "{out:?}");
    assert_eq!(live.dumps(1).await.len(), 1);
    assert!(greeting_4xx.no_dumps().await);
    assert!(closing_at_rcpt.no_dumps().await);
}

#[tokio::test]
async fn slow_greeting_times_out_to_the_next_host() {
    let slow = Sink::start(&["-W", "connect:3"]);
    let live = Sink::start(&[]);
    let mut s = settings();
    s.command_timeout = Duration::from_millis(500);
    let d = Delivery::new(
        s,
        route(&[slow.port, live.port]),
        vec!["example.org".into()],
        None,
    )
    .unwrap();
    let started = Instant::now();
    let out = send(&d, &["u@example.org"], b"Subject: x\r\n\r\nslow\r\n").await;
    assert!(delivered(&out[0].1), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn every_host_failing_defers_with_the_last_error() {
    let refusing = Sink::start(&["-f", "connect"]);
    let d = agent(route(&[free_port(), refusing.port]), None);
    let out = send(&d, &["u@example.org", "v@example.org"], b"x\r\n").await;
    for (_, o) in &out {
        match o {
            Outcome::Transient(t) => {
                assert!(t.contains(&format!("127.0.0.1:{}", refusing.port)), "{t}");
                assert!(t.contains("500"), "{t}");
            }
            other => panic!("expected a deferral, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn recipient_rejections_are_permanent_or_transient() {
    let hard = Sink::start(&["-f", "rcpt"]);
    let d = agent(route(&[hard.port]), None);
    let out = send(&d, &["u@example.org"], b"x\r\n").await;
    assert!(
        matches!(&out[0].1, Outcome::Permanent(r) if r.code == 500),
        "{out:?}"
    );
    // smtp-sink opens a dump file at MAIL; no message text may reach it.
    assert!(hard.dumps(0).await.iter().all(|d| !d.contains("Received:")));

    let soft = Sink::start(&["-r", "rcpt"]);
    let d = agent(route(&[soft.port]), None);
    let out = send(&d, &["u@example.org"], b"x\r\n").await;
    assert!(
        matches!(&out[0].1, Outcome::Transient(t) if t.contains("450 4.3.0")),
        "{out:?}"
    );

    let end = Sink::start(&["-f", "."]);
    let d = agent(route(&[end.port]), None);
    let out = send(&d, &["u@example.org", "v@example.org"], b"x\r\n").await;
    assert!(
        out.iter()
            .all(|(_, o)| matches!(o, Outcome::Permanent(r) if r.code == 500)),
        "{out:?}"
    );

    let closing = Sink::start(&["-Q", "."]);
    let d = agent(route(&[closing.port]), None);
    let out = send(&d, &["u@example.org"], b"x\r\n").await;
    assert!(
        matches!(&out[0].1, Outcome::Transient(t) if t.contains("421")),
        "{out:?}"
    );
}

#[tokio::test]
async fn reuses_a_connection_and_expires_it() {
    let sink = Sink::start(&[]);
    let d = agent(route(&[sink.port]), None);
    for i in 0..3 {
        let out = send(
            &d,
            &["u@example.org"],
            format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
        assert!(delivered(&out[0].1), "{out:?}");
    }
    d.close_idle().await;
    assert_eq!(
        sink.wait_counters((1, 1, 3)).await,
        (1, 1, 3),
        "sessions, QUITs, messages"
    );

    let sink = Sink::start(&[]);
    let mut s = settings();
    s.idle_timeout = Duration::from_millis(100);
    let d = Delivery::new(s, route(&[sink.port]), vec!["example.org".into()], None).unwrap();
    let out = send(&d, &["u@example.org"], b"x\r\n").await;
    assert!(delivered(&out[0].1));
    // The idle connection is closed with QUIT once it has waited idle_timeout.
    assert_eq!(sink.wait_counters((1, 1, 1)).await, (1, 1, 1));
    let out = send(&d, &["u@example.org"], b"x\r\n").await;
    assert!(delivered(&out[0].1));
    d.close_idle().await;
    assert_eq!(sink.wait_counters((2, 2, 2)).await, (2, 2, 2));
}

#[tokio::test]
async fn parked_connections_share_one_expiry_task() {
    let sink = Sink::start(&[]);
    let d = agent(route(&[sink.port]), None);
    let metrics = tokio::runtime::Handle::current().metrics();
    for i in 0..50 {
        let out = send(
            &d,
            &["u@example.org"],
            format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
        assert!(delivered(&out[0].1), "{out:?}");
    }
    // Every delivery parked the connection again; one task expires them all.
    let alive = metrics.num_alive_tasks();
    assert!(
        alive <= 2,
        "{alive} tasks alive after 50 deliveries on one connection"
    );
    d.close_idle().await;
    assert_eq!(sink.wait_counters((1, 1, 50)).await, (1, 1, 50));
}

#[tokio::test]
async fn a_dead_pooled_connection_is_replaced() {
    // smtp-sink gives up on a client silent for a second.
    let sink = Sink::start(&["-t", "1"]);
    let d = agent(route(&[sink.port]), None);
    let out = send(&d, &["u@example.org"], b"x\r\n").await;
    assert!(delivered(&out[0].1), "{out:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = send(&d, &["v@example.org"], b"y\r\n").await;
    assert!(delivered(&out[0].1), "{out:?}");
    assert_eq!(sink.dumps(2).await.len(), 2);
    d.close_idle().await;
    assert_eq!(sink.wait_counters((2, 1, 2)).await, (2, 1, 2));
}

#[tokio::test]
async fn routes_local_and_remote_recipients_apart() {
    let backend = Sink::start(&[]);
    let smarthost = Sink::start(&[]);
    let body = message();
    let d = agent(route(&[backend.port]), Some(route(&[smarthost.port])));
    let out = send(
        &d,
        &["a@Example.Org.", "b@elsewhere.test", "c@example.org"],
        &body,
    )
    .await;
    assert!(out.iter().all(|(_, o)| delivered(o)), "{out:?}");
    let local = &backend.dumps(1).await[0];
    let remote = &smarthost.dumps(1).await[0];
    assert!(local.contains("X-Rcpt-Args: <a@Example.Org.>\nX-Rcpt-Args: <c@example.org>\n"));
    assert!(remote.contains("X-Rcpt-Args: <b@elsewhere.test>\nReceived:"));
    // The body is read again for the second route.
    assert!(local.ends_with(&as_dumped(&body)) && remote.ends_with(&as_dumped(&body)));

    let d = agent(route(&[backend.port]), None);
    let out = send(&d, &["b@elsewhere.test"], b"x\r\n").await;
    assert_eq!(
        out[0].1,
        Outcome::Transient("no route to remote domains: set outbound.smart_host".into())
    );
}

#[tokio::test]
async fn tls_policy_against_a_server_without_starttls() {
    let sink = Sink::start(&[]);
    let mut r = route(&[sink.port]);
    r.tls = TlsPolicy::May;
    let d = Delivery::new(settings(), r.clone(), vec!["example.org".into()], None).unwrap();
    let out = send(&d, &["u@example.org"], b"x\r\n").await;
    assert!(delivered(&out[0].1), "{out:?}");

    r.tls = TlsPolicy::Encrypt;
    let d = Delivery::new(settings(), r, vec!["example.org".into()], None).unwrap();
    let out = send(&d, &["u@example.org"], b"x\r\n").await;
    assert!(
        matches!(&out[0].1, Outcome::Transient(t) if t.contains("STARTTLS required but not offered")),
        "{out:?}"
    );
    assert_eq!(sink.dumps(1).await.len(), 1);
}

#[tokio::test]
async fn refuses_bad_addresses_without_sending() {
    let sink = Sink::start(&[]);
    let d = agent(route(&[sink.port]), None);
    let rcpts = vec!["u@example.org>\r\nRCPT TO:<evil@example.org".to_string()];
    let out = d
        .deliver(
            "s@example.net",
            &rcpts,
            Cursor::new(b"x\r\n".to_vec()),
            3,
            "TESTQ2",
        )
        .await;
    assert!(
        matches!(&out[0].1, Outcome::Permanent(r) if r.code == 553),
        "{out:?}"
    );
    let out = d
        .deliver(
            "s@example.net\r\nDATA",
            &["u@example.org".into()],
            Cursor::new(b"x\r\n".to_vec()),
            3,
            "TESTQ3",
        )
        .await;
    assert!(
        matches!(&out[0].1, Outcome::Permanent(r) if r.code == 553),
        "{out:?}"
    );
    assert_eq!(sink.counters(), (0, 0, 0));
}
