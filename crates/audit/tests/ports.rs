//! `ports.exposed` against real listeners on loopback: Dovecot (IMAP and POP3) started from
//! its own configuration file in a temporary directory (`dovecot -c FILE -F`, nothing of the
//! system's Dovecot is touched), once hardened (`disable_plaintext_auth = yes`) and once weak
//! (clear-text logins allowed before STARTTLS, implicit-TLS ports open too), Postfix's
//! smtp-sink as an SMTP listener, and a port nobody listens on.
//!
//! Needs dovecot-imapd, dovecot-pop3d and postfix (scripts/install-test-deps.sh) and root
//! (Dovecot's master drops to its own users).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ravelin_audit::ports::{PortOptions, PortSpec, Service, scan_ports};
use ravelin_audit::{Finding, Severity, Status};

const INSTALL_HINT: &str = "install the test peers with scripts/install-test-deps.sh";
/// The audited host. Not 127.0.0.1: Dovecot counts a client whose address equals its own as
/// secured and then allows clear-text logins; the auditor connects from 127.0.0.1.
const HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A port of [`HOST`] that was free a moment ago.
fn unused_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

fn sbin(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed: {INSTALL_HINT}"))
}

/// Waits until `addr` accepts a connection (which the server sees as a client that left).
fn wait_open(addr: SocketAddr, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{addr}: the server exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{addr} is not listening: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A running server process, killed on drop, with its temporary directory.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ports of a Dovecot test instance (0: the listener is off).
struct DovecotPorts {
    imap: u16,
    pop3: u16,
    imaps: u16,
    pop3s: u16,
}

/// Starts Dovecot on [`HOST`] with `plaintext` logins allowed or not; with `tls`, a
/// certificate (STARTTLS and the implicit-TLS ports).
fn dovecot(plaintext: bool, tls: bool) -> (Server, DovecotPorts) {
    let dir = tempfile::Builder::new()
        .prefix("ravelin-dovecot-")
        .tempdir()
        .expect("temporary directory");
    let root = dir.path();
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let ports = DovecotPorts {
        imap: unused_port(),
        pop3: unused_port(),
        imaps: if tls { unused_port() } else { 0 },
        pop3s: if tls { unused_port() } else { 0 },
    };
    let ssl = if tls {
        let pki = ravelin_tls::testing::TestPki::new("mail.test.example").expect("test PKI");
        let files = pki.write_to(root).expect("write the PKI");
        format!(
            "ssl = yes\nssl_cert = <{}\nssl_key = <{}\n",
            files.cert.display(),
            files.key.display()
        )
    } else {
        "ssl = no\n".to_string()
    };
    let config = format!(
        "protocols = imap pop3\n\
         listen = {host}\n\
         base_dir = {root}/run\n\
         state_dir = {root}/state\n\
         log_path = {root}/dovecot.log\n\
         {ssl}\
         disable_plaintext_auth = {plain}\n\
         auth_mechanisms = plain login\n\
         passdb {{\n  driver = static\n  args = password=not-a-real-password\n}}\n\
         userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={root}/home\n}}\n\
         service imap-login {{\n  inet_listener imap {{\n    port = {imap}\n  }}\n  inet_listener imaps {{\n    port = {imaps}\n  }}\n}}\n\
         service pop3-login {{\n  inet_listener pop3 {{\n    port = {pop3}\n  }}\n  inet_listener pop3s {{\n    port = {pop3s}\n  }}\n}}\n",
        host = HOST,
        root = root.display(),
        plain = if plaintext { "no" } else { "yes" },
        imap = ports.imap,
        pop3 = ports.pop3,
        imaps = ports.imaps,
        pop3s = ports.pop3s,
    );
    let conf = root.join("dovecot.conf");
    std::fs::write(&conf, config).expect("write dovecot.conf");
    let log = root.join("dovecot.log");
    let mut child = Command::new(sbin("dovecot"))
        .arg("-c")
        .arg(&conf)
        .arg("-F")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dovecot ({INSTALL_HINT}): {e}"));
    for port in [ports.imap, ports.pop3, ports.imaps, ports.pop3s] {
        if port != 0 {
            wait_open(SocketAddr::new(HOST, port), &mut child, &log);
        }
    }
    (Server { child, _dir: dir }, ports)
}

/// Postfix's smtp-sink on a port of [`HOST`].
fn smtp_sink() -> (Server, u16) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let port = unused_port();
    let addr = SocketAddr::new(HOST, port);
    let log = dir.path().join("smtp-sink.log");
    let mut child = Command::new(sbin("smtp-sink"))
        .args(["-u", "nobody"])
        .arg(addr.to_string())
        .arg("10")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start smtp-sink ({INSTALL_HINT}): {e}"));
    wait_open(addr, &mut child, &log);
    (Server { child, _dir: dir }, port)
}

