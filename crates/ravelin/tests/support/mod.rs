//! Harness for the end-to-end tests: real peers on loopback, started and torn down per test.
//!
//! - Ports: [`free_port`], [`free_addr`], [`wait_for_port`]. Waiting reads the kernel's socket
//!   table (/proc/thread-self/net/tcp), so it never opens a session on the server it waits for.
//! - [`SmtpSink`]: Postfix's smtp-sink writing one dump file per transaction;
//!   [`SmtpSink::messages`] parses the completed ones into [`SinkMessage`]s.
//! - [`Postfix`]: an alternate Postfix instance made by tests/peers/postfix-instance.sh, as a
//!   backend (virtual(8) Maildir delivery, read back as [`MaildirMessage`]s) or as a relay.
//! - [`RedisServer`]: a redis-server on a high loopback port with its own configuration and no
//!   persistence, for the shared state store; stop and start it again to play an outage.
//! - [`Ravelin`]: the gateway under test (`ravelin serve --config FILE`) with a config written
//!   from a [`RavelinConfig`], its stderr JSON log captured to a file.
//! - [`Unbound`]: a DNS server on a loopback port answering fixed records (`local-data`).
//! - [`ravelin_cli`]: any other `ravelin` command without a configuration (the auditor).
//! - [`swaks`], [`swaks_send`], [`smtp_source`]: the scripted clients; [`RawClient`]: a plain
//!   socket for bytes no well-behaved client sends; [`first_reply`], [`session_from`],
//!   [`probe_relay`] and [`assert_banned`] play a client from a chosen local address.
//! - [`in_network_namespace`]: runs a test body on a thread in a network namespace of its own
//!   (needs root), with IPv6 documentation addresses on its `lo`, to play real IPv6 clients.
//! - [`DovecotSasl`]: Dovecot's auth service alone, as a Postfix instance's SASL server.
//! - [`Slapd`]: an OpenLDAP server with its own slapd.conf and mdb database in a temporary
//!   directory, holding inetOrgPerson entries with hashed passwords, on loopback ports
//!   (plain `ldap://` with StartTLS, and `ldaps://`).
//!
//! Settings: none from the environment. Everything lives in temporary directories that are
//! removed on drop; Postfix and smtp-sink need root (they drop to postfix/nobody), as CI has.
//! Failures panic with the reason: a missing peer program names scripts/install-test-deps.sh,
//! a peer that does not come up shows the tail of its log, every wait has a time limit.
//!
//! Used as `mod support;` by the files in crates/ravelin/tests/; each test binary uses a
//! different part of it, hence the dead_code allowance.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// What every "peer missing" failure tells the reader to run.
pub const INSTALL_HINT: &str = "install the test peers with scripts/install-test-deps.sh";

/// How long a peer or the gateway may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Read and write time limit of a [`RawClient`].
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of one swaks run.
pub const SWAKS_TIMEOUT: Duration = Duration::from_secs(60);
/// Time limit of one smtp-source run.
pub const SMTP_SOURCE_TIMEOUT: Duration = Duration::from_secs(300);

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Whether the tests run as root (they do in CI; Postfix instances require it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The full path of an installed program, searched in PATH and then in /usr/sbin and /sbin
/// (where Debian puts Postfix's tools). Panics naming the install script when it is missing.
pub fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from);
    for dir in std::env::split_paths(&path).chain(extra) {
        let candidate = dir.join(name);
        if let Ok(meta) = fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return candidate;
        }
    }
    panic!("{name} is not installed (not in PATH, /usr/sbin or /sbin): {INSTALL_HINT}");
}

/// The Python interpreter of the repository's venv (dkimpy, dnspython).
pub fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    if !python.exists() {
        panic!("{} does not exist: {INSTALL_HINT}", python.display());
    }
    python
}

/// A temporary directory that daemons running as postfix or nobody can traverse.
pub fn daemon_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ravelin-test-")
        .tempdir()
        .expect("create a temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .expect("make the temporary directory traversable");
    dir
}

/// A private CA and a certificate for `hostname`, written to a fresh directory that lives as
/// long as the returned handle.
pub fn test_pki(hostname: &str) -> (tempfile::TempDir, ravelin_tls::testing::TestPkiFiles) {
    let pki = ravelin_tls::testing::TestPki::new(hostname).expect("test PKI");
    let dir = daemon_tempdir();
    let files = pki.write_to(dir.path()).expect("write the test PKI");
    (dir, files)
}

/// Runs a command to completion with a time limit, capturing stdout and stderr.
/// Panics when it cannot start or does not finish in time (it is killed then).
pub fn run(cmd: Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout)
}

/// Like [`run`], with `input` (if any) written to the command's standard input, which is then
/// closed.
pub fn run_with_input(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(input);
    }
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{desc} did not finish within {timeout:?}");
            }
            Err(e) => panic!("waiting for {desc}: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Ports

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port on 127.0.0.1 that was free a moment ago and has not been handed out before in
/// this test process (so parallel tests in one binary never get the same port).
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no unused loopback port after 1000 tries");
}

/// `127.0.0.1:` a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port())
}

/// A port below 1024 on 127.0.0.1 (one only root may bind, like 25) that was free a moment
/// ago and has not been handed out before in this test process. Needs root.
pub fn privileged_addr() -> SocketAddr {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for port in (600..1024).rev() {
        if !handed_out.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        }
    }
    panic!("no free port below 1024 on 127.0.0.1 (binding one needs root)");
}

/// The socket tables of the calling thread's network namespace: /proc/thread-self/net, not
/// /proc/net (which is /proc/self/net, the main thread's namespace), so that a thread inside
/// [`in_network_namespace`] sees its own sockets.
const TCP_TABLES: [&str; 2] = ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"];

/// Whether some socket listens on `addr` (or on the wildcard address of its port), in the
/// calling thread's network namespace.
pub fn is_listening(addr: SocketAddr) -> bool {
    fn hex_words(octets: &[u8]) -> String {
        octets
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    }
    let (table, ip, any) = match addr.ip() {
        IpAddr::V4(ip) => (TCP_TABLES[0], hex_words(&ip.octets()), hex_words(&[0; 4])),
        IpAddr::V6(ip) => (TCP_TABLES[1], hex_words(&ip.octets()), hex_words(&[0; 16])),
    };
    let want = format!("{ip}:{:04X}", addr.port());
    let want_any = format!("{any}:{:04X}", addr.port());
    let Ok(text) = fs::read_to_string(table) else {
        return false;
    };
    text.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        state == Some("0A") && (local == Some(&want) || local == Some(&want_any))
    })
}

