//! A DNSSEC world for tests: zones signed with ldns-signzone, served by NSD, validated by
//! unbound, all on loopback high ports, started and stopped by the test.
//!
//! [`DnssecWorld::builder`] takes zones of three kinds: signed (a fresh ECDSA P-256 key from
//! ldns-keygen; its DS record becomes unbound's trust anchor for the zone), bogus (signed the
//! same way, then the signature of every data RRset is damaged, so a validator must refuse the
//! data), and unsigned (served as is, with no trust anchor: insecure). Other servers can be
//! added as stub zones (an in-process [`super::TestDnsServer`], for zones a test changes while
//! it runs); they are insecure too. Unbound answers on 127.0.0.1 with its AD bit, which is
//! what [`crate::Resolver`] reports as `secure`; queries outside the zones are forwarded to a
//! closed loopback port, so nothing leaves the host.
//!
//! Every zone gets an SOA, an NS `ns.ORIGIN.` and its address 127.0.0.1 from the fixture; the
//! zone text (records relative to the origin, `$TTL 300`) must not repeat them.
//!
//! How it fails: a missing tool (nsd, unbound, ldns-keygen, ldns-signzone) is an error naming
//! `scripts/install-test-deps.sh`; a tool that fails or a server that does not answer within
//! 10 s is an error with the end of its log. Dropping the world stops both servers (SIGTERM,
//! then SIGKILL) and removes its directory.

use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestServerError;
use crate::resolver::{AdTrust, ConfigError, Resolver, ResolverSettings};

/// How long a server may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What the fixture does with a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneKind {
    /// Signed, with a trust anchor: answers are secure.
    Signed,
    /// Signed with a trust anchor, then the data signatures are damaged: answers are bogus.
    Bogus,
    /// Not signed, no trust anchor: answers are insecure.
    Unsigned,
}

#[derive(Debug, Clone)]
struct ZoneSpec {
    origin: String,
    text: String,
    kind: ZoneKind,
}

/// The zones and stubs of a [`DnssecWorld`] before it starts.
#[derive(Debug, Clone, Default)]
pub struct DnssecWorldBuilder {
    zones: Vec<ZoneSpec>,
    stubs: Vec<(String, SocketAddr)>,
}

impl DnssecWorldBuilder {
    /// A zone signed with a fresh key, trusted by unbound.
    pub fn signed_zone(self, origin: &str, text: &str) -> Self {
        self.zone(origin, text, ZoneKind::Signed)
    }

    /// A zone signed and trusted like [`Self::signed_zone`], with damaged data signatures.
    pub fn bogus_zone(self, origin: &str, text: &str) -> Self {
        self.zone(origin, text, ZoneKind::Bogus)
    }

    /// A zone served without signatures.
    pub fn unsigned_zone(self, origin: &str, text: &str) -> Self {
        self.zone(origin, text, ZoneKind::Unsigned)
    }

    /// Sends unbound's queries for `origin` to another authoritative server (insecure).
    pub fn stub(mut self, origin: &str, server: SocketAddr) -> Self {
        self.stubs.push((normal_origin(origin), server));
        self
    }

    fn zone(mut self, origin: &str, text: &str, kind: ZoneKind) -> Self {
        self.zones.push(ZoneSpec {
            origin: normal_origin(origin),
            text: text.to_string(),
            kind,
        });
        self
    }

    /// Signs the zones, starts NSD and unbound, and waits until both answer.
    pub fn start(self) -> Result<DnssecWorld, TestServerError> {
        DnssecWorld::start(self)
    }
}

/// A running NSD + unbound pair; see the module documentation.
pub struct DnssecWorld {
    unbound_addr: SocketAddr,
    nsd_addr: SocketAddr,
    anchors: Vec<(String, String)>,
    // Stopped in this order: the validator, then the authority; then the directory goes.
    _unbound: Server,
    _nsd: Server,
    dir: tempfile::TempDir,
}

impl fmt::Debug for DnssecWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnssecWorld")
            .field("unbound", &self.unbound_addr)
            .field("nsd", &self.nsd_addr)
            .finish()
    }
}

impl DnssecWorld {
    /// An empty builder.
    pub fn builder() -> DnssecWorldBuilder {
        DnssecWorldBuilder::default()
    }

