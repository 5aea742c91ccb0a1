//! Queries multiplexed over a few long-lived UDP sockets: the transport of batch runs.
//!
//! hickory's name server pool opens a new socket for every query (source-port randomisation,
//! RFC 5452 §4), which is what the long-running gateway keeps. A batch audit asks tens of
//! thousands of questions in a few seconds, and there the socket, its bind, connect, event
//! registration and close cost more CPU than the question itself. A batch run's resolver
//! ([`crate::Resolver::for_batch`]) uses this transport instead:
//!
//! - [`LANES`] UDP sockets per name server, each bound to an ephemeral port the kernel picks
//!   and connected to the server (so the kernel drops datagrams from any other address), for
//!   the life of the run; queries go to them in turn.
//! - Each query has a random ID unused on its socket, and an answer is taken only when it is a
//!   response that echoes the question exactly (name, type and class, RFC 5452 §9.1). Anything
//!   else is dropped and the query keeps waiting for its real answer.
//! - One reader task per socket hands answers to the waiting queries.
//! - A truncated answer is asked again over TCP (RFC 7766), one connection per question.
//! - A query that gets no answer within the timeout is sent again, to the next name server, up
//!   to the configured number of attempts.
//!
//! How it fails: a timeout after every attempt is [`Failure::Timeout`]; a socket error or a
//! malformed TCP answer is [`Failure::Other`]. A SERVFAIL or REFUSED answer is returned as it
//! is (the resolver reads its response code). Dropping the transport stops its reader tasks;
//! a cancelled query removes itself from its socket's table.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;

use crate::resolver::Failure;

/// The UDP sockets kept per name server.
pub const LANES: usize = 4;

/// The largest UDP answer read; an answer is never larger than the EDNS payload announced,
/// and a bigger datagram is cut here and then fails to parse.
const UDP_BUFFER: usize = 4096;

/// The transport: sockets to each name server, opened on the first query.
pub(crate) struct Multiplexer {
    servers: Vec<SocketAddr>,
    lanes: OnceCell<Vec<Lane>>,
    next: AtomicUsize,
    timeout: Duration,
    attempts: usize,
    edns_payload: u16,
}

/// One socket and the queries waiting for an answer on it.
struct Lane {
    server: SocketAddr,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Shared {
    socket: UdpSocket,
    waiting: Mutex<HashMap<u16, Waiting>>,
}

/// A query in flight: the question its answer must echo, and where to hand the answer.
struct Waiting {
    query: Query,
    reply: oneshot::Sender<Message>,
}

impl Multiplexer {
    /// A transport to `servers` (tried in turn on timeouts), `attempts` sends per query, each
    /// waiting up to `timeout`, announcing `edns_payload` bytes for UDP answers.
    pub(crate) fn new(
        servers: Vec<SocketAddr>,
        timeout: Duration,
        attempts: usize,
        edns_payload: u16,
    ) -> Multiplexer {
        Multiplexer {
            servers,
            lanes: OnceCell::new(),
            next: AtomicUsize::new(0),
            timeout,
            attempts: attempts.max(1),
            edns_payload,
        }
    }

    /// Sends `query` (recursion desired, the AD bit set, EDNS) and returns the answer, over
    /// TCP when the UDP answer was truncated.
    pub(crate) async fn ask(&self, query: &Query) -> Result<Message, Failure> {
        let lanes = self
            .lanes
            .get_or_try_init(|| open_lanes(&self.servers))
            .await
            .map_err(|e| Failure::Other(format!("cannot open a DNS socket: {e}")))?;
        let per_server = lanes.len() / self.servers.len().max(1);
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = Failure::Timeout;
        for attempt in 0..self.attempts {
            // The server for this attempt, and one of its sockets in turn.
            let server = (turn + attempt) % self.servers.len();
            let lane = &lanes[server * per_server + turn % per_server];
            match self.ask_lane(lane, query).await {
                Ok(answer) if answer.metadata.truncation => {
                    return ask_tcp(lane.server, query, self.timeout).await;
                }
                Ok(answer) => return Ok(answer),
                Err(failure) => last = failure,
            }
        }
        Err(last)
    }

    /// One attempt over one socket.
    async fn ask_lane(&self, lane: &Lane, query: &Query) -> Result<Message, Failure> {
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut waiting = lock(&lane.shared.waiting);
            if waiting.len() >= usize::from(u16::MAX) / 2 {
                return Err(Failure::Other("too many DNS queries in flight".to_string()));
            }
            let id = loop {
                let id: u16 = rand::random();
                if !waiting.contains_key(&id) {
                    break id;
                }
            };
            waiting.insert(
                id,
                Waiting {
                    query: query.clone(),
                    reply,
                },
            );
            id
        };
        // Removes the entry however this attempt ends: answered, timed out or cancelled.
        let _entry = Entry {
            shared: &lane.shared,
            id,
        };
        let bytes = encode(id, query, self.edns_payload)?;
        lane.shared
            .socket
            .send(&bytes)
            .await
            .map_err(|e| Failure::Other(format!("sending to {}: {e}", lane.server)))?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(message)) => Ok(message),
            // The reader task ended: the socket failed.
            Ok(Err(_)) => Err(Failure::Other(format!(
                "the socket to {} was closed",
                lane.server
            ))),
            Err(_) => Err(Failure::Timeout),
        }
    }
}

