//! The metrics endpoint: `GET /metrics` (Prometheus text format) and `GET /health`.
//!
//! Bound by [`bind`] before privileges are dropped (like the SMTP listeners), served by
//! [`serve`] until shutdown. With a token configured every request must carry
//! `Authorization: Bearer TOKEN` (compared in constant time) or gets `401`; the token is
//! never logged. At scrape time the gauges are read: messages in `queue/`, `hold/` and
//! `quarantine/`, and the active bans (at most [`MAX_BANS_COUNTED`]; a store that does not answer leaves the
//! last value). How it fails: a bind error stops the start with the address named; a spool
//! that cannot be read is logged (`event=metrics_error`) and the other metrics still served.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use ravelin_wire::auth::Password;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::spool::Spool;
use crate::state::bans::Bans;

/// Most bans listed to count them at one scrape.
pub const MAX_BANS_COUNTED: usize = 100_000;

/// What a scrape reads.
pub struct Endpoint {
    pub handle: PrometheusHandle,
    pub token: Option<Password>,
    pub spool: Spool,
    pub bans: Arc<Bans>,
    /// The `[tls]` certificate of the listeners, when one is configured.
    pub certificate: Option<Arc<ravelin_tls::ServerCertificate>>,
}

/// Binds the endpoint's socket.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on {addr} ([metrics] listen): {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("[metrics] listen {addr}: {e}"))?;
    Ok(listener)
}

/// Serves the endpoint on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: std::net::TcpListener,
    endpoint: Arc<Endpoint>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(event = "metrics_error", reason = %e);
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        info!(event = "listening", listener = "metrics", address = %addr, token = endpoint.token.is_some());
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(endpoint);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!(event = "metrics_error", reason = %e);
    }
}

/// `None` when the request may go on, else the `401` to send.
fn refuse(endpoint: &Endpoint, headers: &HeaderMap) -> Option<Response> {
    let token = endpoint.token.as_ref()?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| Password::new(v.trim().to_string()));
    if presented.as_ref() == Some(token) {
        return None;
    }
    let mut response = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ravelin\""),
    );
    Some(response)
}

async fn health(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    refuse(&endpoint, &headers).unwrap_or_else(|| "ok\n".into_response())
}

async fn metrics(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&endpoint, &headers) {
        return refused;
    }
    let spool = endpoint.spool.clone();
    match tokio::task::spawn_blocking(move || spool.counts()).await {
        Ok(Ok(counts)) => {
            metrics::gauge!("ravelin_queue_messages", "state" => "queued")
                .set(counts.queued as f64);
            metrics::gauge!("ravelin_queue_messages", "state" => "held").set(counts.held as f64);
            metrics::gauge!("ravelin_queue_messages", "state" => "quarantined")
                .set(counts.quarantined as f64);
        }
        Ok(Err(e)) => warn!(event = "metrics_error", reason = %e, "cannot count the spool"),
        Err(e) => warn!(event = "metrics_error", reason = %e),
    }
    if let Ok(bans) = endpoint.bans.list(MAX_BANS_COUNTED).await {
        metrics::gauge!("ravelin_bans_active").set(bans.len() as f64);
    }
    if let Some(not_after) = endpoint
        .certificate
        .as_ref()
        .and_then(|c| c.summary().not_after_timestamp)
    {
        metrics::gauge!("ravelin_tls_certificate_not_after_seconds").set(not_after as f64);
    }
    endpoint.handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        endpoint.handle.render(),
    )
        .into_response()
}
