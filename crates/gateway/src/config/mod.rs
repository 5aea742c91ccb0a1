//! The TOML configuration of the gateway, read and validated with file/line errors.
//!
//! What it reads: one TOML file (at most [`MAX_CONFIG_BYTES`]), every key of which is described,
//! with its default, in the example configuration ([`example`], `config/example.toml`). Every
//! section has hardened defaults, so a minimal file names only the host name, the listeners
//! and, for inbound mail, the accepted domains and the backend.
//!
//! How it fails: [`Config::load`] and [`Config::parse`] return [`ConfigErrors`], each naming
//! the file, the line and what to write instead. Unknown keys are errors (with the closest valid
//! key suggested), so a typo never silently falls back to a default. A TOML syntax error stops
//! reading. Every unknown key, wrong type and bad value is reported, not only the first: the
//! offending entry is set aside (blanked, so lines keep their numbers) and the file read again,
//! at most [`MAX_READER_ERRORS`] times; a required key reported missing only because its entry
//! was set aside is not reported. Once the file reads cleanly, the semantic checks (host names,
//! listener TLS needing a certificate, inbound listeners needing domains and a backend, limits,
//! durations, and, for `load`, that the named certificate and CA files exist) are all collected
//! and reported together; they wait for a clean read because defaults standing in for entries
//! set aside would make them wrong.
//!
//! Relative paths in a file read by [`Config::load`] are taken relative to that file's
//! directory.

mod alerts;
mod auth;
mod bans;
mod checks;
mod diagnostics;
mod dkim;
mod dns;
mod greylist;
mod header_firewall;
mod metrics;
mod monitor;
mod rate_limits;
mod recipients;
mod screen;
mod state;
mod values;

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::alerts::{AlertsSection, WebhookUrl};
pub use self::auth::{AuthSection, LdapSection, is_loopback_host, parse_ldap_url};
pub use self::bans::{AbuseKind, AbuseRule, AbuseRuleSetting, BansSection};
pub use self::checks::{ChecksSection, Forwarder};
pub use self::diagnostics::{ConfigError, ConfigErrors};
pub use self::dkim::{DkimKeyConfig, DkimSection};
pub use self::dns::DnsSection;
pub use self::greylist::GreylistSection;
pub use self::header_firewall::{
    HeaderFirewallSection, MAILER_FIELDS, ReceivedMode, is_name_pattern,
};
pub use self::metrics::MetricsSection;
pub use self::monitor::MonitorSection;
pub use self::rate_limits::RateLimitsSection;
pub use self::recipients::{
    CalloutSection, DEFAULT_LDAP_FILTER, RecipientSource, RecipientsLdapSection, RecipientsSection,
};
pub use self::screen::{DnsblSection, DnsblSite, MAX_GREET_WAIT, ScreenSection};
pub use self::state::{StateSection, StoreUrl, redact_url};
pub use self::values::{BackendUrl, Cidr, FIX_SEPARATOR, HumanDuration, is_domain, loopback};
pub use crate::log::LogFormat;

use self::diagnostics::{Locator, toml_path};

/// The largest configuration file read (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The most errors of the TOML reader (unknown keys, wrong types, bad values) reported for
/// one file; each costs one more reading of the file.
pub const MAX_READER_ERRORS: usize = 50;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our host name: the only name the banner, EHLO and Received headers reveal.
    pub hostname: String,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub listen: Vec<Listen>,
    #[serde(default)]
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub inbound: Inbound,
    #[serde(default)]
    pub outbound: Outbound,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub spool: SpoolSection,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub state: StateSection,
    #[serde(default)]
    pub bans: BansSection,
    #[serde(default)]
    pub rate_limits: RateLimitsSection,
    #[serde(default)]
    pub greylist: GreylistSection,
    #[serde(default)]
    pub screen: ScreenSection,
    #[serde(default)]
    pub dnsbl: DnsblSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub header_firewall: HeaderFirewallSection,
    #[serde(default)]
    pub dkim: DkimSection,
    #[serde(default)]
    pub recipients: RecipientsSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub monitor: MonitorSection,
    #[serde(default)]
    pub alerts: AlertsSection,
    #[serde(default)]
    pub checks: ChecksSection,
    /// The file the configuration was loaded from (`None` for [`Config::parse`]).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[server]`: the process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// The account to switch to after binding the listeners, when started as root.
    pub user: String,
    /// The group to switch to; default: the user's primary group.
    pub group: Option<String>,
    /// Where to write the process id.
    pub pid_file: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            user: "ravelin".to_string(),
            group: None,
            pid_file: None,
        }
    }
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenKind {
    /// Mail from the Internet for our domains (port 25).
    Inbound,
    /// Mail submission with STARTTLS (port 587).
    Submission,
    /// Mail submission over implicit TLS (port 465).
    Submissions,
    /// Outbound relay for trusted networks (e.g. the internal mail server).
    Relay,
}

