//! One TLS handshake per probe, each on a fresh connection (after STARTTLS where the endpoint
//! needs it), to learn what a server accepts.
//!
//! - [`rustls_probe`]: what a modern client gets, one protocol version at a time (TLS 1.3,
//!   TLS 1.2): version, cipher suite, key-exchange group and the certificate chain. The
//!   certificate and the handshake signature are deliberately not verified here (a probe sends
//!   no data; the chain is judged separately), so a server with a 1024-bit RSA key or a SHA-1
//!   certificate still completes the handshake and can be described.
//! - [`openssl_probe`]: what a legacy client gets: OpenSSL at security level 0 with a chosen
//!   protocol range and cipher list, to see whether a server accepts TLS 1.0 / 1.1, NULL,
//!   anonymous, RC4, DES or export suites, RSA key exchange or small Diffie-Hellman groups.
//!   When the OpenSSL this program is linked with cannot offer what is asked (Debian's
//!   OpenSSL 3 has no RC4, DES, 3DES or export suites), the probe says so ([`ProbeError::Local`])
//!   rather than reporting the server clean.
//!
//! Every connection has the caller's time limit on connect, read and write. Errors are
//! sorted so that a check never turns a network failure into a verdict: [`ProbeError::Refused`]
//! is the server declining the handshake, everything else is "could not tell".

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use openssl::pkey::Id;
use openssl::ssl::{HandshakeError, Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
    SupportedProtocolVersion,
};

use super::starttls::{self, StartTlsError};

/// How TLS starts on an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Plain SMTP, then EHLO and STARTTLS (ports 25, 587, 2525).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
}

impl TlsMode {
    /// Implicit TLS on 465, STARTTLS elsewhere.
    pub fn for_port(port: u16) -> TlsMode {
        if port == 465 {
            TlsMode::Implicit
        } else {
            TlsMode::StartTls
        }
    }
}

/// One endpoint: the host name (for SNI and the certificate name check) and an address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsTarget {
    pub host: String,
    pub addr: SocketAddr,
    pub mode: TlsMode,
}

impl TlsTarget {
    /// A target whose mode follows the port ([`TlsMode::for_port`]).
    pub fn new(host: impl Into<String>, addr: SocketAddr) -> TlsTarget {
        TlsTarget {
            host: host.into(),
            addr,
            mode: TlsMode::for_port(addr.port()),
        }
    }

    /// `host[address]:port`, the endpoint of findings.
    pub fn endpoint(&self) -> String {
        format!("{}[{}]:{}", self.host, self.addr.ip(), self.addr.port())
    }

    /// The host as an IP address, when it is one (no SNI, IP-address certificate check).
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host.trim_matches(['[', ']']).parse().ok()
    }
}

/// Why a probe has no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// TCP connect, the SMTP dialogue before TLS, or a time limit failed: no verdict.
    Connect(String),
    /// EHLO did not offer STARTTLS (the EHLO keywords).
    NotOffered(String),
    /// The server declined the handshake (alert, or closed the connection during it).
    Refused(String),
    /// This program's TLS library cannot make the offer asked for.
    Local(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Connect(why) => write!(f, "no connection: {why}"),
            ProbeError::NotOffered(ehlo) => write!(f, "STARTTLS not offered (EHLO: {ehlo})"),
            ProbeError::Refused(why) => write!(f, "refused: {why}"),
            ProbeError::Local(why) => write!(f, "not probed: {why}"),
        }
    }
}

/// What one successful handshake negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// `TLSv1.3`, `TLSv1.2`, `TLSv1`, ...
    pub version: String,
    /// The cipher suite (rustls or OpenSSL name).
    pub cipher: String,
    /// The key-exchange group (rustls: `X25519`, `secp256r1`, ...).
    pub group: Option<String>,
    /// The server's ephemeral key as OpenSSL reports it: (`DH` / `ECDH` / `X25519`, bits).
    pub ephemeral: Option<(String, u32)>,
    /// The certificate chain as sent, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
}

/// Connects and, for STARTTLS endpoints, reaches the point where the handshake starts.
pub fn open(
    target: &TlsTarget,
    timeout: Duration,
    ehlo_name: &str,
) -> Result<TcpStream, ProbeError> {
    let connect = |e: io::Error| ProbeError::Connect(format!("{}: {e}", target.addr));
    let mut stream = TcpStream::connect_timeout(&target.addr, timeout).map_err(connect)?;
    stream.set_read_timeout(Some(timeout)).map_err(connect)?;
    stream.set_write_timeout(Some(timeout)).map_err(connect)?;
    stream.set_nodelay(true).map_err(connect)?;
    if target.mode == TlsMode::StartTls {
        match starttls::starttls(&mut stream, ehlo_name) {
            Ok(_) => {}
            Err(StartTlsError::NotOffered(ehlo)) => return Err(ProbeError::NotOffered(ehlo)),
            Err(e) => return Err(ProbeError::Connect(e.to_string())),
        }
    }
    Ok(stream)
}

/// Whether an I/O error during a handshake is a time limit (no verdict) rather than the
/// server hanging up on an offer it does not like.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