fn scan(ports: &[PortSpec]) -> Vec<Finding> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let options = PortOptions {
        timeout: Duration::from_secs(5),
        concurrency: 2,
    };
    runtime.block_on(scan_ports(Some("mail.test.example"), HOST, ports, &options))
}

fn at(findings: &[Finding], port: u16) -> &Finding {
    let endpoint = format!("mail.test.example[127.0.0.2]:{port}");
    findings
        .iter()
        .find(|f| f.endpoint == endpoint)
        .unwrap_or_else(|| panic!("no finding for {endpoint} in {findings:#?}"))
}

#[test]
fn hardened_dovecot_smtp_and_a_closed_port() {
    let (_sink, smtp) = smtp_sink();
    let (_dovecot, dc) = dovecot(false, false);
    let closed = unused_port();
    let ports = [
        PortSpec {
            port: smtp,
            service: Service::Smtp,
        },
        PortSpec {
            port: closed,
            service: Service::Submission,
        },
        PortSpec {
            port: dc.pop3,
            service: Service::Pop3,
        },
        PortSpec {
            port: dc.imap,
            service: Service::Imap,
        },
    ];
    let findings = scan(&ports);
    assert!(findings.iter().all(|f| f.id == "ports.exposed"));
    let sink = at(&findings, smtp);
    assert_eq!(
        (sink.status, sink.title.as_str()),
        (
            Status::Info,
            format!("SMTP ({smtp}) accepts connections").as_str()
        )
    );

    // Clear-text ports answer, but refuse logins before TLS.
    let pop3 = at(&findings, dc.pop3);
    assert_eq!(
        (pop3.status, pop3.severity),
        (Status::Warn, Severity::Low),
        "{pop3:#?}"
    );
    assert!(pop3.title.ends_with("logins only after TLS"), "{pop3:#?}");
    assert!(pop3.evidence.starts_with("+OK Dovecot"), "{pop3:#?}");
    let imap = at(&findings, dc.imap);
    assert_eq!(
        (imap.status, imap.severity),
        (Status::Warn, Severity::Low),
        "{imap:#?}"
    );
    assert!(imap.evidence.contains("LOGINDISABLED"), "{imap:#?}");

    let summary = findings.last().expect("a summary finding");
    assert_eq!(summary.endpoint, "mail.test.example[127.0.0.2]");
    assert_eq!(
        (summary.status, summary.title.as_str()),
        (Status::Pass, "1 of 4 mail ports not reachable")
    );
    assert_eq!(summary.evidence, format!("{closed} submission (closed)"));
}

#[test]
fn weak_dovecot_offers_clear_text_logins_before_starttls() {
    let (_dovecot, dc) = dovecot(true, true);
    let ports = [
        PortSpec {
            port: dc.imap,
            service: Service::Imap,
        },
        PortSpec {
            port: dc.pop3,
            service: Service::Pop3,
        },
        PortSpec {
            port: dc.imaps,
            service: Service::Imaps,
        },
        PortSpec {
            port: dc.pop3s,
            service: Service::Pop3s,
        },
    ];
    let findings = scan(&ports);
    assert_eq!(
        findings.len(),
        4,
        "every port answers, no summary: {findings:#?}"
    );
    for port in [dc.imap, dc.pop3] {
        let f = at(&findings, port);
        assert_eq!(
            (f.status, f.severity),
            (Status::Fail, Severity::Medium),
            "{f:#?}"
        );
        assert!(
            f.title
                .ends_with("accepts a clear-text password before STARTTLS"),
            "{f:#?}"
        );
        assert!(f.fix.contains("disable_plaintext_auth = yes"), "{f:#?}");
    }
    assert!(at(&findings, dc.imap).evidence.contains("AUTH=PLAIN"));
    assert!(at(&findings, dc.pop3).evidence.contains("USER"));
    for port in [dc.imaps, dc.pop3s] {
        let f = at(&findings, port);
        assert_eq!(
            (f.status, f.severity),
            (Status::Warn, Severity::Low),
            "{f:#?}"
        );
    }
}