    /// The validating resolver (unbound) on 127.0.0.1.
    pub fn resolver_addr(&self) -> SocketAddr {
        self.unbound_addr
    }

    /// The authoritative server (NSD) on 127.0.0.1.
    pub fn authoritative_addr(&self) -> SocketAddr {
        self.nsd_addr
    }

    /// Resolver settings for unbound: the AD bit trusted (loopback), a 2 s timeout, 2 attempts.
    pub fn resolver_settings(&self) -> ResolverSettings {
        ResolverSettings {
            nameservers: vec![self.unbound_addr],
            timeout: Duration::from_secs(2),
            attempts: 2,
            ad_trust: AdTrust::Loopback,
        }
    }

    /// A resolver with [`DnssecWorld::resolver_settings`].
    pub fn resolver(&self) -> Result<Resolver, ConfigError> {
        Resolver::new(&self.resolver_settings())
    }

    /// The DS record (zone-file line) that unbound trusts for a signed or bogus zone.
    pub fn trust_anchor(&self, origin: &str) -> Option<&str> {
        let origin = normal_origin(origin);
        self.anchors
            .iter()
            .find(|(o, _)| *o == origin)
            .map(|(_, ds)| ds.as_str())
    }

    /// The directory holding the zone files, keys, configurations and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn start(builder: DnssecWorldBuilder) -> Result<DnssecWorld, TestServerError> {
        let nsd_bin = tool("nsd")?;
        let unbound_bin = tool("unbound")?;
        let dir = tempfile::Builder::new()
            .prefix("ravelin-dnssec-")
            .tempdir()
            .map_err(|e| {
                err(format!(
                    "cannot create a directory for the DNSSEC world: {e}"
                ))
            })?;
        let base = dir.path().to_path_buf();

        let mut anchors = Vec::new();
        let mut nsd_zones = String::new();
        for zone in &builder.zones {
            let file = prepare_zone(&base, zone, &mut anchors)?;
            nsd_zones.push_str(&format!(
                "zone:\n    name: \"{}\"\n    zonefile: \"{}\"\n",
                zone.origin,
                file.display()
            ));
        }

        let nsd_addr = free_addr()?;
        let nsd_conf = base.join("nsd.conf");
        write(
            &nsd_conf,
            &format!(
                "server:\n    ip-address: 127.0.0.1\n    port: {port}\n    username: \"\"\n    \
                 chroot: \"\"\n    zonesdir: \"{dir}\"\n    database: \"\"\n    \
                 pidfile: \"{dir}/nsd.pid\"\n    xfrdfile: \"{dir}/xfrd.state\"\n    \
                 zonelistfile: \"{dir}/zone.list\"\n    logfile: \"{dir}/nsd.log\"\n    \
                 verbosity: 1\n    server-count: 1\n    do-ip6: no\n    hide-version: yes\n\
                 remote-control:\n    control-enable: no\n{nsd_zones}",
                port = nsd_addr.port(),
                dir = base.display(),
            ),
        )?;
        let nsd = Server::spawn(
            "nsd",
            Command::new(&nsd_bin).arg("-d").arg("-c").arg(&nsd_conf),
            base.join("nsd.log"),
        )?;
        if let Some(zone) = builder.zones.first() {
            nsd.wait_until_answering(nsd_addr, &zone.origin)?;
        }

