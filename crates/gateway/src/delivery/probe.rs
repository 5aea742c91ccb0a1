//! Address probes (callouts) to the backend route: is this recipient known there?
//!
//! [`Delivery::probe`] opens a fresh connection to the first backend host that answers, with
//! the route's TLS policy (the same [`Delivery`] code that delivers mail), says EHLO, sends
//! `MAIL FROM:<>` and `RCPT TO:<recipient>`, never DATA, and ends with QUIT. The backend's
//! RCPT reply is the answer: 2xx known, 5xx unknown. A host that cannot be reached or fails
//! before answering moves on to the next host; 4xx, a refused MAIL, a lost connection or
//! every host failing is [`Probe::Failed`]: the caller must answer with a temporary error.
//! The caller bounds the whole probe with its own time limit. Logs: the connection events of
//! delivery with `queue_id = "callout"`.

use ravelin_wire::Reply;
use ravelin_wire::client::{RcptOutcome, Step};

use super::{Delivery, smtp};

/// What the backend said of one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// RCPT answered 2xx.
    Accepted(Reply),
    /// RCPT answered 5xx.
    Refused(Reply),
    /// No conclusive answer (why, for the logs).
    Failed(String),
}

impl Delivery {
    /// Asks the backend route whether it takes mail for `recipient`.
    pub async fn probe(&self, recipient: &str) -> Probe {
        let settings = &self.inner.settings;
        let mut last_error = String::from("no backend host");
        for target in self.inner.local.targets() {
            let (host, port) = (&target.host, target.port);
            let mut conn = match smtp::open(settings, "local", &target, "callout").await {
                Ok(opened) => opened.conn,
                Err(e) => {
                    last_error = format!("{host}:{port}: {}", e.message);
                    continue;
                }
            };
            if let Err(e) = conn.client.begin_probe("", recipient) {
                conn.close().await;
                return Probe::Failed(e.to_string());
            }
            let answer = match conn.step(settings.command_timeout).await {
                Ok(Step::Done(outcomes)) => outcomes.into_iter().next(),
                Ok(other) => {
                    last_error = format!("{host}:{port}: unexpected step {other:?}");
                    continue;
                }
                Err(e) => {
                    last_error = format!("{host}:{port}: {e}");
                    continue;
                }
            };
            let label = conn.label();
            conn.close().await;
            return match answer {
                Some(RcptOutcome::Delivered(r)) => Probe::Accepted(r),
                Some(RcptOutcome::Permanent(r)) => Probe::Refused(r),
                Some(RcptOutcome::Transient(r)) => Probe::Failed(format!("{label} said: {r}")),
                None => Probe::Failed(format!("{label}: no answer for the recipient")),
            };
        }
        Probe::Failed(last_error)
    }
}