impl ListenKind {
    /// The TLS mode a listener of this kind has when `tls` is not set.
    pub fn default_tls(self) -> TlsMode {
        match self {
            ListenKind::Inbound | ListenKind::Relay => TlsMode::Offer,
            ListenKind::Submission => TlsMode::Require,
            ListenKind::Submissions => TlsMode::Implicit,
        }
    }

    /// Whether mail on this listener leaves the organisation (submission and relay): the
    /// outbound header firewall and DKIM signing apply.
    pub fn is_outbound(self) -> bool {
        !matches!(self, ListenKind::Inbound)
    }

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenKind::Inbound => "inbound",
            ListenKind::Submission => "submission",
            ListenKind::Submissions => "submissions",
            ListenKind::Relay => "relay",
        }
    }
}

/// TLS on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS is offered; clients may send in clear text.
    Offer,
    /// STARTTLS is offered and required before MAIL FROM.
    Require,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// No TLS.
    Off,
}

impl TlsMode {
    /// Whether this mode needs a configured certificate (`[tls]`).
    pub fn needs_certificate(self) -> bool {
        matches!(self, TlsMode::Require | TlsMode::Implicit)
    }

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Offer => "offer",
            TlsMode::Require => "require",
            TlsMode::Implicit => "implicit",
            TlsMode::Off => "off",
        }
    }
}

/// `[[listen]]`: one listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Unique; appears in logs and metrics.
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenKind,
    /// As written; `None` means the kind's default, see [`Listen::tls_mode`].
    #[serde(default)]
    pub tls: Option<TlsMode>,
    /// Connections served at once; more are refused with 421.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    500
}

impl Listen {
    /// The effective TLS mode: `tls` if set, else the kind's default.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls.unwrap_or(self.kind.default_tls())
    }
}

/// `[tls]`: the certificate of the listeners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key of the leaf.
    pub private_key: PathBuf,
}

/// TLS towards a next hop, with the names of Postfix's `smtp_tls_security_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NextHopTls {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, without verification; clear text otherwise.
    May,
    /// STARTTLS required, certificate not verified.
    Encrypt,
    /// STARTTLS required, certificate chain and name verified.
    Verify,
}

/// `[inbound]`: mail for our domains.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inbound {
    /// Accepted recipient domains, lower-cased.
    pub domains: Vec<String>,
    /// Next hops for accepted mail, tried in order.
    pub backend: Vec<BackendUrl>,
    pub backend_tls: NextHopTls,
    /// CA certificates for `backend_tls = "verify"`; default: the system's roots.
    pub backend_ca_file: Option<PathBuf>,
    /// Whether our Received header shows the client's address and name.
    pub received_client: bool,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound {
            domains: Vec::new(),
            backend: Vec::new(),
            backend_tls: NextHopTls::May,
            backend_ca_file: None,
            received_client: true,
        }
    }
}

/// `[outbound]`: mail from our networks to the world.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// Clients that may relay through a `relay` listener.
    pub trusted_networks: Vec<Cidr>,
    /// Send all outbound mail through this host instead of the recipients' MX.
    pub smart_host: Option<BackendUrl>,
    pub smart_host_tls: NextHopTls,
    /// The account to log in with at the smart host (AUTH PLAIN, inside TLS only).
    pub smart_host_user: Option<String>,
    /// A file (mode 0600) whose first line is that account's password.
    pub smart_host_password_file: Option<PathBuf>,
    /// Direct delivery: authenticate MX hosts by DNSSEC-secure TLSA records (RFC 7672).
    pub dane: bool,
    /// Direct delivery: apply the recipient domains' MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// CA certificates trusted besides the system's for MTA-STS (policy host and MX).
    pub extra_ca_file: Option<PathBuf>,
    /// The HTTPS port MTA-STS policies are fetched from: 443; other values are for tests.
    pub mta_sts_port: u16,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound {
            trusted_networks: Vec::new(),
            smart_host: None,
            smart_host_tls: NextHopTls::Encrypt,
            smart_host_user: None,
            smart_host_password_file: None,
            dane: true,
            mta_sts: true,
            extra_ca_file: None,
            mta_sts_port: 443,
        }
    }
}

