//! # ravelin-tls: the rustls configurations Ravelin speaks with
//!
//! Every TLS context of the gateway is built here, so the policy lives in one place:
//!
//! - Only TLS 1.2 and TLS 1.3 (rustls implements nothing older), with the aws-lc-rs provider's
//!   default cipher suites, which are all AEAD with forward secrecy.
//! - [`server_config`]: a listener's certificate chain and private key, read from PEM files named
//!   by the `[tls]` section of the configuration (`certificate`, `private_key`). No client
//!   certificates are requested. [`ServerCertificate`] with [`reloadable_server_config`]: the
//!   same, read again on [`ServerCertificate::reload`] (SIGHUP), for certificate renewal without
//!   a restart.
//! - [`self_signed_server_config`]: when a listener only *offers* STARTTLS and no `[tls]` section
//!   exists, a fresh self-signed certificate for the host name lets opportunistic TLS work anyway
//!   (SMTP clients in "may"/"encrypt" mode do not verify certificates).
//! - [`client_config`]: the outbound side. [`Verify::None`] is opportunistic/mandatory encryption
//!   without authentication (Postfix levels `may` and `encrypt`): the certificate chain and name
//!   are not checked, but the handshake signature is, so the session is still bound to the key
//!   the server presented. [`Verify::WebPki`] checks the chain against the system roots or one CA
//!   file, and the name given at connect time (Postfix level `verify`).
//!   [`Verify::WebPkiPlus`] is the same check against the system roots and one more CA file
//!   (MTA-STS, where a private CA is trusted besides the public ones).
//! - [`dane`]: DANE for SMTP (RFC 7672): TLSA matching and a verifier for DANE-EE and DANE-TA.
//! - [`describe`]: the negotiated protocol and cipher for Received headers and logs.
//! - [`testing::TestPki`]: a throw-away CA and leaf certificate for tests of every crate.
//!
//! How it fails: every constructor returns a [`TlsError`] that names the file and what is wrong
//! with it (unreadable, too large, not PEM, no certificate, no private key, key does not match the
//! certificate). Nothing here panics on file contents. PEM files larger than [`MAX_PEM_BYTES`]
//! are refused.

pub mod dane;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};

/// The protocol versions every configuration built here accepts: TLS 1.2 and TLS 1.3.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The largest certificate, key or CA file read (1 MiB); real chains are a few kilobytes.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// What went wrong while building a TLS configuration.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read, or was unusable; `problem` says what is wrong with it.
    File { path: PathBuf, problem: String },
    /// The private key does not belong to the first certificate of the chain.
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    /// No trust anchors could be loaded for certificate verification.
    NoRoots(String),
    /// rcgen could not generate a certificate.
    Generate(String),
    /// rustls refused the configuration.
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::File { path, problem } => write!(f, "{}: {problem}", path.display()),
            TlsError::KeyMismatch { certificate, key } => write!(
                f,
                "the private key in {} does not match the certificate in {}",
                key.display(),
                certificate.display()
            ),
            TlsError::NoRoots(why) => write!(f, "no trusted CA certificates: {why}"),
            TlsError::Generate(why) => write!(f, "cannot generate a certificate: {why}"),
            TlsError::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

/// The crypto provider of every configuration: aws-lc-rs with its default suites and groups.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn file_error(path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Reads a PEM file whole, refusing anything larger than [`MAX_PEM_BYTES`].
fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file =
        std::fs::File::open(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(file_error(
            path,
            format!("larger than {MAX_PEM_BYTES} bytes; this is not a certificate or key file"),
        ));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file, in file order; an error if there is none.
fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "no certificate in file (expected \"-----BEGIN CERTIFICATE-----\" blocks)",
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(
            path,
            "no private key in file (expected a \"-----BEGIN PRIVATE KEY-----\", \
             \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
        ),
        other => file_error(path, format!("not valid PEM: {other}")),
    })
}

/// The server configuration of a listener: the chain in `cert` (leaf first) and the key in
/// `key`, read once.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    reloadable_server_config(Arc::new(ServerCertificate::load(cert, key)?))
}

