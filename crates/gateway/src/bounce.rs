//! Delivery status notifications (RFC 3464, `multipart/report`).
//!
//! [`build_dsn`] writes the notification the queue manager spools, with the null sender, to
//! the original sender when recipients fail permanently or expire: a human-readable part, a
//! `message/delivery-status` part (Reporting-MTA, Arrival-Date, and per recipient
//! Final-Recipient, Action, Status, Diagnostic-Code) and the original message's header
//! section as `text/rfc822-headers`. The queue manager never bounces a message whose sender
//! is null, so two MTAs can never bounce a bounce back and forth.
//!
//! Settings read: the gateway's hostname (From: MAILER-DAEMON@hostname, Reporting-MTA).
//! It cannot fail: every piece of text that came from outside (addresses, the next hop's
//! reply) is reduced to printable ASCII and cut to a bounded length, so it can neither inject
//! a header or a MIME boundary nor make a line longer than RFC 5322 allows; the original
//! headers are cut at [`crate::spool::MAX_DSN_HEADERS`] octets, re-terminated with CRLF, and
//! the MIME boundary is chosen not to occur in them. Addresses with non-ASCII characters
//! (SMTPUTF8) show `?` for those characters: RFC 6533 `message/global-delivery-status` is not
//! produced.
//!
//! The Status of a recipient is the enhanced code of the reply if it has one of the right
//! class; otherwise 5.0.0 for a permanent failure, 4.4.7 ("delivery time expired") for a
//! recipient given up after transient failures, 4.0.0 for a delay warning.

use ravelin_wire::Enhanced;

use crate::spool::{Envelope, MAX_DSN_HEADERS, QueueId};

/// What happened to a recipient being reported (RFC 3464 section 2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Given up: permanent failure, or transient failures until the queue lifetime ran out.
    Failed,
    /// Still being retried (a warning).
    Delayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// One recipient in a DSN: its address, the last reply about it and the action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DsnRecipient {
    pub rcpt: String,
    /// The next hop's reply (`550 5.1.1 No such user`) or a local reason.
    pub reply: String,
    pub action: Action,
}

/// Longest address or reply text carried into a DSN.
const MAX_TEXT: usize = 900;
/// Header lines are folded at spaces to stay near this width.
const FOLD_AT: usize = 78;

/// Printable ASCII only (tabs become spaces, everything else `?`), at most `max` characters.
fn clean(s: &str, max: usize) -> String {
    s.chars()
        .filter(|&c| c != '\r' && c != '\n')
        .map(|c| match c {
            ' '..='~' => c,
            '\t' => ' ',
            _ => '?',
        })
        .take(max)
        .collect()
}

/// `Name: value`, folded at spaces so lines stay near [`FOLD_AT`] characters, CRLF-terminated.
fn field(out: &mut String, name: &str, value: &str) {
    let mut line_len = name.len() + 1;
    out.push_str(name);
    out.push(':');
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if line_len + 1 + word.len() > FOLD_AT && line_len > name.len() + 1 {
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push(' ');
        out.push_str(word);
        line_len += 1 + word.len();
    }
    out.push_str("\r\n");
}

/// Splits `550 5.1.1 text` / `550-5.1.1 text` into the basic code and the enhanced code.
fn reply_codes(reply: &str) -> (Option<u16>, Option<Enhanced>) {
    let reply = reply.trim_start();
    let Some(code) = reply
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
    else {
        return (None, None);
    };
    let code: Option<u16> = code.parse().ok();
    let rest = reply.get(3..).unwrap_or("");
    let enhanced = match rest.as_bytes().first() {
        None => None,
        Some(b' ' | b'-') => Enhanced::parse_prefix(&rest[1..]).map(|(e, _)| e),
        // "5505.1.1" does not start with a reply code.
        Some(_) => return (None, None),
    };
    (code, enhanced)
}

/// The RFC 3463 status to report for a recipient.
pub fn status_for(reply: &str, action: Action) -> Enhanced {
    let (code, enhanced) = reply_codes(reply);
    match (action, enhanced) {
        (Action::Failed, Some(e)) if e.0 == 5 || e.0 == 4 => e,
        (Action::Delayed, Some(e)) if e.0 == 4 => e,
        (Action::Failed, _) if code.is_some_and(|c| (400..500).contains(&c)) => Enhanced(4, 4, 7),
        (Action::Failed, _) => Enhanced(5, 0, 0),
        (Action::Delayed, _) => Enhanced(4, 0, 0),
    }
}

