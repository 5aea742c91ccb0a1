//! Overload end to end: clients that hold connections, floods of connections, and input that
//! never ends. The gateway must give each the reply the design promises, keep serving
//! legitimate clients (or answer `421` when its connection limit is truly reached), and keep
//! its memory bounded.
//!
//! - Slowloris: clients that send one byte every two seconds fill a listener's
//!   `max_connections`; while a slot is free a legitimate client is served, when none is the
//!   next client gets `421 4.7.0` at once; `limits.command_timeout` ends the slow sessions
//!   with `421 4.4.2` although they never stop sending (it bounds the whole command, so a
//!   drip does not restart it), long before `limits.session_timeout`.
//! - Slow data: a client that drips its message below `limits.min_data_rate` is ended with
//!   `421 4.4.2` soon after `data_timeout`; one above the rate goes on and is served.
//! - Floods: many connections from one address, then from many addresses (127.0.0.x): exactly
//!   `max_connections` are greeted, every other one gets `421 4.7.0` and is closed; once the
//!   flood ends a legitimate client is served.
//! - Recipients: 150 pipelined recipients get 100 × 250 and 50 × `452 4.5.3` and the message
//!   goes to the first 100, without the session being closed; 10 000 get 100 × 250, `452 4.5.3`
//!   for the overshoot, then `421` once the error limit is reached.
//! - Endless input: a command line without CRLF (10 MiB) is dropped as it arrives and answered
//!   `500 5.5.2` once it ends; DATA past `message_size` (20 MiB against 1 MiB) is not stored
//!   (the spool file never grows past the limit) and gets `552 5.3.4`, then the session is
//!   still framed; so do a header block without end and a 100 KiB header line (`550 5.6.0`).
//!
//! After each test the gateway's peak resident set (VmHWM in /proc/PID/status) must stay under
//! [`PEAK_LIMIT_KIB`]; the measured peaks are printed and recorded in docs/TESTING.md.

mod support;

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(30);
/// A generous bound on the gateway's peak resident set under every overload here.
const PEAK_LIMIT_KIB: u64 = 200 * 1024;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Reads the gateway's peak resident set, prints it and checks the bound.
fn assert_peak_memory(gw: &Ravelin, what: &str) -> u64 {
    let pid = gw.pid().expect("ravelin is running");
    let peak = proc_status_kib(pid, "VmHWM");
    eprintln!(
        "peak memory (VmHWM) after {what}: {peak} KiB ({:.1} MiB)",
        peak as f64 / 1024.0
    );
    assert!(
        peak < PEAK_LIMIT_KIB,
        "{what}: peak resident set {peak} KiB exceeds {PEAK_LIMIT_KIB} KiB"
    );
    assert!(
        !gw.log_text().contains("panicked"),
        "the gateway panicked:\n{}",
        tail(&gw.log_path(), 30)
    );
    peak
}

/// Connects from `from`, reads the first reply.
fn connect(from: IpAddr, addr: SocketAddr) -> (RawClient, RawReply) {
    let mut c = RawClient::connect_from(from, addr).expect("connect to ravelin");
    let r = c.read_reply().expect("first reply");
    (c, r)
}

