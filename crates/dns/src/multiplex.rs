//! Queries multiplexed over a few long-lived UDP sockets: the transport of batch runs.
//!
//! hickory's name server pool opens a new socket for every query (source-port randomisation,
//! RFC 5452 §4), which is what the long-running gateway keeps. A batch audit asks tens of
//! thousands of questions in a few seconds, and there the socket, its bind, connect, event
//! registration and close cost more CPU than the question itself. A batch run's resolver
//! ([`crate::Resolver::for_batch`]) uses this transport instead when its name servers are
//! on loopback or a private network (see [`is_local`]; otherwise it keeps hickory's pool):
//!
//! - [`LANES`] UDP sockets per name server, each bound to an ephemeral port the kernel picks
//!   and connected to the server (so the kernel drops datagrams from any other address), for
//!   the life of the run; a server's sockets are opened at its first query, and a server whose
//!   sockets cannot be opened (an IPv6 server on an IPv4-only host) fails every attempt sent
//!   to it.
//! - Queries start at the name server that answered last, and go to its sockets in turn.
//! - Each query has a random ID unused on its socket (at most [`MAX_IN_FLIGHT`] per socket),
//!   and an answer is taken only when it is a response with that ID whose question is the
//!   query's (type and class equal, the name equal ignoring case, as hickory compares them;
//!   RFC 5452 §9.1). Anything else is dropped and the query keeps waiting for its real answer.
//! - One reader task per socket hands answers to the waiting queries; a receive error (an ICMP
//!   error of an earlier send) concerns one datagram, and the reader goes on.
//! - An attempt that times out, fails to send, or is answered with SERVFAIL, REFUSED or
//!   another error code is sent again, to the next name server, up to the configured number
//!   of attempts (as hickory's retry handle does); when every attempt was answered with an
//!   error code, the last answer is returned.
//! - A truncated answer is asked again over TCP (RFC 7766), one connection per question,
//!   within the same timeout; a TCP answer that is itself truncated is a failed attempt.
//!
//! How it fails: [`Failure::Timeout`] when the last attempt timed out, [`Failure::Other`] when
//! it could not be sent or its TCP exchange failed; SERVFAIL, REFUSED and other codes come
//! back as the answer (the resolver reads its response code). Dropping the transport stops
//! its reader tasks; a cancelled query removes itself from its socket's table.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OnceCell, oneshot};
use tokio::task::JoinHandle;

use crate::resolver::Failure;

/// The UDP sockets kept per name server.
pub const LANES: usize = 4;

/// The most queries waiting for an answer on one socket. A batch run has far fewer (its
/// concurrency bounds them); the bound keeps the random ID of each a guess among 64 at worst
/// for a forger, and the socket's receive buffer able to hold a burst of answers.
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long a reader waits after a run of receive errors before reading again.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The largest UDP answer read; an answer is never larger than the EDNS payload announced,
/// and a bigger datagram is cut here and then fails to parse.
const UDP_BUFFER: usize = 4096;

/// The transport: sockets to each name server, opened on the first query.
pub(crate) struct Multiplexer {
    servers: Vec<Server>,
    /// The server that answered last: where queries start.
    preferred: AtomicUsize,
    /// Which socket of a server the next query uses.
    next: AtomicUsize,
    timeout: Duration,
    attempts: usize,
    edns_payload: u16,
}

/// A name server and its sockets, opened at its first query (or the reason they could not
/// be, kept for the run).
struct Server {
    addr: SocketAddr,
    lanes: OnceCell<Result<Vec<Lane>, String>>,
}

