//! What the running gateway exposes: the sockets it listens on, the files it leaves in its
//! spool, and what its log reveals.
//!
//! - Nothing listens that is not configured: the TCP sockets the gateway process listens on
//!   (its descriptors matched against /proc/net/tcp and tcp6) are exactly its `[[listen]]`
//!   addresses, IPv4 and IPv6, before and after it has received and delivered mail.
//! - The spool is private: every directory is 0700 and every file (messages, delivery state)
//!   0600 or stricter, owned by `server.user` when started as root.
//! - The TLS private key never appears in the log, not even after TLS sessions.
//!
//! The privilege drop after binding a port below 1024 is proven in gateway.rs
//! (`runs_as_the_configured_user`).

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn only_the_configured_listeners_listen_and_the_key_is_never_logged() {
    let (_pki, files) = test_pki("mx.test.example");
    let sink = SmtpSink::start();
    let mut config = RavelinConfig::inbound(sink.addr)
        .listener("second", "inbound", "off")
        .listener("implicit", "inbound", "implicit")
        .certificate(&files);
    config.listeners[1].address = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), free_port());
    let want: BTreeSet<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let gw = Ravelin::start(config);
    let pid = gw.pid().expect("running");
    assert_eq!(listening_sockets(pid), want, "listening sockets at start");

    // Mail in over STARTTLS, over IPv6 and delivered out: still only those.
    let ca = files.ca.to_string_lossy().into_owned();
    for (server, extra) in [
        (
            gw.addr(),
            vec!["-tls", "--tls-verify", "--tls-ca-path", &ca],
        ),
        (gw.listener("second"), vec![]),
    ] {
        let out = swaks_send(
            server,
            "a@example.net",
            "user@example.org",
            b"Subject: exposure\r\n\r\nhello",
            &extra,
        );
        assert!(out.status.success(), "swaks: {}", describe(&out));
    }
    sink.wait_for_messages(2, WAIT);
    assert_eq!(listening_sockets(pid), want, "listening sockets after mail");

    // The private key: no line of its base64 body appears in the log.
    let key = fs::read_to_string(&files.key).expect("read the key");
    let log = gw.log_text();
    assert!(!gw.events("tls").is_empty(), "no TLS session was logged");
    for line in key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
    {
        assert!(!log.contains(line), "the log holds part of the private key");
    }
}

/// Every directory under `root` and `root` itself, and every file, with its mode and owner.
fn walk(root: &Path, out: &mut Vec<(String, bool, u32, u32)>) {
    let meta = fs::metadata(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    out.push((
        root.display().to_string(),
        meta.is_dir(),
        meta.mode(),
        meta.uid(),
    ));
    if meta.is_dir() {
        for entry in fs::read_dir(root).expect("read_dir").flatten() {
            walk(&entry.path(), out);
        }
    }
}

#[test]
fn spool_files_are_private() {
    // A next hop that is down: the message stays queued and gets a delivery state file.
    let down = free_addr();
    let gw = Ravelin::start(RavelinConfig::inbound(down).tls("off"));
    let out = swaks_send(
        gw.addr(),
        "a@example.net",
        "user@example.org",
        b"Subject: private\r\n\r\nnot for other users",
        &[],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));
    gw.wait_for_event("deferred", WAIT, |_| true);
    wait_until("a delivery state file", WAIT, || {
        fs::read_dir(gw.spool().join("state"))
            .ok()?
            .flatten()
            .next()
            .map(|_| ())
    });
    let mut entries = Vec::new();
    walk(gw.spool(), &mut entries);
    let owner = if is_root() {
        nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("a nobody account")
            .uid
            .as_raw()
    } else {
        nix::unistd::getuid().as_raw()
    };
    let mut files = 0;
    for (path, is_dir, mode, uid) in &entries {
        let perm = mode & 0o7777;
        if *is_dir {
            assert_eq!(perm, 0o700, "directory {path} has mode {perm:o}");
        } else {
            files += 1;
            assert_eq!(perm & 0o077, 0, "file {path} has mode {perm:o}");
        }
        assert_eq!(*uid, owner, "{path} belongs to uid {uid}");
    }
    assert!(files >= 2, "no message and state file found: {entries:?}");
    eprintln!("{} spool entries checked, {files} files", entries.len());
}

#[test]
fn metrics_count_what_the_log_says_and_need_the_token() {
    let sink = SmtpSink::start();
    let metrics = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics.token");
    let token = "s3cret-metrics-token-4711";
    fs::write(&token_file, format!("{token}\n")).unwrap();
    fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = RavelinConfig::inbound(sink.addr).tls("off").extra(&format!(
        "[metrics]\nlisten = \"{metrics}\"\ntoken_file = {}\n",
        toml_string(&token_file.to_string_lossy())
    ));
    let gw = Ravelin::start(config);
    wait_for_port(metrics, WAIT);
    let pid = gw.pid().expect("running");
    let want: BTreeSet<SocketAddr> = [gw.addr(), metrics].into_iter().collect();
    assert_eq!(
        listening_sockets(pid),
        want,
        "the SMTP listener and the metrics endpoint only"
    );

    // No token, a wrong one: 401; the right one: the page.
    assert_eq!(http_get(metrics, "/metrics", None).0, 401);
    assert_eq!(http_get(metrics, "/health", Some("wrong")).0, 401);
    assert_eq!(
        http_get(metrics, "/health", Some(token)),
        (200, "ok\n".into())
    );

    // One message delivered, one relay attempt refused.
    let out = swaks_send(
        gw.addr(),
        "a@example.net",
        "user@example.org",
        b"Subject: m\r\n\r\nx",
        &[],
    );
    assert!(out.status.success(), "swaks: {}", describe(&out));
    sink.wait_for_messages(1, WAIT);
    let mut c = RawClient::connect(gw.addr()).unwrap();
    c.read_reply().unwrap();
    c.command("EHLO client.example.net").unwrap();
    c.command("MAIL FROM:<a@example.net>").unwrap();
    assert!(
        c.command("RCPT TO:<victim@elsewhere.example>")
            .unwrap()
            .code
            >= 500
    );
    c.command("QUIT").unwrap();
    gw.wait_for_event("delivered", WAIT, |_| true);

    let (status, page) = http_get(metrics, "/metrics", Some(token));
    assert_eq!(status, 200, "{page}");
    let delivered = sample(
        &page,
        r#"ravelin_events_total{event="delivered",decision="",kind=""}"#,
    );
    assert_eq!(delivered, Some(1.0), "{page}");
    let rcpt_events = gw.events("rcpt");
    let refused = rcpt_events
        .iter()
        .filter(|e| e["decision"] == "reject")
        .count();
    assert!(refused >= 1, "no refused RCPT logged: {rcpt_events:?}");
    assert_eq!(
        sample(
            &page,
            r#"ravelin_events_total{event="rcpt",decision="reject",kind=""}"#
        ),
        Some(refused as f64),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"ravelin_queue_messages{state="queued"}"#),
        Some(0.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, r#"ravelin_queue_messages{state="quarantined"}"#),
        Some(0.0),
        "{page}"
    );
    assert_eq!(sample(&page, "ravelin_bans_active"), Some(0.0), "{page}");
    assert!(!gw.log_text().contains(token), "the token is in the log");
}