/// Waits until the peer `name` (process `child`) listens on every address of `addrs`; panics
/// with the tail of `err_log` if it exits first, or after [`START_TIMEOUT`].
fn wait_started(name: &str, child: &mut Child, addrs: &[SocketAddr], err_log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !addrs.iter().all(|a| is_listening(*a)) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited with {status}: {}", tail(err_log, 20));
        }
        if Instant::now() >= deadline {
            panic!("{name} is not listening on {addrs:?} after {START_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something listens on `addr`; false when `timeout` passes first.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if is_listening(addr) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `probe` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Network namespaces

/// The network namespace of the calling thread (`net:[INODE]`).
pub fn thread_netns() -> PathBuf {
    fs::read_link("/proc/thread-self/ns/net").expect("read /proc/thread-self/ns/net")
}

/// The network namespace of process `pid` (`net:[INODE]`).
pub fn process_netns(pid: u32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/ns/net: {e}"))
}

/// Runs `ip ARGS…` and panics with its output if it fails.
fn ip_command(args: &[&str]) {
    let mut cmd = Command::new(program("ip"));
    cmd.args(args);
    let out = run(cmd, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        describe(&out)
    );
}

/// Runs `body` on a new thread that first leaves the host's network namespace for a new one
/// (`unshare(CLONE_NEWNET)`, which needs root): `lo` is brought up and each of `addresses` is
/// put on it as a /128 (or /32) without duplicate address detection, so a client socket can
/// bind one before it connects and a server can listen on one. A network namespace belongs to
/// a thread, and a process started by that thread is born in it: sockets `body` opens and the
/// processes it starts (the gateway, `ravelin` commands, smtp-sink, swaks) all live there, and
/// the host's interfaces and routes are never touched. Everything else in the test process
/// stays in the host's namespace. The namespace goes away with its last process. A panic in
/// `body` is re-raised in the caller.
pub fn in_network_namespace<T: Send>(addresses: &[IpAddr], body: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        let namespaced = thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, || {
                let host = thread_netns();
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| {
                    panic!("unshare(CLONE_NEWNET) failed: {e} (a new network namespace needs root with CAP_SYS_ADMIN)")
                });
                assert_ne!(thread_netns(), host, "the thread is in a new namespace");
                ip_command(&["link", "set", "lo", "up"]);
                for addr in addresses {
                    match addr {
                        IpAddr::V4(_) => {
                            ip_command(&["-4", "addr", "add", &format!("{addr}/32"), "dev", "lo"])
                        }
                        IpAddr::V6(_) => ip_command(&[
                            "-6",
                            "addr",
                            "add",
                            &format!("{addr}/128"),
                            "dev",
                            "lo",
                            "nodad",
                        ]),
                    }
                }
                body()
            })
            .expect("start the namespaced thread");
        namespaced
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Runs swaks with `args` (e.g. `["--server", "127.0.0.1:2525", "--to", "a@example.org"]`).
pub fn swaks(args: &[&str]) -> Output {
    let mut cmd = Command::new(program("swaks"));
    cmd.args(args);
    run(cmd, SWAKS_TIMEOUT)
}

/// Sends `data` (header and body) with swaks from `from` to `to` through `server`, plus any
/// `extra` swaks options. swaks turns every line ending into CRLF, dot-stuffs, and ends the
/// data with CRLF.CRLF, so `data` without a final line break arrives as `data` + CRLF.
/// swaks also expands its %TOKENS% (%DATE%, %TO_ADDRESS%, ...) in the data.
/// An empty `from` sends the null reverse-path `<>`.
pub fn swaks_send(server: SocketAddr, from: &str, to: &str, data: &[u8], extra: &[&str]) -> Output {
    let from = if from.is_empty() { "<>" } else { from };
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("message.eml");
    fs::write(&file, data).expect("write the message for swaks");
    let data_arg = format!("@{}", file.display());
    let server = server.to_string();
    let mut args = vec![
        "--server", &server, "--from", from, "--to", to, "--data", &data_arg,
    ];
    args.extend_from_slice(extra);
    swaks(&args)
}

/// Runs smtp-source with `args` (load generator; e.g. `["-s", "5", "-m", "100", "ADDR"]`).
pub fn smtp_source(args: &[&str]) -> Output {
    let mut cmd = Command::new(program("smtp-source"));
    cmd.args(args);
    run(cmd, SMTP_SOURCE_TIMEOUT)
}

/// One SMTP reply as read by [`RawClient`], with the exact bytes received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReply {
    pub code: u16,
    /// Text of each line after `NNN-` / `NNN `.
    pub lines: Vec<String>,
    /// The reply as it came off the wire, CRLFs included.
    pub raw: Vec<u8>,
}

impl RawReply {
    /// All lines joined with a newline.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// Most bytes one reply may have before [`RawClient::read_reply`] gives up.
const MAX_RAW_REPLY: usize = 100 * 4096;

/// A byte-exact SMTP client over a plain TCP socket, with [`IO_TIMEOUT`] on every read and
/// write. It writes exactly what it is given and reads replies strictly: every reply line must
/// end in CRLF and start with the same three-digit code.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects from 127.0.0.1 (the kernel's choice).
    pub fn connect(addr: SocketAddr) -> io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        Self::with_stream(stream)
    }

    /// Connects from a chosen local address such as 127.0.0.2, to play a distinct client.
    pub fn connect_from(local: IpAddr, addr: SocketAddr) -> io::Result<RawClient> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.bind(&SocketAddr::new(local, 0).into())?;
        socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
        Self::with_stream(socket.into())
    }

    fn with_stream(stream: TcpStream) -> io::Result<RawClient> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(RawClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes `bytes` exactly as given.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `line` + CRLF and reads the reply.
    pub fn command(&mut self, line: &str) -> io::Result<RawReply> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Reads one complete (possibly multi-line) reply.
    pub fn read_reply(&mut self) -> io::Result<RawReply> {
        loop {
            if let Some(reply) = self.parse_reply()? {
                return Ok(reply);
            }
            if self.buf.len() > MAX_RAW_REPLY {
                return Err(invalid(format!("reply longer than {MAX_RAW_REPLY} bytes")));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed; unparsed: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn parse_reply(&mut self) -> io::Result<Option<RawReply>> {
        let mut pos = 0;
        let mut code = None;
        let mut lines = Vec::new();
        while let Some(nl) = self.buf[pos..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[pos..pos + nl + 1];
            pos += nl + 1;
            let Some(content) = line.strip_suffix(b"\r\n") else {
                return Err(invalid(format!(
                    "reply line without CRLF: {:?}",
                    String::from_utf8_lossy(line)
                )));
            };
            let text = String::from_utf8_lossy(content);
            let digits = text
                .get(..3)
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
            let sep = content.get(3).copied();
            let (Some(digits), Some(b' ' | b'-') | None) = (digits, sep) else {
                return Err(invalid(format!("malformed reply line: {text:?}")));
            };
            let this: u16 = digits
                .parse()
                .map_err(|_| invalid(format!("bad code in {text:?}")))?;
            if *code.get_or_insert(this) != this {
                return Err(invalid(format!("reply changes its code: {text:?}")));
            }
            lines.push(text.get(4..).unwrap_or("").to_string());
            if sep != Some(b'-') {
                let raw: Vec<u8> = self.buf.drain(..pos).collect();
                return Ok(Some(RawReply {
                    code: this,
                    lines,
                    raw,
                }));
            }
        }
        Ok(None)
    }

    /// Whether the server closes the connection within [`IO_TIMEOUT`] (bytes it still sends
    /// before closing are discarded).
    pub fn is_closed(&mut self) -> bool {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }

    /// Everything the server sends until it closes the connection, starting with bytes
    /// already received but not yet parsed as a reply. Fails if the connection is still open
    /// after [`IO_TIMEOUT`].
    pub fn read_until_closed(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(bytes),
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(bytes),
                Err(e) => return Err(e),
            }
            if bytes.len() > MAX_RAW_REPLY {
                return Err(invalid(format!(
                    "more than {MAX_RAW_REPLY} bytes before close"
                )));
            }
        }
    }

    /// Closes the sending side (the server sees end of input).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown(Shutdown::Write)
    }

    /// The underlying socket, e.g. to start TLS over it.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// The first reply a client from the local address `from` (e.g. "127.0.0.5") gets on
/// connecting to `addr`.
pub fn first_reply(from: &str, addr: SocketAddr) -> RawReply {
    let mut c = RawClient::connect_from(parse_ip(from), addr).expect("connect");
    c.read_reply().expect("a first reply")
}

/// A session from the local address `from`, greeted (220) and past EHLO (250).
pub fn session_from(from: &str, addr: SocketAddr) -> RawClient {
    let mut c = RawClient::connect_from(parse_ip(from), addr).expect("connect");
    let greeting = c.read_reply().expect("greeting");
    assert_eq!(greeting.code, 220, "{from}: {greeting:?}");
    assert_eq!(c.command("EHLO client.test").expect("EHLO").code, 250);
    c
}

/// That a client from `from` is refused at connect as a banned one (`554 5.7.1 Access denied`).
pub fn assert_banned(from: &str, addr: SocketAddr) {
    let reply = first_reply(from, addr);
    assert_eq!(reply.code, 554, "{from} should be refused: {reply:?}");
    assert_eq!(reply.text(), "5.7.1 Access denied");
}

/// Three relay attempts from `from` (MAIL, then RCPT to a domain the gateway does not
/// accept, three times), each refused with `554 5.7.1`; with `[bans.relay_probing] threshold
/// = 3` the third bans the client and closes the session.
pub fn probe_relay(from: &str, addr: SocketAddr) {
    let mut c = session_from(from, addr);
    assert_eq!(
        c.command("MAIL FROM:<p@probe.test>").expect("MAIL").code,
        250
    );
    for n in 1..=3 {
        let reply = c.command("RCPT TO:<someone@elsewhere.test>").expect("RCPT");
        assert_eq!(reply.code, 554, "relay attempt {n}: {reply:?}");
        assert!(reply.text().starts_with("5.7.1"), "{reply:?}");
    }
    assert!(c.is_closed(), "the banning attempt closes the session");
}

/// `s` as an address; panics naming it if it is not one.
pub fn parse_ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|_| panic!("{s:?} is not an address"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

// ---------------------------------------------------------------------------------------------
// smtp-sink

/// Postfix's smtp-sink on a loopback port, dumping each transaction to its own file.
///
/// Dump file format (one file per MAIL transaction, named by the `-d` template plus a random
/// hex id; all lines end in LF): `X-Client-Addr: IP`, `X-Client-Proto: SMTP|ESMTP`,
/// `X-Helo-Args: ARG` (when HELO/EHLO was seen), `X-Mail-Args: <sender> PARAMS`, one
/// `X-Rcpt-Args: <rcpt> PARAMS` per RCPT, then a three-line `Received:` header
/// (`from HELO ([IP])`, `\tby HOST (smtp-sink) with PROTO id HEX;`, `\tDATE`), then the
/// message as received with every CR byte removed and dot-stuffing undone, then one LF.
/// The file is created at MAIL, written until end of data, and unlinked if the transaction
/// is aborted; so a file that smtp-sink no longer holds open is complete.
pub struct SmtpSink {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    dump_dir: PathBuf,
}

/// One transaction dumped by smtp-sink.
#[derive(Clone, Debug)]
pub struct SinkMessage {
    pub path: PathBuf,
    pub client_addr: String,
    pub client_proto: String,
    pub helo: Option<String>,
    /// MAIL arguments after `FROM:`, e.g. `<a@example.net> SIZE=123`.
    pub mail_args: String,
    /// RCPT arguments after `TO:`, one per recipient.
    pub rcpt_args: Vec<String>,
    /// The three lines of smtp-sink's own Received header.
    pub sink_received: String,
    /// The message as received, CR bytes removed, lines ending in LF.
    pub message: Vec<u8>,
}

fn first_path(args: &str) -> String {
    let first = args.split_whitespace().next().unwrap_or("");
    first
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

impl SinkMessage {
    /// The reverse-path without angle brackets.
    pub fn sender(&self) -> String {
        first_path(&self.mail_args)
    }

    /// The forward-paths without angle brackets.
    pub fn recipients(&self) -> Vec<String> {
        self.rcpt_args.iter().map(|a| first_path(a)).collect()
    }

    /// The message with LF turned back into CRLF (what a CRLF-clean sender put on the wire).
    pub fn message_crlf(&self) -> Vec<u8> {
        lf_to_crlf(&self.message)
    }

    /// Parses a dump file; the error says what did not match the format.
    pub fn parse(path: PathBuf, bytes: &[u8]) -> Result<SinkMessage, String> {
        let mut cursor = Lines::new(bytes);
        let mut field = |name: &str, required: bool| -> Result<Option<String>, String> {
            match cursor.peek_value(name) {
                Some(v) => {
                    cursor.advance();
                    Ok(Some(v))
                }
                None if required => Err(format!("expected {name} at byte {}", cursor.pos)),
                None => Ok(None),
            }
        };
        let client_addr = field("X-Client-Addr", true)?.unwrap_or_default();
        let client_proto = field("X-Client-Proto", true)?.unwrap_or_default();
        let helo = field("X-Helo-Args", false)?;
        let mail_args = field("X-Mail-Args", true)?.unwrap_or_default();
        let mut rcpt_args = Vec::new();
        while let Some(v) = field("X-Rcpt-Args", false)? {
            rcpt_args.push(v);
        }
        let start = cursor.pos;
        if cursor.peek_value("Received").is_none() {
            return Err(format!(
                "expected smtp-sink's Received header at byte {start}"
            ));
        }
        cursor.advance();
        cursor.skip_continuations();
        let sink_received = String::from_utf8_lossy(&bytes[start..cursor.pos]).into_owned();
        let body = &bytes[cursor.pos..];
        let Some(message) = body.strip_suffix(b"\n") else {
            return Err("dump does not end with smtp-sink's final LF".into());
        };
        Ok(SinkMessage {
            path,
            client_addr,
            client_proto,
            helo,
            mail_args,
            rcpt_args,
            sink_received,
            message: message.to_vec(),
        })
    }
}

/// A cursor over LF-terminated header lines.
struct Lines<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Lines { bytes, pos: 0 }
    }

    fn line(&self) -> Option<&'a [u8]> {
        let rest = &self.bytes[self.pos..];
        let nl = rest.iter().position(|&b| b == b'\n')?;
        Some(&rest[..nl])
    }

    /// The value of the current line if it is the header `name` (case-sensitive, as written
    /// by the programs whose files we read).
    fn peek_value(&self, name: &str) -> Option<String> {
        let line = self.line()?;
        let value = line.strip_prefix(name.as_bytes())?.strip_prefix(b":")?;
        Some(String::from_utf8_lossy(value).trim_start().to_string())
    }

    fn advance(&mut self) {
        if let Some(line) = self.line() {
            self.pos += line.len() + 1;
        }
    }

    fn skip_continuations(&mut self) {
        while let Some(line) = self.line() {
            if !matches!(line.first(), Some(b' ' | b'\t')) {
                break;
            }
            self.advance();
        }
    }
}

