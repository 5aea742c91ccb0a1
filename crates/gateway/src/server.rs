//! `ravelin serve`: builds every stage from the configuration and runs them.
//!
//! Start-up order matters and each step fails with a message naming the setting to fix: TLS
//! material is loaded (or, for listeners that only offer STARTTLS and have no `[tls]`, a
//! self-signed certificate is made for `hostname`), the password sources of `[auth]` are read
//! when a submission listener needs them (users file, LDAP service password) and the DKIM keys
//! are read (`[dkim]`), every listener is bound, then — when started as root — the process
//! gives the spool to `server.user` and becomes that user, then
//! the spool is opened and recovered, the queue manager starts delivering what was found, the
//! state store is opened and the screen built (its allow and block files read, a bad line
//! stopping the start; a resolver from `[dns]` made when `[dnsbl]` has anything to look up),
//! and only then do the listeners accept connections.
//!
//! The process umask is set to 077 first: nothing the gateway writes is readable by others.
//!
//! Listener kinds: `inbound` (relay control by `inbound.domains`), `submission` and
//! `submissions` (AUTH inside TLS, required before MAIL; any destination), `relay` (only
//! `outbound.trusted_networks`; any destination). Mail from the last three is outbound: it goes
//! to `outbound.smart_host` when one is set, otherwise directly to the recipient domains' MX
//! hosts with DANE / MTA-STS / opportunistic TLS (`crate::delivery::mx`).
//!
//! Shutdown (SIGTERM, SIGINT, or [`Gateway::shutdown`]): listeners stop accepting, sessions
//! finish a transaction in progress and answer anything else with `421 4.3.2`, deliveries in
//! flight complete; after the grace period whatever is left is dropped, which loses nothing,
//! because a message is acknowledged only once it is on disk. SIGUSR1 retries deferred mail now.
//!
//! Reload (SIGHUP, or [`Gateway::reload`]): the `[tls]` certificate and key files are read
//! again and presented from the next handshake on (certificate renewal); connections are not
//! dropped and sessions already encrypted keep their certificate. Files that cannot be read or
//! do not fit together leave the certificate in use, with an error line saying why (after the
//! privilege drop they must be readable by `server.user`). Every other setting is read at start
//! only. The certificate's expiry is logged at start, at each reload and once a day, with a
//! warning under 60 days and an error under 30 days and once expired; the metrics endpoint
//! shows it as `ravelin_tls_certificate_not_after_seconds`.
//! The `stopped` line reports the spool's group commit: `spool_synced` commits and removals
//! made durable by `spool_dir_syncs` fsyncs of `queue/`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ravelin_wire::server::ServerConfig;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use ravelin_wire::headers::HeaderLimits;

use crate::auth::Authenticator;
use crate::checks::auth::Verifier;
use crate::checks::reputation::Reputation;
use crate::cleanup;
use crate::config::{Config, ListenKind, NextHopTls, TlsMode};
use crate::delivery::mx::DirectSettings;
use crate::delivery::{Credentials, Delivery, DeliverySettings, Route, TlsPolicy};
use crate::dkim::Signer;
use crate::firewall::HeaderFirewall;
use crate::listener::{self, Bound};
use crate::queue::{QueueHandle, QueueManager, QueueSettings};
use crate::recipients::Recipients;
use crate::relay::RelayPolicy;
use crate::screen::Screen;
use crate::session::{SessionSettings, Shared};
use crate::spool::Spool;
use crate::state::{Defences, Store, admin};