/// A legitimate client sends one message and gets its 250.
fn send_one(addr: SocketAddr, subject: &str) -> RawReply {
    let (mut c, greeting) = connect(loopback(1), addr);
    assert_eq!(greeting.code, 220, "{greeting:?}");
    for (line, want) in [
        ("EHLO legit.example.net".to_string(), 250),
        ("MAIL FROM:<legit@example.net>".to_string(), 250),
        ("RCPT TO:<user@example.org>".to_string(), 250),
        ("DATA".to_string(), 354),
    ] {
        let r = c.command(&line).expect("reply");
        assert_eq!(r.code, want, "{line} -> {r:?}");
    }
    c.send(format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n").as_bytes())
        .expect("message");
    let r = c.read_reply().expect("reply to the end of data");
    let _ = c.command("QUIT");
    r
}

/// Whether a reply is waiting on `c` within `wait`, without blocking longer; `Some(reply)`
/// when one arrived, `None` while the connection is open and silent.
fn poll_reply(c: &mut RawClient, wait: Duration) -> Option<RawReply> {
    c.stream()
        .set_read_timeout(Some(wait))
        .expect("read timeout");
    let r = match c.read_reply() {
        Ok(r) => Some(r),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("the connection failed instead of answering: {e}"),
    };
    c.stream()
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    r
}

fn incoming_sizes(gw: &Ravelin) -> Vec<u64> {
    fs::read_dir(gw.spool().join("incoming"))
        .expect("read incoming/")
        .filter_map(|e| e.ok()?.metadata().ok().map(|m| m.len()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Slowloris

#[test]
fn slowloris_clients_fill_the_limit_then_time_out() {
    const MAX: usize = 20;
    let sink = SmtpSink::start();
    let gw = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .tls("off")
            .listen_set("mx", &format!("max_connections = {MAX}"))
            .set("limits", "command_timeout = \"10s\"")
            .set("limits", "session_timeout = \"10m\""),
    );
    let addr = gw.addr();
    let script = b"EHLO slowloris.example.net\r\n";
    let started = Instant::now();
    let mut slow: Vec<(RawClient, usize)> = (0..MAX - 1)
        .map(|i| {
            let (c, r) = connect(loopback(10 + i as u8), addr);
            assert_eq!(r.code, 220, "{r:?}");
            (c, 0)
        })
        .collect();
    let drip = |slow: &mut Vec<(RawClient, usize)>| {
        for (c, sent) in slow.iter_mut() {
            let _ = c.send(&script[*sent % (script.len() - 2)..][..1]);
            *sent += 1;
        }
    };
    drip(&mut slow);

    // One slot is free: a legitimate client is served.
    let r = send_one(addr, "between slowloris clients");
    assert_eq!(r.code, 250, "{r:?}");
    sink.wait_for_messages(1, WAIT);

    // The last slot taken by another slow client: the next one gets 421 at once.
    let (c, r) = connect(loopback(9), addr);
    assert_eq!(r.code, 220, "{r:?}");
    slow.push((c, 0));
    let refused = wait_until("a 421 once the limit is reached", WAIT, || {
        let (mut c, r) = connect(loopback(1), addr);
        if r.code == 421 {
            assert!(c.is_closed(), "421 without closing");
            return Some(r);
        }
        None
    });
    assert!(
        refused.text().starts_with("4.7.0") && refused.text().contains("too many connections"),
        "{refused:?}"
    );

    // They never stop dripping (a byte every 2 s), yet none completes a command within
    // command_timeout (10 s): each is ended then, not at session_timeout (10 min).
    let mut ended = Vec::new();
    while !slow.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "slow clients still connected after 45 s: command_timeout did not end them"
        );
        thread::sleep(Duration::from_secs(2));
        let mut i = 0;
        while i < slow.len() {
            match poll_reply(&mut slow[i].0, Duration::from_millis(10)) {
                Some(r) => {
                    ended.push(r);
                    let (mut c, _) = slow.swap_remove(i);
                    assert!(c.is_closed(), "421 without closing");
                }
                None => i += 1,
            }
        }
        drip(&mut slow);
    }
    assert_eq!(ended.len(), MAX);
    for r in &ended {
        assert_eq!(r.code, 421, "{r:?}");
        assert!(r.text().starts_with("4.4.2"), "{r:?}");
    }
    let timeouts = gw
        .events("disconnect")
        .into_iter()
        .filter(|e| e["reason"] == "timeout")
        .count();
    assert_eq!(timeouts, MAX, "each slow session logged as a timeout");
    assert!(!gw.events("connection_limit").is_empty());

    // Slots are free again.
    let r = send_one(addr, "after the slowloris clients");
    assert_eq!(r.code, 250, "{r:?}");
    sink.wait_for_messages(2, WAIT);
    assert_peak_memory(&gw, "20 slowloris clients");
}

/// Message data must keep coming at `limits.min_data_rate`: a client that drips its message
/// (10 bytes a second) is ended with `421 4.4.2` soon after `data_timeout`, although it never
/// pauses for as long; one sending 1 000 bytes a second keeps going for well past
/// `data_timeout` and its message is accepted.
#[test]
fn message_data_slower_than_min_data_rate_times_out() {
    let sink = SmtpSink::start();
    let gw = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .tls("off")
            .set("limits", "data_timeout = \"6s\"")
            .set("limits", "min_data_rate = 500")
            .set("limits", "session_timeout = \"10m\""),
    );
    let addr = gw.addr();
    let open = move |from: u8| {
        let mut c = after_mail_from(loopback(from), addr);
        assert_eq!(
            c.command("RCPT TO:<user@example.org>").expect("RCPT").code,
            250
        );
        assert_eq!(c.command("DATA").expect("DATA").code, 354);
        c.send(b"Subject: slow\r\n\r\n").expect("header");
        c
    };
    let steady = thread::spawn(move || {
        let mut c = open(21);
        let line = format!("{}\r\n", "s".repeat(998));
        for _ in 0..15 {
            c.send(line.as_bytes()).expect("steady data");
            thread::sleep(Duration::from_secs(1));
        }
        c.send(b".\r\n").expect("end of data");
        c.read_reply().expect("final reply")
    });
    let mut drip = open(22);
    let started = Instant::now();
    let ended = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a client sending 10 bytes a second still in DATA after 30 s"
        );
        if let Some(r) = poll_reply(&mut drip, Duration::from_millis(10)) {
            break r;
        }
        let _ = drip.send(b"dripdrip\r\n");
        thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(ended.code, 421, "{ended:?}");
    assert!(ended.text().starts_with("4.4.2"), "{ended:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "ended before data_timeout"
    );
    let r = steady.join().expect("steady client");
    assert_eq!(
        r.code, 250,
        "a client at 1 000 bytes a second is served: {r:?}"
    );
    sink.wait_for_messages(1, WAIT);
}