/// LF → CRLF on every line (input is expected to hold no CR).
pub fn lf_to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// CRLF → LF (how Postfix and smtp-sink store what a CRLF-clean sender sent).
pub fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The user id and group id of `nobody`.
fn nobody() -> (u32, u32) {
    let user = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("the system has a nobody account");
    (user.uid.as_raw(), user.gid.as_raw())
}

impl SmtpSink {
    /// Starts smtp-sink on a free loopback port with default behaviour (accepts everything).
    pub fn start() -> SmtpSink {
        Self::start_with(&[])
    }

    /// Starts smtp-sink with extra options, e.g. `["-f", "RCPT"]` to refuse every RCPT with
    /// 5xx, `["-r", "."]` to answer end-of-data with 4xx, `["-Q", "DATA"]` to drop at DATA.
    pub fn start_with(options: &[&str]) -> SmtpSink {
        Self::start_on(free_addr(), options)
    }

    /// Starts smtp-sink on a given loopback address (e.g. a next hop that was down until now).
    pub fn start_on(addr: SocketAddr, options: &[&str]) -> SmtpSink {
        let exe = program("smtp-sink");
        let dir = daemon_tempdir();
        let dump_dir = dir.path().join("dump");
        fs::create_dir(&dump_dir).expect("create the dump directory");
        let mut cmd = Command::new(exe);
        if is_root() {
            // smtp-sink refuses to run as root; it drops to nobody after binding.
            let (uid, gid) = nobody();
            std::os::unix::fs::chown(&dump_dir, Some(uid), Some(gid))
                .expect("chown the dump directory");
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dump_dir.display()))
            .args(["-h", "sink.test.example"])
            .args(options)
            .arg(addr.to_string())
            .arg("128")
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("sink.out")).expect("create sink.out"))
            .stderr(File::create(dir.path().join("sink.err")).expect("create sink.err"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start smtp-sink: {e}; {INSTALL_HINT}"));
        let mut sink = SmtpSink {
            child,
            addr,
            dir,
            dump_dir,
        };
        wait_started(
            "smtp-sink",
            &mut sink.child,
            &[addr],
            &sink.dir.path().join("sink.err"),
        );
        sink
    }

    /// Dump files smtp-sink still holds open (transactions in progress).
    fn open_files(&self) -> BTreeSet<PathBuf> {
        let fd_dir = format!("/proc/{}/fd", self.child.id());
        let Ok(entries) = fs::read_dir(fd_dir) else {
            return BTreeSet::new();
        };
        entries
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .collect()
    }

    /// Completed transactions, oldest first.
    pub fn messages(&self) -> Vec<SinkMessage> {
        let mut files: Vec<(SystemTime, PathBuf)> = fs::read_dir(&self.dump_dir)
            .expect("read the dump directory")
            .filter_map(|e| {
                let e = e.ok()?;
                Some((e.metadata().ok()?.modified().ok()?, e.path()))
            })
            .collect();
        let open = self.open_files();
        files.retain(|(_, path)| !open.contains(path));
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, path)| {
                let bytes = fs::read(&path).ok()?; // aborted meanwhile: unlinked
                Some(
                    SinkMessage::parse(path.clone(), &bytes).unwrap_or_else(|e| {
                        panic!("{}: not in smtp-sink's dump format: {e}", path.display())
                    }),
                )
            })
            .collect()
    }

    /// Waits until at least `n` transactions completed and returns them all.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        wait_until(
            &format!("{n} message(s) at smtp-sink {}", self.addr),
            timeout,
            || {
                let messages = self.messages();
                (messages.len() >= n).then_some(messages)
            },
        )
    }

    /// smtp-sink's diagnostics so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("sink.err")).unwrap_or_default()
    }

    /// Stops the sink (the port closes; later deliveries to it fail to connect).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Postfix

