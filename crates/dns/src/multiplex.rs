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
//! - Each query has a random ID unused on its socket, and an answer is taken only when it is
//!   a response with that ID whose question is the query's (type and class equal, the name
//!   equal ignoring case, as hickory compares them; RFC 5452 §9.1). Anything else is dropped and the query keeps waiting for its real answer.
//! - A socket carries at most as many queries at once as its receive buffer has room for
//!   answers ([`in_flight_bound`]: the buffer the kernel granted, which net.core.rmem_max
//!   caps, over [`ANSWER_ROOM`]; never more than [`MAX_IN_FLIGHT`]); a query beyond that
//!   waits for a free slot within its attempt's timeout, so that a burst of answers never
//!   overflows the buffer and loses answers to timeouts.
//! - One writer task per socket sends the queries queued since it last ran together, in one
//!   `sendmmsg` (a batch run's queries come in bursts: one system call and one wake-up of the
//!   name server per burst cost less than one per query); a query that cannot be sent fails
//!   its attempt at once.
//! - One reader task per socket hands answers to the waiting queries, reading as many as have
//!   arrived in one `recvmmsg`; a receive error (an ICMP error of an earlier send) concerns
//!   one datagram, and the reader goes on.
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
//! its reader and writer tasks; a cancelled query removes itself from its socket's table (and
//! is not sent if it was still queued). Each query has a ticket unique on its socket, so that
//! a query whose ID another has taken over since never removes or fails that other one.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OnceCell, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::resolver::Failure;

/// The UDP sockets kept per name server.
pub const LANES: usize = 4;

/// The most queries waiting for an answer on one socket, however large its receive buffer:
/// the bound keeps the random ID of each a guess among 64 at worst for a forger.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The receive-buffer memory counted per query in flight: what Linux charges for an answer
/// of up to the 1 232-byte EDNS payload the resolver announces (measured on loopback: about
/// 830 bytes for a 100-byte datagram, 1.3 KiB for 500, 2.3 KiB for 1 200).
pub const ANSWER_ROOM: usize = 2304;

/// How long a reader waits after a run of receive errors before reading again.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The receive buffer asked for each socket: room for a burst of answers to
/// [`MAX_IN_FLIGHT`] queries while the reader is not scheduled. The kernel grants at most
/// net.core.rmem_max (208 KiB by default on Linux, reported doubled), and the socket then
/// carries fewer queries at once ([`in_flight_bound`]).
const RECEIVE_BUFFER: usize = 2 << 20;

/// The most answers one `recvmmsg` reads.
const RECEIVE_BATCH: usize = 32;

/// The most queries one `sendmmsg` sends.
const SEND_BATCH: usize = 64;

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
    /// The receive buffer asked for each socket ([`RECEIVE_BUFFER`]; smaller in tests).
    receive_buffer: usize,
}

/// A name server and its sockets, opened at its first query (or the reason they could not
/// be, kept for the run).
struct Server {
    addr: SocketAddr,
    lanes: OnceCell<Result<Vec<Lane>, String>>,
}

/// One socket, the queries waiting for an answer on it, and the queue of its writer.
struct Lane {
    shared: Arc<Shared>,
    /// One permit per query the socket's receive buffer has room to answer.
    slots: Semaphore,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

struct Shared {
    socket: UdpSocket,
    server: SocketAddr,
    waiting: Mutex<HashMap<u16, Waiting>>,
    /// The ticket of the next query on this socket.
    tickets: AtomicU64,
}

/// A query in flight: its ticket (unique on the socket for the run, where an ID is reused as
/// soon as it is free), the question its answer must echo, and where to hand the answer (or
/// the reason it could not be sent).
struct Waiting {
    ticket: u64,
    query: Query,
    reply: oneshot::Sender<Result<Message, Failure>>,
}

/// A query queued for the writer: its ID, its ticket and the message.
struct Outgoing {
    id: u16,
    ticket: u64,
    bytes: Vec<u8>,
}

impl Shared {
    /// True while the query with `ticket` still waits under `id`.
    fn is_waiting(waiting: &HashMap<u16, Waiting>, id: u16, ticket: u64) -> bool {
        waiting.get(&id).is_some_and(|w| w.ticket == ticket)
    }

