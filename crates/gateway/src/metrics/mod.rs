//! Prometheus metrics, counted from the structured log events and served by [`http`].
//!
//! Every event the gateway logs with an `event` field at level info or above (whatever
//! `[log] level` says) increments `ravelin_events_total{event, decision, kind}`, where
//! `decision` is the event's `decision` or `result` field and `kind` its `kind` field (the
//! abuse kind of `abuse` and ban events). So each refusal, delivery, ban and store outage
//! that reaches the log is also a number a dashboard can plot, with no second set of call
//! sites to keep in step. Gauges read at scrape time: `ravelin_queue_messages{state}` and
//! `ravelin_bans_active`.
//!
//! Label values come from the code's event names; a value longer than [`MAX_LABEL`] bytes is
//! cut, and after [`MAX_SERIES`] distinct label sets any new one is counted under
//! `event="other"`, so a surprise can never grow the registry without bound. How it fails:
//! [`install`] is idempotent; if another recorder was installed first, metrics stay empty
//! and the endpoint says so. Until [`install`] has run (`[metrics]` off), events are not
//! looked at.

pub mod http;

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Longest label value kept.
pub const MAX_LABEL: usize = 48;
/// Most distinct label sets of `ravelin_events_total`.
pub const MAX_SERIES: usize = 1000;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's metrics recorder (once) and returns the handle that renders it;
/// `None` when another recorder was installed before.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "ravelin_events_total",
        "Events logged by the gateway, by event name, decision or result, and kind."
    );
    metrics::describe_gauge!(
        "ravelin_queue_messages",
        "Messages in the spool: queued (waiting for delivery), held by the operator, or quarantined by a DMARC verdict."
    );
    metrics::describe_gauge!(
        "ravelin_bans_active",
        "Client addresses and networks banned now."
    );
    metrics::describe_gauge!(
        "ravelin_tls_certificate_not_after_seconds",
        "Expiry (notAfter, Unix time) of the [tls] certificate the listeners present now."
    );
    metrics::describe_gauge!(
        "ravelin_own_address_listed",
        "1 when a [monitor] address is listed on the blocklist, 0 when it is not (last answer)."
    );
}

/// The tracing layer that counts events; part of every subscriber [`crate::log`] builds.
pub struct EventCounter {
    seen: Mutex<HashSet<[String; 3]>>,
}

impl EventCounter {
    pub fn new() -> EventCounter {
        EventCounter {
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The labels to count under: `labels` itself, or `other` once the series are full.
    fn admit(&self, labels: [String; 3]) -> [String; 3] {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&labels) {
            return labels;
        }
        if seen.len() < MAX_SERIES {
            seen.insert(labels.clone());
            return labels;
        }
        ["other".to_string(), String::new(), String::new()]
    }
}

impl Default for EventCounter {
    fn default() -> Self {
        EventCounter::new()
    }
}

impl<S: Subscriber> Layer<S> for EventCounter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // Metrics are off unless [metrics] installed the recorder: then nothing is counted
        // and an event costs no field recording, no lock, no allocation.
        if *event.metadata().level() > Level::INFO || !matches!(HANDLE.get(), Some(Some(_))) {
            return;
        }
        let mut fields = Labels::default();
        event.record(&mut fields);
        let Some(name) = fields.event else {
            return;
        };
        let [event, decision, kind] = self.admit([
            name,
            fields.decision.unwrap_or_default(),
            fields.kind.unwrap_or_default(),
        ]);
        metrics::counter!("ravelin_events_total", "event" => event, "decision" => decision, "kind" => kind)
            .increment(1);
    }
}

/// The fields of an event that become labels.
#[derive(Default)]
struct Labels {
    event: Option<String>,
    decision: Option<String>,
    kind: Option<String>,
}

impl Labels {
    fn set(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "event" => &mut self.event,
            "decision" | "result" if self.decision.is_none() => &mut self.decision,
            "kind" => &mut self.kind,
            _ => return,
        };
        *slot = Some(label(value));
    }
}

impl Visit for Labels {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "event" | "decision" | "result" | "kind") {
            self.set(field, format!("{value:?}").trim_matches('"'));
        }
    }
}

/// A label value: at most [`MAX_LABEL`] bytes, cut at a character boundary, control
/// characters replaced.
fn label(value: &str) -> String {
    let mut end = value.len().min(MAX_LABEL);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end]
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn labels_are_cut_and_series_bounded() {
        assert_eq!(label(&"é".repeat(40)).len(), MAX_LABEL);
        assert_eq!(label("a\nb"), "a?b");
        let counter = EventCounter::new();
        for i in 0..MAX_SERIES {
            let l = [format!("e{i}"), String::new(), String::new()];
            assert_eq!(counter.admit(l.clone()), l);
        }
        let extra = counter.admit(["new".into(), String::new(), String::new()]);
        assert_eq!(extra[0], "other");
        let known = ["e1".to_string(), String::new(), String::new()];
        assert_eq!(counter.admit(known.clone()), known);
    }

    #[test]
    fn events_are_counted_by_name_decision_and_kind() {
        let Some(handle) = install() else {
            panic!("no other recorder is installed in this test binary");
        };
        let subscriber = tracing_subscriber::registry().with(EventCounter::new());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                tracing::info!(
                    event = "unit_test_rcpt",
                    decision = "reject",
                    client = "192.0.2.1"
                );
            }
            tracing::warn!(event = "unit_test_abuse", kind = "harvesting");
            tracing::debug!(event = "unit_test_debug");
            tracing::info!("no event field");
        });
        let text = handle.render();
        assert!(
            text.contains(
                r#"ravelin_events_total{event="unit_test_rcpt",decision="reject",kind=""} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ravelin_events_total{event="unit_test_abuse",decision="",kind="harvesting"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("unit_test_debug"), "{text}");
    }
}