/// What a [`Postfix`] instance does with mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostfixMode {
    /// Final destination: virtual(8) delivers to Maildirs; unknown users get 550 at RCPT.
    Backend,
    /// Relays everything from loopback to the given next hop.
    Relay(SocketAddr),
}

/// How to create a [`Postfix`] instance (see tests/peers/postfix-instance.sh).
#[derive(Clone, Debug)]
pub struct PostfixOptions {
    pub mode: PostfixMode,
    pub domain: String,
    pub users: Vec<String>,
    /// Extra main.cf settings `(name, value)`, applied last.
    pub settings: Vec<(String, String)>,
    /// The loopback address smtpd listens on.
    pub address: Ipv4Addr,
}

impl PostfixOptions {
    pub fn backend(users: &[&str]) -> Self {
        PostfixOptions {
            mode: PostfixMode::Backend,
            domain: "example.org".into(),
            users: users.iter().map(|u| u.to_string()).collect(),
            settings: Vec::new(),
            address: Ipv4Addr::LOCALHOST,
        }
    }

    pub fn relay(next_hop: SocketAddr) -> Self {
        PostfixOptions {
            mode: PostfixMode::Relay(next_hop),
            ..Self::backend(&["user"])
        }
    }

    /// Listens on `address` (127.x.y.z) instead of 127.0.0.1, so that instances of one
    /// test are told apart by address, as separate servers are.
    pub fn address(mut self, address: Ipv4Addr) -> Self {
        self.address = address;
        self
    }

    pub fn domain(mut self, domain: &str) -> Self {
        self.domain = domain.into();
        self
    }

    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// An alternate Postfix instance in a temporary directory; stopped on drop.
pub struct Postfix {
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub domain: String,
    running: bool,
}

/// One message delivered by a backend [`Postfix`] into a Maildir.
#[derive(Clone, Debug)]
pub struct MaildirMessage {
    pub path: PathBuf,
    /// The mailbox (local part) it was delivered to.
    pub user: String,
    /// Envelope sender, from virtual(8)'s Return-Path header, without angle brackets.
    pub return_path: String,
    /// Envelope recipient, from the Delivered-To header.
    pub delivered_to: String,
    /// The header lines Postfix added: Return-Path, X-Original-To, Delivered-To and the
    /// Received header of the receiving smtpd.
    pub postfix_headers: Vec<u8>,
    /// The message as the client sent it (after un-stuffing), lines ending in LF: Postfix stores
    /// CRLF as LF.
    pub message: Vec<u8>,
}

impl MaildirMessage {
    /// Parses a Maildir file written by virtual(8).
    pub fn parse(path: PathBuf, user: String, bytes: &[u8]) -> Result<MaildirMessage, String> {
        let mut cursor = Lines::new(bytes);
        let (mut return_path, mut delivered_to) = (None, None);
        loop {
            if let Some(v) = cursor.peek_value("Return-Path") {
                return_path = Some(v.trim_start_matches('<').trim_end_matches('>').to_string());
            } else if let Some(v) = cursor.peek_value("Delivered-To") {
                delivered_to = Some(v);
            } else if cursor.peek_value("X-Original-To").is_none() {
                break;
            }
            cursor.advance();
        }
        let (Some(return_path), Some(delivered_to)) = (return_path, delivered_to) else {
            return Err("no Return-Path and Delivered-To headers at the top".into());
        };
        if cursor.peek_value("Received").is_none() {
            return Err(format!(
                "expected Postfix's Received header at byte {}",
                cursor.pos
            ));
        }
        cursor.advance();
        cursor.skip_continuations();
        Ok(MaildirMessage {
            path,
            user,
            return_path,
            delivered_to,
            postfix_headers: bytes[..cursor.pos].to_vec(),
            message: bytes[cursor.pos..].to_vec(),
        })
    }

    /// The message with LF turned back into CRLF.
    pub fn message_crlf(&self) -> Vec<u8> {
        lf_to_crlf(&self.message)
    }
}

impl Postfix {
    fn script() -> PathBuf {
        repo_root().join("tests/peers/postfix-instance.sh")
    }

    /// A backend for example.org with these mailboxes.
    pub fn backend(users: &[&str]) -> Postfix {
        Self::start(PostfixOptions::backend(users))
    }

    /// A relay that forwards everything to `next_hop`.
    pub fn relay(next_hop: SocketAddr) -> Postfix {
        Self::start(PostfixOptions::relay(next_hop))
    }

    /// Creates and starts an instance on a free loopback port.
    pub fn start(options: PostfixOptions) -> Postfix {
        program("postfix");
        program("postconf");
        assert!(
            is_root(),
            "Postfix test instances need root (CI runs tests as root)"
        );
        let dir = daemon_tempdir();
        let addr = SocketAddr::new(IpAddr::V4(options.address), free_port());
        let instance = dir.path().join("postfix");
        let mut cmd = Command::new("bash");
        cmd.arg(Self::script()).arg("create").arg(&instance);
        cmd.args([
            "--port",
            &addr.port().to_string(),
            "--address",
            &options.address.to_string(),
            "--domain",
            &options.domain,
        ]);
        cmd.args(["--users", &options.users.join(",")]);
        match options.mode {
            PostfixMode::Backend => cmd.args(["--mode", "backend"]),
            PostfixMode::Relay(next) => {
                cmd.args(["--mode", "relay", "--relayhost", &next.to_string()])
            }
        };
        for (name, value) in &options.settings {
            cmd.arg("--set").arg(format!("{name}={value}"));
        }
        let created = run(cmd, START_TIMEOUT);
        assert!(
            created.status.success(),
            "postfix-instance.sh create failed: {}",
            describe(&created)
        );
        let postfix = Postfix {
            dir,
            addr,
            domain: options.domain,
            running: true,
        };
        let mut cmd = Command::new("bash");
        cmd.arg(Self::script()).arg("start").arg(&instance);
        let started = run(cmd, START_TIMEOUT);
        assert!(
            started.status.success(),
            "postfix-instance.sh start failed: {}\n{}",
            describe(&started),
            postfix.maillog()
        );
        if !wait_for_port(addr, START_TIMEOUT) {
            panic!(
                "Postfix is not listening on {addr}; maillog:\n{}",
                postfix.maillog()
            );
        }
        postfix
    }

    /// The instance's directory (etc/, queue/, data/, mail/, maillog).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("postfix")
    }

    /// The instance's log so far.
    pub fn maillog(&self) -> String {
        fs::read_to_string(self.dir().join("maillog")).unwrap_or_default()
    }