/// A server configuration that presents whatever `certificate` holds at each handshake: a
/// [`ServerCertificate::reload`] takes effect for the next handshake, and sessions already
/// encrypted keep theirs.
pub fn reloadable_server_config(
    certificate: Arc<ServerCertificate>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    Ok(Arc::new(config))
}

/// A listener's certificate chain and private key, read from their PEM files, and read again
/// on [`ServerCertificate::reload`] (certificate renewal: `ravelin serve` reloads on SIGHUP).
/// A reload that fails leaves the certificate in use untouched.
pub struct ServerCertificate {
    cert: PathBuf,
    key: PathBuf,
    /// The chain and key presented now, and their summary (parsed once per load).
    current: std::sync::RwLock<(Arc<rustls::sign::CertifiedKey>, CertificateSummary)>,
}

/// Days before a certificate's expiry under which it is to be renewed soon (a warning of
/// `ravelin serve`'s log, `tls.cert_expiry` warns).
pub const EXPIRY_WARN_DAYS: i64 = 60;
/// Days before a certificate's expiry under which it is urgent (an error of `ravelin serve`'s
/// log, `tls.cert_expiry` fails).
pub const EXPIRY_FAIL_DAYS: i64 = 30;

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What a certificate file holds, for logs: the leaf's subject and expiry, the chain length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// The leaf certificate's subject, as x509-parser writes it (`CN=mx1.example.org`).
    pub subject: String,
    /// When the chain stops being valid: the earliest notAfter of its certificates (usually
    /// the leaf's; an intermediate can expire first), RFC 2822 style as x509-parser writes it.
    pub not_after: String,
    /// That notAfter as a Unix time; `None` when the leaf could not be parsed.
    pub not_after_timestamp: Option<i64>,
    /// The subject of the chain certificate that expires first, when it is not the leaf.
    pub first_to_expire: Option<String>,
    /// Certificates in the chain, leaf included.
    pub chain: usize,
}

impl CertificateSummary {
    /// Seconds from now to notAfter (negative once expired); `None` when the leaf could not
    /// be parsed.
    pub fn seconds_left(&self) -> Option<i64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.not_after_timestamp.map(|t| t - now)
    }
}

impl ServerCertificate {
    /// Reads and checks the chain in `cert` and the key in `key` (the key must belong to the
    /// first certificate).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerCertificate, TlsError> {
        let certified = certified_key(cert, key)?;
        let summary = summarise(&certified);
        Ok(ServerCertificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: std::sync::RwLock::new((Arc::new(certified), summary)),
        })
    }

    /// Reads both files again and, when they are usable, presents them from the next
    /// handshake on; otherwise keeps the certificate in use and says why.
    pub fn reload(&self) -> Result<CertificateSummary, TlsError> {
        let certified = Arc::new(certified_key(&self.cert, &self.key)?);
        let summary = summarise(&certified);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = (certified, summary.clone());
        Ok(summary)
    }

    /// The certificate presented now.
    pub fn summary(&self) -> CertificateSummary {
        self.read().1.clone()
    }

    /// The certificate file's path.
    pub fn certificate_path(&self) -> &Path {
        &self.cert
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, (Arc<rustls::sign::CertifiedKey>, CertificateSummary)> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl rustls::server::ResolvesServerCert for ServerCertificate {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.read().0.clone())
    }
}

/// The chain of `cert` and the key of `key`, checked to belong together.
fn certified_key(cert: &Path, key: &Path) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let chain = load_certificates(cert)?;
    let private_key = load_private_key(key)?;
    rustls::sign::CertifiedKey::from_der(chain, private_key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            certificate: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        rustls::Error::General(why) => file_error(key, format!("unusable private key: {why}")),
        other => TlsError::Rustls(other),
    })
}