impl Outbound {
    /// Whether `addr` is in one of the trusted networks.
    pub fn is_trusted(&self, addr: std::net::IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(addr))
    }
}

/// Highest `limits.min_data_rate` accepted (bytes per second).
pub const MAX_MIN_DATA_RATE: u64 = 1024 * 1024;

/// `[limits]`: what one SMTP session may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted, in bytes (advertised with SIZE).
    pub message_size: u64,
    /// Recipients per message.
    pub recipients: u32,
    /// Client errors after which each reply is delayed.
    pub soft_errors: u32,
    /// Client errors after which the session is closed.
    pub hard_errors: u32,
    pub command_timeout: HumanDuration,
    pub data_timeout: HumanDuration,
    /// Slowest message data accepted, in bytes per second (0: only data_timeout per read).
    pub min_data_rate: u64,
    pub session_timeout: HumanDuration,
    /// Longest line accepted, in bytes including CRLF (RFC 5321: at least 1000).
    pub line_length: usize,
    /// Failed AUTH attempts after which a session is closed with 421.
    pub auth_failures: u32,
    /// Largest message header section, in bytes.
    pub header_size: usize,
    /// Most header fields in a message.
    pub header_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_size: 26_214_400,
            recipients: 100,
            soft_errors: 3,
            hard_errors: 10,
            command_timeout: HumanDuration::from_secs(120),
            data_timeout: HumanDuration::from_secs(300),
            min_data_rate: 500,
            session_timeout: HumanDuration::from_secs(30 * 60),
            line_length: 1000,
            auth_failures: 3,
            header_size: 256 * 1024,
            header_fields: 1000,
        }
    }
}

/// `[spool]`: where accepted mail is kept until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    pub path: PathBuf,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            path: PathBuf::from("/var/spool/ravelin"),
        }
    }
}

/// `[delivery]`: the SMTP client and the queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Deliveries in progress at once.
    pub concurrency: u32,
    pub connect_timeout: HumanDuration,
    pub command_timeout: HumanDuration,
    /// How long a connection is kept open, idle, for reuse.
    pub idle_timeout: HumanDuration,
    /// First retry delay; doubles per attempt up to `retry_max`.
    pub retry_initial: HumanDuration,
    pub retry_max: HumanDuration,
    /// Age at which undeliverable mail is bounced.
    pub max_lifetime: HumanDuration,
    /// How often the spool is scanned for messages due.
    pub scan_interval: HumanDuration,
    /// The port of the mail exchangers direct delivery connects to: 25; other values are
    /// for tests.
    pub smtp_port: u16,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            concurrency: 20,
            connect_timeout: HumanDuration::from_secs(30),
            command_timeout: HumanDuration::from_secs(300),
            idle_timeout: HumanDuration::from_secs(30),
            retry_initial: HumanDuration::from_secs(5 * 60),
            retry_max: HumanDuration::from_secs(3600),
            max_lifetime: HumanDuration::from_secs(5 * 86_400),
            scan_interval: HumanDuration::from_secs(60),
            smtp_port: 25,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A level (error, warn, info, debug, trace) or a tracing filter directive.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Json,
            level: "info".to_string(),
        }
    }
}

/// The fully commented example configuration: every key, its default and its meaning.
pub fn example() -> &'static str {
    include_str!("example.toml")
}

