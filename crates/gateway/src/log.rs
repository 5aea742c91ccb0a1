//! Logs: one line per event on stderr, JSON for the SIEM or plain text for a terminal.
//!
//! Settings read: `[log] format` (json | text) and `[log] level` (a level such as `info`, or
//! comma-separated `target=level` directives such as `info,ravelin_gateway::delivery=debug`).
//!
//! A JSON line is one object: `ts` (RFC 3339, UTC, milliseconds), `level` (lower case), then
//! every field of the enclosing spans (outermost first) and of the event, flattened at the top
//! level; the event's `message` is written as `msg`, and a later field of the same name replaces
//! an earlier one. Integers, floats and booleans stay JSON numbers and booleans; everything else
//! (including `%display` and `?debug` values) is a string. A field named `ts` or `level` is
//! written as `field.ts` / `field.level` so it cannot forge the line's own keys.
//!
//! The text format is `TS LEVEL msg key=value ...`, with values quoted and escaped when they
//! contain spaces, quotes or control characters, so one event is always one line.
//!
//! Every error line is also offered to [`crate::alerts`] (sent to the `[alerts]` webhook when
//! one is configured). With `[metrics]` on, every event at info or above, whatever the level, is also counted by
//! [`crate::metrics::EventCounter`]. Spans are recorded whatever the level, so a `warn` event inside an `info` span still carries
//! the span's `session` and `client`. How it fails: [`init`] returns an error for a bad level
//! string or when a global subscriber is already installed; a failed write to stderr drops
//! that line (logging never stops the gateway).

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// The output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable single lines.
    Text,
}

/// Installs the global subscriber writing to stderr. Call once, early.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let subscriber = subscriber(format, level, std::io::stderr)?;
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| format!("cannot install the logger: {e}"))
}

/// A subscriber writing lines of `format` for events allowed by `level` to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    level: &str,
    writer: W,
) -> Result<impl Subscriber + Send + Sync + 'static, String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let targets = parse_filter(level)?;
    let filter =
        filter_fn(move |meta| meta.is_span() || targets.would_enable(meta.target(), meta.level()));
    Ok(Registry::default()
        .with(LineLayer { format, writer }.with_filter(filter))
        .with(crate::metrics::EventCounter::new().with_filter(LevelFilter::INFO)))
}

/// Parses `[log] level`: `LEVEL` or `LEVEL,target=LEVEL,...` / `target=LEVEL,...`, LEVEL being
/// off, error, warn, info, debug or trace. Stricter than tracing's own syntax on purpose: a
/// misspelt level is an error rather than a target name.
pub fn parse_filter(level: &str) -> Result<Targets, String> {
    let parse_level = |text: &str| {
        LevelFilter::from_str(text.trim())
            .ok()
            .filter(|_| text.trim().parse::<u8>().is_err())
            .ok_or_else(|| {
                format!(
                    "\"{}\" is not one of off, error, warn, info, debug, trace",
                    text.escape_debug()
                )
            })
    };
    if level.trim().is_empty() {
        return Err("it is empty".to_string());
    }
    let mut targets = Targets::new();
    for directive in level.split(',') {
        match directive.split_once('=') {
            Some((target, lvl)) => {
                let target = target.trim();
                let valid = !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'-');
                if !valid {
                    return Err(format!(
                        "\"{}\" is not a module path",
                        target.escape_debug()
                    ));
                }
                targets = targets.with_target(target.to_string(), parse_level(lvl)?);
            }
            None => targets = targets.with_default(parse_level(directive)?),
        }
    }
    Ok(targets)
}

/// The fields of a span or an event, in recording order, names unique.
#[derive(Debug, Default, Clone)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    fn set(&mut self, name: &'static str, value: Value) {
        let name = match name {
            "message" => "msg",
            "ts" => "field.ts",
            "level" => "field.level",
            other => other,
        };
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn extend(&mut self, other: &Fields) {
        for (name, value) in &other.0 {
            self.set(name, value.clone());
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), value.into());
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.set(field.name(), v);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.set(field.name(), v);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.set(field.name(), v);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.set(field.name(), Value::String(value.to_string()));
    }
}

/// The layer that keeps span fields and writes one line per event.
struct LineLayer<W> {
    format: LogFormat,
    writer: W,
}

impl<S, W> Layer<S> for LineLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<Fields>() {
                    fields.extend(span_fields);
                }
            }
        }
        event.record(&mut fields);
        let ts = rfc3339_millis(SystemTime::now());
        let level = event.metadata().level().as_str();
        let line = match self.format {
            LogFormat::Json => json_line(&ts, level, &fields),
            LogFormat::Text => text_line(&ts, level, &fields),
        };
        if *event.metadata().level() == tracing::Level::ERROR {
            crate::alerts::offer(|| match self.format {
                LogFormat::Json => line.clone(),
                LogFormat::Text => json_line(&ts, level, &fields),
            });
        }
        // One write per line, so concurrent events do not interleave; a failed write is dropped.
        let _ = self
            .writer
            .make_writer_for(event.metadata())
            .write_all(line.as_bytes());
    }
}

fn json_line(ts: &str, level: &str, fields: &Fields) -> String {
    let mut line = format!(
        "{{\"ts\":\"{ts}\",\"level\":\"{}\"",
        level.to_ascii_lowercase()
    );
    for (name, value) in &fields.0 {
        // Serializing a str or a Value cannot fail.
        let key = serde_json::to_string(name).unwrap_or_default();
        let value = serde_json::to_string(value).unwrap_or_default();
        let _ = write!(line, ",{key}:{value}");
    }
    line.push_str("}\n");
    line
}

