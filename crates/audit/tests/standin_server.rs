//! The SMTP checks whose failing side needs a server that cannot run on this machine, against
//! a scripted stand-in on loopback that answers as those servers do on the wire:
//!
//! - `smtp.ntlm_info` (and the NTLM side of `smtp.clock_skew` and `smtp.software`): Exchange's
//!   AUTH NTLM challenge names the internal domain and host, the Windows build and the
//!   server's clock. Exchange and Windows cannot run here, and Debian's Dovecot has no NTLM
//!   mechanism ("Unknown authentication mechanism 'NTLM'"), so no installed peer sends one.
//! - `smtp.expn`: Sendmail without `goaway` expands aliases with EXPN; Postfix, Dovecot and
//!   Ravelin do not implement EXPN, and Sendmail or Exim cannot be installed next to Postfix
//!   (Debian's mail-transport-agent packages conflict).
//!
//! The challenge is built with `ravelin_audit::smtp::ntlm::build_challenge` in the layout of
//! MS-NLMP 2.2.1.2, which `parse_challenge` is unit-tested against; what this file adds is the
//! whole path through the probe: a real TCP session, EHLO parsing, the AUTH exchange in base64
//! and its cancellation, and the verdicts of `smtp::audit_endpoint`. The passing side of both
//! checks is also asserted against real servers in crates/ravelin/tests/audit.rs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ravelin_audit::select::Selection;
use ravelin_audit::smtp::ntlm::{OsVersion, build_challenge};
use ravelin_audit::smtp::{self, SmtpOptions};
use ravelin_audit::target::{Endpoint, Role};
use ravelin_audit::{Finding, Severity, Status};

/// How the stand-in answers.
#[derive(Clone)]
struct Script {
    /// The greeting after `220 `.
    greeting: String,
    /// The CHALLENGE message sent for AUTH NTLM; `None`: NTLM is not offered.
    ntlm: Option<Vec<u8>>,
    /// EXPN lists the members of postmaster (Sendmail without `goaway`), else 502.
    expn: bool,
    /// DATA is accepted and read as the servers hit by SMTP smuggling read it: NULs
    /// dropped, a lone CR or LF taken as a line end, so any of the fake endings ends the
    /// message. `false`: DATA is refused.
    lenient_data: bool,
}

impl Script {
    /// One reply (lines without CRLF) to one command line.
    fn answer(&self, line: &str) -> Vec<String> {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        match verb {
            "EHLO" => {
                let mut lines = vec!["250-mail.example.org Hello".to_string()];
                if self.ntlm.is_some() {
                    lines.push("250-AUTH NTLM".into());
                }
                lines.push("250-SIZE 36700160".into());
                lines.push("250 ENHANCEDSTATUSCODES".into());
                lines
            }
            "HELO" | "MAIL" | "RSET" | "NOOP" => vec!["250 2.0.0 OK".into()],
            "RCPT" if upper.contains("POSTMASTER@EXAMPLE.ORG") => {
                vec!["250 2.1.5 Recipient OK".into()]
            }
            "RCPT" => vec!["550 5.1.1 User unknown".into()],
            "VRFY" => vec!["252 2.1.5 Cannot VRFY user".into()],
            "EXPN" if self.expn => vec![
                "250-2.1.5 Alice Admin <alice@example.org>".into(),
                "250 2.1.5 Bob Backup <bob@example.org>".into(),
            ],
            "AUTH" if upper.starts_with("AUTH NTLM ") => match &self.ntlm {
                Some(challenge) => vec![format!("334 {}", BASE64.encode(challenge))],
                None => vec!["504 5.7.4 Unrecognized authentication type".into()],
            },
            "AUTH" => vec!["504 5.7.4 Unrecognized authentication type".into()],
            "*" => vec!["501 5.7.0 Authentication cancelled".into()],
            "DATA" if self.lenient_data => vec!["354 Start mail input".into()],
            "DATA" => vec!["554 5.5.1 No valid recipients".into()],
            "QUIT" => vec!["221 2.0.0 Bye".into()],
            _ => vec!["502 5.3.3 Command not implemented".into()],
        }
    }

    /// Answers every line (at most 4 KiB) of one session until QUIT or the client leaves.
    fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut out = stream.try_clone()?;
        write!(out, "220 {}\r\n", self.greeting)?;
        let mut reader = BufReader::new(stream);
        loop {
            let mut buf = Vec::new();
            if (&mut reader).take(4096).read_until(b'\n', &mut buf)? == 0 {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.trim_end_matches(['\r', '\n']);
            for reply in self.answer(line) {
                write!(out, "{reply}\r\n")?;
            }
            if self.lenient_data && line.eq_ignore_ascii_case("DATA") {
                read_data_leniently(&mut reader)?;
                write!(out, "250 2.0.0 Queued\r\n")?;
            }
            if line.eq_ignore_ascii_case("QUIT") {
                return Ok(());
            }
        }
    }
}

/// Reads message data up to a line holding only a dot, where a line ends at CR, LF or CRLF
/// and NULs do not count: `\r.\r`, `\n.\n`, `\r\n\0.\r\n` ... all end it. At most 1 MiB.
fn read_data_leniently(reader: &mut impl BufRead) -> std::io::Result<()> {
    let mut line = Vec::new();
    for byte in reader.bytes().take(1 << 20) {
        match byte? {
            0 => {}
            b'\r' | b'\n' if line == b"." => return Ok(()),
            b'\r' | b'\n' => line.clear(),
            b => line.push(b),
        }
    }
    Ok(())
}