/// A running gateway.
pub struct Gateway {
    addresses: Vec<(String, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    sessions: TaskTracker,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
    queue: QueueHandle,
    spool: Spool,
    store: Store,
    state_tasks: Vec<tokio::task::JoinHandle<()>>,
    certificate: Option<Arc<ravelin_tls::ServerCertificate>>,
    pid_file: Option<PidFile>,
    alerts: Option<crate::alerts::Running>,
}

fn next_hop_tls(mode: NextHopTls, ca_file: Option<&std::path::Path>) -> TlsPolicy {
    match mode {
        NextHopTls::None => TlsPolicy::None,
        NextHopTls::May => TlsPolicy::May,
        NextHopTls::Encrypt => TlsPolicy::Encrypt,
        NextHopTls::Verify => TlsPolicy::Verify {
            ca_file: ca_file.map(|p| p.to_path_buf()),
        },
    }
}

impl Gateway {
    /// Binds, drops privileges, recovers the spool and starts accepting.
    pub async fn start(config: &Config) -> Result<Gateway, String> {
        // Everything the gateway creates (spool, state store, admin socket, pid file) is
        // private to its user, whatever umask it was started with (Postfix does the same).
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let (server_tls, certificate) = server_tls(config)?;
        let submission =
            |k: ListenKind| matches!(k, ListenKind::Submission | ListenKind::Submissions);
        let authenticator = if config.listen.iter().any(|l| submission(l.kind)) {
            Authenticator::from_config(&config.auth)?.map(Arc::new)
        } else {
            None
        };
        // Read while still privileged: key and password files may be readable by root only.
        let directory = Recipients::directory(config)?;
        let signer = Arc::new(Signer::new(&config.dkim).map_err(|e| format!("[dkim]: {e}"))?);
        let mut bound = Vec::new();
        for l in &config.listen {
            let std_listener = listener::bind(l.address).map_err(|e| {
                format!(
                    "cannot listen on {} ([[listen]] {:?}): {e}",
                    l.address, l.name
                )
            })?;
            bound.push((l, std_listener));
        }
        let metrics_socket = config
            .metrics
            .listen
            .map(crate::metrics::http::bind)
            .transpose()?;
        let metrics_token = config
            .metrics
            .token_file
            .as_deref()
            .map(|f| crate::secret::read_first_line(f, "metrics.token_file"))
            .transpose()?;
        // Read while still privileged, like the metrics token.
        let alerts = crate::alerts::prepare(&config.alerts)?;
        let smart_host_login = match (
            &config.outbound.smart_host_user,
            &config.outbound.smart_host_password_file,
        ) {
            (Some(user), Some(file)) => Some(Arc::new(Credentials {
                user: user.clone(),
                password: crate::secret::read_first_line(
                    file,
                    "outbound.smart_host_password_file",
                )?,
            })),
            _ => None,
        };
        // Opened while still root: its directory (/run) is root's, as for Postfix's
        // master.pid. The process id is written once the start has succeeded.
        let mut pid_file = config
            .server
            .pid_file
            .as_deref()
            .map(PidFile::open)
            .transpose()?;
        if listener::is_root() {
            listener::drop_privileges(
                &config.server.user,
                config.server.group.as_deref(),
                &config.spool.path,
            )?;
        } else {
            info!(
                event = "privileges",
                reason = "not started as root; running as the current user"
            );
        }
        let (spool, recovered) = Spool::open(&config.spool.path).map_err(|e| {
            format!(
                "cannot open the spool {} ([spool] path): {e}",
                config.spool.path.display()
            )
        })?;
        info!(event = "spool_recovered", messages = recovered.len(), path = %config.spool.path.display());

        // One resolver for every lookup: MX, TLSA and MTA-STS for delivery, DNSBL and reverse
        // DNS for the screen (the message checks use mail-auth's own, on the same servers).
        let resolver = ravelin_dns::Resolver::new(&config.dns.resolver_settings())
            .map_err(|e| format!("[dns]: cannot set up the resolver: {e}"))?;
        let delivery = Delivery::new(
            DeliverySettings {
                helo_name: config.hostname.clone(),
                connect_timeout: config.delivery.connect_timeout.0,
                command_timeout: config.delivery.command_timeout.0,
                idle_timeout: config.delivery.idle_timeout.0,
                max_connections_per_route: config.delivery.concurrency as usize,
            },
            Route {
                hosts: config
                    .inbound
                    .backend
                    .iter()
                    .map(|b| (b.host.clone(), b.port))
                    .collect(),
                auth: None,
                tls: next_hop_tls(
                    config.inbound.backend_tls,
                    config.inbound.backend_ca_file.as_deref(),
                ),
            },
            config.inbound.domains.clone(),
            config.outbound.smart_host.as_ref().map(|h| Route {
                hosts: vec![(h.host.clone(), h.port)],
                tls: next_hop_tls(config.outbound.smart_host_tls, None),
                auth: smart_host_login.clone(),
            }),
        )?
        .with_direct(DirectSettings {
            resolver: resolver.clone(),
            port: config.delivery.smtp_port,
            dane: config.outbound.dane,
            mta_sts: config.outbound.mta_sts,
            sts_fetch: ravelin_dns::mta_sts::FetchSettings {
                port: config.outbound.mta_sts_port,
                ..Default::default()
            },
            extra_ca_file: config.outbound.extra_ca_file.clone(),
            state_dir: config.spool.path.clone(),
            hostname: config.hostname.clone(),
        })?;
        match &config.outbound.smart_host {
            Some(h) => {
                info!(event = "outbound_route", route = "smart_host", host = %h.host, port = h.port)
            }
            None => info!(
                event = "outbound_route",
                route = "mx",
                smtp_port = config.delivery.smtp_port,
                dane = config.outbound.dane,
                mta_sts = config.outbound.mta_sts
            ),
        }
        let queue = QueueManager::start(
            spool.clone(),
            recovered,
            Arc::new(delivery.clone()),
            QueueSettings {
                concurrency: config.delivery.concurrency as usize,
                retry_initial: config.delivery.retry_initial.0,
                retry_max: config.delivery.retry_max.0,
                max_lifetime: config.delivery.max_lifetime.0,
                scan_interval: config.delivery.scan_interval.0,
                hostname: config.hostname.clone(),
            },
        );

        let (shutdown, shutdown_rx) = watch::channel(false);
        let store = Store::open(config)
            .map_err(|e| format!("cannot open the state store ([state] store): {e}"))?;
        info!(event = "state_store", store = %store.describe());
        let defences = Arc::new(Defences::new(config, store.clone()));
        let recipients =
            Recipients::from_config(config, directory, &delivery, &store)?.map(Arc::new);
        let mut state_tasks =
            vec![store.spawn_sweeper(config.state.sweep_interval.0, shutdown_rx.clone())];
        // Alerts first, so that the certificate's first check (an expired one is an error
        // line) and the monitor's first round reach the webhook.
        let alerts = alerts.map(|a| a.start(&config.hostname)).transpose()?;
        if let Some(certificate) = &certificate {
            state_tasks.push(tokio::spawn(watch_certificate(
                certificate.clone(),
                shutdown_rx.clone(),
            )));
        }
        state_tasks.extend(crate::monitor::spawn(
            &config.monitor,
            resolver.clone(),
            shutdown_rx.clone(),
        ));
        let socket = admin::socket_path(&config.spool.path);
        match admin::start(socket.clone(), defences.bans.clone(), shutdown_rx.clone()) {
            Ok(task) => state_tasks.push(task),
            Err(e) => {
                warn!(event = "admin_error", path = %socket.display(), reason = %e, decision = "continue without the admin socket (ravelin ban needs it while the gateway runs)");
            }
        }
        if let Some(socket) = metrics_socket {
            let handle = crate::metrics::install()
                .ok_or("[metrics]: another metrics recorder is installed in this process")?;
            let endpoint = Arc::new(crate::metrics::http::Endpoint {
                handle,
                token: metrics_token,
                spool: spool.clone(),
                bans: defences.bans.clone(),
                certificate: certificate.clone(),
            });
            state_tasks.push(tokio::spawn(crate::metrics::http::serve(
                socket,
                endpoint,
                shutdown_rx.clone(),
            )));
        }
        let screen = Arc::new(screen(config, store.clone(), resolver)?);
        let shared = Shared {
            spool: spool.clone(),
            queue: queue.clone(),
            defences,
            screen,
            shutdown: shutdown_rx,
        };
        let relay = RelayPolicy::new(&config.inbound.domains);
        let firewall = HeaderFirewall::from_config(config);
        let header_limits = HeaderLimits {
            max_bytes: config.limits.header_size,
            max_fields: config.limits.header_fields,
            max_line: config.limits.line_length,
        };
        let verifier = Verifier::from_config(config)?.map(Arc::new);
        let sessions = TaskTracker::new();
        let mut addresses = Vec::new();
        let mut accept_loops = Vec::new();
        for (l, std_listener) in bound {
            let tokio_listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| format!("cannot use the socket of {:?}: {e}", l.name))?;
            let local = tokio_listener.local_addr().map_err(|e| e.to_string())?;
            let mode = l.tls_mode();
            let mut wire = ServerConfig::new(config.hostname.clone());
            wire.max_message_size = config.limits.message_size;
            wire.max_recipients = config.limits.recipients as usize;
            wire.max_line_length = config.limits.line_length;
            wire.soft_error_limit = config.limits.soft_errors;
            wire.hard_error_limit = config.limits.hard_errors;
            wire.offer_starttls = matches!(mode, TlsMode::Offer | TlsMode::Require);
            wire.require_tls = mode == TlsMode::Require;
            wire.offer_auth = submission(l.kind);
            wire.require_auth = submission(l.kind);
            wire.max_auth_failures = config.limits.auth_failures;
            let settings = SessionSettings {
                hostname: config.hostname.clone(),
                listener: l.name.clone(),
                wire,
                tls: (mode != TlsMode::Off).then(|| server_tls.clone()).flatten(),
                implicit_tls: mode == TlsMode::Implicit,
                relay: relay.clone(),
                // The client of an outbound listener is inside: never named.
                received_client: config.inbound.received_client && !l.kind.is_outbound(),
                command_timeout: config.limits.command_timeout.0,
                data_timeout: config.limits.data_timeout.0,
                min_data_rate: config.limits.min_data_rate,
                session_timeout: config.limits.session_timeout.0,
                kind: l.kind,
                auth: authenticator.clone().filter(|_| submission(l.kind)),
                trusted_networks: config.outbound.trusted_networks.clone(),
                cleanup: Arc::new(cleanup::Policy {
                    outbound: l.kind.is_outbound(),
                    firewall: firewall.clone(),
                    limits: header_limits,
                    authserv_id: config.checks.authserv_id(&config.hostname).to_string(),
                    hold_for_checks: !l.kind.is_outbound() && verifier.is_some(),
                    signer: l.kind.is_outbound().then(|| signer.clone()),
                    scratch_dir: spool.scratch_dir().to_path_buf(),
                }),
                recipients: recipients.clone().filter(|_| l.kind == ListenKind::Inbound),
                checks: verifier.clone().filter(|_| !l.kind.is_outbound()),
            };
            info!(event = "listening", listener = %l.name, address = %local, kind = l.kind.as_str(), tls = mode.as_str());
            addresses.push((l.name.clone(), local));
            let b = Bound {
                listener: tokio_listener,
                settings: Arc::new(settings),
                max_connections: l.max_connections as usize,
            };
            accept_loops.push(tokio::spawn(listener::accept_loop(
                b,
                shared.clone(),
                sessions.clone(),
            )));
        }
        if let Some(pid_file) = pid_file.as_mut() {
            pid_file.write_pid()?;
        }
        Ok(Gateway {
            addresses,
            shutdown,
            sessions,
            accept_loops,
            queue,
            spool,
            store,
            state_tasks,
            certificate,
            pid_file,
            alerts,
        })
    }