// ---------------------------------------------------------------------------------------------
// 2. Connection floods

#[test]
fn connection_floods_get_421_beyond_the_limit() {
    const MAX: usize = 50;
    const FLOOD: usize = 150;
    let sink = SmtpSink::start();
    let gw = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .tls("off")
            .listen_set("mx", &format!("max_connections = {MAX}")),
    );
    let addr = gw.addr();
    let one = |_: usize| loopback(1);
    let many = |i: usize| loopback(2 + i as u8);
    let floods: [(&str, &dyn Fn(usize) -> IpAddr); 2] =
        [("one address", &one), ("many addresses", &many)];
    for (what, source) in floods {
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..FLOOD {
            let (mut c, r) = connect(source(i), addr);
            match r.code {
                220 => held.push(c),
                421 => {
                    assert!(r.text().starts_with("4.7.0"), "{r:?}");
                    assert!(c.is_closed(), "421 without closing");
                    refused += 1;
                }
                _ => panic!("flood from {what}: unexpected first reply {r:?}"),
            }
        }
        assert_eq!(held.len(), MAX, "flood from {what}: greeted sessions");
        assert_eq!(refused, FLOOD - MAX, "flood from {what}: refused");
        // The limit is truly reached: a legitimate client gets 421 too.
        let (_, r) = connect(loopback(1), addr);
        assert_eq!(r.code, 421, "{r:?}");
        // The flood ends: the legitimate client is served.
        for mut c in held {
            let _ = c.command("QUIT");
        }
        wait_until("a free slot after the flood", WAIT, || {
            let (mut c, r) = connect(loopback(1), addr);
            let _ = c.command("QUIT");
            (r.code == 220).then_some(())
        });
        let r = send_one(addr, &format!("after a flood from {what}"));
        assert_eq!(r.code, 250, "{r:?}");
        eprintln!("flood from {what}: {MAX} greeted, {refused} refused with 421 4.7.0");
    }
    sink.wait_for_messages(2, WAIT);
    let limited = gw.events("connection_limit").len();
    assert!(
        limited >= 2 * (FLOOD - MAX),
        "{limited} connection_limit events"
    );
    assert_peak_memory(&gw, "two floods of 150 connections");
}

// ---------------------------------------------------------------------------------------------
// 3. Recipients

/// A client past MAIL FROM on a fresh connection.
fn after_mail(addr: SocketAddr) -> RawClient {
    after_mail_from(loopback(1), addr)
}