impl Config {
    /// Reads, parses and validates the file at `path`. Relative paths inside are resolved
    /// against the file's directory, and the certificate and CA files named must exist.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let whole_file = |message: String, fix: &str| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                message,
                fix: fix.to_string(),
            }])
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| {
                whole_file(
                    format!("cannot read the configuration: {e}"),
                    "check the path given with --config and the file's permissions",
                )
            })?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(whole_file(
                format!("the file is larger than {MAX_CONFIG_BYTES} bytes"),
                "name the configuration file, not another file",
            ));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            whole_file(
                format!(
                    "the file is not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
                "save the file as UTF-8",
            )
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut config = parse_text(&text, &file, Some(base))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates configuration text; `origin` names it in errors. Paths are kept as
    /// written and files are not looked at.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        parse_text(text, origin, None)
    }
}

fn parse_text(text: &str, origin: &str, base: Option<&Path>) -> Result<Config, ConfigErrors> {
    let mut config = read_all(text, origin).map_err(|mut errors| {
        errors.sort_by_key(|e| e.line);
        ConfigErrors(errors)
    })?;
    let locator = Locator::new(text, origin);
    normalize(&mut config);
    if let Some(base) = base {
        resolve_paths(&mut config, base);
    }
    let mut errors = validate(&config, &locator);
    if base.is_some() {
        errors.extend(check_files(&config, &locator));
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(ConfigErrors(errors))
    }
}

/// Deserializes the text, collecting every error of the TOML reader: after each unknown key,
/// wrong type or bad value, the entry holding it is blanked and the text read again. Stops at a
/// syntax error, at a missing required key (not reported if its entry was set aside), when an
/// entry cannot be set aside, and after [`MAX_READER_ERRORS`] errors.
fn read_all(text: &str, origin: &str) -> Result<Config, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut set_aside: Vec<String> = Vec::new();
    let mut current = text.to_string();
    while errors.len() < MAX_READER_ERRORS {
        let err = match toml::from_str::<Config>(&current) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(e) => e,
        };
        // Located in the text as read this time, so entries set aside are not found again;
        // blanking keeps every line where it was.
        let locator = Locator::new(&current, origin);
        if let Some(missing) = locator.missing_key(&err) {
            if !set_aside.contains(&missing) {
                errors.push(locator.explain_toml(&err));
            }
            break;
        }
        errors.push(locator.explain_toml(&err));
        let Some((path, ranges)) = locator.entry_of(&err) else {
            break;
        };
        if !diagnostics::blank(&mut current, &ranges) || !diagnostics::is_toml(&current) {
            break;
        }
        set_aside.push(path);
    }
    Err(errors)
}

/// Canonical forms: lower-case names.
fn normalize(config: &mut Config) {
    config.hostname = config.hostname.to_ascii_lowercase();
    for d in &mut config.inbound.domains {
        *d = d.to_ascii_lowercase();
    }
    for key in &mut config.dkim.keys {
        key.domain = key.domain.to_ascii_lowercase();
    }
    let hf = &mut config.header_firewall;
    for d in hf.internal_domains.iter_mut().chain(&mut hf.internal_hosts) {
        *d = d.to_ascii_lowercase();
    }
}

/// Makes the relative paths of the file relative to its directory.
fn resolve_paths(config: &mut Config, base: &Path) {
    let mut paths: Vec<&mut PathBuf> = vec![&mut config.spool.path];
    if let Some(tls) = &mut config.tls {
        paths.push(&mut tls.certificate);
        paths.push(&mut tls.private_key);
    }
    paths.extend(config.inbound.backend_ca_file.as_mut());
    paths.extend(config.outbound.extra_ca_file.as_mut());
    paths.extend(config.server.pid_file.as_mut());
    paths.extend(config.state.path.as_mut());
    paths.extend(config.auth.users_file.as_mut());
    paths.extend(config.screen.allow_file.as_mut());
    paths.extend(config.screen.block_file.as_mut());
    paths.extend(config.metrics.token_file.as_mut());
    paths.extend(config.alerts.webhook_token_file.as_mut());
    paths.extend(config.alerts.webhook_ca_file.as_mut());
    paths.extend(config.outbound.smart_host_password_file.as_mut());
    if let Some(ldap) = &mut config.auth.ldap {
        paths.extend(ldap.ca_file.as_mut());
        paths.extend(ldap.search_bind_password_file.as_mut());
    }
    paths.extend(config.dkim.keys.iter_mut().map(|k| &mut k.key_file));
    paths.extend(config.recipients.file.as_mut());
    if let Some(ldap) = &mut config.recipients.ldap {
        paths.extend(ldap.ca_file.as_mut());
        paths.extend(ldap.bind_password_file.as_mut());
    }
    for p in paths {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    }
}