fn text_line(ts: &str, level: &str, fields: &Fields) -> String {
    let mut line = format!("{ts} {level:>5}");
    let quoted = |s: &str| {
        if s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
        {
            serde_json::to_string(s).unwrap_or_default()
        } else {
            s.to_string()
        }
    };
    if let Some((_, msg)) = fields.0.iter().find(|(n, _)| *n == "msg") {
        let msg = match msg {
            Value::String(s) if !s.chars().any(char::is_control) => s.clone(),
            Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            other => other.to_string(),
        };
        let _ = write!(line, " {msg}");
    }
    for (name, value) in fields.0.iter().filter(|(n, _)| *n != "msg") {
        let value = match value {
            Value::String(s) => quoted(s),
            other => other.to_string(),
        };
        let _ = write!(line, " {name}={value}");
    }
    line.push('\n');
    line
}

/// `2026-11-23T17:40:00.123Z`; times before 1970 are written as the epoch.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    ravelin_wire::date::rfc3339_millis(since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn capture(format: LogFormat, level: &str, emit: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(format, level, move || writer.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, emit);
        buffer.lines()
    }

    fn json(line: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_str(line).unwrap() {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn json_lines_flatten_span_and_event_fields() {
        let lines = capture(LogFormat::Json, "info", || {
            let span = tracing::info_span!("session", session = "s1", client = %"192.0.2.1");
            let _guard = span.enter();
            tracing::info!(
                event = "accepted",
                queue_id = "Q1",
                rcpt = 3u32,
                tls = true,
                "queued {}",
                "now"
            );
            tracing::warn!(event = "rejected", decision = "reject", reason = ?"relay denied", size = -5i64, ratio = 0.5);
            tracing::debug!(event = "hidden");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first = json(&lines[0]);
        assert!(lines[0].starts_with("{\"ts\":\""), "{}", lines[0]);
        assert_eq!(first["level"], "info");
        assert_eq!(first["event"], "accepted");
        assert_eq!(first["session"], "s1");
        assert_eq!(first["client"], "192.0.2.1");
        assert_eq!(first["queue_id"], "Q1");
        assert_eq!(first["rcpt"], 3);
        assert_eq!(first["tls"], true);
        assert_eq!(first["msg"], "queued now");
        assert!(!first.contains_key("message"));
        let ts = first["ts"].as_str().unwrap();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.');

        let second = json(&lines[1]);
        assert_eq!(second["level"], "warn");
        assert_eq!(second["session"], "s1");
        assert_eq!(second["reason"], "\"relay denied\"");
        assert_eq!(second["size"], -5);
        assert_eq!(second["ratio"], 0.5);
    }

    #[test]
    fn spans_below_the_level_still_give_their_fields() {
        let lines = capture(LogFormat::Json, "warn", || {
            let span = tracing::debug_span!("session", session = "s9");
            let _guard = span.enter();
            tracing::info!(event = "hidden");
            tracing::error!(event = "failed");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = json(&lines[0]);
        assert_eq!(line["session"], "s9");
        assert_eq!(line["level"], "error");
    }

    #[test]
    fn reserved_names_and_injection_are_defused() {
        let lines = capture(LogFormat::Json, "info", || {
            tracing::info!(
                event = "x",
                ts = "forged",
                level = "forged",
                helo = "evil\r\n{\"level\":\"error\"}"
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = json(&lines[0]);
        assert_eq!(line["level"], "info");
        assert_eq!(line["field.ts"], "forged");
        assert_eq!(line["field.level"], "forged");
        assert_eq!(line["helo"], "evil\r\n{\"level\":\"error\"}");
    }

    #[test]
    fn span_fields_recorded_later_are_included_and_events_override() {
        let lines = capture(LogFormat::Json, "info", || {
            let span =
                tracing::info_span!("delivery", queue_id = tracing::field::Empty, event = "span");
            let _guard = span.enter();
            span.record("queue_id", "Q7");
            tracing::info!(event = "delivered");
        });
        let line = json(&lines[0]);
        assert_eq!(line["queue_id"], "Q7");
        assert_eq!(line["event"], "delivered");
    }

    #[test]
    fn text_lines() {
        let lines = capture(LogFormat::Text, "info", || {
            tracing::info!(
                event = "accepted",
                client = "192.0.2.1",
                helo = "two words",
                n = 4,
                "queued"
            );
            tracing::info!(event = "bad", msg_with_newline = "a\nb");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let (ts, rest) = lines[0].split_once(' ').unwrap();
        assert_eq!(ts.len(), 24);
        assert_eq!(
            rest,
            " INFO queued event=accepted client=192.0.2.1 helo=\"two words\" n=4"
        );
        assert!(
            lines[1].ends_with("msg_with_newline=\"a\\nb\""),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn filters() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("WARN").is_ok());
        assert!(parse_filter("info,ravelin_gateway::delivery=debug").is_ok());
        assert!(parse_filter("ravelin_gateway=trace").is_ok());
        for bad in ["", "infoo", "3", "info,=debug", "a b=info", "x=loud"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
        assert!(subscriber(LogFormat::Json, "verbose", std::io::sink).is_err());

        let lines = capture(LogFormat::Json, "warn,ravelin_gateway::log=debug", || {
            tracing::debug!(event = "shown");
        });
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn timestamps() {
        let at = |secs: u64, millis: u64| {
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_795_455_600, 123), "2026-11-23T17:40:00.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        // Every day of four centuries against a day-by-day count.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for days in 0..146_097u64 {
            let c = ravelin_wire::date::civil(days * 86_400);
            assert_eq!(
                (c.year as u64, u64::from(c.month), u64::from(c.day)),
                (y, m, d)
            );
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[(m - 1) as usize] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