/// A client from `from` past MAIL FROM on a fresh connection.
fn after_mail_from(from: IpAddr, addr: SocketAddr) -> RawClient {
    let (mut c, r) = connect(from, addr);
    assert_eq!(r.code, 220, "{r:?}");
    assert_eq!(c.command("EHLO bulk.example.net").expect("EHLO").code, 250);
    assert_eq!(
        c.command("MAIL FROM:<bulk@example.net>")
            .expect("MAIL")
            .code,
        250
    );
    c
}

fn rcpt_lines(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("RCPT TO:<user{i}@example.org>\r\n").into_bytes())
        .collect()
}

#[test]
fn recipients_beyond_the_limit_get_452_and_the_message_still_goes_out() {
    let sink = SmtpSink::start();
    // No tarpit delays before the hard error limit, to keep the test short.
    let gw = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .tls("off")
            .set("limits", "soft_errors = 9")
            .set("limits", "hard_errors = 10"),
    );
    let addr = gw.addr();

    // 150 pipelined recipients and DATA: 100 accepted, 50 × 452, the message goes out.
    let mut c = after_mail(addr);
    let mut batch = rcpt_lines(150);
    batch.extend_from_slice(b"DATA\r\n");
    c.send(&batch).expect("pipelined RCPTs");
    let replies: Vec<RawReply> = (0..151).map(|_| c.read_reply().expect("reply")).collect();
    assert!(
        replies[..100].iter().all(|r| r.code == 250),
        "{:?}",
        &replies[..100]
    );
    for r in &replies[100..150] {
        assert_eq!(r.code, 452, "{r:?}");
        assert!(r.text().starts_with("4.5.3"), "{r:?}");
    }
    assert_eq!(
        replies[150].code, 354,
        "DATA after the overshoot: {:?}",
        replies[150]
    );
    c.send(b"Subject: bulk\r\n\r\nto the first hundred\r\n.\r\n")
        .expect("message");
    let r = c.read_reply().expect("reply to the end of data");
    assert_eq!(r.code, 250, "{r:?}");
    let _ = c.command("QUIT");
    let got = sink.wait_for_messages(1, WAIT);
    let want: Vec<String> = (0..100).map(|i| format!("user{i}@example.org")).collect();
    assert_eq!(got[0].recipients(), want);

    // 10 000: 100 accepted, 452 for the overshoot, then 421 at the error limit; the writer
    // runs on its own thread so neither side blocks on a full socket buffer.
    let mut c = after_mail(addr);
    let mut writer = c.stream().try_clone().expect("clone the socket");
    let lines = rcpt_lines(10_000);
    let write = thread::spawn(move || {
        let _ = writer.write_all(&lines);
    });
    let mut codes = Vec::new();
    loop {
        let r = c.read_reply().expect("reply");
        let code = r.code;
        if code == 452 {
            assert!(r.text().starts_with("4.5.3"), "{r:?}");
        }
        codes.push(code);
        if code == 421 {
            break;
        }
        assert!(codes.len() <= 10_000, "more replies than commands");
    }
    assert!(c.is_closed(), "421 without closing");
    let _ = write.join();
    let accepted = codes.iter().filter(|&&c| c == 250).count();
    let overshoot = codes.iter().filter(|&&c| c == 452).count();
    assert!(
        codes[..100].iter().all(|&c| c == 250),
        "{:?}",
        &codes[..100]
    );
    assert_eq!(accepted, 100);
    assert_eq!(overshoot + 101, codes.len(), "only 452s between: {codes:?}");
    assert!(
        overshoot >= 1000,
        "the error limit cut the overshoot at {overshoot}"
    );
    eprintln!(
        "10 000 recipients: 100 accepted, {overshoot} answered 452 4.5.3, then 421 after the \
         error limit"
    );
    assert_eq!(sink.messages().len(), 1);
    assert_peak_memory(&gw, "150 and 10 000 recipients");
}

// ---------------------------------------------------------------------------------------------
// 4. Endless input