        let anchors_file = base.join("anchors");
        let anchor_lines: String = anchors.iter().map(|(_, ds)| format!("{ds}\n")).collect();
        write(&anchors_file, &anchor_lines)?;
        let unbound_addr = free_addr()?;
        let mut stubs = String::new();
        let mut local_nodefault = String::new();
        let mut stub_origins: Vec<String> = Vec::new();
        for zone in &builder.zones {
            stubs.push_str(&format!(
                "stub-zone:\n    name: \"{}\"\n    stub-addr: 127.0.0.1@{}\n",
                zone.origin,
                nsd_addr.port()
            ));
            stub_origins.push(zone.origin.clone());
        }
        for (origin, server) in &builder.stubs {
            stubs.push_str(&format!(
                "stub-zone:\n    name: \"{origin}\"\n    stub-addr: {}@{}\n",
                server.ip(),
                server.port()
            ));
            stub_origins.push(origin.clone());
        }
        // Unbound refuses some special-use names (test., invalid., ...) by default.
        let mut tlds: Vec<&str> = stub_origins
            .iter()
            .filter_map(|o| o.trim_end_matches('.').rsplit('.').next())
            .collect();
        tlds.sort_unstable();
        tlds.dedup();
        for tld in tlds {
            local_nodefault.push_str(&format!("    local-zone: \"{tld}.\" nodefault\n"));
        }
        let trust = if anchors.is_empty() {
            String::new()
        } else {
            format!("    trust-anchor-file: \"{}\"\n", anchors_file.display())
        };
        let unbound_conf = base.join("unbound.conf");
        write(
            &unbound_conf,
            &format!(
                "server:\n    interface: 127.0.0.1\n    port: {port}\n    do-ip6: no\n    \
                 do-daemonize: no\n    username: \"\"\n    chroot: \"\"\n    \
                 directory: \"{dir}\"\n    pidfile: \"{dir}/unbound.pid\"\n    \
                 use-syslog: no\n    logfile: \"{dir}/unbound.log\"\n    verbosity: 1\n    \
                 val-log-level: 2\n    num-threads: 1\n    access-control: 127.0.0.0/8 allow\n    \
                 do-not-query-localhost: no\n    module-config: \"validator iterator\"\n\
                 {trust}{local_nodefault}remote-control:\n    control-enable: no\n{stubs}\
                 forward-zone:\n    name: \".\"\n    forward-addr: 127.0.0.1@9\n",
                port = unbound_addr.port(),
                dir = base.display(),
            ),
        )?;
        let unbound = Server::spawn(
            "unbound",
            Command::new(&unbound_bin)
                .arg("-d")
                .arg("-c")
                .arg(&unbound_conf),
            base.join("unbound.log"),
        )?;
        if let Some(origin) = stub_origins.first() {
            unbound.wait_until_answering(unbound_addr, origin)?;
        }

        Ok(DnssecWorld {
            unbound_addr,
            nsd_addr,
            anchors,
            _unbound: unbound,
            _nsd: nsd,
            dir,
        })
    }
}

/// `example.test` → `example.test.` (lowercase).
fn normal_origin(origin: &str) -> String {
    format!("{}.", origin.trim_end_matches('.').to_ascii_lowercase())
}

fn err(message: String) -> TestServerError {
    TestServerError(message)
}

fn write(path: &Path, text: &str) -> Result<(), TestServerError> {
    std::fs::write(path, text).map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

/// Finds a tool on PATH or in the system directories, or says how to install it.
fn tool(name: &str) -> Result<PathBuf, TestServerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(err(format!(
        "{name} is not installed: run scripts/install-test-deps.sh (it installs unbound, \
         ldnsutils and nsd)"
    )))
}