/// The semantic checks; every problem found, not only the first.
fn validate(config: &Config, loc: &Locator<'_>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |line: usize, message: String, fix: &str| {
        errors.push(loc.error(line, message, fix));
    };

    if !is_domain(&config.hostname, true) {
        err(
            loc.line(&toml_path!["hostname"]),
            format!(
                "hostname \"{}\" is not a fully qualified domain name",
                config.hostname.escape_debug()
            ),
            "write the name clients see this host as, e.g. hostname = \"mx1.example.org\"",
        );
    }
    if config.server.user.is_empty() || config.server.user == "root" {
        err(
            loc.line(&toml_path!["server", "user"]),
            match config.server.user.as_str() {
                "" => "server.user is empty".to_string(),
                _ => "server.user = \"root\" would keep root privileges".to_string(),
            },
            "name an unprivileged account, e.g. user = \"ravelin\"",
        );
    }

    validate_listeners(config, loc, &mut err);
    header_firewall::validate(config, loc, &mut err);
    dkim::validate(config, loc, &mut err);

    for (i, domain) in config.inbound.domains.iter().enumerate() {
        if !is_domain(domain, true) {
            err(
                loc.line(&toml_path!["inbound", "domains", i]),
                format!(
                    "inbound.domains: \"{}\" is not a domain name",
                    domain.escape_debug()
                ),
                "write domain names without @ or trailing dot, e.g. \"example.org\"",
            );
        }
    }

    let l = &config.limits;
    let limit_line = |key: &str| loc.line(&toml_path!["limits", key]);
    if l.line_length < 1000 {
        err(
            limit_line("line_length"),
            format!(
                "limits.line_length = {} is below the 1000 bytes RFC 5321 requires",
                l.line_length
            ),
            "write line_length = 1000 or more",
        );
    }
    if l.header_size < 1000 || l.header_size as u64 > l.message_size {
        err(
            limit_line("header_size"),
            format!(
                "limits.header_size = {} is not between 1000 and message_size = {}",
                l.header_size, l.message_size
            ),
            "write a size in bytes, e.g. 262144 (256 KiB)",
        );
    }
    if l.header_fields == 0 {
        err(
            limit_line("header_fields"),
            "limits.header_fields is 0".into(),
            "write 1 or more, e.g. 1000",
        );
    }
    if l.message_size == 0 {
        err(
            limit_line("message_size"),
            "limits.message_size is 0".into(),
            "write a size in bytes, e.g. 26214400 (25 MiB)",
        );
    }
    for (key, value) in [
        ("recipients", l.recipients),
        ("soft_errors", l.soft_errors),
        ("hard_errors", l.hard_errors),
        ("auth_failures", l.auth_failures),
    ] {
        if value == 0 {
            err(
                limit_line(key),
                format!("limits.{key} is 0"),
                "write 1 or more",
            );
        }
    }
    if l.min_data_rate > MAX_MIN_DATA_RATE {
        err(
            limit_line("min_data_rate"),
            format!(
                "limits.min_data_rate = {} is above {MAX_MIN_DATA_RATE} bytes per second",
                l.min_data_rate
            ),
            "legitimate senders on slow links would be cut off: write 500 (Postfix's default), or 0 for no minimum",
        );
    }
    if l.hard_errors < l.soft_errors {
        err(
            limit_line("hard_errors"),
            format!(
                "limits.hard_errors = {} is below soft_errors = {}",
                l.hard_errors, l.soft_errors
            ),
            "the session is closed after hard_errors, so it must be at least soft_errors",
        );
    }
    for (key, value) in [
        ("command_timeout", l.command_timeout),
        ("data_timeout", l.data_timeout),
        ("session_timeout", l.session_timeout),
    ] {
        if value.is_zero() {
            err(
                limit_line(key),
                format!("limits.{key} is 0s"),
                "write a positive duration, e.g. \"5m\"",
            );
        }
    }

    let d = &config.delivery;
    let delivery_line = |key: &str| loc.line(&toml_path!["delivery", key]);
    if d.concurrency == 0 {
        err(
            delivery_line("concurrency"),
            "delivery.concurrency is 0".into(),
            "write 1 or more, e.g. 20",
        );
    }
    for (key, value) in [
        ("connect_timeout", d.connect_timeout),
        ("command_timeout", d.command_timeout),
        ("retry_initial", d.retry_initial),
        ("retry_max", d.retry_max),
        ("max_lifetime", d.max_lifetime),
        ("scan_interval", d.scan_interval),
    ] {
        if value.is_zero() {
            err(
                delivery_line(key),
                format!("delivery.{key} is 0s"),
                "write a positive duration, e.g. \"5m\"",
            );
        }
    }
    if d.smtp_port == 0 {
        err(
            delivery_line("smtp_port"),
            "delivery.smtp_port is 0".into(),
            "write the port of the mail exchangers, normally smtp_port = 25",
        );
    }
    let o = &config.outbound;
    if o.smart_host_user.is_some() != o.smart_host_password_file.is_some() {
        err(
            loc.line(&toml_path!["outbound", "smart_host_user"])
                .max(loc.line(&toml_path!["outbound", "smart_host_password_file"])),
            "outbound.smart_host_user and smart_host_password_file go together".into(),
            "set both (the account and a 0600 file with its password), or neither",
        );
    }
    if o.smart_host_user.is_some()
        && !matches!(o.smart_host_tls, NextHopTls::Encrypt | NextHopTls::Verify)
    {
        err(
            loc.line(&toml_path!["outbound", "smart_host_tls"])
                .max(loc.line(&toml_path!["outbound", "smart_host_user"])),
            "outbound.smart_host_tls = \"none\" or \"may\" would let the smart host password go out unencrypted".into(),
            "write smart_host_tls = \"verify\" (or \"encrypt\") when the gateway logs in to the smart host",
        );
    }
    if o.smart_host_user.is_some() && o.smart_host.is_none() {
        err(
            loc.line(&toml_path!["outbound", "smart_host_user"]),
            "outbound.smart_host_user is set but there is no smart_host".into(),
            "set smart_host = \"smtp://HOST:587\", or remove smart_host_user",
        );
    }
    if config.outbound.mta_sts_port == 0 {
        err(
            loc.line(&toml_path!["outbound", "mta_sts_port"]),
            "outbound.mta_sts_port is 0".into(),
            "write the HTTPS port of MTA-STS policy hosts, normally mta_sts_port = 443",
        );
    }
    if d.retry_max < d.retry_initial {
        err(
            delivery_line("retry_max"),
            format!(
                "delivery.retry_max = \"{}\" is shorter than retry_initial = \"{}\"",
                d.retry_max, d.retry_initial
            ),
            "make retry_max at least retry_initial",
        );
    }

    if let Err(why) = crate::log::parse_filter(&config.log.level) {
        err(
            loc.line(&toml_path!["log", "level"]),
            format!(
                "log.level \"{}\" is not a level or filter: {why}",
                config.log.level.escape_debug()
            ),
            "write one of error, warn, info, debug, trace",
        );
    }
    config.dns.validate(loc, &mut err);
    config.metrics.validate(loc, &mut err);
    config.monitor.validate(loc, &mut err);
    config.alerts.validate(loc, &mut err);
    config.state.validate(loc, &mut err);
    config.bans.validate(loc, &mut err);
    config.rate_limits.validate(loc, &mut err);
    config.greylist.validate(loc, &mut err);
    config.recipients.validate(loc, &mut err);
    config.screen.validate(loc, &mut err);
    config.dnsbl.validate(loc, &mut err);
    config.checks.validate(loc, &mut err);
    if config.spool.path.as_os_str().is_empty() {
        err(
            loc.line(&toml_path!["spool", "path"]),
            "spool.path is empty".into(),
            "write a directory, e.g. path = \"/var/spool/ravelin\"",
        );
    }
    auth::validate(&config.auth, loc, &mut errors);
    errors
}