#[test]
fn endless_lines_and_data_are_dropped_as_they_arrive() {
    const LIMIT: u64 = 1 << 20;
    let sink = SmtpSink::start();
    let gw = Ravelin::start(
        RavelinConfig::inbound(sink.addr)
            .tls("off")
            .set("limits", &format!("message_size = {LIMIT}")),
    );
    let addr = gw.addr();

    // A command line without end: 10 MiB, no reply while it lasts, 500 5.5.2 when it ends.
    let (mut c, _) = connect(loopback(1), addr);
    assert_eq!(
        c.command("EHLO endless.example.net").expect("EHLO").code,
        250
    );
    let chunk = vec![b'A'; 64 << 10];
    for _ in 0..160 {
        c.send(&chunk).expect("an endless line");
    }
    assert!(
        poll_reply(&mut c, Duration::from_millis(500)).is_none(),
        "a reply before the line ended"
    );
    let r = c.command("").expect("reply once the line ends");
    assert_eq!(r.code, 500, "{r:?}");
    assert!(r.text().starts_with("5.5.2"), "{r:?}");
    assert_eq!(c.command("NOOP").expect("still framed").code, 250);
    let _ = c.command("QUIT");
    assert_peak_memory(&gw, "a 10 MiB command line");

    // DATA without end: 20 MiB against a 1 MiB limit; the spool file stops at the limit.
    let transaction = |c: &mut RawClient| {
        for (line, want) in [
            ("MAIL FROM:<flood@example.net>", 250),
            ("RCPT TO:<user@example.org>", 250),
            ("DATA", 354),
        ] {
            assert_eq!(c.command(line).expect("reply").code, want, "{line}");
        }
    };
    let (mut c, _) = connect(loopback(1), addr);
    assert_eq!(
        c.command("EHLO endless.example.net").expect("EHLO").code,
        250
    );
    transaction(&mut c);
    let line = format!("{}\r\n", "d".repeat(78));
    let chunk = line.repeat((64 << 10) / line.len());
    let mut largest = 0;
    for i in 0..320 {
        c.send(chunk.as_bytes()).expect("endless data");
        if i % 32 == 0 {
            largest = incoming_sizes(&gw).into_iter().fold(largest, u64::max);
        }
    }
    largest = incoming_sizes(&gw).into_iter().fold(largest, u64::max);
    assert!(
        largest <= LIMIT + 4096,
        "the spool file grew to {largest} octets for a {LIMIT} octet limit"
    );
    let r = c.command(".").expect("reply to the end of data");
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text().starts_with("5.3.4"), "{r:?}");
    assert_eq!(c.command("NOOP").expect("still framed").code, 250);
    eprintln!("20 MiB of DATA: 552 5.3.4, largest spool file {largest} octets");

    // A header block without end (3 MiB of header fields, no blank line): 552 as well.
    transaction(&mut c);
    let mut headers = Vec::new();
    let mut n = 0;
    while headers.len() < 3 << 20 {
        n += 1;
        headers.extend_from_slice(format!("X-Flood-{n:07}: {}\r\n", "h".repeat(60)).as_bytes());
    }
    c.send(&headers).expect("endless header block");
    let r = c.command(".").expect("reply to the end of data");
    assert_eq!(r.code, 552, "{r:?}");

    // One header line of 100 KiB: 550 5.6.0 (line_length), still framed.
    transaction(&mut c);
    let long = format!("Subject: {}\r\n\r\nbody\r\n", "s".repeat(100 << 10));
    c.send(long.as_bytes()).expect("a long header line");
    let r = c.command(".").expect("reply to the end of data");
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text().starts_with("5.6.0"), "{r:?}");
    assert_eq!(c.command("NOOP").expect("still framed").code, 250);
    let _ = c.command("QUIT");

    wait_until("every session to end", WAIT, || {
        (gw.events("connect").len() == gw.events("disconnect").len()).then_some(())
    });
    assert!(incoming_sizes(&gw).is_empty(), "incoming/ keeps a trace");
    assert!(gw.events("queued").is_empty());
    assert!(sink.messages().is_empty());
    let r = send_one(addr, "after the endless input");
    assert_eq!(r.code, 250, "{r:?}");
    assert_peak_memory(&gw, "endless lines, data and headers");
}
