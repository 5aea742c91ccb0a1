//! An in-process authoritative DNS server for tests: hickory-server answering from zones
//! given as zone-file text, over UDP and TCP on one free port of 127.0.0.1.
//!
//! The server runs on its own thread with its own tokio runtime, so it serves synchronous
//! tests, `#[tokio::test]`s of any flavour, and child processes (a gateway under test) alike.
//! It is stopped and its thread joined when the [`TestDnsServer`] is dropped.
//!
//! Zones can be replaced while the server runs ([`TestDnsServer::set_zone`]), and faults can
//! be injected per query name ([`Fault`]): SERVFAIL, REFUSED, or silence (the query is dropped,
//! so the client times out). Names outside every zone are answered REFUSED, as an
//! authoritative server does.
//!
//! How it fails: [`TestDnsServer::start`] and [`TestDnsServer::set_zone`] return a
//! [`TestServerError`] naming the zone and the parser's complaint; binding errors name the
//! address. Nothing here panics on zone text.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Ready, ServerThread, lock};
use std::time::Duration;

use hickory_resolver::proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_resolver::proto::rr::{LowerName, Name, RecordType, RrKey};
use hickory_resolver::proto::serialize::txt::Parser;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType};

use crate::resolver::{AdTrust, ConfigError, Resolver, ResolverSettings};

/// A failure the server plays for one query name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// Do not answer at all: the client times out.
    Silent,
}

/// The server could not start or a zone could not be loaded.
#[derive(Debug)]
pub struct TestServerError(pub String);

impl fmt::Display for TestServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TestServerError {}

/// What the serving thread and the test share.
struct Shared {
    catalog: Mutex<Arc<Catalog>>,
    zones: Mutex<HashMap<String, Arc<InMemoryZoneHandler>>>,
    faults: Mutex<HashMap<String, Fault>>,
    queries: AtomicUsize,
}

/// A running authoritative server on 127.0.0.1 (UDP and TCP on the same port).
pub struct TestDnsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _thread: ServerThread,
}

impl fmt::Debug for TestDnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TestDnsServer {
    /// Starts a server for the zones, each given as `(origin, zone-file text)`.
    ///
    /// The text is read with `$ORIGIN origin.` and `$TTL 300` in effect (the text may set its
    /// own); relative names are relative to the origin. A zone without an SOA record gets one
    /// (`ns.ORIGIN. hostmaster.ORIGIN. 1 3600 600 86400 60`).
    pub fn start(zones: &[(&str, &str)]) -> Result<TestDnsServer, TestServerError> {
        let shared = Arc::new(Shared {
            catalog: Mutex::new(Arc::new(Catalog::new())),
            zones: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            queries: AtomicUsize::new(0),
        });
        for (origin, text) in zones {
            install_zone(&shared, origin, text)?;
        }
        let (udp, tcp) = bind_pair()?;
        let addr = udp
            .local_addr()
            .map_err(|e| TestServerError(format!("test DNS server address: {e}")))?;
        let handler = Handler {
            shared: shared.clone(),
        };
        let thread = ServerThread::spawn(
            format!("test-dns-{}", addr.port()),
            move |ready, stopped| serve(udp, tcp, handler, stopped, ready),
        )?;
        Ok(TestDnsServer {
            addr,
            shared,
            _thread: thread,
        })
    }

    /// The address (UDP and TCP) the server answers on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resolver settings pointing at this server only: a 1 s timeout and 1 attempt, so that
    /// failure tests are quick. The AD bit is never trusted (an authoritative server does not
    /// validate).
    pub fn resolver_settings(&self) -> ResolverSettings {
        ResolverSettings {
            nameservers: vec![self.addr],
            timeout: Duration::from_secs(1),
            attempts: 1,
            ad_trust: AdTrust::Never,
        }
    }

    /// A resolver with [`TestDnsServer::resolver_settings`].
    pub fn resolver(&self) -> Result<Resolver, ConfigError> {
        Resolver::new(&self.resolver_settings())
    }

    /// Adds a zone, or replaces the zone of the same origin. Queries that arrive after the
    /// call returns see the new data.
    pub fn set_zone(&self, origin: &str, text: &str) -> Result<(), TestServerError> {
        install_zone(&self.shared, origin, text)
    }

    /// Plays `fault` for every query of `name` (any type); `None` clears it.
    pub fn set_fault(&self, name: &str, fault: Option<Fault>) {
        let key = key_of(name);
        let mut faults = lock(&self.shared.faults);
        match fault {
            Some(fault) => {
                faults.insert(key, fault);
            }
            None => {
                faults.remove(&key);
            }
        }
    }