    /// The instance's queue as `postqueue -j` reports it: one JSON object per queued message.
    pub fn queue(&self) -> Vec<serde_json::Value> {
        let mut cmd = Command::new(program("postqueue"));
        cmd.arg("-c").arg(self.dir().join("etc")).arg("-j");
        let out = run(cmd, Duration::from_secs(30));
        assert!(out.status.success(), "postqueue -j: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("postqueue -j line {l:?}: {e}"))
            })
            .collect()
    }

    /// Delivered messages (all mailboxes), oldest first.
    pub fn messages(&self) -> Vec<MaildirMessage> {
        let base = self.dir().join("mail").join(&self.domain);
        let mut found: Vec<(SystemTime, PathBuf, String)> = Vec::new();
        for user in fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = user.file_name().to_string_lossy().into_owned();
            for sub in ["new", "cur"] {
                for file in fs::read_dir(user.path().join(sub))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if let Ok(modified) = file.metadata().and_then(|m| m.modified()) {
                        found.push((modified, file.path(), name.clone()));
                    }
                }
            }
        }
        found.sort();
        found
            .into_iter()
            .map(|(_, path, user)| {
                let bytes =
                    fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                MaildirMessage::parse(path.clone(), user, &bytes).unwrap_or_else(|e| {
                    panic!("{}: not a virtual(8) delivery: {e}", path.display())
                })
            })
            .collect()
    }

    /// Waits until at least `n` messages were delivered and returns them all.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<MaildirMessage> {
        let what = format!("{n} message(s) delivered by Postfix {}", self.addr);
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; maillog:\n{}",
                    self.maillog()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the instance (its port closes).
    pub fn stop(&mut self) {
        if self.running {
            let mut cmd = Command::new("bash");
            cmd.arg(Self::script()).arg("stop").arg(self.dir());
            let out = run(cmd, Duration::from_secs(30));
            assert!(
                out.status.success(),
                "postfix-instance.sh stop failed: {}",
                describe(&out)
            );
            self.running = false;
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.running {
            // Never panic here: this may run while a failed test unwinds.
            let _ = Command::new("bash")
                .arg(Self::script())
                .arg("stop")
                .arg(self.dir())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Exit status, stdout and stderr of a finished command, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Dovecot as Postfix's SASL server

/// Dovecot's auth service alone (no IMAP or POP3), as the SASL server of a [`Postfix`]
/// instance (`smtpd_sasl_type = dovecot`, `smtpd_sasl_path =` [`DovecotSasl::socket`]). Every
/// user has one made-up password (a static passdb); it runs from its own configuration in a
/// temporary directory (`dovecot -c FILE -F`, nothing of the system's Dovecot is touched) and
/// is killed on drop.
pub struct DovecotSasl {
    /// The auth socket Postfix connects to (mode 0666).
    pub socket: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl DovecotSasl {
    /// Starts the auth service offering `mechanisms` (Dovecot's `auth_mechanisms`, e.g.
    /// `plain login cram-md5 anonymous`) and waits for its socket.
    pub fn start(mechanisms: &str) -> DovecotSasl {
        let dovecot = program("dovecot");
        let dir = daemon_tempdir();
        let root = dir.path();
        let socket = root.join("auth");
        let config = format!(
            "protocols =\n\
             base_dir = {root}/run\n\
             state_dir = {root}/state\n\
             log_path = {root}/dovecot.log\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = {mechanisms}\n\
             auth_anonymous_username = anonymous\n\
             passdb {{\n  driver = static\n  args = password=not-a-real-password\n}}\n\
             userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={root}/home\n}}\n\
             service auth {{\n  unix_listener {socket} {{\n    mode = 0666\n  }}\n}}\n",
            root = root.display(),
            socket = socket.display(),
        );
        let conf = root.join("dovecot.conf");
        fs::write(&conf, config).expect("write dovecot.conf");
        let log = root.join("dovecot.log");
        let mut child = Command::new(dovecot)
            .arg("-c")
            .arg(&conf)
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dovecot ({INSTALL_HINT}): {e}"));
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dovecot exited with {status}: {}", tail(&log, 20));
            }
            if Instant::now() >= deadline {
                panic!(
                    "dovecot's auth socket is not there after {START_TIMEOUT:?}: {}",
                    tail(&log, 20)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        DovecotSasl { socket, dir, child }
    }

    /// Dovecot's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for DovecotSasl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A redis-server of its own: loopback, a free port, no persistence (`save ""`, no AOF), its
/// files in a temporary directory. Killed on drop.
pub struct RedisServer {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `requirepass`, when set.
    password: Option<String>,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it listens.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None)
    }

    /// Starts redis-server that requires `password` (`requirepass`).
    pub fn start_with(password: Option<&str>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("ravelin-redis-")
            .tempdir()
            .expect("create a temporary directory");
        let mut server = RedisServer {
            addr: free_addr(),
            dir,
            child: None,
            password: password.map(str::to_string),
        };
        server.spawn();
        server
    }

    /// `redis://[:PASSWORD@]ADDR/DB`.
    pub fn url(&self, db: u8) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@{}/{db}", self.addr),
            None => format!("redis://{}/{db}", self.addr),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("redis.conf");
        fs::write(
            &conf,
            format!(
                "bind {}\nport {}\nprotected-mode no\ndaemonize no\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\n{}",
                self.addr.ip(),
                self.addr.port(),
                self.dir.path().display(),
                self.log_path().display(),
                self.password
                    .as_ref()
                    .map(|p| format!("requirepass {p}\n"))
                    .unwrap_or_default()
            ),
        )
        .expect("write redis.conf");
        let child = Command::new(program("redis-server"))
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}; {INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !is_listening(self.addr) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!(
                    "redis-server exited with {status}: {}",
                    tail(&self.log_path(), 20)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server is not listening on {} after {START_TIMEOUT:?}",
                    self.addr
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same address.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Ravelin

/// One `[[listen]]` entry.
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub kind: String,
    pub tls: String,
}

/// A gateway configuration, rendered to TOML by [`Ravelin::start`]. Holds the keys of the
/// configuration contract; [`RavelinConfig::set`] adds any other `key = value` line to a
/// section and [`RavelinConfig::extra`] appends raw TOML.
#[derive(Clone, Debug)]
pub struct RavelinConfig {
    pub hostname: String,
    pub listeners: Vec<ListenerSpec>,
    pub domains: Vec<String>,
    pub backends: Vec<String>,
    pub retry_initial: String,
    /// `(section, "key = value")`; section "" is the top level.
    pub lines: Vec<(String, String)>,
    pub extra: String,
}

/// Prefix of the [`RavelinConfig::lines`] section that holds a listener's extra lines.
const LISTEN_SECTION: &str = "[[listen]] ";

/// A TOML basic string (JSON's string escapes are valid TOML).
pub fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialise")
}

fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| toml_string(s)).collect();
    format!("[{}]", quoted.join(", "))
}

impl RavelinConfig {
    /// One inbound listener "mx" (tls = "offer") on a free port, accepting example.org and
    /// relaying to `backend`; retries after 1 s; JSON logs.
    pub fn inbound(backend: SocketAddr) -> Self {
        RavelinConfig {
            hostname: "mx.test.example".into(),
            listeners: vec![ListenerSpec {
                name: "mx".into(),
                address: free_addr(),
                kind: "inbound".into(),
                tls: "offer".into(),
            }],
            domains: vec!["example.org".into()],
            backends: vec![format!("smtp://{backend}")],
            retry_initial: "1s".into(),
            // Sender authentication would ask the system's resolver, outside loopback; tests
            // that want it call `checks`, with their own name servers.
            // The embedded store runs each operation on the blocking pool and syncs a ban to
            // disk; on a loaded test machine that can outlast the default 500 ms bound, and
            // the gateway then fails open (no ban, no count): its designed behaviour, which
            // the tests of an unreachable store ask for with a short timeout of their own.
            lines: vec![
                ("checks".into(), "enabled = false".into()),
                ("state".into(), "timeout = \"5s\"".into()),
            ],
            extra: String::new(),
        }
    }

    /// Turns `[checks]` (SPF, DKIM, DMARC, ARC) on, with `[dns] nameservers` at `dns`.
    pub fn checks(mut self, dns: SocketAddr) -> Self {
        self.lines
            .retain(|(section, line)| !(section == "checks" && line == "enabled = false"));
        self.set("checks", "enabled = true").set(
            "dns",
            &format!("nameservers = [{}]", toml_string(&dns.to_string())),
        )
    }

    /// Adds a listener on a free port.
    pub fn listener(mut self, name: &str, kind: &str, tls: &str) -> Self {
        self.listeners.push(ListenerSpec {
            name: name.into(),
            address: free_addr(),
            kind: kind.into(),
            tls: tls.into(),
        });
        self
    }

    /// Sets `tls` of every listener.
    pub fn tls(mut self, tls: &str) -> Self {
        for l in &mut self.listeners {
            l.tls = tls.into();
        }
        self
    }

    pub fn domains(mut self, domains: &[&str]) -> Self {
        self.domains = domains.iter().map(|d| d.to_string()).collect();
        self
    }

    pub fn backends(mut self, backends: &[&str]) -> Self {
        self.backends = backends.iter().map(|b| b.to_string()).collect();
        self
    }

    pub fn retry_initial(mut self, duration: &str) -> Self {
        self.retry_initial = duration.into();
        self
    }

    /// Adds `line` (e.g. `max_attempts = 3`) to `[section]` ("" for the top level),
    /// replacing a line of that section that sets the same key.
    pub fn set(mut self, section: &str, line: &str) -> Self {
        let key = |l: &str| l.split('=').next().map(|k| k.trim().to_string());
        self.lines
            .retain(|(s, l)| !(s == section && l.contains('=') && key(l) == key(line)));
        self.lines.push((section.into(), line.into()));
        self
    }

    /// Adds `line` (e.g. `max_connections = 10`) to the `[[listen]]` entry called `name`.
    pub fn listen_set(self, name: &str, line: &str) -> Self {
        self.set(&format!("{LISTEN_SECTION}{name}"), line)
    }

    /// Serves `files`' certificate and key (a `[tls]` section).
    pub fn certificate(self, files: &ravelin_tls::testing::TestPkiFiles) -> Self {
        self.extra(&format!(
            "[tls]\ncertificate = {}\nprivate_key = {}",
            toml_string(&files.cert.to_string_lossy()),
            toml_string(&files.key.to_string_lossy())
        ))
    }

    /// Appends raw TOML after everything else (whole tables only).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    fn section_lines(&self, section: &str, out: &mut String) {
        for (s, line) in &self.lines {
            if s == section {
                out.push_str(line);
                out.push('\n');
            }
        }
    }

    /// The TOML text, with the spool at `spool`.
    pub fn render(&self, spool: &Path) -> String {
        let mut out = format!("hostname = {}\n", toml_string(&self.hostname));
        self.section_lines("", &mut out);
        out.push_str("\n[server]\n");
        if is_root() {
            out.push_str("user = \"nobody\"\n");
        }
        self.section_lines("server", &mut out);
        for l in &self.listeners {
            out.push_str(&format!(
                "\n[[listen]]\nname = {}\naddress = {}\nkind = {}\ntls = {}\n",
                toml_string(&l.name),
                toml_string(&l.address.to_string()),
                toml_string(&l.kind),
                toml_string(&l.tls)
            ));
            self.section_lines(&format!("{LISTEN_SECTION}{}", l.name), &mut out);
        }
        out.push_str(&format!(
            "\n[inbound]\ndomains = {}\nbackend = {}\n",
            toml_array(&self.domains),
            toml_array(&self.backends)
        ));
        self.section_lines("inbound", &mut out);
        out.push_str(&format!(
            "\n[spool]\npath = {}\n",
            toml_string(&spool.to_string_lossy())
        ));
        self.section_lines("spool", &mut out);
        out.push_str(&format!(
            "\n[delivery]\nretry_initial = {}\n",
            toml_string(&self.retry_initial)
        ));
        self.section_lines("delivery", &mut out);
        out.push_str("\n[log]\nformat = \"json\"\n");
        self.section_lines("log", &mut out);
        // Tests send nothing off the host: without name servers of its own, a gateway asks
        // a closed loopback port (lookups fail at once) instead of the system's resolver, so
        // that direct delivery to a remote domain (a bounce, say) never leaves 127.0.0.0/8.
        let has_nameservers = self
            .lines
            .iter()
            .any(|(s, l)| s == "dns" && l.trim_start().starts_with("nameservers"));
        let mut lines = self.lines.clone();
        if !has_nameservers && !self.extra.contains("[dns]") {
            lines.push(("dns".into(), "nameservers = [\"127.0.0.1:9\"]".into()));
        }
        let this = RavelinConfig {
            lines,
            ..self.clone()
        };
        let known = ["", "server", "inbound", "spool", "delivery", "log"];
        let others: BTreeSet<&str> = this
            .lines
            .iter()
            .map(|(s, _)| s.as_str())
            .filter(|s| !known.contains(s) && !s.starts_with(LISTEN_SECTION))
            .collect();
        for section in others {
            out.push_str(&format!("\n[{section}]\n"));
            this.section_lines(section, &mut out);
        }
        if !self.extra.is_empty() {
            out.push('\n');
            out.push_str(&self.extra);
        }
        out
    }
}

/// The gateway binary under test, serving from a temporary directory:
/// `ravelin.toml` (config), `spool/` (left for the gateway to create), `ravelin.log`
/// (stderr, JSON lines, appended across restarts), `ravelin.out` (stdout).
pub struct Ravelin {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    spool: PathBuf,
    listeners: Vec<(String, SocketAddr)>,
    child: Option<Child>,
}

impl Ravelin {
    /// Writes the config and starts `ravelin serve`, returning once every listener listens.
    pub fn start(config: RavelinConfig) -> Ravelin {
        Self::start_with(config, |_| {})
    }

    /// Like [`Ravelin::start`], but calls `prepare` with the spool path (which does not exist
    /// yet) before starting the gateway, e.g. to mount a small file system there.
    pub fn start_with(config: RavelinConfig, prepare: impl FnOnce(&Path)) -> Ravelin {
        let dir = daemon_tempdir();
        let spool = dir.path().join("spool");
        let config_path = dir.path().join("ravelin.toml");
        fs::write(&config_path, config.render(&spool)).expect("write ravelin.toml");
        let listeners = config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.address))
            .collect();
        let mut ravelin = Ravelin {
            dir,
            config_path,
            spool,
            listeners,
            child: None,
        };
        prepare(&ravelin.spool);
        ravelin.spawn();
        ravelin
    }

    fn exe() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_ravelin"))
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open ravelin.log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ravelin.out"))
            .expect("open ravelin.out");
        let child = Command::new(Self::exe())
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Self::exe().display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.listeners.iter().all(|(_, addr)| is_listening(*addr)) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "ravelin exited with {status} before listening on {:?}; config:\n{}\nlog:\n{}",
                    self.listeners,
                    fs::read_to_string(&self.config_path).unwrap_or_default(),
                    tail(&self.log_path(), 40)
                );
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "ravelin is not listening on {:?} after {START_TIMEOUT:?}; log:\n{}",
                    self.listeners,
                    tail(&self.log_path(), 40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener named {name}"))
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn spool(&self) -> &Path {
        &self.spool
    }

    /// Names in a spool subdirectory (`queue`, `incoming`, `corrupt`, ...), sorted.
    pub fn spool_entries(&self, sub: &str) -> Vec<String> {
        let dir = self.spool.join(sub);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("ravelin.log")
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything written to stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log as JSON objects; panics on a line that is not one (the log contract). A last
    /// line still being written (no newline yet) is left for the next read.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        let text = self.log_text();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
                Ok(v) if v.is_object() => v,
                _ => panic!("ravelin log line is not a JSON object: {l}"),
            })
            .collect()
    }

    /// Log objects whose `event` is `event`.
    pub fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.log_events()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Waits for a log object with `event` for which `matches` holds.
    pub fn wait_for_event(
        &self,
        event: &str,
        timeout: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.events(event).into_iter().find(|v| matches(v)) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {event:?} log event within {timeout:?}; log:\n{}",
                    tail(&self.log_path(), 40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs another subcommand against the same config, e.g. `["queue", "list", "--json"]`
    /// (`--config FILE` is appended).
    pub fn command(&self, args: &[&str]) -> Output {
        self.command_with_input(args, None)
    }

    /// Like [`Ravelin::command`], with `input` on standard input (e.g. a password).
    pub fn command_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(Self::exe());
        cmd.args(args).arg("--config").arg(&self.config_path);
        run_with_input(cmd, input, Duration::from_secs(60))
    }

    /// `ravelin queue list --json`: one object per queued or held message.
    pub fn queue_list(&self) -> Vec<serde_json::Value> {
        let out = self.command(&["queue", "list", "--json"]);
        assert!(out.status.success(), "queue list: {}", describe(&out));
        match serde_json::from_slice(&out.stdout) {
            Ok(serde_json::Value::Array(entries)) => entries,
            _ => panic!("queue list --json is not a JSON array: {}", describe(&out)),
        }
    }

    /// `ravelin ban list --json`: one object per ban in force.
    pub fn ban_list(&self) -> Vec<serde_json::Value> {
        let out = self.command(&["ban", "list", "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).expect("ban list --json is JSON")
    }

    /// The directory holding the config, the log and the spool (e.g. for a users file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the running gateway without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("ravelin is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal ravelin");
    }

    /// Waits at most `timeout` for the gateway to exit; `None` if it still runs then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("ravelin is not running");
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => return None,
                Err(e) => panic!("waiting for ravelin: {e}"),
            }
        }
    }

    /// SIGTERM and wait (at most 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("ravelin is not running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "ravelin did not exit within 30 s of SIGTERM; log:\n{}",
                        tail(&self.log_path(), 40)
                    );
                }
            }
        }
    }

    /// Stops it with SIGTERM if it still runs, then starts it again with the same config,
    /// spool and log file.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        self.spawn();
    }
}