pub use ravelin_wire::date::rfc5322 as rfc5322_date;

/// The original header section made safe to embed: at most [`MAX_DSN_HEADERS`] octets, cut
/// at a line end, every line ending in CRLF.
fn embed_headers(headers: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len().min(MAX_DSN_HEADERS) + 2);
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if out.len() + line.len() + 2 > MAX_DSN_HEADERS {
            break;
        }
        out.extend(line.iter().map(|&b| if b == b'\r' { b' ' } else { b }));
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Builds the DSN for `recipients` of message `id` (CRLF line ends, ready to spool).
pub fn build_dsn(
    hostname: &str,
    original: &Envelope,
    id: &QueueId,
    recipients: &[DsnRecipient],
    original_headers: &[u8],
    now: u64,
) -> Vec<u8> {
    let host = clean(hostname, 255);
    let headers = embed_headers(original_headers);
    let all_delayed =
        !recipients.is_empty() && recipients.iter().all(|r| r.action == Action::Delayed);
    let rcpts: Vec<(String, String, Action)> = recipients
        .iter()
        .map(|r| {
            (
                clean(&r.rcpt, MAX_TEXT),
                clean(r.reply.trim(), MAX_TEXT),
                r.action,
            )
        })
        .collect();

    // Human-readable part.
    let mut text = String::new();
    text.push_str(&format!("This is the mail system at host {host}.\r\n\r\n"));
    if all_delayed {
        text.push_str(
            "####################################################################\r\n\
             # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\
             ####################################################################\r\n\r\n\
             Your message could not be delivered yet to the recipients below.\r\n\
             The mail system will keep trying.\r\n",
        );
    } else {
        text.push_str(
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. Its headers are attached below.\r\n\r\n\
             For further assistance, please send mail to postmaster.\r\n",
        );
    }
    text.push_str("\r\nThe mail system\r\n");
    for (rcpt, reply, action) in &rcpts {
        text.push_str("\r\n");
        let reason = if reply.is_empty() {
            action.as_str()
        } else {
            reply.as_str()
        };
        field(&mut text, &format!("<{rcpt}>"), reason);
    }

    // Machine-readable part.
    let mut status = String::new();
    field(&mut status, "Reporting-MTA", &format!("dns; {host}"));
    field(&mut status, "X-Ravelin-Queue-ID", &id.to_string());
    if !original.sender.is_empty() {
        field(
            &mut status,
            "X-Ravelin-Sender",
            &format!("rfc822; {}", clean(&original.sender, MAX_TEXT)),
        );
    }
    field(
        &mut status,
        "Arrival-Date",
        &rfc5322_date(original.received_at),
    );
    for ((rcpt, reply, action), r) in rcpts.iter().zip(recipients) {
        status.push_str("\r\n");
        field(&mut status, "Final-Recipient", &format!("rfc822; {rcpt}"));
        field(&mut status, "Action", action.as_str());
        field(
            &mut status,
            "Status",
            &status_for(&r.reply, *action).to_string(),
        );
        if !reply.is_empty() {
            let kind = if reply_codes(reply).0.is_some() {
                "smtp"
            } else {
                "X-Ravelin"
            };
            field(&mut status, "Diagnostic-Code", &format!("{kind}; {reply}"));
        }
        field(&mut status, "Last-Attempt-Date", &rfc5322_date(now));
    }

    // A boundary that occurs nowhere in the content.
    let mut n = 0u32;
    let boundary = loop {
        let b = format!("ravelin-dsn-{id}-{n}");
        let bytes = b.as_bytes();
        let occurs = |hay: &[u8]| hay.windows(bytes.len()).any(|w| w == bytes);
        if !occurs(&headers) && !occurs(text.as_bytes()) && !occurs(status.as_bytes()) {
            break b;
        }
        n += 1;
    };
    let eight_bit = headers.iter().any(|&b| b >= 0x80);
    let cte = if eight_bit { "8bit" } else { "7bit" };
    let subject = if all_delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Undelivered Mail Returned to Sender"
    };

    let mut top = String::new();
    field(&mut top, "Date", &rfc5322_date(now));
    field(
        &mut top,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    field(
        &mut top,
        "To",
        &format!("<{}>", clean(&original.sender, MAX_TEXT)),
    );
    field(&mut top, "Subject", subject);
    field(
        &mut top,
        "Message-ID",
        &format!("<{}.dsn@{host}>", QueueId::generate()),
    );
    field(&mut top, "Auto-Submitted", "auto-replied");
    field(&mut top, "MIME-Version", "1.0");
    field(
        &mut top,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    field(&mut top, "Content-Transfer-Encoding", cte);
    top.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    let mut out = top.into_bytes();
    let mut part = |desc: &str, ctype: &str, cte: &str, body: &[u8]| {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut h = String::new();
        field(&mut h, "Content-Description", desc);
        field(&mut h, "Content-Type", ctype);
        field(&mut h, "Content-Transfer-Encoding", cte);
        h.push_str("\r\n");
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    };
    part(
        "Notification",
        "text/plain; charset=us-ascii",
        "7bit",
        text.as_bytes(),
    );
    part(
        "Delivery report",
        "message/delivery-status",
        "7bit",
        status.as_bytes(),
    );
    part(
        "Undelivered Message Headers",
        "text/rfc822-headers",
        cte,
        &headers,
    );
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn envelope() -> Envelope {
        Envelope {
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.net".into(), "carol@example.net".into()],
            received_at: 1_700_000_000,
            client: Some("127.0.0.2:40000".into()),
            helo: Some("client.example".into()),
            listener: "mx".into(),
            session: "S1".into(),
            size: 100,
            direction: crate::spool::Direction::Inbound,
            auth_user: None,
        }
    }

    fn python(script: &str, input: &[u8]) -> String {
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test (see the install script)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn dates_match_python() {
        let stamps = [
            0u64,
            951_782_400,
            1_700_000_000,
            1_709_251_199,
            4_102_444_800,
            253_402_300_799,
        ];
        let ours: Vec<String> = stamps.iter().map(|&t| rfc5322_date(t)).collect();
        let script = "import sys, email.utils\n\
                      for t in sys.stdin.read().split():\n    \
                      print(email.utils.formatdate(int(t)).replace('-0000', '+0000'))";
        let input = stamps
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let theirs: Vec<String> = python(script, input.as_bytes())
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(ours, theirs);
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
    }

    #[test]
    fn status_codes() {
        assert_eq!(
            status_for("550 5.1.1 No such user", Action::Failed),
            Enhanced(5, 1, 1)
        );
        assert_eq!(
            status_for("550-5.7.1 Refused", Action::Failed),
            Enhanced(5, 7, 1)
        );
        assert_eq!(status_for("554 Refused", Action::Failed), Enhanced(5, 0, 0));
        assert_eq!(
            status_for("451 4.3.0 Try later", Action::Failed),
            Enhanced(4, 3, 0)
        );
        assert_eq!(
            status_for("451 Try later", Action::Failed),
            Enhanced(4, 4, 7)
        );
        assert_eq!(
            status_for("connect to 127.0.0.1:25: refused", Action::Failed),
            Enhanced(5, 0, 0)
        );
        assert_eq!(status_for("", Action::Failed), Enhanced(5, 0, 0));
        assert_eq!(
            status_for("250 2.0.0 ok?", Action::Failed),
            Enhanced(5, 0, 0)
        );
        assert_eq!(status_for("5505.1.1 x", Action::Failed), Enhanced(5, 0, 0));
        assert_eq!(
            status_for("451 4.4.1 No answer", Action::Delayed),
            Enhanced(4, 4, 1)
        );
        assert_eq!(
            status_for("550 5.1.1 x", Action::Delayed),
            Enhanced(4, 0, 0)
        );
    }

    fn sample() -> Vec<u8> {
        let id: QueueId = "06H0JXH4BXKED19F".parse().unwrap();
        let failed = [
            DsnRecipient { rcpt: "bob@example.net".into(), reply: "550 5.1.1 <bob@example.net>: No such user".into(), action: Action::Failed },
            DsnRecipient {
                rcpt: "carol@example.net".into(),
                reply: "451 Greylisted\r\nInjected: yes, please try again much much later because we are very busy today indeed".into(),
                action: Action::Failed,
            },
        ];
        let headers = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: caf\xc3\xa9\r\nX-Note: --ravelin-dsn-06H0JXH4BXKED19F-0\r\n";
        build_dsn(
            "mx1.example.org",
            &envelope(),
            &id,
            &failed,
            headers,
            1_700_003_600,
        )
    }

    #[test]
    fn structure() {
        let dsn = sample();
        // Only CRLF line ends, no line over 998 octets, and nothing injected.
        for (i, &b) in dsn.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(dsn[i - 1], b'\r', "bare LF at {i}");
            }
        }
        assert!(dsn.split(|&b| b == b'\n').all(|l| l.len() <= 998));
        let text = String::from_utf8_lossy(&dsn);
        assert!(!text.contains("\r\nInjected:"));
        // The boundary avoided the text that occurs in the original headers.
        assert!(text.contains("boundary=\"ravelin-dsn-06H0JXH4BXKED19F-1\""));
        assert!(text.starts_with("Date: Tue, 14 Nov 2023 23:13:20 +0000\r\n"));
        assert!(text.contains("\r\nAuto-Submitted: auto-replied\r\n"));
        assert!(text.contains("\r\nTo: <alice@example.org>\r\n"));
        assert!(
            text.contains("Content-Transfer-Encoding: 8bit"),
            "8-bit headers are declared"
        );
    }

    #[test]
    fn python_email_parses_it_as_rfc3464() {
        let script = r#"
import sys, json, email, email.policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
parts = m.get_payload()
status = parts[1].get_payload()
print(json.dumps({
  "defects": [str(d) for d in m.defects] + [str(d) for p in parts for d in p.defects],
  "type": m.get_content_type(),
  "report_type": m.get_param("report-type"),
  "from": str(m["From"]), "to": str(m["To"]), "subject": str(m["Subject"]),
  "auto": str(m["Auto-Submitted"]),
  "parts": [p.get_content_type() for p in parts],
  "text": parts[0].get_content(),
  "per_message": dict(status[0].items()),
  "per_rcpt": [dict(b.items()) for b in status[1:]],
  "headers": parts[2].get_payload(decode=True).decode("utf-8"),
}))
"#;
        let out = python(script, &sample());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["defects"], serde_json::json!([]));
        assert_eq!(v["type"], "multipart/report");
        assert_eq!(v["report_type"], "delivery-status");
        assert_eq!(
            v["from"],
            "Mail Delivery System <MAILER-DAEMON@mx1.example.org>"
        );
        assert_eq!(v["to"], "alice@example.org");
        assert_eq!(v["subject"], "Undelivered Mail Returned to Sender");
        assert_eq!(v["auto"], "auto-replied");
        assert_eq!(
            v["parts"],
            serde_json::json!([
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ])
        );
        assert!(
            v["text"]
                .as_str()
                .unwrap()
                .contains("<bob@example.net>: 550 5.1.1 <bob@example.net>: No such user")
        );
        assert_eq!(v["per_message"]["Reporting-MTA"], "dns; mx1.example.org");
        assert_eq!(
            v["per_message"]["Arrival-Date"],
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        let r = &v["per_rcpt"];
        assert_eq!(r.as_array().unwrap().len(), 2);
        assert_eq!(r[0]["Final-Recipient"], "rfc822; bob@example.net");
        assert_eq!(r[0]["Action"], "failed");
        assert_eq!(r[0]["Status"], "5.1.1");
        assert_eq!(
            r[0]["Diagnostic-Code"],
            "smtp; 550 5.1.1 <bob@example.net>: No such user"
        );
        assert_eq!(r[1]["Final-Recipient"], "rfc822; carol@example.net");
        assert_eq!(r[1]["Status"], "4.4.7");
        let diag = r[1]["Diagnostic-Code"].as_str().unwrap();
        assert!(
            diag.starts_with("smtp; 451 GreylistedInjected: yes, please try again"),
            "{diag}"
        );
        assert!(v["headers"].as_str().unwrap().contains("Subject: café\r\n"));
        assert!(
            v["headers"]
                .as_str()
                .unwrap()
                .starts_with("From: Alice <alice@example.org>\r\n")
        );
    }

    #[test]
    fn delayed_warning_and_limits() {
        let id = QueueId::generate();
        let huge_headers = "X-Long: aaaaaaaaaa\r\n".repeat(10_000);
        let long_reply = format!("451 4.4.1 {}", "x".repeat(5000));
        let dsn = build_dsn(
            "mx1.example.org",
            &envelope(),
            &id,
            &[DsnRecipient {
                rcpt: "bob@example.net".into(),
                reply: long_reply,
                action: Action::Delayed,
            }],
            huge_headers.as_bytes(),
            1_700_000_000,
        );
        let text = String::from_utf8(dsn.clone()).unwrap();
        assert!(text.contains("Subject: Delayed Mail (still being retried)\r\n"));
        assert!(text.contains("Action: delayed\r\nStatus: 4.4.1\r\n"));
        assert!(
            dsn.len() < MAX_DSN_HEADERS + 8 * 1024,
            "bounded size: {}",
            dsn.len()
        );
        assert!(dsn.split(|&b| b == b'\n').all(|l| l.len() <= 998));
    }
}