fn summarise(certified: &rustls::sign::CertifiedKey) -> CertificateSummary {
    let parsed: Vec<Option<(String, x509_parser::time::ASN1Time)>> = certified
        .cert
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| (c.subject().to_string(), c.validity().not_after))
        })
        .collect();
    let chain = certified.cert.len();
    let Some(Some((subject, leaf_not_after))) = parsed.first() else {
        return CertificateSummary {
            subject: "(unparsable)".to_string(),
            not_after: String::new(),
            not_after_timestamp: None,
            first_to_expire: None,
            chain,
        };
    };
    // The first certificate with the earliest notAfter, the leaf unless an intermediate
    // expires before it (an unparsable intermediate is skipped: the leaf still tells when the
    // chain ends at the latest).
    let (index, not_after) = parsed
        .iter()
        .enumerate()
        .skip(1)
        .filter_map(|(i, p)| p.as_ref().map(|(_, not_after)| (i, not_after)))
        .fold((0, leaf_not_after), |first, (i, not_after)| {
            if not_after.timestamp() < first.1.timestamp() {
                (i, not_after)
            } else {
                first
            }
        });
    CertificateSummary {
        subject: subject.clone(),
        not_after: not_after.to_string(),
        not_after_timestamp: Some(not_after.timestamp()),
        first_to_expire: parsed[index]
            .as_ref()
            .filter(|_| index > 0)
            .map(|(s, _)| s.clone()),
        chain,
    }
}

/// A server configuration with a freshly generated self-signed certificate for `hostname`, for
/// listeners that offer STARTTLS without a configured certificate.
pub fn self_signed_server_config(hostname: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)?;
    Ok(Arc::new(config))
}

/// How the SMTP client authenticates the servers it delivers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt only: any certificate is accepted (chain and name are not checked), but the
    /// handshake signature must be made by the key of the presented certificate.
    None,
    /// Check the chain and the server name: against the system's trusted roots, or, when
    /// `ca_file` is given, against the CA certificates in that file only.
    WebPki { ca_file: Option<PathBuf> },
    /// Check the chain and the server name against the system's trusted roots and, besides
    /// them, the CA certificates in `extra_ca_file`. An empty or unreadable system store is
    /// tolerated when the extra file gives at least one root.
    WebPkiPlus { extra_ca_file: Option<PathBuf> },
}

/// The SMTP client configuration for one verification policy; TLS 1.2 and 1.3 only.
pub fn client_config(verify: &Verify) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)?;
    let config = match verify {
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CustomVerifier::new(
                &provider,
                Box::new(|_, _, _| Ok(())),
            )))
            .with_no_client_auth(),
        Verify::WebPki { ca_file } => builder
            .with_root_certificates(trust_anchors(ca_file.as_deref())?)
            .with_no_client_auth(),
        Verify::WebPkiPlus { extra_ca_file } => builder
            .with_root_certificates(system_and_extra_roots(extra_ca_file.as_deref())?)
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The roots for [`Verify::WebPki`]: the CA file's certificates, or the system store.
fn trust_anchors(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in load_certificates(path)? {
                roots.add(cert).map_err(|e| {
                    file_error(path, format!("not usable as a CA certificate: {e}"))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let why = match native.errors.first() {
                    Some(e) => format!("the system certificate store could not be read: {e}"),
                    None => "the system certificate store is empty (install ca-certificates, \
                             or name a CA file)"
                        .to_string(),
                };
                return Err(TlsError::NoRoots(why));
            }
        }
    }
    Ok(roots)
}

/// The roots for [`Verify::WebPkiPlus`]: the system store plus the extra file's certificates.
fn system_and_extra_roots(extra: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let Some(extra) = extra else {
        return trust_anchors(None);
    };
    let mut roots = trust_anchors(Some(extra))?;
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    Ok(roots)
}

/// How a custom verifier judges the server's chain: `(leaf, intermediates, now)`.
pub(crate) type ChainCheck = dyn Fn(&CertificateDer<'_>, &[CertificateDer<'_>], UnixTime) -> Result<(), rustls::Error>
    + Send
    + Sync;

