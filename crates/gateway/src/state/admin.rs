//! The admin socket: how `ravelin ban` reaches a running gateway.
//!
//! redb lets one process hold a database file, and the gateway holds the embedded store while
//! it runs; so the gateway listens on a Unix socket, `admin.sock` in the spool directory
//! (mode 0600 in a 0700 directory: only the service account and root may connect), and
//! operator commands send their request there. When no gateway runs, the command opens the
//! store itself ([`crate::state::Store::open`]); with Redis either way reaches the same data.
//!
//! Protocol: one JSON [`Request`] per connection, one line of at most [`MAX_REQUEST`] bytes,
//! answered by one JSON [`Response`] line. A client has [`IO_TIMEOUT`] to send its request.
//! Errors are answered as [`Response::Error`]; nothing a client sends ends the gateway.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

use super::bans::{Ban, BanReason, Bans};
use crate::config::Cidr;

/// The socket's file name in the spool directory.
pub const SOCKET_NAME: &str = "admin.sock";
/// The longest request line.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// Time for one request and its answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bans one listing returns.
pub const MAX_BANS_LISTED: usize = 100_000;

/// The admin socket of a gateway whose spool is `spool`.
pub fn socket_path(spool: &Path) -> PathBuf {
    spool.join(SOCKET_NAME)
}

/// A request to the running gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    BanList {
        limit: usize,
    },
    BanAdd {
        target: Cidr,
        reason: BanReason,
        /// `None`: the configured duration for the reason.
        duration_secs: Option<u64>,
    },
    BanRemove {
        target: Cidr,
    },
}

/// The gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Bans { bans: Vec<Ban> },
    Ban { ban: Ban },
    Removed { removed: bool },
    Error { message: String },
}

/// Carries out `request` on `bans` (the same code whether it came over the socket or the
/// command opened the store itself).
pub async fn execute(bans: &Bans, request: Request) -> Response {
    let result = match request {
        Request::BanList { limit } => bans
            .list(limit.min(MAX_BANS_LISTED))
            .await
            .map(|bans| Response::Bans { bans }),
        Request::BanAdd {
            target,
            reason,
            duration_secs,
        } => bans
            .add(target, reason, duration_secs.map(Duration::from_secs))
            .await
            .map(|ban| Response::Ban { ban }),
        Request::BanRemove { target } => bans
            .remove(target)
            .await
            .map(|removed| Response::Removed { removed }),
    };
    result.unwrap_or_else(|e| Response::Error {
        message: e.to_string(),
    })
}

/// Binds the socket at `path` (replacing a stale one) and serves it until `shutdown`.
pub fn start(
    path: PathBuf,
    bans: Arc<Bans>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    info!(event = "admin_socket", path = %path.display());
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            };
            match accepted {
                Ok((stream, _)) => {
                    let bans = bans.clone();
                    tokio::spawn(async move {
                        if let Err(e) = tokio::time::timeout(IO_TIMEOUT, handle(stream, &bans))
                            .await
                            .unwrap_or_else(|_| Err(io::Error::other("timed out")))
                        {
                            warn!(event = "admin_error", reason = %e);
                        }
                    });
                }
                Err(e) => {
                    warn!(event = "admin_error", reason = %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }))
}

async fn handle(stream: UnixStream, bans: &Bans) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    BufReader::new(read.take(MAX_REQUEST + 1))
        .read_until(b'\n', &mut line)
        .await?;
    let response = if line.len() as u64 > MAX_REQUEST {
        Response::Error {
            message: format!("request longer than {MAX_REQUEST} bytes"),
        }
    } else {
        match serde_json::from_slice::<Request>(&line) {
            Ok(request) => execute(bans, request).await,
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Sends `request` to the gateway listening at `path`. `ErrorKind::NotFound` or
/// `ConnectionRefused` mean no gateway is running there.
pub async fn request(path: &Path, request: &Request) -> io::Result<Response> {
    let exchange = async {
        let mut stream = UnixStream::connect(path).await?;
        let mut out = serde_json::to_vec(request).map_err(io::Error::other)?;
        out.push(b'\n');
        stream.write_all(&out).await?;
        let mut line = Vec::new();
        BufReader::new(stream.take(64 * 1024 * 1024))
            .read_until(b'\n', &mut line)
            .await?;
        serde_json::from_slice::<Response>(&line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad answer: {e}")))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")))
}