impl Drop for Ravelin {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// slapd

/// The directory suffix of every [`Slapd`].
pub const LDAP_SUFFIX: &str = "dc=example,dc=org";

/// An OpenLDAP server of its own: `slapd -f` with a generated slapd.conf (core, cosine and
/// inetorgperson schemas, plus [`AD_MAIL_SCHEMA`] for Active Directory's `proxyAddresses`;
/// one mdb database under [`LDAP_SUFFIX`], people in `ou=people`), loaded with slapadd before
/// it starts, listening on `ldap://` (StartTLS
/// offered) and `ldaps://` on free loopback ports with a certificate from `pki`. Operations
/// other than bind need an authenticated client (`require authc`): a search must bind first.
pub struct Slapd {
    child: Child,
    dir: tempfile::TempDir,
    /// `ldap://127.0.0.1:PORT`.
    pub url: String,
    /// `ldaps://NAME:PORT`, NAME being the certificate's host name (resolving to loopback).
    pub ldaps_url: String,
}

/// Active Directory's `proxyAddresses` (its AD OID, compared without case as AD does) and an
/// auxiliary class `ravelinTestMailRecipient` that allows it on any entry.
pub const AD_MAIL_SCHEMA: &str = "attributetype ( 1.2.840.113556.1.2.210 NAME 'proxyAddresses'\n\
     \tEQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch\n\
     \tSYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )\n\
     objectclass ( 1.3.6.1.4.1.4203.666.11.1 NAME 'ravelinTestMailRecipient'\n\
     \tSUP top AUXILIARY MAY proxyAddresses )\n";

impl Slapd {
    /// [`Slapd::start_with`] without further entries.
    pub fn start(
        people: &[(&str, &str, &str)],
        pki: &ravelin_tls::testing::TestPki,
        tls_name: &str,
    ) -> Slapd {
        Self::start_with(people, pki, tls_name, "")
    }

