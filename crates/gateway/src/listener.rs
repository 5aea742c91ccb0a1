//! Listeners: bind the configured addresses, accept connections, and drop root privileges.
//!
//! Each `[[listen]]` entry becomes one accept loop. A listener holds at most
//! `max_connections` sessions; the next client gets `421 4.7.0` and is closed, so an overload
//! costs a few bytes, not a task. Accept errors (for example running out of file descriptors)
//! are logged and retried after a short pause instead of ending the listener. The kernel's
//! queue of connections not yet accepted holds [`LISTEN_BACKLOG`].
//!
//! Started as root, the process binds every port first and then becomes `server.user`
//! (supplementary groups cleared, group then user), after handing it the spool directory. If
//! the account does not exist, start-up fails with a message naming the setting. Nothing
//! listens that is not configured.
//!
//! A listener on the IPv6 wildcard (`[::]:25`) is dual-stack on Linux (`net.ipv6.bindv6only`
//! is 0 by default): the kernel reports its IPv4 clients as `::ffff:a.b.c.d`. The accept loop
//! turns such a peer address back into the IPv4 address it is, so that the session, SPF
//! (`a`, `mx`, `%{i}`), the Received line, the logs and the state all see one IPv4 client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::session::{self, SessionSettings, Shared};
use crate::state::canonical_ip;

/// A bound listener and the settings of its sessions.
pub struct Bound {
    pub listener: TcpListener,
    pub settings: Arc<SessionSettings>,
    pub max_connections: usize,
}

/// Connections the kernel completes and queues before the accept loop takes them (capped by
/// `net.core.somaxconn`). std's 128 overflows when a crowd connects at once: the kernel then
/// drops SYNs and every client dropped waits a second to retry.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds one address (SO_REUSEADDR, as std does on Unix) with a [`LISTEN_BACKLOG`] queue.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepts connections until shutdown; sessions run on `tracker`.
pub async fn accept_loop(bound: Bound, shared: Shared, tracker: TaskTracker) {
    let limit = Arc::new(Semaphore::new(bound.max_connections));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = bound.listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                error!(event = "accept_error", listener = %bound.settings.listener, reason = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = SocketAddr::new(canonical_ip(peer.ip()), peer.port());
        let _ = tcp.set_nodelay(true);
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let settings = bound.settings.clone();
                let shared = shared.clone();
                tracker.spawn(async move {
                    session::serve_connection(tcp, peer, settings, shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                warn!(event = "connection_limit", listener = %bound.settings.listener, client = %peer.ip(), decision = "reject", reason = "too many connections");
                let hostname = bound.settings.hostname.clone();
                tracker.spawn(async move {
                    let mut tcp = tcp;
                    let msg = format!("421 4.7.0 {hostname} Error: too many connections\r\n");
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), tcp.write_all(msg.as_bytes()))
                            .await;
                });
            }
        }
    }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Gives `spool` to `user` and becomes that user. Call after binding, before anything reads
/// client input.
pub fn drop_privileges(user: &str, group: Option<&str>, spool: &Path) -> Result<(), String> {
    use nix::unistd::{Group, User, setgid, setgroups, setuid};
    let account = User::from_name(user)
        .map_err(|e| format!("cannot look up server.user {user:?}: {e}"))?
        .ok_or_else(|| format!("server.user {user:?} does not exist: create the account (useradd --system {user}) or set [server] user to an existing unprivileged account"))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("cannot look up server.group {g:?}: {e}"))?
                .ok_or_else(|| format!("server.group {g:?} does not exist"))?
                .gid
        }
        None => account.gid,
    };
    if account.uid.is_root() {
        return Err(format!(
            "server.user {user:?} is root: choose an unprivileged account"
        ));
    }
    chown_tree(spool, account.uid, gid, 2)
        .map_err(|e| format!("cannot give {} to {user}: {e}", spool.display()))?;
    setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    setgid(gid).map_err(|e| format!("setgid: {e}"))?;
    setuid(account.uid).map_err(|e| format!("setuid: {e}"))?;
    info!(event = "privileges_dropped", user = %user, uid = account.uid.as_raw(), gid = gid.as_raw());
    Ok(())
}

/// Changes the owner of `path` and, `depth` levels down, of what it contains.
fn chown_tree(
    path: &Path,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
    depth: u32,
) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    nix::unistd::chown(path, Some(uid), Some(gid))?;
    if depth == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            chown_tree(&p, uid, gid, depth - 1)?;
        } else {
            nix::unistd::chown(&p, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crowd connecting at once is queued by the kernel, not dropped: 600 connections that
    /// nobody accepts yet all complete (with std's queue of 128 the 129th would hang). The
    /// kernel caps the queue at net.core.somaxconn; the crowd stays below it.
    #[test]
    fn the_accept_queue_holds_a_crowd() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(128);
        let crowd = somaxconn.min(600);
        let listener = bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let addr = listener.local_addr().expect("local address");
        let clients: Vec<std::net::TcpStream> = (0..crowd)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"))
            })
            .collect();
        assert_eq!(clients.len(), crowd);
    }
}