    /// Reads the `[tls]` certificate and key again (SIGHUP); see the module documentation.
    pub fn reload(&self) {
        let Some(certificate) = &self.certificate else {
            info!(
                event = "reload",
                reason = "no [tls] certificate configured: nothing to read again (other settings need a restart)"
            );
            return;
        };
        match certificate.reload() {
            Ok(summary) => {
                info!(
                    event = "reload",
                    reloaded = "tls_certificate",
                    reason = "other settings need a restart"
                );
                log_certificate(certificate.certificate_path(), &summary);
            }
            Err(e) => tracing::error!(
                event = "reload_failed",
                reason = %e,
                decision = "the certificate in use is kept; the files must be readable by [server] user"
            ),
        }
    }

    /// The bound address of each listener, by name (useful with port 0).
    pub fn addresses(&self) -> &[(String, SocketAddr)] {
        &self.addresses
    }

    /// Makes every deferred message due now.
    pub fn flush(&self) {
        self.queue.flush();
    }

    /// Stops accepting, lets sessions and deliveries finish for up to `grace`, then returns.
    pub async fn shutdown(self, grace: Duration) {
        info!(event = "shutdown", reason = "stopping listeners");
        let _ = self.shutdown.send(true);
        for a in self.accept_loops {
            let _ = a.await;
        }
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            warn!(
                event = "shutdown",
                reason = "grace period over; unfinished sessions dropped (nothing they sent was acknowledged)"
            );
        }
        if tokio::time::timeout(grace, self.queue.shutdown())
            .await
            .is_err()
        {
            warn!(
                event = "shutdown",
                reason = "grace period over; deliveries in flight will be retried after restart"
            );
        }
        for t in self.state_tasks {
            let _ = t.await;
        }
        self.store.close().await;
        if let Some(pid_file) = self.pid_file {
            pid_file.remove();
        }
        // Last, so that the error lines of the grace period are sent too.
        if let Some(alerts) = self.alerts {
            alerts.stop().await;
        }
        let stats = self.spool.stats();
        info!(
            event = "stopped",
            spool_dir_syncs = stats.dir_syncs,
            spool_synced = stats.commits
        );
    }
}