/// Removes a query from its socket's table when dropped.
struct Entry<'a> {
    shared: &'a Shared,
    id: u16,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        lock(&self.shared.waiting).remove(&self.id);
    }
}

/// [`LANES`] connected sockets per server, in server order, each with its reader task.
async fn open_lanes(servers: &[SocketAddr]) -> io::Result<Vec<Lane>> {
    if servers.is_empty() {
        return Err(io::Error::other("no name server"));
    }
    let mut lanes = Vec::with_capacity(servers.len() * LANES);
    for &server in servers {
        for _ in 0..LANES {
            let local: IpAddr = match server {
                SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            let socket = UdpSocket::bind((local, 0)).await?;
            socket.connect(server).await?;
            let shared = Arc::new(Shared {
                socket,
                waiting: Mutex::new(HashMap::new()),
            });
            let reader = tokio::spawn(read_answers(shared.clone()));
            lanes.push(Lane {
                server,
                shared,
                reader,
            });
        }
    }
    Ok(lanes)
}

/// The reader of one socket: hands each answer to the query it answers, drops the rest.
async fn read_answers(shared: Arc<Shared>) {
    let mut buffer = vec![0u8; UDP_BUFFER];
    loop {
        let len = match shared.socket.recv(&mut buffer).await {
            Ok(len) => len,
            // An ICMP error from an earlier send (connection refused, host unreachable)
            // arrives on the next receive; the query it belongs to times out.
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "DNS socket failed");
                // Dropping the table's senders fails every waiting query at once.
                lock(&shared.waiting).clear();
                return;
            }
        };
        let datagram = &buffer[..len];
        let Some(id) = datagram.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            continue;
        };
        if !lock(&shared.waiting).contains_key(&id) {
            continue;
        }
        let Ok(message) = Message::from_vec(datagram) else {
            continue;
        };
        let mut waiting = lock(&shared.waiting);
        let Some(query) = waiting.get(&id).map(|w| &w.query) else {
            continue;
        };
        if !answers(&message, id, query) {
            continue;
        }
        if let Some(entry) = waiting.remove(&id) {
            drop(waiting);
            let _ = entry.reply.send(message);
        }
    }
}

/// Receive errors that leave the socket usable.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::Interrupted
    )
}

/// True when `message` is a response to the query `id` that asked `query`: same ID, the
/// response flag, and exactly the question (hickory compares names without regard to case).
fn answers(message: &Message, id: u16, query: &Query) -> bool {
    message.metadata.id == id
        && message.metadata.message_type == MessageType::Response
        && message.metadata.op_code == OpCode::Query
        && matches!(message.queries.as_slice(), [echoed]
            if echoed.query_type() == query.query_type()
                && echoed.query_class() == query.query_class()
                && echoed.name() == query.name())
}

/// The query message: ID, recursion desired, the AD bit (RFC 6840 §5.7), EDNS with the
/// payload size.
fn encode(id: u16, query: &Query, edns_payload: u16) -> Result<Vec<u8>, Failure> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.authentic_data = true;
    message.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(edns_payload);
    message.set_edns(edns);
    message
        .to_vec()
        .map_err(|e| Failure::Other(format!("cannot encode the query: {e}")))
}

/// The question over TCP, after a truncated UDP answer: one connection, the length-prefixed
/// query, the length-prefixed answer, all within `timeout`.
async fn ask_tcp(server: SocketAddr, query: &Query, timeout: Duration) -> Result<Message, Failure> {
    let id: u16 = rand::random();
    let bytes = encode(id, query, u16::MAX)?;
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let len = u16::try_from(bytes.len()).map_err(io::Error::other)?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
        let len = usize::from(stream.read_u16().await?);
        let mut answer = vec![0u8; len];
        stream.read_exact(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(Failure::Other(format!("DNS over TCP to {server}: {e}"))),
        Err(_) => return Err(Failure::Timeout),
    };
    let message = Message::from_vec(&answer)
        .map_err(|e| Failure::Other(format!("malformed DNS answer from {server}: {e}")))?;
    if !answers(&message, id, query) {
        return Err(Failure::Other(format!(
            "the TCP answer of {server} does not match the question"
        )));
    }
    Ok(message)
}

/// Locks a table; a poisoned lock is taken over (the table holds no invariant a panic could
/// break).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
