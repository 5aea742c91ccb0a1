//! Relay control for inbound listeners: which recipients the gateway accepts.
//!
//! A recipient is accepted only when its domain is one of `inbound.domains` (compared without
//! regard to case; subdomains are not implied), and only in its plain form. Every form that asks
//! a mail server to route the message onwards is refused with `554 5.7.1`, because the backend
//! behind us might honour it: source routes (`@a:u@b`), address literals (`u@[192.0.2.1]`), and
//! a local part holding `@`, `%` or `!` (percent hack, bang paths, double `@`, quoted
//! `"u@elsewhere"`), whether the domain is ours or not. `<Postmaster>` without a domain is
//! accepted as RFC 5321 4.5.1 requires and delivered to postmaster at the first domain.
//!
//! Outbound (a submission client that authenticated, or a client of a `relay` listener in
//! `outbound.trusted_networks`): [`RelayPolicy::check_outbound`] accepts any domain. A recipient
//! at one of our domains gets the inbound rules above (the backend must not be asked to route
//! onwards); elsewhere, source routes and address literals are refused (delivery routes by
//! domain name) and the local part is the destination's business.
//!
//! Reads: `inbound.domains`. Cannot fail; a refusal is a reply.

use ravelin_wire::Reply;
use ravelin_wire::address::{Domain, ForwardPath};

/// The accepted domains of the inbound listeners.
#[derive(Clone, Debug)]
pub struct RelayPolicy {
    domains: Vec<String>,
}

impl RelayPolicy {
    pub fn new(domains: &[String]) -> Self {
        RelayPolicy {
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }

    pub fn accepts_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// The recipient as we will relay it (`local@domain`, domain in lower case), or the reply
    /// that refuses it.
    pub fn check(&self, to: &ForwardPath) -> Result<String, Reply> {
        let path = match to {
            ForwardPath::Unqualified(_) if to.is_bare_postmaster() => {
                return match self.domains.first() {
                    Some(d) => Ok(format!("postmaster@{d}")),
                    None => Err(denied("Relay access denied")),
                };
            }
            ForwardPath::Unqualified(_) => {
                return Err(denied("Relay access denied: a domain is required"));
            }
            ForwardPath::Path(p) => p,
        };
        if !path.route.is_empty() {
            return Err(denied(
                "Relay access denied: source routes are not accepted",
            ));
        }
        let domain = match &path.mailbox.domain {
            Domain::Literal(_) => {
                return Err(denied(
                    "Relay access denied: address literals are not accepted",
                ));
            }
            Domain::Name(n) => n,
        };
        if !self.accepts_domain(domain) {
            return Err(denied("Relay access denied"));
        }
        if path.mailbox.has_routing_characters() {
            return Err(denied(
                "Relay access denied: routing characters in the local part are not accepted",
            ));
        }
        let mut mailbox = path.mailbox.clone();
        mailbox.domain = Domain::Name(domain.to_ascii_lowercase());
        Ok(mailbox.to_string())
    }

    /// Like [`RelayPolicy::check`], for a client allowed to send anywhere.
    pub fn check_outbound(&self, to: &ForwardPath) -> Result<String, Reply> {
        let ForwardPath::Path(path) = to else {
            return self.check(to);
        };
        match &path.mailbox.domain {
            Domain::Name(n) if !self.accepts_domain(n) && path.route.is_empty() => {
                let mut mailbox = path.mailbox.clone();
                mailbox.domain = Domain::Name(n.to_ascii_lowercase());
                Ok(mailbox.to_string())
            }
            _ => self.check(to),
        }
    }
}

fn denied(text: &str) -> Reply {
    Reply::ext(554, (5, 7, 1), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ravelin_wire::address::{parse_forward_path, split_bracketed};

    fn check(p: &RelayPolicy, s: &str) -> Result<String, u16> {
        let (inner, _) = split_bracketed(s).unwrap();
        p.check(&parse_forward_path(inner).unwrap())
            .map_err(|r| r.code)
    }

    #[test]
    fn accepts_only_plain_local_recipients() {
        let p = RelayPolicy::new(&["Example.org".to_string()]);
        assert_eq!(
            check(&p, "<Alice@EXAMPLE.ORG>"),
            Ok("Alice@example.org".to_string())
        );
        assert_eq!(
            check(&p, "<\"john doe\"@example.org>"),
            Ok("\"john doe\"@example.org".to_string())
        );
        assert_eq!(
            check(&p, "<Postmaster>"),
            Ok("postmaster@example.org".to_string())
        );
        for trick in [
            "<a@other.net>",
            "<a@sub.example.org>",
            "<a%other.net@example.org>",
            "<other.net!a@example.org>",
            "<other.net!a>",
            "<\"a@other.net\">",
            "<\"a@other.net\"@example.org>",
            "<\"a%other.net\"@example.org>",
            "<a@other.net@example.org>",
            "<a@example.org@other.net>",
            "<@example.org:a@other.net>",
            "<@other.net:a@example.org>",
            "<a@[127.0.0.1]>",
            "<a@[IPv6:::1]>",
        ] {
            assert_eq!(check(&p, trick), Err(554), "{trick}");
        }
    }

    #[test]
    fn outbound_goes_anywhere_by_domain_name() {
        let p = RelayPolicy::new(&["example.org".to_string()]);
        let out = |s: &str| {
            let (inner, _) = split_bracketed(s).unwrap();
            p.check_outbound(&parse_forward_path(inner).unwrap())
                .map_err(|r| r.code)
        };
        assert_eq!(out("<Bob@Example.NET>"), Ok("Bob@example.net".to_string()));
        assert_eq!(out("<a%b@example.net>"), Ok("a%b@example.net".to_string()));
        assert_eq!(
            out("<alice@example.org>"),
            Ok("alice@example.org".to_string())
        );
        for refused in [
            "<a%other.net@example.org>",
            "<@relay.net:a@example.net>",
            "<a@[192.0.2.1]>",
            "<a>",
        ] {
            assert_eq!(out(refused), Err(554), "{refused}");
        }
    }
}