/// The screen of the inbound listeners, with the reputation checks when any can score.
fn screen(
    config: &Config,
    store: Store,
    resolver: ravelin_dns::Resolver,
) -> Result<Screen, String> {
    let inbound = config.listen.iter().any(|l| l.kind == ListenKind::Inbound);
    let reputation = if inbound && (!config.dnsbl.sites.is_empty() || config.dnsbl.checks_ptr()) {
        Reputation::new(&config.dnsbl, resolver).map(Arc::new)
    } else {
        None
    };
    Screen::new(config, store, reputation)
}

/// The listeners' TLS acceptor, if any listener uses TLS, and the `[tls]` certificate it
/// presents (none when a self-signed one was made).
type ListenerTls = (
    Option<TlsAcceptor>,
    Option<Arc<ravelin_tls::ServerCertificate>>,
);

/// The rustls configuration for the listeners, if any uses TLS, and the `[tls]` certificate
/// it presents (none when a self-signed one was made).
fn server_tls(config: &Config) -> Result<ListenerTls, String> {
    if config.listen.iter().all(|l| l.tls_mode() == TlsMode::Off) {
        return Ok((None, None));
    }
    let (cfg, certificate) = match &config.tls {
        Some(t) => {
            let certificate = Arc::new(
                ravelin_tls::ServerCertificate::load(&t.certificate, &t.private_key)
                    .map_err(|e| format!("[tls]: {e}"))?,
            );
            let cfg = ravelin_tls::reloadable_server_config(certificate.clone())
                .map_err(|e| format!("[tls]: {e}"))?;
            (cfg, Some(certificate))
        }
        None => {
            warn!(
                event = "tls_self_signed",
                reason = "no [tls] certificate configured; offering STARTTLS with a self-signed certificate"
            );
            let cfg = ravelin_tls::self_signed_server_config(&config.hostname)
                .map_err(|e| e.to_string())?;
            (cfg, None)
        }
    };
    Ok((Some(TlsAcceptor::from(cfg)), certificate))
}