/// Serves `script` on a loopback port, one thread per connection, for the rest of the test
/// process.
fn start(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let script = script.clone();
            std::thread::spawn(move || {
                let _ = script.serve(stream);
            });
        }
    });
    addr
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

async fn audit(addr: SocketAddr) -> Vec<Finding> {
    let endpoint = Endpoint {
        name: Some("mail.example.org".into()),
        addr,
        role: Role::Mx,
        domain: Some("example.org".into()),
    };
    smtp::audit_endpoint(&endpoint, &SmtpOptions::default(), &Selection::default()).await
}

fn one<'a>(findings: &'a [Finding], id: &str) -> &'a Finding {
    let found: Vec<&Finding> = findings.iter().filter(|f| f.id == id).collect();
    assert_eq!(found.len(), 1, "one {id} finding expected in {findings:#?}");
    found[0]
}

fn verdict(findings: &[Finding], id: &str) -> (Status, Severity) {
    let f = one(findings, id);
    (f.status, f.severity)
}

/// An Exchange 2013 on Windows Server 2012 R2 whose clock is 20 minutes ahead (its greeting
/// shows no date here, so the NTLM timestamp is the only clock), and whose EXPN answers like
/// Sendmail's.
#[tokio::test]
async fn ntlm_challenge_and_expn_reveal_what_they_should_not() {
    let challenge = build_challenge(
        "CORP",
        &[
            (2, "CORP"),
            (1, "EXCH01"),
            (4, "corp.local"),
            (3, "EXCH01.corp.local"),
        ],
        Some(now() + 1200),
        Some(OsVersion {
            major: 6,
            minor: 3,
            build: 9600,
        }),
    );
    let addr = start(Script {
        greeting: "mail.example.org Microsoft ESMTP MAIL Service ready".into(),
        ntlm: Some(challenge),
        expn: true,
        lenient_data: false,
    });
    let findings = audit(addr).await;

    assert_eq!(
        verdict(&findings, "smtp.ntlm_info"),
        (Status::Fail, Severity::Medium)
    );
    let ntlm = one(&findings, "smtp.ntlm_info");
    assert!(
        ntlm.evidence.contains("EXCH01.corp.local") && ntlm.evidence.contains("CORP"),
        "{ntlm:#?}"
    );
    assert!(
        ntlm.title.contains("before TLS, in clear text"),
        "{ntlm:#?}"
    );
    let clock = one(&findings, "smtp.clock_skew");
    assert_eq!(
        (clock.status, clock.severity),
        (Status::Fail, Severity::Medium)
    );
    assert!(clock.evidence.starts_with("NTLM timestamp"), "{clock:#?}");
    let software = one(&findings, "smtp.software");
    assert_eq!(software.status, Status::Fail, "{software:#?}");
    assert!(
        software.evidence.contains("Windows Server 2012 R2"),
        "{software:#?}"
    );
    // NTLM offered before TLS is a challenge-response mechanism in clear text.
    assert_eq!(
        verdict(&findings, "smtp.auth_before_tls"),
        (Status::Fail, Severity::Medium)
    );

    assert_eq!(
        verdict(&findings, "smtp.expn"),
        (Status::Fail, Severity::Medium)
    );
    assert!(
        one(&findings, "smtp.expn")
            .evidence
            .contains("EXPN postmaster@example.org → 250"),
        "{:#?}",
        one(&findings, "smtp.expn")
    );
}

/// The same stand-in without NTLM and with EXPN refused passes both checks: the verdicts
/// above come from what the server said, not from the stand-in being scripted.
#[tokio::test]
async fn without_ntlm_and_expn_both_checks_pass() {
    let addr = start(Script {
        greeting: "mail.example.org ESMTP".into(),
        ntlm: None,
        expn: false,
        lenient_data: false,
    });
    let findings = audit(addr).await;
    assert_eq!(verdict(&findings, "smtp.ntlm_info").0, Status::Pass);
    assert_eq!(verdict(&findings, "smtp.expn").0, Status::Pass);
    assert_eq!(verdict(&findings, "smtp.clock_skew").0, Status::Skipped);
}

/// A server that ends DATA at a lone CR or LF (and ignores NULs) fails every
/// `smtp.smuggling.<sequence>`: each fake ending is followed at once by a 2xx. No server that
/// can be installed here reads data that way (Postfix only at bare LF with
/// `smtpd_forbid_bare_newline = no`, which tests/audit.rs shows failing the LF sequences);
/// the stand-in gives every sequence, CR ones included, its failing side. The passing side of
/// every sequence is asserted against Postfix and Ravelin in crates/ravelin/tests/audit.rs.
#[tokio::test]
async fn a_server_that_ends_data_at_a_lone_cr_or_lf_fails_every_smuggling_sequence() {
    let addr = start(Script {
        greeting: "mail.example.org ESMTP".into(),
        ntlm: None,
        expn: false,
        lenient_data: true,
    });
    let endpoint = Endpoint {
        name: Some("mail.example.org".into()),
        addr,
        role: Role::Mx,
        domain: Some("example.org".into()),
    };
    let options = SmtpOptions {
        active: true,
        smuggling_wait: std::time::Duration::from_secs(2),
        ..SmtpOptions::default()
    };
    let findings = smtp::audit_endpoint(&endpoint, &options, &Selection::default()).await;
    for seq in ravelin_audit::smtp::smuggling::SEQUENCES {
        let id = format!("smtp.smuggling.{}", seq.name);
        let f = one(&findings, &id);
        assert_eq!(f.status, Status::Fail, "{id}: {f:#?}");
    }
}