    /// How many queries the server has received so far.
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }
}

/// The lookup key of a name: lowercase with the final dot.
fn key_of(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    }
}

/// Binds a UDP socket on a free port of 127.0.0.1 and a TCP listener on the same port.
fn bind_pair() -> Result<(UdpSocket, TcpListener), TestServerError> {
    let mut last = String::new();
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .map_err(|e| TestServerError(format!("cannot bind UDP on 127.0.0.1: {e}")))?;
        let addr = match udp.local_addr() {
            Ok(addr) => addr,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        match TcpListener::bind(addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(TestServerError(format!(
        "no port of 127.0.0.1 was free for both UDP and TCP: {last}"
    )))
}

/// Parses a zone and puts it into a fresh catalog with the other zones.
fn install_zone(shared: &Shared, origin: &str, text: &str) -> Result<(), TestServerError> {
    let origin_text = key_of(origin);
    let origin_name = Name::from_ascii(&origin_text)
        .map_err(|e| TestServerError(format!("zone origin {origin:?}: {e}")))?;
    let prelude = format!("$ORIGIN {origin_text}\n$TTL 300\n");
    let (_, mut records) = Parser::new(
        format!("{prelude}{text}\n"),
        None,
        Some(origin_name.clone()),
    )
    .parse()
    .map_err(|e| TestServerError(format!("zone {origin_text}: {e}")))?;
    let soa_key = RrKey::new(LowerName::new(&origin_name), RecordType::SOA);
    if !records.contains_key(&soa_key) {
        let soa = format!(
            "{prelude}@ IN SOA ns.{origin_text} hostmaster.{origin_text} 1 3600 600 86400 60\n"
        );
        let (_, soa_records) = Parser::new(soa, None, Some(origin_name.clone()))
            .parse()
            .map_err(|e| TestServerError(format!("zone {origin_text}: default SOA: {e}")))?;
        records.extend(soa_records);
    }
    let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
        origin_name,
        records,
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .map_err(|e| TestServerError(format!("zone {origin_text}: {e}")))?;

    let mut zones = lock(&shared.zones);
    zones.insert(origin_text, Arc::new(handler));
    let mut catalog = Catalog::new();
    for (origin, handler) in zones.iter() {
        let name = match Name::from_ascii(origin) {
            Ok(name) => name,
            Err(e) => return Err(TestServerError(format!("zone origin {origin:?}: {e}"))),
        };
        catalog.upsert(LowerName::new(&name), vec![handler.clone()]);
    }
    *lock(&shared.catalog) = Arc::new(catalog);
    Ok(())
}

/// The server: hickory's UDP and TCP handlers until `stopped`.
async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    handler: Handler,
    stopped: tokio::sync::oneshot::Receiver<()>,
    ready: Ready,
) {
    let sockets = udp
        .set_nonblocking(true)
        .and_then(|()| tcp.set_nonblocking(true))
        .and_then(|()| {
            Ok((
                tokio::net::UdpSocket::from_std(udp)?,
                tokio::net::TcpListener::from_std(tcp)?,
            ))
        });
    let (udp, tcp) = match sockets {
        Ok(sockets) => sockets,
        Err(e) => return ready.failed(format!("test DNS sockets: {e}")),
    };
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    ready.serving();
    let _ = stopped.await;
    let _ = server.shutdown_gracefully().await;
}

/// Counts queries, plays faults, and hands everything else to the current catalog.
struct Handler {
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.shared.queries.fetch_add(1, Ordering::SeqCst);
        let fault = request.request_info().ok().and_then(|info| {
            let name = key_of(&info.query.name().to_string());
            lock(&self.shared.faults).get(&name).copied()
        });
        let code = match fault {
            None => {
                let catalog = lock(&self.shared.catalog).clone();
                return catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await;
            }
            Some(Fault::Silent) => {
                let mut metadata = Metadata::new(
                    request.metadata.id,
                    MessageType::Response,
                    request.metadata.op_code,
                );
                metadata.response_code = ResponseCode::ServFail;
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                });
            }
            Some(Fault::ServFail) => ResponseCode::ServFail,
            Some(Fault::Refused) => ResponseCode::Refused,
        };
        let response =
            MessageResponseBuilder::new(&request.queries, None).error_msg(&request.metadata, code);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(_) => {
                let mut metadata = Metadata::new(
                    request.metadata.id,
                    MessageType::Response,
                    request.metadata.op_code,
                );
                metadata.response_code = code;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