/// Runs a tool to completion in `dir`; its standard output, or an error with its output.
fn run(dir: &Path, program: &Path, args: &[&str]) -> Result<String, TestServerError> {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run {}: {e}", program.display())))?;
    if !output.status.success() {
        return Err(err(format!(
            "{} {} failed ({}): {}{}",
            program.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Writes the zone file (signing it when asked) and returns the file NSD serves.
fn prepare_zone(
    base: &Path,
    zone: &ZoneSpec,
    anchors: &mut Vec<(String, String)>,
) -> Result<PathBuf, TestServerError> {
    let origin = &zone.origin;
    let zone_dir = base.join(origin.trim_end_matches('.'));
    std::fs::create_dir_all(&zone_dir)
        .map_err(|e| err(format!("cannot create {}: {e}", zone_dir.display())))?;
    let unsigned = zone_dir.join("zone");
    write(
        &unsigned,
        &format!(
            "$ORIGIN {origin}\n$TTL 300\n@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60\n\
             @ IN NS ns.{origin}\nns IN A 127.0.0.1\n{}\n",
            zone.text
        ),
    )?;
    if zone.kind == ZoneKind::Unsigned {
        return Ok(unsigned);
    }
    let keygen = tool("ldns-keygen")?;
    let signzone = tool("ldns-signzone")?;
    let key = run(
        &zone_dir,
        &keygen,
        &["-a", "ECDSAP256SHA256", "-k", origin.trim_end_matches('.')],
    )?
    .trim()
    .to_string();
    if key.is_empty() || key.contains('/') {
        return Err(err(format!("ldns-keygen printed no key name for {origin}")));
    }
    let signed = zone_dir.join("zone.signed");
    run(
        &zone_dir,
        &signzone,
        &[
            "-f",
            &signed.display().to_string(),
            &unsigned.display().to_string(),
            &key,
        ],
    )?;
    let ds_path = zone_dir.join(format!("{key}.ds"));
    let ds = std::fs::read_to_string(&ds_path)
        .map_err(|e| err(format!("cannot read {}: {e}", ds_path.display())))?
        .trim()
        .to_string();
    anchors.push((origin.clone(), ds));
    if zone.kind == ZoneKind::Bogus {
        let text = std::fs::read_to_string(&signed)
            .map_err(|e| err(format!("cannot read {}: {e}", signed.display())))?;
        write(&signed, &damage_signatures(&text))?;
    }
    Ok(signed)
}

/// Changes one base64 character of every RRSIG over data (not over DNSKEY, NSEC, NSEC3 or
/// SOA), so the signatures no longer verify while the key and denial proofs stay valid.
fn damage_signatures(signed: &str) -> String {
    let mut out = String::with_capacity(signed.len());
    for line in signed.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_data_rrsig = fields.len() > 5
            && fields[3] == "RRSIG"
            && !matches!(
                fields[4],
                "DNSKEY" | "NSEC" | "NSEC3" | "NSEC3PARAM" | "SOA"
            );
        match (is_data_rrsig, fields.last()) {
            (true, Some(signature)) if !signature.is_empty() => {
                let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
                let cut = line.len() - signature.len();
                out.push_str(&line[..cut]);
                out.push(flipped);
                out.push_str(&signature[1..]);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A free UDP port of 127.0.0.1 that is also free for TCP (released for the server to take).
fn free_addr() -> Result<SocketAddr, TestServerError> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .map_err(|e| err(format!("cannot bind UDP on 127.0.0.1: {e}")))?;
        let Ok(addr) = udp.local_addr() else { continue };
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(err(
        "no port of 127.0.0.1 was free for both UDP and TCP".to_string()
    ))
}

/// A server process started by the fixture.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(
        name: &'static str,
        command: &mut Command,
        log: PathBuf,
    ) -> Result<Server, TestServerError> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("cannot start {name}: {e}")))?;
        Ok(Server { name, child, log })
    }

    /// Waits until `addr` answers a query for the SOA of `origin`.
    fn wait_until_answering(&self, addr: SocketAddr, origin: &str) -> Result<(), TestServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if probe(addr, origin) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(err(format!(
            "{} did not answer on {addr} within {START_TIMEOUT:?}; its log ends:\n{}",
            self.name,
            tail.join("\n")
        )))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SOA query over UDP; true when any response with our id comes back.
fn probe(addr: SocketAddr, origin: &str) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    if socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_err()
    {
        return false;
    }
    let id: u16 = 0x5253;
    let mut query = Vec::with_capacity(64);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in origin.trim_end_matches('.').split('.') {
        let Ok(len) = u8::try_from(label.len()) else {
            return false;
        };
        query.push(len);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 6, 0, 1]);
    if socket.send_to(&query, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[..2] == id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_signatures_are_damaged() {
        let signed = "example.test.\t300\tIN\tRRSIG\tSOA 13 2 300 2 1 1 example.test. AAAA\n\
                      mx.example.test.\t300\tIN\tA\t192.0.2.1\n\
                      mx.example.test.\t300\tIN\tRRSIG\tA 13 3 300 2 1 1 example.test. AbCd\n\
                      example.test.\t300\tIN\tRRSIG\tDNSKEY 13 2 300 2 1 1 example.test. AAAA\n";
        let damaged = damage_signatures(signed);
        let lines: Vec<&str> = damaged.lines().collect();
        assert!(lines[0].ends_with("AAAA"));
        assert_eq!(lines[1], "mx.example.test.\t300\tIN\tA\t192.0.2.1");
        assert!(lines[2].ends_with(" BbCd"), "{}", lines[2]);
        assert!(lines[3].ends_with("AAAA"));
    }
}