/// The checks of `[[listen]]` and of what each kind of listener needs elsewhere.
fn validate_listeners(
    config: &Config,
    loc: &Locator<'_>,
    err: &mut impl FnMut(usize, String, &str),
) {
    if config.listen.is_empty() {
        err(
            1,
            "no [[listen]] section: the gateway would not listen anywhere".into(),
            "add one, e.g. [[listen]] name = \"mx\" address = \"0.0.0.0:25\" kind = \"inbound\"",
        );
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    let mut inbound_reported = false;
    let mut relay_reported = false;
    let mut auth_reported = false;
    for (i, l) in config.listen.iter().enumerate() {
        let valid_name = !l.name.is_empty()
            && l.name.len() <= 64
            && l.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            err(
                loc.line(&toml_path!["listen", i, "name"]),
                format!(
                    "listener name \"{}\" is not a short identifier",
                    l.name.escape_debug()
                ),
                "use up to 64 letters, digits, - and _, e.g. name = \"mx\"",
            );
        } else if !names.insert(l.name.as_str()) {
            err(
                loc.line(&toml_path!["listen", i, "name"]),
                format!("listener name \"{}\" is used twice", l.name),
                "give every [[listen]] its own name",
            );
        }
        if !addresses.insert(l.address) {
            err(
                loc.line(&toml_path!["listen", i, "address"]),
                format!(
                    "listener \"{}\": address {} is used by an earlier listener",
                    l.name, l.address
                ),
                "give every [[listen]] its own address or port",
            );
        }
        if l.max_connections == 0 {
            err(
                loc.line(&toml_path!["listen", i, "max_connections"]),
                format!("listener \"{}\": max_connections is 0", l.name),
                "write 1 or more, e.g. max_connections = 500",
            );
        }
        let mode = l.tls_mode();
        if mode.needs_certificate() && config.tls.is_none() {
            let (line, how) = match l.tls {
                Some(_) => (
                    loc.line(&toml_path!["listen", i, "tls"]),
                    format!("tls = \"{}\"", mode.as_str()),
                ),
                None => (
                    loc.line(&toml_path!["listen", i, "kind"]),
                    format!(
                        "kind = \"{}\" (tls = \"{}\" by default)",
                        l.kind.as_str(),
                        mode.as_str()
                    ),
                ),
            };
            err(
                line,
                format!(
                    "listener \"{}\" has {how} but there is no [tls] section",
                    l.name
                ),
                "add [tls] with certificate = \"/etc/ravelin/fullchain.pem\" and private_key = \"/etc/ravelin/key.pem\", or set tls = \"offer\" on this listener",
            );
        }
        if l.kind == ListenKind::Inbound && !inbound_reported {
            let kind_line = loc.line(&toml_path!["listen", i, "kind"]);
            for (key, empty, example) in [
                (
                    "domains",
                    config.inbound.domains.is_empty(),
                    "domains = [\"example.org\"]",
                ),
                (
                    "backend",
                    config.inbound.backend.is_empty(),
                    "backend = [\"smtp://10.0.0.25:25\"]",
                ),
            ] {
                if empty {
                    inbound_reported = true;
                    let line = if loc.has(&toml_path!["inbound", key]) {
                        loc.line(&toml_path!["inbound", key])
                    } else {
                        kind_line
                    };
                    err(
                        line,
                        format!(
                            "listener \"{}\" is kind = \"inbound\" but inbound.{key} is empty",
                            l.name
                        ),
                        &format!("add {example} to the [inbound] section"),
                    );
                }
            }
        }
        let submission = matches!(l.kind, ListenKind::Submission | ListenKind::Submissions);
        if submission && mode == TlsMode::Off {
            err(
                loc.line(&toml_path!["listen", i, "tls"]),
                format!(
                    "listener \"{}\" is kind = \"{}\" with tls = \"off\": AUTH is only offered inside TLS, so nobody could send",
                    l.name,
                    l.kind.as_str()
                ),
                "remove the tls line (submission requires STARTTLS, submissions is implicit TLS)",
            );
        }
        if submission && !config.auth.has_source() && !auth_reported {
            auth_reported = true;
            err(
                loc.line(&toml_path!["listen", i, "kind"]),
                format!(
                    "listener \"{}\" is kind = \"{}\" but [auth] has neither users_file nor ldap, so nobody can log in",
                    l.name,
                    l.kind.as_str()
                ),
                "add [auth] with users_file = \"/etc/ravelin/users\" (see `ravelin user add`), or [auth.ldap]",
            );
        }
        if l.kind == ListenKind::Relay
            && config.outbound.trusted_networks.is_empty()
            && !relay_reported
        {
            relay_reported = true;
            let line = if loc.has(&toml_path!["outbound", "trusted_networks"]) {
                loc.line(&toml_path!["outbound", "trusted_networks"])
            } else {
                loc.line(&toml_path!["listen", i, "kind"])
            };
            err(
                line,
                format!(
                    "listener \"{}\" is kind = \"relay\" but outbound.trusted_networks is empty, so no client may relay",
                    l.name
                ),
                "add trusted_networks = [\"10.0.0.25/32\"] (your mail server) to the [outbound] section",
            );
        }
    }
}

