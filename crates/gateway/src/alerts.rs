//! Alerts (`[alerts]`): every error line of the log is also POSTed to a webhook, as JSON
//! `{"text": "HOST: EVENT: WHY", "host": HOST, "event": {the log line}}` — the `text` field is
//! what Slack and Mattermost incoming webhooks show; other receivers read `event`.
//!
//! The log layer offers each error line to [`offer`], which never blocks: once
//! [`Alerts::start`] has installed the sender, lines go through a bounded queue ([`QUEUE`]) to
//! one task that sends them one at a time. Within each hour (counted from the first alert) at
//! most `max_per_hour` are sent; the others — and any that a full queue dropped or the webhook
//! refused — are counted, and the count rides on the next alert sent (`"suppressed": N`), or,
//! if none comes, on a summary sent when the hour ends.
//!
//! How it fails: a webhook that cannot be reached, answers slowly (over [`TIMEOUT`]) or
//! answers other than 2xx costs that alert, with a warning line `alert_failed` — a warning,
//! never an error, so a failing webhook cannot feed itself. Nothing here delays mail; the
//! shutdown stops the sender last ([`Running::stop`]) and waits at most [`DRAIN`] for the
//! alerts still queued.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ravelin_wire::auth::Password;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::{AlertsSection, WebhookUrl};

/// Lines waiting to be sent; more are dropped (and counted).
pub const QUEUE: usize = 256;

/// How long one webhook call may take, connection and TLS included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The largest response read from the webhook (its status line is all we need).
const MAX_RESPONSE: usize = 4096;