/// How often the certificate's line is logged again after the start.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Logs the certificate's line at start and every [`CERTIFICATE_CHECK_INTERVAL`], so that an
/// expiry coming closer shows in the log (and in alerts built on it) without a restart.
async fn watch_certificate(
    certificate: Arc<ravelin_tls::ServerCertificate>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(CERTIFICATE_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = every.tick() => log_certificate(certificate.certificate_path(), &certificate.summary()),
            _ = shutdown.changed() => return,
        }
    }
}

/// One line on the certificate presented: subject, expiry and days left; a warning under
/// [`ravelin_tls::EXPIRY_WARN_DAYS`] (60) or when the expiry cannot be read, an error under
/// [`ravelin_tls::EXPIRY_FAIL_DAYS`] (30; PRODUCT.md's alerts) and once expired. The expiry
/// is the chain's: when an intermediate expires before the leaf, its date counts and the line
/// names it (`first_to_expire`).
fn log_certificate(path: &std::path::Path, summary: &ravelin_tls::CertificateSummary) {
    let path = path.display();
    let subject = &summary.subject;
    let not_after = &summary.not_after;
    let Some(seconds_left) = summary.seconds_left() else {
        warn!(event = "tls_certificate", path = %path, subject = %subject, reason = "expiry unknown: the certificate could not be parsed");
        return;
    };
    let days_left = seconds_left.div_euclid(86_400);
    let first = summary.first_to_expire.as_deref().unwrap_or("the leaf");
    if seconds_left < 0 {
        tracing::error!(event = "tls_certificate", path = %path, subject = %subject, not_after = %not_after, days_left, first_to_expire = %first, reason = "expired: verifying clients refuse it; renew it and send SIGHUP");
    } else if days_left < ravelin_tls::EXPIRY_FAIL_DAYS {
        tracing::error!(event = "tls_certificate", path = %path, subject = %subject, not_after = %not_after, days_left, first_to_expire = %first, reason = "expires in less than 30 days: renew it now and send SIGHUP");
    } else if days_left < ravelin_tls::EXPIRY_WARN_DAYS {
        warn!(event = "tls_certificate", path = %path, subject = %subject, not_after = %not_after, days_left, first_to_expire = %first, reason = "expires in less than 60 days: plan its renewal, then send SIGHUP");
    } else {
        info!(event = "tls_certificate", path = %path, subject = %subject, not_after = %not_after, days_left, chain = summary.chain);
    }
}