    /// Starts slapd with one inetOrgPerson `uid=UID,ou=people,...` per `(uid, mail,
    /// password)`, the password stored as a salted SHA hash made by slappasswd. The TLS
    /// certificate is `pki`'s, issued for `tls_name`, which must resolve to 127.0.0.1.
    /// `extra_ldif` (LDIF records, each starting with a blank line) is loaded after them.
    pub fn start_with(
        people: &[(&str, &str, &str)],
        pki: &ravelin_tls::testing::TestPki,
        tls_name: &str,
        extra_ldif: &str,
    ) -> Slapd {
        let dir = daemon_tempdir();
        let d = dir.path();
        let files = pki.write_to(d).expect("write the slapd certificate");
        let db = d.join("db");
        fs::create_dir(&db).expect("create the slapd database directory");
        let conf = d.join("slapd.conf");
        let ad_schema = d.join("ad-mail.schema");
        fs::write(&ad_schema, AD_MAIL_SCHEMA).expect("write the AD mail schema");
        fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 include {ad_schema}\n\
                 modulepath /usr/lib/ldap\n\
                 moduleload back_mdb\n\
                 pidfile {pid}\n\
                 TLSCertificateFile {cert}\n\
                 TLSCertificateKeyFile {key}\n\
                 require authc\n\
                 database mdb\n\
                 suffix \"{LDAP_SUFFIX}\"\n\
                 rootdn \"cn=admin,{LDAP_SUFFIX}\"\n\
                 directory {db}\n\
                 maxsize 10485760\n",
                pid = d.join("slapd.pid").display(),
                ad_schema = ad_schema.display(),
                cert = files.cert.display(),
                key = files.key.display(),
                db = db.display(),
            ),
        )
        .expect("write slapd.conf");
        let mut ldif = format!(
            "dn: {LDAP_SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: ou=people,{LDAP_SUFFIX}\nobjectClass: organizationalUnit\nou: people\n"
        );
        for (uid, mail, password) in people {
            let mut cmd = Command::new(program("slappasswd"));
            cmd.args(["-s", password]);
            let out = run(cmd, Duration::from_secs(20));
            assert!(out.status.success(), "slappasswd: {}", describe(&out));
            let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
            ldif.push_str(&format!(
                "\ndn: uid={uid},ou=people,{LDAP_SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\n\
                 cn: {uid}\nsn: {uid}\nmail: {mail}\nuserPassword: {hash}\n"
            ));
        }
        ldif.push_str(extra_ldif);
        let ldif_path = d.join("people.ldif");
        fs::write(&ldif_path, ldif).expect("write the LDIF");
        let mut cmd = Command::new(program("slapadd"));
        cmd.arg("-f").arg(&conf).arg("-l").arg(&ldif_path);
        let out = run(cmd, Duration::from_secs(30));
        assert!(out.status.success(), "slapadd: {}", describe(&out));

        let (plain, tls) = (free_addr(), free_addr());
        let url = format!("ldap://{plain}");
        let ldaps_url = format!("ldaps://{tls_name}:{}", tls.port());
        let child = Command::new(program("slapd"))
            .arg("-f")
            .arg(&conf)
            .arg("-h")
            .arg(format!("{url}/ ldaps://{tls}/"))
            // Debug level 0 keeps it in the foreground, a child we can kill.
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(File::create(d.join("slapd.out")).expect("create slapd.out"))
            .stderr(File::create(d.join("slapd.err")).expect("create slapd.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start slapd: {e}; {INSTALL_HINT}"));
        let mut slapd = Slapd {
            child,
            dir,
            url,
            ldaps_url,
        };
        wait_started(
            "slapd",
            &mut slapd.child,
            &[plain, tls],
            &slapd.dir.path().join("slapd.err"),
        );
        slapd
    }

    /// slapd's diagnostics so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("slapd.err")).unwrap_or_default()
    }

    /// Stops the server (its ports close).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

// dkimpy

/// What dkimpy said about one DKIM-Signature of a message.
#[derive(Clone, Debug)]
pub struct DkimVerdict {
    pub ok: bool,
    /// dkimpy's log of the verification (why it failed).
    pub log: String,
}

/// Verifies every DKIM-Signature of every message with dkimpy (the independent verifier, in
/// the repository's venv), answering its key lookups from `records` (name → TXT text, e.g.
/// `sel._domainkey.example.org` → `v=DKIM1; k=rsa; p=...`) instead of DNS. One verdict per
/// signature, in header order, per message.
pub fn dkimpy_verify(messages: &[Vec<u8>], records: &[(String, String)]) -> Vec<Vec<DkimVerdict>> {
    const SCRIPT: &str = r#"
import io, json, logging, sys
import dkim
req = json.load(open(sys.argv[1]))
records = {k.lower().rstrip('.'): v for k, v in req['records']}
def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.lower().rstrip('.'), '').encode()
out = []
for m in req['messages']:
    msg = open(m, 'rb').read()
    count = sum(1 for k, _ in dkim.DKIM(msg).headers if k.lower() == b'dkim-signature')
    verdicts = []
    for i in range(count):
        buf = io.StringIO()
        log = logging.getLogger('dkimpy-%d' % len(out))
        log.handlers = [logging.StreamHandler(buf)]
        log.setLevel(logging.DEBUG)
        try:
            ok = bool(dkim.DKIM(msg, logger=log).verify(idx=i, dnsfunc=dnsfunc))
        except Exception as e:
            ok = False
            buf.write('exception: %r' % (e,))
        verdicts.append({'ok': ok, 'log': buf.getvalue()})
    out.append(verdicts)