// ---------------------------------------------------------------------------------------------
// rustls

/// Accepts any certificate and any handshake signature: a probe measures, it does not trust.
#[derive(Debug)]
struct AcceptAnything(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// The rustls name of a host: an IP address (no SNI is sent then) or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host:?} is not a host name: {e}")),
    }
}

/// A handshake offering only `version`, with rustls' default suites and groups.
pub fn rustls_probe(
    target: &TlsTarget,
    timeout: Duration,
    ehlo_name: &str,
    version: &'static SupportedProtocolVersion,
) -> Result<Negotiated, ProbeError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .map_err(|e| ProbeError::Local(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(schemes)))
        .with_no_client_auth();
    let name = server_name(&target.host).map_err(ProbeError::Local)?;
    let mut conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|e| ProbeError::Local(e.to_string()))?;
    let mut stream = open(target, timeout, ehlo_name)?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut stream) {
            return Err(if is_timeout(&e) {
                ProbeError::Connect(format!("handshake: {e}"))
            } else {
                ProbeError::Refused(e.to_string())
            });
        }
    }
    let negotiated = Negotiated {
        version: match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
            other => format!("{other:?}"),
        },
        cipher: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        group: conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name())),
        ephemeral: None,
        chain: conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect(),
    };
    conn.send_close_notify();
    let _ = conn.complete_io(&mut stream);
    Ok(negotiated)
}

// ---------------------------------------------------------------------------------------------
// OpenSSL

/// What an OpenSSL probe offers.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    pub min: SslVersion,
    pub max: SslVersion,
    /// An OpenSSL cipher list for TLS 1.2 and below (`@SECLEVEL=0` is added).
    pub ciphers: &'static str,
}

/// Everything OpenSSL can offer at security level 0 (TLS 1.3 suites are OpenSSL's defaults).
pub const EVERYTHING: &str = "ALL:COMPLEMENTOFALL";

fn openssl_version_name(v: SslVersion) -> &'static str {
    match v {
        SslVersion::TLS1 => "TLSv1",
        SslVersion::TLS1_1 => "TLSv1.1",
        SslVersion::TLS1_2 => "TLSv1.2",
        SslVersion::TLS1_3 => "TLSv1.3",
        _ => "SSL",
    }
}

/// A handshake with OpenSSL at security level 0 making `offer`.
pub fn openssl_probe(
    target: &TlsTarget,
    timeout: Duration,
    ehlo_name: &str,
    offer: &Offer,
) -> Result<Negotiated, ProbeError> {
    let local =
        |what: &str, e: openssl::error::ErrorStack| ProbeError::Local(format!("{what}: {e}"));
    let mut builder =
        SslContext::builder(SslMethod::tls_client()).map_err(|e| local("OpenSSL context", e))?;
    builder.set_security_level(0);
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_min_proto_version(Some(offer.min))
        .and_then(|()| builder.set_max_proto_version(Some(offer.max)))
        .map_err(|e| {
            local(
                &format!(
                    "this OpenSSL cannot speak {}-{}",
                    openssl_version_name(offer.min),
                    openssl_version_name(offer.max)
                ),
                e,
            )
        })?;
    builder
        // OpenSSL refuses a list that matches no suite it has.
        .set_cipher_list(&format!("{}:@SECLEVEL=0", offer.ciphers))
        .map_err(|_| ProbeError::Local(format!("this OpenSSL has no {} suites", offer.ciphers)))?;
    let context = builder.build();
    let mut ssl = Ssl::new(&context).map_err(|e| local("OpenSSL session", e))?;
    if target.host_ip().is_none() {
        ssl.set_hostname(&target.host)
            .map_err(|e| local("SNI", e))?;
    }
    let stream = open(target, timeout, ehlo_name)?;
    let tls = match ssl.connect(stream) {
        Ok(tls) => tls,
        Err(HandshakeError::Failure(mid)) => {
            let why = mid.error().to_string();
            return Err(match mid.error().io_error() {
                Some(e) if is_timeout(e) => ProbeError::Connect(format!("handshake: {why}")),
                _ => ProbeError::Refused(why),
            });
        }
        Err(HandshakeError::WouldBlock(_)) => {
            return Err(ProbeError::Connect("handshake: time limit".into()));
        }
        Err(HandshakeError::SetupFailure(e)) => return Err(local("OpenSSL setup", e)),
    };
    let ssl = tls.ssl();
    let ephemeral = ssl.peer_tmp_key().ok().map(|key| {
        let kind = match key.id() {
            Id::DH | Id::DHX => "DH",
            Id::EC => "ECDH",
            Id::X25519 => "X25519",
            Id::X448 => "X448",
            _ => "other",
        };
        (kind.to_string(), key.bits())
    });
    Ok(Negotiated {
        version: ssl.version_str().to_string(),
        cipher: ssl
            .current_cipher()
            .map(|c| c.name().to_string())
            .unwrap_or_default(),
        group: None,
        ephemeral,
        chain: ssl
            .peer_cert_chain()
            .map(|chain| chain.iter().filter_map(|c| c.to_der().ok()).collect())
            .unwrap_or_default(),
    })
}