/// One socket and the queries waiting for an answer on it.
struct Lane {
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
            servers: servers
                .into_iter()
                .map(|addr| Server {
                    addr,
                    lanes: OnceCell::new(),
                })
                .collect(),
            preferred: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            timeout,
            attempts: attempts.max(1),
            edns_payload,
        }
    }

    /// Sends `query` (recursion desired, the AD bit set, EDNS) and returns the answer, over
    /// TCP when the UDP answer was truncated.
    pub(crate) async fn ask(&self, query: &Query) -> Result<Message, Failure> {
        if self.servers.is_empty() {
            return Err(Failure::Other("no name server".to_string()));
        }
        let first = self.preferred.load(Ordering::Relaxed);
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last: Result<Message, Failure> = Err(Failure::Timeout);
        for attempt in 0..self.attempts {
            let index = (first + attempt) % self.servers.len();
            let server = &self.servers[index];
            let lanes = match server
                .lanes
                .get_or_init(|| async {
                    open_lanes(server.addr)
                        .await
                        .map_err(|e| format!("cannot open a DNS socket to {}: {e}", server.addr))
                })
                .await
            {
                Ok(lanes) => lanes,
                Err(why) => {
                    last = Err(Failure::Other(why.clone()));
                    continue;
                }
            };
            let lane = &lanes[(turn + attempt) % lanes.len()];
            let answer = match self.ask_lane(lane, server.addr, query).await {
                Ok(answer) if answer.metadata.truncation => {
                    ask_tcp(server.addr, query, self.timeout).await
                }
                other => other,
            };
            if answer.as_ref().is_ok_and(is_final) {
                self.preferred.store(index, Ordering::Relaxed);
                return answer;
            }
            // SERVFAIL, REFUSED and the like, or no answer: another server (or a second try)
            // may do better, as with hickory's retry handle; kept in case none does.
            last = answer;
        }
        last
    }

    /// One attempt over one socket.
    async fn ask_lane(
        &self,
        lane: &Lane,
        server: SocketAddr,
        query: &Query,
    ) -> Result<Message, Failure> {
        let (reply, answer) = oneshot::channel();
        let id = {
            let mut waiting = lock(&lane.shared.waiting);
            if waiting.len() >= MAX_IN_FLIGHT {
                return Err(Failure::Other(format!(
                    "more than {MAX_IN_FLIGHT} DNS queries in flight on one socket to {server}"
                )));
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
            .map_err(|e| Failure::Other(format!("sending to {server}: {e}")))?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(message)) => Ok(message),
            // The reader task ended (only when the transport is dropped).
            Ok(Err(_)) => Err(Failure::Other(format!("the socket to {server} was closed"))),
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

/// [`LANES`] connected sockets to `server`, each with its reader task.
async fn open_lanes(server: SocketAddr) -> io::Result<Vec<Lane>> {
    let local: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let mut lanes = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        let socket = UdpSocket::bind((local, 0)).await?;
        socket.connect(server).await?;
        let shared = Arc::new(Shared {
            socket,
            waiting: Mutex::new(HashMap::new()),
        });
        let reader = tokio::spawn(read_answers(shared.clone()));
        lanes.push(Lane { shared, reader });
    }
    Ok(lanes)
}

/// The reader of one socket: hands each answer to the query it answers, drops the rest.
async fn read_answers(shared: Arc<Shared>) {
    let mut buffer = vec![0u8; UDP_BUFFER];
    let mut errors = 0u32;
    loop {
        let len = match shared.socket.recv(&mut buffer).await {
            Ok(len) => {
                errors = 0;
                len
            }
            // An ICMP error of an earlier send (port unreachable, host unreachable,
            // administratively prohibited) arrives on the next receive and concerns that
            // datagram only: its query times out or is answered by another server. A long run
            // of errors is paced so that a persistent one cannot spin.
            Err(e) => {
                errors += 1;
                if errors == 1 || errors.is_multiple_of(1000) {
                    tracing::debug!(error = %e, errors, "DNS socket receive error");
                }
                if errors >= 16 {
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
                continue;
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

/// An answer that ends a query: NOERROR or NXDOMAIN. Other codes (SERVFAIL, REFUSED,
/// FORMERR, NOTIMP) are worth another attempt.
fn is_final(answer: &Message) -> bool {
    matches!(
        answer.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    )
}

/// True when a name server may be reached over the multiplexed sockets: on loopback or a
/// private network (RFC 1918, RFC 6598 shared space, IPv6 unique-local and link-local). A
/// resolver across the internet gets hickory's socket per query instead: off-path forgers
/// are there, and its round trip hides the cost of the sockets anyway.
pub(crate) fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// True when `message` is a response to the query `id` that asked `query`: same ID, the
/// response flag, one question of the same type and class whose name is the query's
/// (compared without regard to case, as hickory's `Name` equality does).
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
/// query, the length-prefixed answer, all within `timeout`. An answer still truncated is a
/// failure.
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
    if message.metadata.truncation {
        return Err(Failure::Other(format!(
            "the TCP answer of {server} is truncated"
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