static SINK: OnceLock<mpsc::Sender<String>> = OnceLock::new();
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Offers one error line (a JSON object, made by `line` only when alerts are on) for
/// alerting; returns at once.
pub fn offer(line: impl FnOnce() -> String) {
    if let Some(sink) = SINK.get()
        && sink.try_send(line()).is_err()
    {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where and how alerts go.
struct Webhook {
    url: WebhookUrl,
    token: Option<Password>,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// Alerts ready to start: the webhook with its token and TLS settings, read by [`prepare`]
/// while the gateway still has the privileges to read them.
pub struct Alerts {
    webhook: Webhook,
    per_hour: u32,
}

/// Reads `[alerts]` (the token file and CA file included); `None` when no webhook is set.
pub fn prepare(section: &AlertsSection) -> Result<Option<Alerts>, String> {
    let Some(url) = &section.webhook else {
        return Ok(None);
    };
    let url = WebhookUrl::parse(url).map_err(|e| format!("[alerts] webhook: {e}"))?;
    let token = section
        .webhook_token_file
        .as_deref()
        .map(|f| crate::secret::read_first_line(f, "alerts.webhook_token_file"))
        .transpose()?;
    let tls = if url.tls {
        let verify = ravelin_tls::Verify::WebPki {
            ca_file: section.webhook_ca_file.clone(),
        };
        let config = ravelin_tls::client_config(&verify).map_err(|e| format!("[alerts]: {e}"))?;
        Some(tokio_rustls::TlsConnector::from(config))
    } else {
        None
    };
    Ok(Some(Alerts {
        webhook: Webhook { url, token, tls },
        per_hour: section.max_per_hour.max(1),
    }))
}

impl Alerts {
    /// Installs the sender the log offers error lines to and starts the task that sends them.
    /// Once per process (a second gateway in the same process cannot have alerts of its own).
    pub fn start(self, hostname: &str) -> Result<Running, String> {
        let (sender, receiver) = mpsc::channel::<String>(QUEUE);
        SINK.set(sender)
            .map_err(|_| "[alerts]: alerts are already started in this process".to_string())?;
        let (stop, stopped) = watch::channel(false);
        info!(event = "alerts", webhook = %format!("{}:{}", self.webhook.url.host, self.webhook.url.port), max_per_hour = self.per_hour);
        let task = tokio::spawn(send_alerts(self, hostname.to_string(), receiver, stopped));
        Ok(Running { stop, task })
    }
}

/// The running sender; [`Running::stop`] ends it.
pub struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Sends what is still queued, for at most [`DRAIN`], then ends the task. Called last at
    /// shutdown, so that the error lines of the grace period go out too.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), self.task).await;
    }
}

/// How long the shutdown waits for queued alerts.
pub const DRAIN: Duration = Duration::from_secs(5);

async fn send_alerts(
    alerts: Alerts,
    hostname: String,
    mut receiver: mpsc::Receiver<String>,
    mut stopped: watch::Receiver<bool>,
) {
    let Alerts { webhook, per_hour } = alerts;
    let mut budget = Budget::new(per_hour, Instant::now());
    loop {
        let window_end = budget.window + Duration::from_secs(3600);
        tokio::select! {
            _ = stopped.changed() => break,
            // An hour ended with alerts held back and none sent since: say so.
            _ = tokio::time::sleep_until(window_end.into()), if budget.suppressed > 0 => {
                budget.restart(Instant::now());
                budget.sent = 1;
                let held = std::mem::take(&mut budget.suppressed);
                if !deliver(&webhook, &summary(&hostname, held)).await {
                    budget.suppressed += held;
                }
            }
            line = receiver.recv() => {
                let Some(line) = line else { return };
                send_line(&webhook, &hostname, &mut budget, &line).await;
            }
        }
    }
    // Shutdown: what is queued goes out, within DRAIN and the budget.
    let deadline = tokio::time::Instant::now() + DRAIN;
    while let Ok(line) = receiver.try_recv() {
        let sent = send_line(&webhook, &hostname, &mut budget, &line);
        if tokio::time::timeout_at(deadline, sent).await.is_err() {
            return;
        }
    }
}

/// Sends one log line if the budget allows; what is not delivered is counted as suppressed.
async fn send_line(webhook: &Webhook, hostname: &str, budget: &mut Budget, line: &str) {
    budget.suppressed += DROPPED.swap(0, Ordering::Relaxed);
    if !budget.admit(Instant::now()) {
        return;
    }
    let held = std::mem::take(&mut budget.suppressed);
    if !deliver(webhook, &payload(hostname, line, held)).await {
        budget.suppressed += held + 1;
    }
}

/// One POST within [`TIMEOUT`]; a failure is a warning line.
async fn deliver(webhook: &Webhook, body: &str) -> bool {
    match tokio::time::timeout(TIMEOUT, webhook.post(body)).await {
        Ok(Ok(())) => true,
        Ok(Err(why)) => {
            warn!(event = "alert_failed", reason = %why);
            false
        }
        Err(_) => {
            warn!(
                event = "alert_failed",
                reason = "the webhook did not answer in time"
            );
            false
        }
    }
}

/// The JSON of the summary sent when an hour ended with alerts held back.
fn summary(hostname: &str, suppressed: u64) -> String {
    json!({
        "text": format!("{hostname}: {suppressed} alert(s) not sent in the last hour (over [alerts] max_per_hour, a full queue, or a failed webhook call); see the log"),
        "host": hostname,
        "suppressed": suppressed,
    })
    .to_string()
}

/// How many alerts may still go out this hour, and how many did not.
struct Budget {
    per_hour: u32,
    window: Instant,
    sent: u32,
    /// Alerts not sent (over the budget, or dropped from a full queue) since the last one
    /// that was.
    suppressed: u64,
}

impl Budget {
    fn new(per_hour: u32, now: Instant) -> Budget {
        Budget {
            per_hour,
            window: now,
            sent: 0,
            suppressed: 0,
        }
    }

    /// A new hour from `now`.
    fn restart(&mut self, now: Instant) {
        self.window = now;
        self.sent = 0;
    }

    /// Whether one more alert may go out at `now`; if not, it is counted as suppressed.
    fn admit(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(3600) {
            self.restart(now);
        }
        if self.sent >= self.per_hour {
            self.suppressed += 1;
            return false;
        }
        self.sent += 1;
        true
    }
}

/// The JSON sent for one log line.
fn payload(hostname: &str, line: &str, suppressed: u64) -> String {
    let event: Value = serde_json::from_str(line).unwrap_or_else(|_| json!({ "line": line }));
    let name = event["event"].as_str().unwrap_or("error");
    let why = ["reason", "outcome", "decision", "msg"]
        .iter()
        .find_map(|k| event[*k].as_str())
        .unwrap_or("");
    let mut text = format!("{hostname}: {name}: {why}");
    if let Some(address) = event["address"].as_str() {
        text.push_str(&format!(" ({address})"));
    }
    let mut body = json!({ "text": text, "host": hostname, "event": event });
    if suppressed > 0 {
        body["suppressed"] = json!(suppressed);
    }
    body.to_string()
}

impl Webhook {
    async fn post(&self, body: &str) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.url.host, self.url.port))?;
        match &self.tls {
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
                    .map_err(|e| format!("{}: {e}", self.url.host))?;
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.url.host))?;
                self.exchange(stream, body).await
            }
            None => self.exchange(stream, body).await,
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        body: &str,
    ) -> Result<(), String> {
        let host = if self.url.host.contains(':') {
            format!("[{}]", self.url.host)
        } else {
            self.url.host.clone()
        };
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {}\r\n", t.expose()))
            .unwrap_or_default();
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: ravelin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
            self.url.path,
            self.url.port,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the alert: {e}"))?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        while !response.windows(2).any(|w| w == b"\r\n") && response.len() < MAX_RESPONSE {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("reading the webhook's answer: {e}"))?;
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
        }
        let status_line = String::from_utf8_lossy(&response);
        let status_line = status_line.lines().next().unwrap_or("");
        match status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
        {
            Some(code) if (200..300).contains(&code) => Ok(()),
            _ => Err(format!("the webhook answered {status_line:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_per_hour_alerts_then_a_new_hour() {
        let start = Instant::now();
        let mut budget = Budget::new(2, start);
        assert!(budget.admit(start));
        assert!(budget.admit(start + Duration::from_secs(1)));
        assert!(!budget.admit(start + Duration::from_secs(2)));
        assert!(!budget.admit(start + Duration::from_secs(3599)));
        assert_eq!(budget.suppressed, 2);
        assert!(budget.admit(start + Duration::from_secs(3600)));
    }

    #[test]
    fn payload_carries_text_event_and_suppressed_count() {
        let line = r#"{"ts":"t","level":"error","event":"own_address_listed","address":"192.0.2.25","list":"bl.test","outcome":"listed (127.0.0.2)"}"#;
        let body: Value = serde_json::from_str(&payload("mx1.example.org", line, 0)).unwrap();
        assert_eq!(
            body["text"],
            "mx1.example.org: own_address_listed: listed (127.0.0.2) (192.0.2.25)"
        );
        assert_eq!(body["event"]["list"], "bl.test");
        assert!(body.get("suppressed").is_none());
        let body: Value = serde_json::from_str(&payload("h", "not json", 7)).unwrap();
        assert_eq!(body["event"]["line"], "not json");
        assert_eq!(body["suppressed"], 7);
    }

    /// A webhook over HTTPS on loopback, with a certificate for 127.0.0.1 from a private CA;
    /// it answers `status` to one request and returns what it read (headers and the body of
    /// Content-Length), or the handshake's error.
    async fn https_webhook(
        pki: &crate::test_pki::Pki,
        status: &'static str,
    ) -> (u16, tokio::task::JoinHandle<Result<String, String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            while !ravelin_dns::testing::request_complete(&request) {
                match tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
            Ok(String::from_utf8_lossy(&request).to_string())
        });
        (port, server)
    }

    #[tokio::test]
    async fn alerts_go_over_https_to_a_webhook_trusted_through_its_ca_file() {
        let pki = crate::test_pki::pki("127.0.0.1");
        let ca = crate::test_pki::temp_file(&pki.ca_pem);
        let token = crate::test_pki::temp_file("token-8817\n");
        let (port, server) = https_webhook(&pki, "202 Accepted").await;
        let section = AlertsSection {
            webhook: Some(format!("https://127.0.0.1:{port}/hooks/ravelin?x=1")),
            webhook_token_file: Some(token.path().to_path_buf()),
            webhook_ca_file: Some(ca.path().to_path_buf()),
            ..AlertsSection::default()
        };
        let alerts = prepare(&section).unwrap().unwrap();
        alerts.webhook.post(r#"{"text":"t"}"#).await.unwrap();
        let request = server.await.unwrap().unwrap();
        assert!(
            request.starts_with("POST /hooks/ravelin?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nHost: 127.0.0.1:"), "{request}");
        assert!(
            request.contains("\r\nAuthorization: Bearer token-8817\r\n"),
            "{request}"
        );
        assert!(request.ends_with(r#"{"text":"t"}"#), "{request}");

        // A webhook answering an error status is a failed alert.
        let (port, server) = https_webhook(&pki, "500 Internal Server Error").await;
        let section = AlertsSection {
            webhook: Some(format!("https://127.0.0.1:{port}/")),
            webhook_ca_file: Some(ca.path().to_path_buf()),
            ..AlertsSection::default()
        };
        let err = prepare(&section).unwrap().unwrap().webhook.post("{}").await;
        assert!(err.unwrap_err().contains("500"));
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_webhook_whose_certificate_is_not_trusted_gets_nothing() {
        let pki = crate::test_pki::pki("127.0.0.1");
        let stranger = crate::test_pki::pki("127.0.0.1");
        let other_ca = crate::test_pki::temp_file(&stranger.ca_pem);
        for ca_file in [None, Some(other_ca.path().to_path_buf())] {
            let (port, server) = https_webhook(&pki, "200 OK").await;
            let section = AlertsSection {
                webhook: Some(format!("https://127.0.0.1:{port}/hook")),
                webhook_ca_file: ca_file,
                ..AlertsSection::default()
            };
            let alerts = prepare(&section).unwrap().unwrap();
            let err = alerts
                .webhook
                .post(r#"{"text":"secret"}"#)
                .await
                .unwrap_err();
            assert!(err.starts_with("TLS with 127.0.0.1"), "{err}");
            // The server saw a failed handshake, never the request.
            assert!(server.await.unwrap().is_err());
        }
    }
}