/// `load` only: the files named for TLS must exist, the DKIM keys must load.
fn check_files(config: &Config, loc: &Locator<'_>) -> Vec<ConfigError> {
    let mut files: Vec<(&Path, [&str; 2])> = Vec::new();
    if let Some(tls) = &config.tls {
        files.push((&tls.certificate, ["tls", "certificate"]));
        files.push((&tls.private_key, ["tls", "private_key"]));
    }
    if let Some(ca) = &config.inbound.backend_ca_file {
        files.push((ca, ["inbound", "backend_ca_file"]));
    }
    if let Some(ca) = &config.outbound.extra_ca_file {
        files.push((ca, ["outbound", "extra_ca_file"]));
    }
    let mut errors = Vec::new();
    if let Some(ldap) = &config.auth.ldap {
        let ldap_files = [
            (&ldap.ca_file, "ca_file"),
            (&ldap.search_bind_password_file, "search_bind_password_file"),
        ];
        for (file, key) in ldap_files {
            if let Some(file) = file
                && !std::fs::metadata(file).is_ok_and(|m| m.is_file())
            {
                errors.push(loc.error_at(
                    &toml_path!["auth", "ldap", key],
                    format!("auth.ldap.{key}: {} is not a readable file", file.display()),
                    "name an existing file (relative paths start at the configuration's directory)",
                ));
            }
        }
    }
    let r = &config.recipients;
    let recipient_files = [
        (r.file.as_ref(), &toml_path!["recipients", "file"][..]),
        (
            r.ldap.as_ref().and_then(|l| l.ca_file.as_ref()),
            &toml_path!["recipients", "ldap", "ca_file"][..],
        ),
        (
            r.ldap.as_ref().and_then(|l| l.bind_password_file.as_ref()),
            &toml_path!["recipients", "ldap", "bind_password_file"][..],
        ),
    ];
    for (file, path) in recipient_files {
        if let Some(file) = file
            && !std::fs::metadata(file).is_ok_and(|m| m.is_file())
        {
            errors.push(loc.error_at(
                path,
                format!(
                    "{}: {} is not a readable file",
                    diagnostics::dotted(path),
                    file.display()
                ),
                "name an existing file (relative paths start at the configuration's directory)",
            ));
        }
    }
    for (file, key) in [
        (&config.screen.allow_file, "allow_file"),
        (&config.screen.block_file, "block_file"),
    ] {
        if let Some(file) = file
            && let Err(e) = crate::screen::CidrList::load(file)
        {
            errors.push(loc.error_at(
                &toml_path!["screen", key],
                format!("screen.{key}: {e}"),
                "write one network per line, e.g. 192.0.2.0/24 (# starts a comment); relative paths start at the configuration's directory",
            ));
        }
    }
    let dkim_errors = dkim::check_files(config, loc);
    files
        .into_iter()
        .filter_map(|(file, [section, key])| {
            let problem = match std::fs::metadata(file) {
                Ok(m) if m.is_file() => return None,
                Ok(_) => "is not a regular file".to_string(),
                Err(e) => format!("cannot be read: {e}"),
            };
            Some(loc.error_at(
                &toml_path![section, key],
                format!("{section}.{key}: {} {problem}", file.display()),
                "name an existing PEM file (relative paths start at the configuration's directory)",
            ))
        })
        .chain(errors)
        .chain(dkim_errors)
        .collect()
}

#[cfg(test)]
mod tests;
