//! A small HTTPS server for tests of the MTA-STS policy fetch: canned responses by path,
//! over tokio-rustls on a free port of 127.0.0.1, with the certificate and key the test gives
//! (usually from `ravelin_tls::testing::TestPki`).
//!
//! It reads one request head per connection (at most 16 KiB), answers with the response
//! configured for the path (404 otherwise), and closes. Responses can omit Content-Length so
//! that the body ends with the connection, which is how a client's own size limit is tested.
//! The server runs on its own thread and stops when dropped, like the DNS test server.
//!
//! How it fails: [`TestHttpsServer::start`] returns a [`TestServerError`] when the
//! certificate files are unusable or no port can be bound; a broken client connection only
//! ends that connection.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::{Ready, ServerThread, TestServerError, lock};
use crate::mta_sts::POLICY_PATH;

/// The largest request head read.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// True when `request` holds a whole HTTP/1.1 request: its head, and as many body bytes as
/// its Content-Length says (none without one). For test servers that receive POSTs.
pub fn request_complete(request: &[u8]) -> bool {
    let text = String::from_utf8_lossy(request);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    body.len() >= length
}

/// A response the server gives for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CannedResponse {
    pub status: u16,
    /// Extra headers (Content-Length and Connection are written by the server).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send a Content-Length header (otherwise the body ends when the connection closes).
    pub content_length: bool,
}

impl CannedResponse {
    /// `200 OK` with `Content-Type: text/plain` and the body.
    pub fn text(body: impl Into<Vec<u8>>) -> CannedResponse {
        CannedResponse {
            status: 200,
            headers: vec![("Content-Type".to_string(), "text/plain".to_string())],
            body: body.into(),
            content_length: true,
        }
    }

    /// A redirect with the status and a Location header.
    pub fn redirect(status: u16, location: &str) -> CannedResponse {
        CannedResponse {
            status,
            headers: vec![("Location".to_string(), location.to_string())],
            body: Vec::new(),
            content_length: true,
        }
    }

    /// An empty response with the status.
    pub fn status(status: u16) -> CannedResponse {
        CannedResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            content_length: true,
        }
    }
}

struct HttpState {
    routes: Mutex<HashMap<String, CannedResponse>>,
    requests: AtomicUsize,
}

/// A running HTTPS server on 127.0.0.1.
pub struct TestHttpsServer {
    addr: SocketAddr,
    state: Arc<HttpState>,
    _thread: ServerThread,
}

impl fmt::Debug for TestHttpsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHttpsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TestHttpsServer {
    /// Starts a server presenting the certificate chain in `cert` with the key in `key`.
    pub fn start(cert: &Path, key: &Path) -> Result<TestHttpsServer, TestServerError> {
        let config = ravelin_tls::server_config(cert, key)
            .map_err(|e| TestServerError(format!("test HTTPS certificate: {e}")))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| TestServerError(format!("cannot bind TCP on 127.0.0.1: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestServerError(format!("test HTTPS address: {e}")))?;
        let state = Arc::new(HttpState {
            routes: Mutex::new(HashMap::new()),
            requests: AtomicUsize::new(0),
        });
        let acceptor = TlsAcceptor::from(config);
        let shared = state.clone();
        let thread = ServerThread::spawn(
            format!("test-https-{}", addr.port()),
            move |ready, stopped| serve(listener, acceptor, shared, stopped, ready),
        )?;
        Ok(TestHttpsServer {
            addr,
            state,
            _thread: thread,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests for `path` with `response` from now on.
    pub fn respond(&self, path: &str, response: CannedResponse) {
        lock(&self.state.routes).insert(path.to_string(), response);
    }

    /// Serves `policy` as the MTA-STS policy file (`200`, `text/plain`).
    pub fn serve_policy(&self, policy: &str) {
        self.respond(POLICY_PATH, CannedResponse::text(policy));
    }

    /// How many requests the server has read so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<HttpState>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    ready: Ready,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(e) => return ready.failed(format!("test HTTPS listener: {e}")),
    };
    ready.serving();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let state = state.clone();
                connections.spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        answer(stream, acceptor, state),
                    )
                    .await;
                });
            }
        }
    }
    connections.abort_all();
}

/// One connection: TLS, one request head, the canned response, close.
async fn answer(
    stream: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<HttpState>,
) -> std::io::Result<()> {
    let mut tls = acceptor.accept(stream).await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&head);
    let path = text
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let response = lock(&state.routes)
        .get(&path)
        .cloned()
        .unwrap_or_else(|| CannedResponse::status(404));
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if response.content_length {
        out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    }
    out.push_str("Connection: close\r\n\r\n");
    tls.write_all(out.as_bytes()).await?;
    tls.write_all(&response.body).await?;
    tls.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}