/// Runs the gateway until SIGTERM or SIGINT; SIGUSR1 flushes the queue, SIGHUP reloads.
pub async fn serve(config: Config) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let gateway = Gateway::start(&config).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => gateway.flush(),
            _ = hup.recv() => gateway.reload(),
        }
    }
    gateway
        .shutdown(config.limits.data_timeout.0.min(Duration::from_secs(60)))
        .await;
    Ok(())
}

/// The `[server] pid_file`: opened (created or emptied) as root before the privilege drop,
/// written through the open file once the start has succeeded, removed at shutdown — or,
/// where the directory is root's and the gateway no longer is, emptied, so that it never names
/// a process that is gone (whose number may belong to another process later). A symbolic link
/// in its place is refused: root would otherwise write wherever it points.
struct PidFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl PidFile {
    fn open(path: &std::path::Path) -> Result<PidFile, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                format!(
                    "cannot write the pid file {} ([server] pid_file): {e}; name a regular file \
                     in a directory the gateway can write while it starts (as root: \
                     /run/ravelin.pid)",
                    path.display()
                )
            })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            file,
        })
    }

    fn write_pid(&mut self) -> Result<(), String> {
        use std::io::Write;
        self.file
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(|e| {
                format!(
                    "cannot write the pid file {} ([server] pid_file): {e}",
                    self.path.display()
                )
            })
    }

    fn remove(self) {
        if std::fs::remove_file(&self.path).is_err() {
            let _ = self.file.set_len(0);
        }
    }
}