print(json.dumps(out))
"#;
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut paths = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let path = dir.path().join(format!("message-{i}.eml"));
        fs::write(&path, m).expect("write a message for dkimpy");
        paths.push(path.to_string_lossy().into_owned());
    }
    let request = dir.path().join("request.json");
    let body = serde_json::json!({ "records": records, "messages": paths });
    fs::write(&request, body.to_string()).expect("write the dkimpy request");
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(SCRIPT).arg(&request);
    let out = run(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "dkimpy failed ({INSTALL_HINT}): {}",
        describe(&out)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("dkimpy output ({e}): {}", describe(&out)));
    parsed
        .as_array()
        .expect("a list per message")
        .iter()
        .map(|m| {
            m.as_array()
                .expect("a list per signature")
                .iter()
                .map(|v| DkimVerdict {
                    ok: v["ok"].as_bool().unwrap_or(false),
                    log: v["log"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .collect()
}

// Fault injection

/// What a [`FlakyBackend`] does to the transactions it is offered; read at each DATA, so a
/// connection the gateway keeps open for reuse follows a change too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// Answers 354, reads the first chunk of the message and resets the connection (RST).
    ResetInData,
    /// Reads the whole message and answers the end of data with `451 4.3.0`.
    TempFailData,
}

/// A scripted next hop for fault injection, not a mail server: it speaks just enough SMTP
/// (220, EHLO with PIPELINING, 250 to MAIL/RCPT/RSET/NOOP, 354 to DATA, 221 to QUIT) to get a
/// message started, then fails it as its [`Flaw`] says. Nothing it reads is kept. Each DATA
/// it failed is counted per flaw. [`FlakyBackend::stop`] closes the listener and every
/// connection (so a real peer can take over the port).
pub struct FlakyBackend {
    pub addr: SocketAddr,
    flaw: std::sync::Arc<Mutex<Flaw>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failed: std::sync::Arc<Mutex<Vec<Flaw>>>,
    threads: std::sync::Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
    acceptor: Option<thread::JoinHandle<()>>,
}

/// How often a [`FlakyBackend`] thread looks at its stop flag while waiting for input.
const FLAKY_POLL: Duration = Duration::from_millis(100);

impl FlakyBackend {
    pub fn start(flaw: Flaw) -> FlakyBackend {
        let listener = TcpListener::bind(free_addr()).expect("bind the flaky backend");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let mut backend = FlakyBackend {
            addr,
            flaw: std::sync::Arc::new(Mutex::new(flaw)),
            stop: Default::default(),
            failed: Default::default(),
            threads: Default::default(),
            acceptor: None,
        };
        let (flaw, stop, failed, threads) = (
            backend.flaw.clone(),
            backend.stop.clone(),
            backend.failed.clone(),
            backend.threads.clone(),
        );
        backend.acceptor = Some(thread::spawn(move || {
            use std::sync::atomic::Ordering;
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (flaw, stop, failed) = (flaw.clone(), stop.clone(), failed.clone());
                        let handle = thread::spawn(move || {
                            let _ = flaky_session(stream, &flaw, &stop, &failed);
                        });
                        threads
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(handle);
                    }
                    Err(_) => thread::sleep(FLAKY_POLL / 4),
                }
            }
        }));
        backend
    }

    pub fn set(&self, flaw: Flaw) {
        *self.flaw.lock().unwrap_or_else(|e| e.into_inner()) = flaw;
    }

    /// Transactions failed so far with `flaw`.
    pub fn failed(&self, flaw: Flaw) -> usize {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.iter().filter(|f| **f == flaw).count()
    }

    /// Closes the listener and every connection, and waits for the threads.
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for FlakyBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One connection of a [`FlakyBackend`]; returns when the peer leaves, on a reset, or on stop.
fn flaky_session(
    mut stream: TcpStream,
    flaw: &Mutex<Flaw>,
    stop: &std::sync::atomic::AtomicBool,
    failed: &Mutex<Vec<Flaw>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(FLAKY_POLL))?;
    stream.write_all(b"220 flaky.test.example ESMTP\r\n")?;
    let mut buf = Vec::new();
    let mut in_data = false;
    loop {
        if in_data {
            let current = *flaw.lock().unwrap_or_else(|e| e.into_inner());
            match current {
                Flaw::ResetInData if !buf.is_empty() => {
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(current);
                    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
                    return Ok(()); // dropping the socket with linger 0 sends RST
                }
                Flaw::TempFailData => {
                    if let Some(end) = buf.windows(5).position(|w| w == b"\r\n.\r\n") {
                        buf.drain(..end + 5);
                        in_data = false;
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(current);
                        stream.write_all(b"451 4.3.0 flaky backend: try again later\r\n")?;
                        continue;
                    }
                    // Keep only what could be the start of the terminator.
                    let keep = buf.len().saturating_sub(4);
                    buf.drain(..keep);
                }
                Flaw::ResetInData => {}
            }
        } else if let Some(nl) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..nl + 2).collect();
            let verb = String::from_utf8_lossy(&line[..nl]).to_ascii_uppercase();
            let verb = verb.split([' ', ':']).next().unwrap_or("");
            let reply: &[u8] = match verb {
                "EHLO" => b"250-flaky.test.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 End data with <CR><LF>.<CR><LF>\r\n"
                }
                "QUIT" => {
                    stream.write_all(b"221 2.0.0 Bye\r\n")?;
                    return Ok(());
                }
                _ => b"502 5.5.2 Error: command not recognized\r\n",
            };
            stream.write_all(reply)?;
            continue;
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process inspection

/// A `kB` field of /proc/PID/status (e.g. `VmHWM`, the peak resident set), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The TCP sockets `pid` listens on (IPv4 and IPv6), from the calling thread's socket tables
/// and the inodes of its open descriptors.
pub fn listening_sockets(pid: u32) -> BTreeSet<SocketAddr> {
    let inodes: BTreeSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .filter_map(|e| {
            let target = fs::read_link(e.ok()?.path()).ok()?;
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut out = BTreeSet::new();
    for table in TCP_TABLES {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != "0A" || !inodes.contains(fields[9]) {
                continue;
            }
            if let Some(addr) = parse_proc_addr(fields[1]) {
                out.insert(addr);
            }
        }
    }
    out
}

/// `0100007F:1F90` or the 32-hex-digit IPv6 form → a socket address.
fn parse_proc_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut octets = Vec::new();
    for word in 0..ip.len() / 8 {
        let w = u32::from_str_radix(&ip[word * 8..word * 8 + 8], 16).ok()?;
        octets.extend_from_slice(&w.to_ne_bytes());
    }
    let ip = match octets.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(octets).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(octets).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Runs `ravelin ARGS…` without a configuration file (e.g. `["audit", …]`) to completion.
pub fn ravelin_cli(args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(Ravelin::exe());
    cmd.args(args);
    run(cmd, timeout)
}

// ---------------------------------------------------------------------------------------------
// Unbound

/// unbound on a free loopback port, answering `records` of a static `zone` and nothing else
/// (no recursion, no DNSSEC); stopped on drop.
pub struct Unbound {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Unbound {
    /// `records` are zone-file lines such as `"mx.audit.test. A 127.0.0.1"`.
    pub fn start(zone: &str, records: &[&str]) -> Unbound {
        let exe = program("unbound");
        let dir = daemon_tempdir();
        let addr = free_addr();
        let mut conf = format!(
            "server:\n  interface: {ip}\n  port: {port}\n  do-ip6: no\n  do-daemonize: no\n  \
             username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  \
             use-syslog: no\n  logfile: \"\"\n  module-config: \"iterator\"\n  \
             access-control: 127.0.0.0/8 allow\n  local-zone: \"{zone}\" static\n",
            ip = addr.ip(),
            port = addr.port(),
            dir = dir.path().display(),
        );
        for r in records {
            conf.push_str(&format!("  local-data: \"{r}\"\n"));
        }
        let conf_path = dir.path().join("unbound.conf");
        fs::write(&conf_path, conf).expect("write unbound.conf");
        let child = Command::new(exe)
            .arg("-d")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("unbound.out")).expect("create unbound.out"))
            .stderr(File::create(dir.path().join("unbound.err")).expect("create unbound.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start unbound: {e}; {INSTALL_HINT}"));
        let mut unbound = Unbound {
            child: Some(child),
            addr,
            dir,
        };
        if !wait_for_port(addr, START_TIMEOUT) {
            let err = tail(&unbound.dir.path().join("unbound.err"), 20);
            unbound.stop();
            panic!("unbound is not listening on {addr}: {err}");
        }
        unbound
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.1 GET to a metrics endpoint, the connection closed after it: the status and the body.
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read the response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` in a Prometheus text page, if present.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}