    /// Takes out the query with `ticket` if it still waits under `id` (not one that has taken
    /// the ID over since).
    fn take(&self, id: u16, ticket: u64) -> Option<Waiting> {
        let mut waiting = lock(&self.waiting);
        if Self::is_waiting(&waiting, id, ticket) {
            waiting.remove(&id)
        } else {
            None
        }
    }
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
            receive_buffer: RECEIVE_BUFFER,
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
            // The rare paths (opening the lanes, a truncated answer's TCP retry) are boxed so
            // that every query's state, held by each waiting caller, stays small.
            let lanes = match server
                .lanes
                .get_or_init(|| {
                    Box::pin(async {
                        open_lanes(server.addr, self.receive_buffer)
                            .await
                            .map_err(|e| {
                                format!("cannot open a DNS socket to {}: {e}", server.addr)
                            })
                    })
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
                    Box::pin(ask_tcp(server.addr, query, self.timeout)).await
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

    /// One attempt over one socket, within the timeout: waiting for a free slot on the
    /// socket, then for the answer.
    async fn ask_lane(
        &self,
        lane: &Lane,
        server: SocketAddr,
        query: &Query,
    ) -> Result<Message, Failure> {
        let attempt = async {
            let closed = || Failure::Other(format!("the socket to {server} was closed"));
            // Held until the attempt ends; the semaphore is never closed.
            let _slot = lane.slots.acquire().await.map_err(|_| closed())?;
            let (reply, answer) = oneshot::channel();
            let ticket = lane.shared.tickets.fetch_add(1, Ordering::Relaxed);
            let id = {
                let mut waiting = lock(&lane.shared.waiting);
                // The slots keep the table under MAX_IN_FLIGHT: an unused ID exists.
                let id = loop {
                    let id: u16 = rand::random();
                    if !waiting.contains_key(&id) {
                        break id;
                    }
                };
                waiting.insert(
                    id,
                    Waiting {
                        ticket,
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
                ticket,
            };
            let bytes = encode(id, query, self.edns_payload)?;
            // The writer's task ends only when the transport is dropped.
            lane.outgoing
                .send(Outgoing { id, ticket, bytes })
                .map_err(|_| closed())?;
            answer.await.map_err(|_| closed())?
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(Failure::Timeout))
    }
}

/// How many queries a socket whose receive buffer is `granted` bytes (as the kernel reports
/// it) carries at once: one per [`ANSWER_ROOM`], at least one, at most [`MAX_IN_FLIGHT`].
pub fn in_flight_bound(granted: usize) -> usize {
    (granted / ANSWER_ROOM).clamp(1, MAX_IN_FLIGHT)
}

/// Removes a query from its socket's table when dropped, unless it was taken out already
/// (answered, or its send failed) and another query has its ID now.
struct Entry<'a> {
    shared: &'a Shared,
    id: u16,
    ticket: u64,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.shared.take(self.id, self.ticket);
    }
}

/// [`LANES`] connected sockets to `server`, each asking for a `receive_buffer` of that many
/// bytes, with its reader and writer tasks and as many slots as the buffer it got has room
/// for.
async fn open_lanes(server: SocketAddr, receive_buffer: usize) -> io::Result<Vec<Lane>> {
    let local: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let mut lanes = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        let socket = UdpSocket::bind((local, 0)).await?;
        // Best effort: the kernel caps the size at net.core.rmem_max.
        let buffer = socket2::SockRef::from(&socket);
        if let Err(e) = buffer.set_recv_buffer_size(receive_buffer) {
            tracing::debug!(error = %e, "cannot enlarge a DNS socket's receive buffer");
        }
        // What was granted; Linux's default (208 KiB) when it cannot be read.
        let granted = buffer.recv_buffer_size().unwrap_or(212_992);
        let slots = in_flight_bound(granted);
        if slots < MAX_IN_FLIGHT {
            tracing::debug!(
                granted,
                slots,
                "a DNS socket's receive buffer bounds its queries in flight (net.core.rmem_max)"
            );
        }
        socket.connect(server).await?;
        let shared = Arc::new(Shared {
            socket,
            server,
            waiting: Mutex::new(HashMap::new()),
            tickets: AtomicU64::new(0),
        });
        let (outgoing, queue) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_answers(shared.clone()));
        let writer = tokio::spawn(write_queries(shared.clone(), queue));
        lanes.push(Lane {
            shared,
            slots: Semaphore::new(slots),
            outgoing,
            reader,
            writer,
        });
    }
    Ok(lanes)
}

/// The writer of one socket: sends what is queued, as many queries at once as are ready when
/// it runs (it lets the other ready tasks run first, so that a burst goes out in one system
/// call). A query that gave up meanwhile (timed out or cancelled) is not sent; one the kernel
/// refuses is answered with the error. The queue is unbounded: the socket's slots bound the
/// live queries in it ([`in_flight_bound`]), and those that gave up are dropped at each turn.
async fn write_queries(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch = Vec::with_capacity(SEND_BATCH);
    while queue.recv_many(&mut batch, SEND_BATCH).await > 0 {
        tokio::task::yield_now().await;
        while batch.len() < SEND_BATCH {
            match queue.try_recv() {
                Ok(query) => batch.push(query),
                Err(_) => break,
            }
        }
        {
            let waiting = lock(&shared.waiting);
            batch.retain(|q| Shared::is_waiting(&waiting, q.id, q.ticket));
        }
        let mut start = 0;
        while start < batch.len() {
            match send_batch(&shared.socket, &batch[start..]).await {
                Ok(sent) if sent > 0 => start += sent,
                outcome => {
                    let why = match outcome {
                        Err(e) => e.to_string(),
                        Ok(_) => "nothing was sent".to_string(),
                    };
                    let failed = shared.take(batch[start].id, batch[start].ticket);
                    if let Some(entry) = failed {
                        let failure =
                            Failure::Other(format!("sending to {}: {why}", shared.server));
                        let _ = entry.reply.send(Err(failure));
                    }
                    start += 1;
                }
            }
        }
        batch.clear();
    }
}

/// One `sendmmsg` of `batch` (at most [`SEND_BATCH`] queries) on the connected `socket`,
/// waiting until it is writable; how many datagrams went (an error concerns the first).
async fn send_batch(socket: &UdpSocket, batch: &[Outgoing]) -> io::Result<usize> {
    socket
        .async_io(Interest::WRITABLE, || {
            let slices: Vec<[IoSlice<'_>; 1]> =
                batch.iter().map(|q| [IoSlice::new(&q.bytes)]).collect();
            let addresses: Vec<Option<SockaddrStorage>> = vec![None; batch.len()];
            let no_control: [ControlMessage<'_>; 0] = [];
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
            sendmmsg(
                socket.as_raw_fd(),
                &mut headers,
                &slices,
                &addresses,
                no_control,
                MsgFlags::empty(),
            )
            .map(|sent| sent.count())
            .map_err(io::Error::from)
        })
        .await
}

/// The reader of one socket: hands each answer to the query it answers, drops the rest.
async fn read_answers(shared: Arc<Shared>) {
    let mut buffers = vec![[0u8; UDP_BUFFER]; RECEIVE_BATCH];
    let mut errors = 0u32;
    loop {
        let lengths = match receive_batch(&shared.socket, &mut buffers).await {
            Ok(lengths) => {
                errors = 0;
                lengths
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
        for (buffer, len) in buffers.iter().zip(lengths) {
            hand_over(&shared, &buffer[..len]);
        }
    }
}

/// Gives `datagram` to the query it answers, if any.
fn hand_over(shared: &Shared, datagram: &[u8]) {
    let Some(id) = datagram.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return;
    };
    if !lock(&shared.waiting).contains_key(&id) {
        return;
    }
    let Ok(message) = Message::from_vec(datagram) else {
        return;
    };
    let mut waiting = lock(&shared.waiting);
    let Some(query) = waiting.get(&id).map(|w| &w.query) else {
        return;
    };
    if !answers(&message, id, query) {
        return;
    }
    if let Some(entry) = waiting.remove(&id) {
        drop(waiting);
        let _ = entry.reply.send(Ok(message));
    }
}

/// One `recvmmsg` into `buffers`, waiting until the socket is readable: the length of each
/// datagram received, in order (a longer datagram than a buffer is cut, and then fails to
/// parse). An error concerns the first datagram; those after it come with the next call.
async fn receive_batch(
    socket: &UdpSocket,
    buffers: &mut [[u8; UDP_BUFFER]],
) -> io::Result<Vec<usize>> {
    socket
        .async_io(Interest::READABLE, || {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
            let received = recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            Ok(received.map(|datagram| datagram.bytes).collect())
        })
        .await
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

/// The query message: ID, recursion desired, the AD bit (RFC 6840 §5.7), the question, and
/// an EDNS OPT record announcing `edns_payload` bytes (RFC 6891 §6.1.2; at least 512). Written
/// here rather than through hickory's `Message`: every query of a batch run is encoded once,
/// and these are the bytes hickory's encoder writes (a test compares them) for a tenth of
/// its work.
fn encode(id: u16, query: &Query, edns_payload: u16) -> Result<Vec<u8>, Failure> {
    let name = query.name();
    let mut bytes = Vec::with_capacity(12 + 256 + 4 + 11);
    bytes.extend_from_slice(&id.to_be_bytes());
    // QR 0 (a query), opcode QUERY, RD; then AD.
    bytes.extend_from_slice(&[0x01, 0x20]);
    // QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 1 (the OPT record).
    bytes.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.iter() {
        // `Name` keeps labels to 63 bytes and names to 255; checked again, as the wire needs.
        match u8::try_from(label.len()) {
            Ok(len @ 1..=63) => {
                bytes.push(len);
                bytes.extend_from_slice(label);
            }
            _ => {
                return Err(Failure::Other(format!(
                    "cannot encode the query: a label of {} bytes",
                    label.len()
                )));
            }
        }
    }
    bytes.push(0);
    if bytes.len() - 12 > 255 {
        return Err(Failure::Other(
            "cannot encode the query: a name longer than 255 bytes".to_string(),
        ));
    }
    bytes.extend_from_slice(&u16::from(query.query_type()).to_be_bytes());
    bytes.extend_from_slice(&u16::from(query.query_class()).to_be_bytes());
    // OPT: the root name, type 41, the payload size as its class, extended RCODE 0, version
    // 0, no flags (DO clear), no options.
    bytes.push(0);
    bytes.extend_from_slice(&41u16.to_be_bytes());
    bytes.extend_from_slice(&edns_payload.max(512).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::Edns;

    /// The query as hickory's encoder writes it.
    fn hickory_encode(id: u16, query: &Query, edns_payload: u16) -> Vec<u8> {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.metadata.authentic_data = true;
        message.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(edns_payload);
        message.set_edns(edns);
        message.to_vec().expect("hickory encodes the query")
    }

    #[test]
    fn queries_are_encoded_as_hickory_encodes_them() {
        use hickory_resolver::proto::rr::{DNSClass, Name, RecordType};
        let long = format!("{}.{}.example.", "a".repeat(63), "b".repeat(63));
        for (name, rtype) in [
            ("example.org.", RecordType::MX),
            ("selector1._domainkey.Example.ORG.", RecordType::TXT),
            ("_mta-sts.c0001.test.", RecordType::TXT),
            ("1.0.0.127.in-addr.arpa.", RecordType::PTR),
            ("_25._tcp.mx1.hosting.test.", RecordType::TLSA),
            (".", RecordType::DNSKEY),
            (long.as_str(), RecordType::CAA),
        ] {
            let mut query = Query::query(Name::from_ascii(name).expect("a name"), rtype);
            for class in [DNSClass::IN, DNSClass::CH] {
                query.set_query_class(class);
                for payload in [1232, u16::MAX, 100] {
                    for id in [0, 0x1234, u16::MAX] {
                        assert_eq!(
                            encode(id, &query, payload).expect("encoded"),
                            hickory_encode(id, &query, payload),
                            "{name} {rtype} {class} payload {payload} id {id}"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn lanes_ask_for_a_receive_buffer_that_holds_a_burst() {
        let lanes = open_lanes("127.0.0.1:53".parse().unwrap(), RECEIVE_BUFFER)
            .await
            .unwrap();
        assert_eq!(lanes.len(), LANES);
        // The kernel caps the request at net.core.rmem_max and reports twice what it keeps
        // (an untouched socket reports net.core.rmem_default, at most rmem_max).
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for lane in &lanes {
            let size = socket2::SockRef::from(&lane.shared.socket)
                .recv_buffer_size()
                .unwrap();
            assert!(
                size >= 2 * RECEIVE_BUFFER.min(cap),
                "{size} bytes, rmem_max {cap}"
            );
            assert_eq!(lane.slots.available_permits(), in_flight_bound(size));
        }
    }

    #[test]
    fn the_receive_buffer_granted_bounds_the_queries_in_flight() {
        // Linux's default buffer, reported doubled: 184 answers of up to 1 232 bytes.
        assert_eq!(in_flight_bound(425_984), 184);
        assert_eq!(in_flight_bound(2 * RECEIVE_BUFFER), MAX_IN_FLIGHT);
        assert_eq!(in_flight_bound(0), 1);
    }

    /// A name server that answers in bursts: it takes every query that arrives until none has
    /// come for 50 ms, then sends all their answers back to back (NOERROR, no records), as a
    /// fast server answers a batch run's burst of questions. Returns its address and the
    /// largest burst it answered.
    fn bursty_server() -> (SocketAddr, std::thread::JoinHandle<usize>) {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            server
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let (mut largest, mut idle) = (0, 0);
            let mut buffer = [0u8; 512];
            while idle < 40 {
                let mut burst = Vec::new();
                while let Ok((len, from)) = server.recv_from(&mut buffer) {
                    let mut answer = Message::from_vec(&buffer[..len]).unwrap();
                    answer.metadata.message_type = MessageType::Response;
                    burst.push((answer.to_vec().unwrap(), from));
                }
                idle = if burst.is_empty() { idle + 1 } else { 0 };
                largest = largest.max(burst.len());
                for (bytes, from) in burst {
                    server.send_to(&bytes, from).unwrap();
                }
            }
            largest
        });
        (addr, thread)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_receive_buffer_slows_a_burst_down_and_loses_no_answer() {
        let (server, largest) = bursty_server();
        // The smallest buffer Linux grants (4.5 KiB, reported doubled): 4 slots per socket.
        let mut transport = Multiplexer::new(vec![server], Duration::from_secs(3), 1, 1232);
        transport.receive_buffer = 1;
        let transport = Arc::new(transport);
        let mut queries = tokio::task::JoinSet::new();
        for i in 0..200 {
            let transport = transport.clone();
            queries.spawn(async move {
                let name = format!("q{i}.example.test.");
                let name = hickory_resolver::proto::rr::Name::from_ascii(&name).unwrap();
                let query = Query::query(name, hickory_resolver::proto::rr::RecordType::TXT);
                transport.ask(&query).await
            });
        }
        let mut answered = 0;
        while let Some(outcome) = queries.join_next().await {
            match outcome.unwrap() {
                Ok(_) => answered += 1,
                Err(e) => panic!("a query was lost: {e:?}"),
            }
        }
        assert_eq!(answered, 200);
        drop(transport);
        let largest = largest.join().unwrap();
        let slots: usize = {
            let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let buffer = socket2::SockRef::from(&probe);
            buffer.set_recv_buffer_size(1).unwrap();
            in_flight_bound(buffer.recv_buffer_size().unwrap())
        };
        assert!(
            largest <= LANES * slots,
            "a burst of {largest} answers, more than {LANES} sockets x {slots} slots"
        );
    }

    /// A socket's shared state, connected to `server`.
    async fn shared_to(server: SocketAddr) -> Arc<Shared> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(server).await.unwrap();
        Arc::new(Shared {
            socket,
            server,
            waiting: Mutex::new(HashMap::new()),
            tickets: AtomicU64::new(0),
        })
    }

    /// A waiting query with `ticket`, and the receiver of its reply.
    fn waiting(ticket: u64) -> (Waiting, oneshot::Receiver<Result<Message, Failure>>) {
        let (reply, answer) = oneshot::channel();
        let name = hickory_resolver::proto::rr::Name::from_ascii("example.test.").unwrap();
        let query = Query::query(name, hickory_resolver::proto::rr::RecordType::A);
        let entry = Waiting {
            ticket,
            query,
            reply,
        };
        (entry, answer)
    }

    #[tokio::test]
    async fn a_query_whose_id_was_taken_over_leaves_the_new_one_alone() {
        let shared = shared_to("127.0.0.1:53".parse().unwrap()).await;
        let (first, _) = waiting(1);
        lock(&shared.waiting).insert(7, first);
        let guard = Entry {
            shared: &shared,
            id: 7,
            ticket: 1,
        };
        // Answered (the reader takes it out), then ID 7 goes to another query before the
        // first one's guard drops.
        assert!(shared.take(7, 1).is_some());
        let (second, _) = waiting(2);
        lock(&shared.waiting).insert(7, second);
        drop(guard);
        assert_eq!(lock(&shared.waiting).get(&7).map(|w| w.ticket), Some(2));
        assert!(shared.take(7, 1).is_none(), "the old ticket takes nothing");
    }

    #[tokio::test]
    async fn the_writer_sends_live_queries_only() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let shared = shared_to(server.local_addr().unwrap()).await;
        let (live, _answer) = waiting(2);
        lock(&shared.waiting).insert(20, live);
        let (outgoing, queue) = mpsc::unbounded_channel();
        // Ticket 1 gave up (nothing waits for it); ticket 3 is not the one waiting under 20.
        for (id, ticket, bytes) in [
            (10, 1, b"gave up"),
            (20, 3, b"stale!!"),
            (20, 2, b"live!!!"),
        ] {
            let bytes = bytes.to_vec();
            outgoing.send(Outgoing { id, ticket, bytes }).unwrap();
        }
        let writer = tokio::spawn(write_queries(shared.clone(), queue));
        let mut buffer = [0u8; 64];
        let second = tokio::task::spawn_blocking(move || {
            let first = server.recv(&mut buffer).unwrap();
            assert_eq!(&buffer[..first], b"live!!!");
            server.recv(&mut buffer).map(|len| buffer[..len].to_vec())
        })
        .await
        .unwrap();
        assert!(second.is_err(), "only the live query is sent: {second:?}");
        writer.abort();
    }
}
