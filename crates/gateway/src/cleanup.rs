//! Header processing before the spool: the gateway's own Received line (RFC 5321 4.4).
//!
//! The line names the public host name only, the protocol (ESMTP, ESMTPS with TLS, or SMTP
//! after HELO), the TLS version and cipher, the queue id and, for a single recipient, the
//! recipient. `inbound.received_client` decides whether the client's HELO name and address
//! appear (a privacy setting). Nothing the client sent is copied without being made safe: the
//! HELO name is reduced to printable ASCII without parentheses. Cannot fail.

use ravelin_wire::date;

/// What the Received line records about one transaction.
pub struct Trace<'a> {
    pub hostname: &'a str,
    pub helo: Option<&'a str>,
    pub extended: bool,
    pub client_ip: Option<std::net::IpAddr>,
    /// Whether the client appears at all.
    pub show_client: bool,
    pub tls: Option<&'a str>,
    pub queue_id: &'a str,
    pub recipients: &'a [String],
    pub now: u64,
}

/// The folded header, CRLF terminated.
pub fn received(t: &Trace<'_>) -> String {
    let mut h = String::from("Received:");
    if t.show_client {
        let helo: String = t
            .helo
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_graphic() && !"()[]\\".contains(*c))
            .take(64)
            .collect();
        h.push_str(" from ");
        h.push_str(if helo.is_empty() { "unknown" } else { &helo });
        if let Some(ip) = t.client_ip {
            match ip {
                std::net::IpAddr::V4(v4) => h.push_str(&format!(" ([{v4}])")),
                std::net::IpAddr::V6(v6) => h.push_str(&format!(" ([IPv6:{v6}])")),
            }
        }
        h.push_str("\r\n\t");
    } else {
        h.push(' ');
    }
    let proto = match (t.extended, t.tls.is_some()) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, true) => "SMTPS",
        (false, false) => "SMTP",
    };
    h.push_str(&format!("by {}", t.hostname));
    if let Some(tls) = t.tls {
        h.push_str(&format!(" ({tls})"));
    }
    h.push_str(&format!(" with {proto} id {}", t.queue_id));
    if let [only] = t.recipients {
        h.push_str(&format!("\r\n\tfor <{only}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", date::rfc5322(t.now)));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(show: bool) -> String {
        received(&Trace {
            hostname: "mx.example.org",
            helo: Some("client (evil)\r\nX-Injected: 1"),
            extended: true,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            show_client: show,
            tls: Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384"),
            queue_id: "ABC123",
            recipients: &["b@example.org".to_string()],
            now: 1_795_455_600,
        })
    }

    #[test]
    fn received_line() {
        assert_eq!(
            trace(true),
            "Received: from clientevilX-Injected:1 ([192.0.2.7])\r\n\tby mx.example.org (TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384) with ESMTPS id ABC123\r\n\tfor <b@example.org>;\r\n\tMon, 23 Nov 2026 17:40:00 +0000\r\n"
        );
        let private = trace(false);
        assert!(private.starts_with("Received: by mx.example.org"));
        assert!(!private.contains("192.0.2.7"));
    }
}