/// A verifier whose chain check is `check` (no name is checked unless `check` does) and
/// whose handshake signature checks are rustls' own, so the session is always bound to the
/// key of the presented certificate. [`Verify::None`] uses a check that accepts any chain;
/// DANE uses [`dane`]'s TLSA matching.
pub(crate) struct CustomVerifier {
    check: Box<ChainCheck>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for CustomVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomVerifier")
    }
}

impl CustomVerifier {
    pub(crate) fn new(provider: &CryptoProvider, check: Box<ChainCheck>) -> CustomVerifier {
        CustomVerifier {
            check,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for CustomVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        (self.check)(end_entity, intermediates, now).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The negotiated protocol and cipher suite, e.g. `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`,
/// as written into Received headers and logs.
pub fn describe(conn: &CommonState) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => return "TLS handshake not complete".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(suite) => format!("{version} with cipher {:?}", suite.suite()),
        None => version,
    }
}

/// Certificates for tests: a private CA and a leaf it signed.
pub mod testing {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    use crate::TlsError;

    /// A throw-away CA and a server certificate for one host name, all in PEM.
    #[derive(Debug, Clone)]
    pub struct TestPki {
        /// The CA certificate: the trust anchor for `Verify::WebPki { ca_file }`.
        pub ca_pem: String,
        /// The leaf certificate for the host name, signed by the CA.
        pub cert_pem: String,
        /// The leaf's private key (PKCS#8).
        pub key_pem: String,
    }

    /// The paths [`TestPki::write_to`] wrote.
    #[derive(Debug, Clone)]
    pub struct TestPkiFiles {
        pub ca: PathBuf,
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    fn generate_error(e: rcgen::Error) -> TlsError {
        TlsError::Generate(e.to_string())
    }

    impl TestPki {
        /// Generates a CA ("Ravelin test CA <tag>", unique per call) and a leaf for `hostname` (a DNS name or an IP
        /// address) valid for server authentication.
        pub fn new(hostname: &str) -> Result<TestPki, TlsError> {
            Self::build(hostname, None)
        }

        /// Like [`TestPki::new`], with a leaf that expires `days` days from now (negative:
        /// expired that long ago).
        pub fn expiring_in(hostname: &str, days: i64) -> Result<TestPki, TlsError> {
            let not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
            Self::build(hostname, Some(not_after))
        }

        fn build(
            hostname: &str,
            not_after: Option<time::OffsetDateTime>,
        ) -> Result<TestPki, TlsError> {
            let ca_key = KeyPair::generate().map_err(generate_error)?;
            // Each CA gets its own name, so two test PKIs never look like the same issuer.
            let tag: String = ca_key
                .public_key_raw()
                .iter()
                .rev()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect();
            let mut ca_params =
                CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
            ca_params
                .distinguished_name
                .push(DnType::CommonName, format!("Ravelin test CA {tag}"));
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca_cert = ca_params.self_signed(&ca_key).map_err(generate_error)?;
            let issuer = Issuer::new(ca_params, ca_key);

            let mut leaf_params =
                CertificateParams::new(vec![hostname.to_string()]).map_err(generate_error)?;
            leaf_params
                .distinguished_name
                .push(DnType::CommonName, hostname);
            leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            if let Some(not_after) = not_after {
                leaf_params.not_before = not_after - time::Duration::days(365);
                leaf_params.not_after = not_after;
            }
            let leaf_key = KeyPair::generate().map_err(generate_error)?;
            let leaf_cert = leaf_params
                .signed_by(&leaf_key, &issuer)
                .map_err(generate_error)?;
            Ok(TestPki {
                ca_pem: ca_cert.pem(),
                cert_pem: leaf_cert.pem(),
                key_pem: leaf_key.serialize_pem(),
            })
        }

        /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`.
        pub fn write_to(&self, dir: &Path) -> std::io::Result<TestPkiFiles> {
            let files = TestPkiFiles {
                ca: dir.join("ca.pem"),
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem"),
            };
            std::fs::write(&files.ca, &self.ca_pem)?;
            std::fs::write(&files.cert, &self.cert_pem)?;
            std::fs::write(&files.key, &self.key_pem)?;
            Ok(files)
        }
    }
}
