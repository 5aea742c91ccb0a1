#!/usr/bin/env python3
"""audit-batch.py: a batch audit of 1 000 synthetic mail domains, served on loopback.

    bench/audit-batch.py [--domains 1000] [--concurrency 32] [--ravelin PATH]
                         [--checkdmarc PATH] [--skip-checkdmarc] [--skip-full] [--keep]
                         [--dns-latency 20] [--latency-sample 100] [--repeat 3] [--serve]

What it builds (all in one temporary directory, all on 127.0.0.0/8):
  - a hosting provider: 10 MX hosts mx1..mx10.hosting.test on 127.0.60.1..10, port 25,
    served by one `ravelin serve` (10 listeners, STARTTLS with a certificate of a bench CA
    naming the 10 hosts) in front of smtp-sink; their PTR records (one missing, one not
    forward-confirmed) and one address listed on a local blocklist zone;
  - N customer domains cNNNN.test whose records vary as real ones do (seeded, so every run
    is the same): one or two of the shared MX hosts, implicit MX, null MX, MX without
    address; SPF with the provider's include, ~all, ?all, +all, syntax errors, two records,
    an include of a missing name, a tree of more than 10 lookups, ptr; DMARC reject /
    quarantine / none / pct / syntax error / two records / none at all, with report
    addresses in the provider's domain, authorised or not; DKIM keys under common selectors
    (RSA 2048, RSA 1024, Ed25519, revoked, t=y) or none; MTA-STS (enforce, testing, none,
    policy host missing, MX not matched) with its policies served over HTTPS by nginx on
    127.0.54.1:443, each policy host with its own certificate of the bench CA; TLS-RPT (valid, invalid, none); CAA (issue, unknown critical
    tag, none);
  - NSD, authoritative for all of these zones on 127.0.53.1 port 53 (checkdmarc's
    --nameserver takes an address only).
Then, in one run:
  1. DNS part: `ravelin audit --dns-only` over the N domains at the default concurrency,
     and `checkdmarc` on the same domains and server (one process given the domain file and
     -o FILE, the way its documentation runs batches; it checks one domain after another).
     ravelin runs --repeat times (3) and its median run counts; checkdmarc runs once (it
     takes half a minute, which averages out a neighbour's burst on a shared machine).
     Prints domains per minute of each and the ratio, and the CPU time ravelin and the
     bench's own servers (NSD, nginx, ravelin serve, smtp-sink) used during ravelin's run:
     on loopback they share the same CPUs.
  2. Full audit: `ravelin audit` with every passive check (DNS, SMTP, TLS, per-address DNS)
     over the N domains at the default concurrency: domains per minute.
  3. The DNS part again through a proxy on 127.0.53.2:53 that holds every answer back
     --dns-latency milliseconds (20 by default; 0 skips this part): the round trip to a
     resolver across a network, which loopback lacks. ravelin over all domains, checkdmarc
     over the first --latency-sample (100: one domain after another, it needs the round trip
     times its queries per domain). Only UDP is proxied; MTA-STS policy fetches are not
     delayed.
Each ravelin report is checked: one entry per domain, in order, and no `error` finding (an
error there is a check that could not run: a DNS timeout under load, a refused or reset
connection, ports exhausted — a bug of the auditor or of the bench, listed and exit 1). Five
domains of the full audit are audited again one at a time: their verdicts (id, endpoint,
status) must be those of the batch, whose shared MX endpoints were audited once.
checkdmarc's results are counted, with the number of domains whose results carry a DNS
timeout.

Exit status 0 when every report is complete and free of errors. Needs root (port 53 and 25
on loopback, smtp-sink), nsd, nginx, openssl, smtp-sink and the .venv of
scripts/install-test-deps.sh (checkdmarc). Sends nothing off the machine: every name is in
a zone served here, and NSD refuses the rest.
"""

import argparse
import base64
import collections
import concurrent.futures
import json
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import PATH, ROOT, start_gateway, start_sink  # noqa: E402

DNS_ADDR = "127.0.53.1"
LATENCY_ADDR = "127.0.53.2"  # --dns-latency: the delaying proxy in front of NSD
HTTPS_ADDR = "127.0.54.1"
MX_COUNT = 10
MX_NET = "127.0.60"
PROVIDER = "hosting.test"
DNSBL_ZONE = "dnsbl.bench.test"
REPORTS = f"reports.{PROVIDER}"
LISTED_MX = 8  # mx8's address is on the blocklist
NO_PTR_MX = 10  # mx10's address has no PTR
BAD_PTR_MX = 9  # mx9's PTR does not resolve back
SELECTORS = ("selector1", "selector2", "google", "default", "k1", "mail")


def die(msg):
    sys.exit(f"audit-batch: error: {msg}")


def say(msg):
    print(f"audit-batch: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


# --- keys and certificates ----------------------------------------------------------------

def make_pki(tmp, mta_sts_hosts):
    """A bench CA, a certificate for the 10 MX hosts and one for every MTA-STS policy host."""
    ca_key, ca = f"{tmp}/ca.key", f"{tmp}/ca.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", ca_key, "-out", ca, "-days", "400", "-subj", "/CN=audit-batch CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])

    def new_key(name, cn):
        key, csr = f"{tmp}/{name}.key", f"{tmp}/{name}.csr"
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={cn}"])
        os.chmod(key, 0o644)  # read by `ravelin serve` before it drops to nobody; tmp is 0711
        return key, csr

    def sign(name, csr, sans):
        crt, ext = f"{tmp}/{name}.pem", f"{tmp}/{name}.ext"
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    "extendedKeyUsage=serverAuth\nsubjectAltName="
                    + ",".join(f"DNS:{s}" for s in sans) + "\n")
        serial = str(random.getrandbits(64))
        run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial",
             serial, "-days", "400", "-sha256", "-extfile", ext, "-out", crt])
        return crt

    mx_key, mx_csr = new_key("mx", f"mx1.{PROVIDER}")
    mx = (sign("mx", mx_csr, [f"mx{i}.{PROVIDER}" for i in range(1, MX_COUNT + 1)]), mx_key)
    # Each policy host has its own certificate, as it would on the internet (one key for all
    # of them keeps the set-up quick; a key's cost is not what the bench measures).
    sts_key, sts_csr = new_key("mta-sts", "mta-sts")
    hosts = mta_sts_hosts or [f"mta-sts.{PROVIDER}"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        certs = list(pool.map(lambda host: sign(host, sts_csr, [host]), hosts))
    return ca, mx, (dict(zip(hosts, certs)), sts_key)


def dkim_keys(tmp):
    """DKIM public keys (the p= value): RSA 2048, RSA 1024, Ed25519 (raw 32 bytes)."""
    keys = {}
    for name, args in (("rsa2048", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("rsa1024", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]),
                       ("ed25519", ["-algorithm", "ED25519"])):
        key = run(["openssl", "genpkey", *args]).stdout
        der = run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=key).stdout
        if name == "ed25519":
            der = der[-32:]
        keys[name] = base64.b64encode(der).decode()
    return keys


# --- the synthetic domains ----------------------------------------------------------------

def pick(rng, table):
    """One key of `table` {key: weight}."""
    r = rng.random() * sum(table.values())
    for key, weight in table.items():
        r -= weight
        if r < 0:
            return key
    return key


def txt(value):
    """A TXT RDATA: strings of at most 255 octets."""
    return " ".join('"' + value[i:i + 255] + '"' for i in range(0, len(value), 255))


class Domain:
    """One customer domain: its zone text and what its MTA-STS policy host serves."""

    def __init__(self, index, rng, keys):
        self.name = name = f"c{index:04d}.test"
        self.policy = None
        rr = []
        a, b = rng.randrange(MX_COUNT) + 1, rng.randrange(MX_COUNT) + 1
        if b == a:
            b = a % MX_COUNT + 1
        mx = pick(rng, {"two": 78, "one": 12, "implicit": 4, "null": 3, "dangling": 3})
        if mx == "two":
            rr += [f"@ MX 10 mx{a}.{PROVIDER}.", f"@ MX 20 mx{b}.{PROVIDER}."]
        elif mx == "one":
            rr += [f"@ MX 10 mx{a}.{PROVIDER}."]
        elif mx == "implicit":
            rr += [f"@ A {MX_NET}.{a}"]
        elif mx == "null":
            rr += ["@ MX 0 ."]
        else:
            rr += ["@ MX 10 mail"]  # mail.cNNNN.test has no address
        self.mx = mx
        spf = pick(rng, {"include": 50, "mx-soft": 15, "neutral": 5, "pass-all": 3, "none": 6,
                         "two": 3, "syntax": 3, "void": 3, "too-many": 5, "ptr": 4, "ip4": 3})
        spf_text = {
            "include": f"v=spf1 include:_spf.{PROVIDER} -all",
            "mx-soft": f"v=spf1 mx include:_spf.{PROVIDER} ~all",
            "neutral": f"v=spf1 include:_spf.{PROVIDER} ?all",
            "pass-all": "v=spf1 +all",
            "two": f"v=spf1 include:_spf.{PROVIDER} -all",
            "syntax": f"v=spf1 include:_spf.{PROVIDER} ip4:192.0.2.300 -all",
            "void": f"v=spf1 include:_spf.gone.{PROVIDER} -all",
            "too-many": f"v=spf1 include:_spf-big.{PROVIDER} mx a -all",
            "ptr": f"v=spf1 ptr include:_spf.{PROVIDER} -all",
            "ip4": "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all",
        }.get(spf)
        if spf_text:
            rr.append(f"@ TXT {txt(spf_text)}")
        if spf == "two":
            rr.append(f"@ TXT {txt('v=spf1 mx -all')}")
        rr.append(f"@ TXT {txt(f'google-site-verification={index:08x}')}")
        dmarc = pick(rng, {"reject": 28, "quarantine-auth": 12, "quarantine-unauth": 8,
                           "none": 20, "pct": 5, "syntax": 5, "two": 3, "absent": 19})
        dmarc_text = {
            "reject": f"v=DMARC1; p=reject; rua=mailto:dmarc@{name}",
            "quarantine-auth": f"v=DMARC1; p=quarantine; rua=mailto:dmarc@{REPORTS}",
            "quarantine-unauth": f"v=DMARC1; p=quarantine; sp=none; rua=mailto:dmarc@{REPORTS}",
            "none": f"v=DMARC1; p=none; rua=mailto:dmarc@{name}",
            "pct": f"v=DMARC1; p=reject; pct=50; rua=mailto:dmarc@{name}",
            "syntax": "v=DMARC1; p=rejected",
            "two": "v=DMARC1; p=reject",
        }.get(dmarc)
        if dmarc_text:
            rr.append(f"_dmarc TXT {txt(dmarc_text)}")
        if dmarc == "two":
            rr.append(f"_dmarc TXT {txt('v=DMARC1; p=none')}")
        self.authorise_reports = dmarc == "quarantine-auth"
        dkim = pick(rng, {"ms": 35, "google1024": 15, "ed25519": 8, "revoked": 5, "test": 5,
                          "none": 32})
        if dkim == "ms":
            for sel in ("selector1", "selector2"):
                rr.append(f"{sel}._domainkey TXT {txt('v=DKIM1; k=rsa; p=' + keys['rsa2048'])}")
        elif dkim == "google1024":
            rr.append(f"google._domainkey TXT {txt('v=DKIM1; k=rsa; p=' + keys['rsa1024'])}")
        elif dkim == "ed25519":
            rr.append(f"default._domainkey TXT {txt('v=DKIM1; k=ed25519; p=' + keys['ed25519'])}")
            rr.append(f"k1._domainkey TXT {txt('v=DKIM1; k=rsa; p=' + keys['rsa2048'])}")
        elif dkim == "revoked":
            rr.append(f"k1._domainkey TXT {txt('v=DKIM1; k=rsa; p=')}")
        elif dkim == "test":
            rr.append(f"mail._domainkey TXT {txt('v=DKIM1; t=y; k=rsa; p=' + keys['rsa2048'])}")
        receiving = mx in ("two", "one")
        sts = pick(rng, {"enforce": 25, "testing": 8, "none-mode": 2, "no-host": 3,
                         "mismatch": 2, "absent": 60}) if receiving else "absent"
        if sts != "absent":
            rr.append(f"_mta-sts TXT {txt(f'v=STSv1; id=2026{index:06d}')}")
        if sts not in ("absent", "no-host"):
            rr.append(f"mta-sts A {HTTPS_ADDR}")
            mode = {"testing": "testing", "none-mode": "none"}.get(sts, "enforce")
            pattern = "mail.elsewhere.test" if sts == "mismatch" else f"*.{PROVIDER}"
            self.policy = (f"version: STSv1\nmode: {mode}\nmx: {pattern}\n"
                           f"max_age: {604800 if index % 7 else 3600}\n")
        tlsrpt = pick(rng, {"valid": 35, "invalid": 3, "absent": 62}) if receiving else "absent"
        if tlsrpt == "valid":
            rr.append(f"_smtp._tls TXT {txt(f'v=TLSRPTv1; rua=mailto:tlsrpt@{REPORTS}')}")
        elif tlsrpt == "invalid":
            rr.append(f"_smtp._tls TXT {txt('v=TLSRPTv1; rua=ftp://reports.example')}")
        caa = pick(rng, {"issue": 30, "critical": 4, "iodef-only": 3, "absent": 63})
        if caa == "issue":
            rr += ['@ CAA 0 issue "letsencrypt.org"', '@ CAA 0 issuewild ";"']
        elif caa == "critical":
            rr += ['@ CAA 0 issue "letsencrypt.org"', '@ CAA 128 tbs "unknown"']
        elif caa == "iodef-only":
            rr += [f'@ CAA 0 iodef "mailto:security@{name}"']
        rr.append("www A 192.0.2.80")
        self.records = rr

    def zone(self):
        return zone_text(self.name, self.records)


def zone_text(origin, records):
    head = [f"$ORIGIN {origin}.", "$TTL 3600",
            f"@ SOA ns1.{PROVIDER}. hostmaster.{PROVIDER}. 2026120301 7200 3600 1209600 3600",
            f"@ NS ns1.{PROVIDER}.", f"@ NS ns2.{PROVIDER}."]
    return "\n".join(head + records) + "\n"


def provider_zones(domains):
    """The zones of the provider, its reverse zone, the report domain and the blocklist."""
    hosting = [f"ns1 A {DNS_ADDR}", f"ns2 A {DNS_ADDR}"]
    for i in range(1, MX_COUNT + 1):
        hosting.append(f"mx{i} A {MX_NET}.{i}")
    hosting.append(f"_spf TXT {txt('v=spf1 ip4:' + MX_NET + '.0/24 ip4:198.51.100.0/24 ~all')}")
    # More than 10 DNS-querying terms once the tree is walked (RFC 7208 §4.6.4).
    hosting.append(f"_spf-big TXT {txt(' '.join(['v=spf1'] + [f'include:_spf{k}.{PROVIDER}' for k in range(1, 5)] + ['-all']))}")
    for k in range(1, 5):
        hosting.append(f"_spf{k} TXT {txt(f'v=spf1 a:mx{k}.{PROVIDER} mx:{PROVIDER} a:mx{k + 4}.{PROVIDER} ~all')}")
    hosting.append(f"dyn-127-0-60-{BAD_PTR_MX} TXT \"not an address\"")
    reports = [f"@ MX 10 mx1.{PROVIDER}."]
    for d in domains:
        if d.authorise_reports:
            reports.append(f"{d.name}._report._dmarc TXT {txt('v=DMARC1')}")
    reverse = []
    for i in range(1, MX_COUNT + 1):
        if i == NO_PTR_MX:
            continue
        target = f"dyn-127-0-60-{i}.{PROVIDER}." if i == BAD_PTR_MX else f"mx{i}.{PROVIDER}."
        reverse.append(f"{i} PTR {target}")
    dnsbl = [f"{LISTED_MX}.60.0.127 A 127.0.0.2",
             f"{LISTED_MX}.60.0.127 TXT {txt('listed by the audit-batch bench')}"]
    # The TLD itself, so that lookups climbing to it (checkdmarc's DMARC fallback asks
    # _dmarc.test) get an answer (NXDOMAIN) as they would on the internet, not REFUSED.
    return {PROVIDER: hosting, REPORTS: reports, "60.0.127.in-addr.arpa": reverse,
            DNSBL_ZONE: dnsbl, "test": []}


# --- servers ------------------------------------------------------------------------------

def start_nsd(tmp, zones):
    conf = f"{tmp}/nsd.conf"
    os.makedirs(f"{tmp}/zones")
    parts = [f"""server:
    ip-address: {DNS_ADDR}
    port: 53
    username: ""
    chroot: ""
    zonesdir: "{tmp}/zones"
    database: ""
    pidfile: "{tmp}/nsd.pid"
    xfrdfile: "{tmp}/xfrd.state"
    zonelistfile: "{tmp}/zone.list"
    logfile: "{tmp}/nsd.log"
    verbosity: 1
    server-count: 1
    do-ip6: no
    hide-version: yes
    refuse-any: yes
    # No response rate limiting: NSD's default (200 answers a second per /24 and query)
    # answers the auditors' repeated lookups of the shared MX hosts with truncated replies,
    # which send them to TCP, whose accept queue then overflows into 1-3 s SYN retries. On
    # the internet a recursive resolver's cache stands between an auditor and the provider's
    # name servers; here the auditors ask NSD directly.
    rrl-ratelimit: 0
remote-control:
    control-enable: no
"""]
    for origin, text in zones.items():
        with open(f"{tmp}/zones/{origin}.zone", "w") as f:
            f.write(text)
        parts.append(f'zone:\n    name: "{origin}"\n    zonefile: "{origin}.zone"\n')
    with open(conf, "w") as f:
        f.write("".join(parts))
    nsd = subprocess.Popen(["nsd", "-d", "-c", conf], stdout=subprocess.DEVNULL,
                           stderr=open(f"{tmp}/nsd.err", "wb"), env=dict(os.environ, PATH=PATH))
    deadline = time.time() + 60
    while time.time() < deadline:
        if nsd.poll() is not None:
            die(f"nsd exited: {open(f'{tmp}/nsd.err').read()[-2000:]}")
        if dns_answers(f"mx1.{PROVIDER}"):
            return nsd
        time.sleep(0.1)
    die("nsd does not answer after 60 s")


def dns_answers(name, server=DNS_ADDR):
    """Whether the server at SERVER:53 answers an A query for `name` (NOERROR)."""
    qid = random.randrange(65536)
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(q, (server, 53))
            r = s.recv(512)
        except OSError:
            return False
    return r[:2] == q[:2] and (r[3] & 0x0F) == 0


def start_policy_server(tmp, policies, certs, key):
    """nginx on HTTPS_ADDR:443: each mta-sts.DOMAIN host's policy at the well-known path, with
    the host's own certificate (one server block per host, chosen by SNI); anything else 404.
    A C server, so that the bench's own HTTPS side takes little of the CPUs it shares with
    the auditors."""
    www = f"{tmp}/www"
    blocks = []
    for host, body in policies.items():
        os.makedirs(f"{www}/{host}/.well-known")
        with open(f"{www}/{host}/.well-known/mta-sts.txt", "w") as f:
            f.write(body)
        blocks.append(f"""    server {{
        listen {HTTPS_ADDR}:443 ssl;
        server_name {host};
        ssl_certificate {certs[host]};
        ssl_certificate_key {key};
        root {www}/{host};
        location = /.well-known/mta-sts.txt {{ }}
        location / {{ return 404; }}
    }}
""")
    first = next(iter(certs.values()))
    conf = f"{tmp}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    types {{ }}
    default_type text/plain;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server_names_hash_max_size 8192;
    server_names_hash_bucket_size 128;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{
        listen {HTTPS_ADDR}:443 ssl default_server;
        ssl_certificate {first};
        ssl_certificate_key {key};
        return 404;
    }}
{"".join(blocks)}}}
""")
    nginx = subprocess.Popen(["nginx", "-c", conf], stdout=subprocess.DEVNULL,
                             stderr=open(f"{tmp}/nginx.err", "wb"),
                             env=dict(os.environ, PATH=PATH))
    deadline = time.time() + 30
    while time.time() < deadline:
        if nginx.poll() is not None:
            die(f"nginx exited: {open(f'{tmp}/nginx.err').read()[-2000:]}")
        try:
            socket.create_connection((HTTPS_ADDR, 443), timeout=1).close()
            return nginx
        except OSError:
            time.sleep(0.1)
    die("nginx does not accept connections after 30 s")


def cpu_seconds(pids):
    """User and system CPU time used so far by the processes `pids` (and their reaped children
    are not counted: NSD's and nginx's workers are listed themselves)."""
    total = 0
    for pid in pids:
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def world_pids(children):
    """The bench's servers and all their descendants (NSD's and nginx's workers): NSD, nginx,
    `ravelin serve`, smtp-sink."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    pids = {c.pid for c in children}
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in pids} - pids
        pids |= more
        grew = bool(more)
    return sorted(pids)


def start_mx(tmp, ravelin, domains, cert, key, sink_port):
    """One `ravelin serve` listening on the 10 MX addresses, port 25, STARTTLS offered."""
    listeners = "".join(f"""
[[listen]]
name = "mx{i}"
address = "{MX_NET}.{i}:25"
kind = "inbound"
tls = "offer"
""" for i in range(1, MX_COUNT + 1))
    names = ", ".join(f'"{d.name}"' for d in domains)
    config = f"""hostname = "mx1.{PROVIDER}"
[server]
user = "nobody"
{listeners}
[tls]
certificate = "{cert}"
private_key = "{key}"
[inbound]
domains = [{names}]
backend = ["smtp://127.0.0.1:{sink_port}"]
backend_tls = "none"
[spool]
path = "{tmp}/spool"
[dns]
nameservers = ["{DNS_ADDR}:53"]
[log]
format = "json"
"""
    return start_gateway(ravelin, tmp, config,
                         [(f"{MX_NET}.{i}", 25) for i in range(1, MX_COUNT + 1)], "audit-batch")


# --- the runs -----------------------------------------------------------------------------

def timed(cmd, out, env=None, limit=1800, world=()):
    """Runs `cmd`, returns (seconds, exit code, its CPU seconds, the CPU seconds the processes
    `world` used meanwhile); stderr goes to OUT.err. The end is taken by a blocking wait, with
    a watchdog that kills the command after `limit` seconds (exit code -9): a wait with a
    timeout (`subprocess.run(timeout=...)`) polls, sleeping up to 50 ms between looks, and
    added up to 50 ms to every measured run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    world_before = cpu_seconds(world)
    start = time.perf_counter()
    with open(out + ".err", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        watchdog = threading.Timer(limit, proc.kill)
        watchdog.start()
        try:
            rc = proc.wait()
        except BaseException:
            # Interrupted (Ctrl-C): the run does not outlive the bench.
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
    secs = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return secs, rc, own, cpu_seconds(world) - world_before


def check_report(path, names, label):
    """Problems of a ravelin JSON report: missing, extra or reordered targets, error findings."""
    with open(path) as f:
        report = json.load(f)
    problems = []
    got = [t["target"] for t in report["targets"]]
    if got != names:
        problems.append(f"{label}: {len(got)} targets in the report for {len(names)} domains"
                        + ("" if len(got) != len(names) else " (not in the order given)"))
    errors = collections.Counter()
    for t in report["targets"]:
        for f in t["findings"]:
            if f["status"] == "error":
                errors[(f["id"], f["evidence"].splitlines()[0][:120] if f["evidence"] else "")] += 1
    for (fid, ev), n in errors.most_common(10):
        problems.append(f"{label}: {n} x error {fid}: {ev}")
    statuses = collections.Counter(f["status"] for t in report["targets"] for f in t["findings"])
    findings = sum(statuses.values())
    return problems, findings, statuses


def verdicts(target):
    """A target's findings as sorted (id, endpoint, status) triples."""
    return sorted((f["id"], f["endpoint"], f["status"]) for f in target["findings"])


def compare_alone(common, batch_file, names, tmp, sample=5):
    """Audits a few domains of the batch one at a time and compares each one's verdicts with
    its entry in the batch report, whose MX endpoints were audited once for all the domains
    sharing them: they must be the same."""
    with open(batch_file) as f:
        batch = {t["target"]: t for t in json.load(f)["targets"]}
    problems = []
    picked = random.Random(7).sample(names, min(sample, len(names)))
    base = [a for a in common if a not in ("--targets-file", f"{tmp}/domains.txt")]
    for name in picked:
        out = f"{tmp}/alone-{name}.json"
        rc = subprocess.run(base + ["--output", out, name], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=300).returncode
        if rc not in (0, 1):
            problems.append(f"ravelin audit {name} alone exited {rc}")
            continue
        with open(out) as f:
            alone = json.load(f)["targets"][0]
        if verdicts(alone) != verdicts(batch[name]):
            diff = set(verdicts(alone)) ^ set(verdicts(batch[name]))
            problems.append(f"{name}: the batch and a lone audit disagree on {sorted(diff)[:5]}")
    say(f"{len(picked)} domains audited alone: {len(picked) - len(problems)} agree with the batch")
    return problems


# checkdmarc fetches MTA-STS policies with `requests`, which resolves the policy host through
# the system's resolver, not -n. So that it sees the same DNS as for everything else (as it
# would where the system resolver is that server), names under .test are resolved at DNS_ADDR
# with dnspython (checkdmarc's own DNS library); everything else is untouched.
CHECKDMARC = """
import socket, sys
import dns.resolver
from checkdmarc._cli import _main
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = [sys.argv[-1]]
system = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and host.rstrip(".").endswith(".test"):
        try:
            host = resolver.resolve(host, "A")[0].address
        except dns.exception.DNSException as e:
            raise socket.gaierror(socket.EAI_NONAME, str(e))
    return system(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
sys.argv[0] = "checkdmarc"
sys.exit(_main())
"""


def check_checkdmarc(path, names):
    with open(path) as f:
        results = json.load(f)
    if isinstance(results, dict):
        results = [results]
    timeouts = sum(1 for r in results if "timed out" in json.dumps(r) or "timeout" in json.dumps(r).lower())
    return len(results), timeouts


def latency_proxy(ms):
    """UDP DNS on LATENCY_ADDR:53, forwarded to NSD, each answer held back `ms` milliseconds:
    the round trip to a resolver across a network. Query ids are rewritten so that clients'
    ids never collide upstream. Every answer waits the same time, so the answers to send are
    a queue in arrival order; one loop reads both sockets dry, then sends what is due (a
    plain loop costs a fraction of asyncio's per datagram, which on two CPUs shared with the
    auditors is what limited the short delays)."""
    import collections
    import select

    down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    down.bind((LATENCY_ADDR, 53))
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.connect((DNS_ADDR, 53))
    for s in (down, up):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setblocking(False)
    delay = ms / 1000
    pending = {}
    held = collections.deque()
    next_id = 0
    poller = select.epoll()
    poller.register(down.fileno(), select.EPOLLIN)
    poller.register(up.fileno(), select.EPOLLIN)
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else -1
        for fd, _ in poller.poll(wait):
            if fd == down.fileno():
                while True:
                    try:
                        data, addr = down.recvfrom(4096)
                    except BlockingIOError:
                        break
                    if len(data) < 12 or len(pending) >= 60000:
                        continue
                    while next_id in pending:
                        next_id = (next_id + 1) & 0xFFFF
                    pending[next_id] = (data[:2], addr)
                    up.send(next_id.to_bytes(2, "big") + data[2:])
                    next_id = (next_id + 1) & 0xFFFF
            else:
                while True:
                    try:
                        data = up.recv(4096)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    who = pending.pop(int.from_bytes(data[:2], "big"), None) if len(data) >= 12 else None
                    if who:
                        held.append((time.monotonic() + delay, who[0] + data[2:], who[1]))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, answer, addr = held.popleft()
            try:
                down.sendto(answer, addr)
            except OSError:
                pass


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--latency-proxy":
        latency_proxy(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32,
                    help="ravelin audit --concurrency (32 is its default)")
    ap.add_argument("--ravelin", default="")
    ap.add_argument("--checkdmarc", default=os.path.join(ROOT, ".venv", "bin", "checkdmarc"))
    ap.add_argument("--skip-checkdmarc", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, metavar="N",
                    help="runs of ravelin's DNS part on loopback; the median is reported "
                         "(default 3)")
    ap.add_argument("--dns-latency", type=int, default=20, metavar="MS",
                    help="also run the DNS part through a proxy that adds MS milliseconds to "
                         "every DNS round trip (checkdmarc on --latency-sample domains); "
                         "default 20, 0 skips it")
    ap.add_argument("--latency-sample", type=int, default=100, metavar="N",
                    help="domains checkdmarc checks in the --dns-latency run (default 100)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--serve", action="store_true",
                    help="set everything up, print the audit command and wait (Ctrl-C ends): "
                         "for profiling by hand")
    args = ap.parse_args()
    if not 1 <= args.domains <= 9999:
        die("--domains must be in 1..=9999")
    if not 0 <= args.dns_latency <= 1000:
        die("--dns-latency must be in 0..=1000 ms")
    args.latency_sample = min(args.latency_sample, args.domains)
    if args.latency_sample < 1:
        die("--latency-sample must be at least 1")
    if not 1 <= args.repeat <= 25:
        die("--repeat must be in 1..=25")
    if not 1 <= args.concurrency <= 1024:
        die("--concurrency must be in 1..=1024")
    if os.geteuid() != 0:
        die("run as root (ports 25 and 53 on loopback, smtp-sink)")
    for tool in ("nsd", "nginx", "openssl", "smtp-sink"):
        if not shutil.which(tool, path=PATH):
            die(f"{tool} is not installed: run scripts/install-test-deps.sh")
    if not args.skip_checkdmarc and not os.access(args.checkdmarc, os.X_OK):
        die(f"no checkdmarc at {args.checkdmarc}: run scripts/install-test-deps.sh")
    ravelin = args.ravelin or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "ravelin")
    if not args.ravelin and not os.access(ravelin, os.X_OK):
        say(f"building {ravelin} (cargo build --release -p ravelin)")
        subprocess.run(["cargo", "build", "--release", "-p", "ravelin"], cwd=ROOT, check=True)

    tmp = tempfile.mkdtemp(prefix="ravelin-audit-batch-")
    os.chmod(tmp, 0o711)
    children, ok = [], False
    results = {}
    try:
        rng = random.Random(20261203)
        keys = dkim_keys(tmp)
        domains = [Domain(i, rng, keys) for i in range(1, args.domains + 1)]
        names = [d.name for d in domains]
        with open(f"{tmp}/domains.txt", "w") as f:
            f.write("\n".join(names) + "\n")
        policies = {f"mta-sts.{d.name}": d.policy for d in domains if d.policy}
        ca, (mx_cert, mx_key), (sts_certs, sts_key) = make_pki(tmp, sorted(policies))
        zones = {d.name: d.zone() for d in domains}
        zones.update({o: zone_text(o, rr) for o, rr in provider_zones(domains).items()})
        say(f"{len(domains)} domains, {len(zones)} zones; starting nsd on {DNS_ADDR}:53")
        children.append(start_nsd(tmp, zones))
        children.append(start_policy_server(tmp, policies, sts_certs, sts_key))
        sink, sink_port = start_sink(tmp, "audit-batch")
        children.append(sink)
        children.append(start_mx(tmp, ravelin, domains, mx_cert, mx_key, sink_port))
        say(f"MX hosts on {MX_NET}.1-{MX_COUNT}:25, MTA-STS policies on {HTTPS_ADDR}:443")

        common = [ravelin, "audit", "--format", "json", "--targets-file", f"{tmp}/domains.txt",
                  "--nameserver", f"{DNS_ADDR}:53", "--dnsbl", DNSBL_ZONE,
                  "--mta-sts-ca-file", ca, "--ca-file", ca, "--fail-on", "critical",
                  "--concurrency", str(args.concurrency)]
        if args.serve:
            print(" ".join(common), flush=True)
            print(f"checkdmarc: {args.checkdmarc} {tmp}/domains.txt -n {DNS_ADDR}", flush=True)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.wait(1):
                pass
            ok = True
            return 0
        problems = []
        dns_out = f"{tmp}/ravelin-dns.json"
        say(f"DNS part: ravelin audit --dns-only, {args.repeat} runs")
        runs = []
        for _ in range(args.repeat):
            secs, rc, own_cpu, world_cpu = timed(common + ["--dns-only", "--output", dns_out],
                                                 dns_out, world=world_pids(children))
            if rc not in (0, 1):
                die(f"ravelin audit --dns-only exited {rc}: "
                    f"{open(dns_out + '.err').read()[-2000:]}")
            p, findings, statuses = check_report(dns_out, names, "ravelin --dns-only")
            problems += p
            runs.append((secs, own_cpu, world_cpu))
            say(f"ravelin --dns-only: {secs:.2f} s, {findings} findings {dict(statuses)}; CPU:"
                f" ravelin {own_cpu:.2f} s, the bench's servers {world_cpu:.2f} s")
        # The median run: one run of a second is at the mercy of a neighbour's burst on a
        # shared machine, which checkdmarc's half minute averages out.
        secs, own_cpu, world_cpu = sorted(runs)[len(runs) // 2]
        results["dns"] = (secs, findings, statuses)
        results["dns-cpu"] = (own_cpu, world_cpu)
        results["dns-runs"] = [r[0] for r in runs]

        if not args.skip_checkdmarc:
            cd_out = f"{tmp}/checkdmarc.json"
            say("DNS part: checkdmarc")
            env = dict(os.environ, REQUESTS_CA_BUNDLE=ca)
            # -n and -o take several values: the domain file goes first.
            python = os.path.join(os.path.dirname(args.checkdmarc), "python")
            secs, rc, *_ = timed([python, "-c", CHECKDMARC, f"{tmp}/domains.txt", "-o", cd_out,
                              "-n", DNS_ADDR], cd_out, env=env, limit=3600)
            if rc != 0 or not os.path.exists(cd_out):
                die(f"checkdmarc exited {rc}: {open(cd_out + '.err').read()[-2000:]}")
            count, timeouts = check_checkdmarc(cd_out, names)
            results["checkdmarc"] = (secs, count, timeouts)
            if count != len(names):
                problems.append(f"checkdmarc: {count} results for {len(names)} domains")
            say(f"checkdmarc: {secs:.2f} s, {count} results, {timeouts} with a DNS timeout")

        if not args.skip_full:
            full_out = f"{tmp}/ravelin-full.json"
            say("full audit: ravelin audit")
            secs, rc, *_ = timed(common + ["--output", full_out], full_out)
            if rc not in (0, 1):
                die(f"ravelin audit exited {rc}: {open(full_out + '.err').read()[-2000:]}")
            p, findings, statuses = check_report(full_out, names, "ravelin full")
            problems += p
            results["full"] = (secs, findings, statuses)
            say(f"ravelin full: {secs:.2f} s, {findings} findings {dict(statuses)}")
            problems += compare_alone(common, full_out, names, tmp)
        if args.dns_latency and not args.skip_checkdmarc:
            say(f"DNS part with {args.dns_latency} ms per DNS round trip (proxy on {LATENCY_ADDR}:53)")
            proxy = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--latency-proxy",
                                      str(args.dns_latency)])
            children.append(proxy)
            deadline = time.time() + 30
            while not dns_answers(f"mx1.{PROVIDER}", LATENCY_ADDR):
                if proxy.poll() is not None or time.time() > deadline:
                    die("the latency proxy does not answer")
                time.sleep(0.1)
            slow = [a if a != f"{DNS_ADDR}:53" else f"{LATENCY_ADDR}:53" for a in common]
            lat_out = f"{tmp}/ravelin-dns-latency.json"
            secs, rc, *_ = timed(slow + ["--dns-only", "--output", lat_out], lat_out)
            if rc not in (0, 1):
                die(f"ravelin audit --dns-only exited {rc}: {open(lat_out + '.err').read()[-2000:]}")
            p, findings, _ = check_report(lat_out, names, "ravelin --dns-only with latency")
            problems += p
            results["dns-latency"] = (secs, len(names))
            say(f"ravelin --dns-only with latency: {secs:.2f} s")
            sample = f"{tmp}/sample.txt"
            with open(sample, "w") as f:
                f.write("\n".join(names[:args.latency_sample]) + "\n")
            cd_out = f"{tmp}/checkdmarc-latency.json"
            python = os.path.join(os.path.dirname(args.checkdmarc), "python")
            env = dict(os.environ, REQUESTS_CA_BUNDLE=ca)
            secs, rc, *_ = timed([python, "-c", CHECKDMARC, sample, "-o", cd_out, "-n", LATENCY_ADDR],
                             cd_out, env=env, limit=3600)
            if rc != 0 or not os.path.exists(cd_out):
                die(f"checkdmarc exited {rc}: {open(cd_out + '.err').read()[-2000:]}")
            count, timeouts = check_checkdmarc(cd_out, names)
            if count != args.latency_sample:
                problems.append(f"checkdmarc with latency: {count} results for {args.latency_sample} domains")
            results["checkdmarc-latency"] = (secs, count, timeouts)
            say(f"checkdmarc with latency: {secs:.2f} s for {count} domains, {timeouts} with a DNS timeout")
        ok = not problems
        for p in problems:
            print(f"audit-batch: problem: {p}", file=sys.stderr)
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        if args.keep or not ok:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    n = args.domains
    per_min = lambda secs: n / secs * 60  # noqa: E731
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "unknown CPU")
    machine = f"{os.cpu_count()} x {cpu}, {os.uname().release}"
    print(f"machine: {machine}")
    row = {}
    if "dns" in results:
        secs, findings, _ = results["dns"]
        row["dns"] = per_min(secs)
        every = ", ".join(f"{r:.2f}" for r in results["dns-runs"])
        print(f"ravelin audit --dns-only: {n} domains in {secs:.2f} s (median of {every} s)"
              f" = {row['dns']:.0f} domains/min ({findings} findings)")
    if "checkdmarc" in results:
        secs, count, timeouts = results["checkdmarc"]
        row["checkdmarc"] = per_min(secs)
        print(f"checkdmarc: {n} domains in {secs:.2f} s = {row['checkdmarc']:.0f} domains/min"
              f" ({count} results, {timeouts} with a DNS timeout)")
    if "dns-cpu" in results:
        own, world = results["dns-cpu"]
        print(f"CPU during ravelin audit --dns-only: ravelin {own:.2f} s, the bench's servers"
              f" (NSD, nginx, ravelin serve, smtp-sink) {world:.2f} s, on {os.cpu_count()} CPUs")
    if "dns" in row and "checkdmarc" in row:
        print(f"ratio ravelin/checkdmarc on the DNS part: {row['dns'] / row['checkdmarc']:.1f}x")
    if "full" in results:
        secs, findings, _ = results["full"]
        row["full"] = per_min(secs)
        print(f"ravelin audit (full, passive): {n} domains in {secs:.2f} s = "
              f"{row['full']:.0f} domains/min ({findings} findings)")
    if "dns-latency" in results and "checkdmarc-latency" in results:
        secs, count = results["dns-latency"]
        row["dns-latency"] = count / secs * 60
        secs_cd, count_cd, timeouts = results["checkdmarc-latency"]
        row["checkdmarc-latency"] = count_cd / secs_cd * 60
        print(f"with {args.dns_latency} ms per DNS round trip: ravelin audit --dns-only {count}"
              f" domains in {secs:.2f} s = {row['dns-latency']:.0f} domains/min; checkdmarc"
              f" {count_cd} domains in {secs_cd:.2f} s = {row['checkdmarc-latency']:.0f}"
              f" domains/min ({timeouts} with a DNS timeout); ratio"
              f" {row['dns-latency'] / row['checkdmarc-latency']:.1f}x")
    fmt = lambda k: f"{row[k]:.0f}" if k in row else "n/a"  # noqa: E731
    ratio = lambda a, b: f"{row[a] / row[b]:.1f}" if a in row and b in row else "n/a"  # noqa: E731
    print()
    print("| date | machine | domains | concurrency | DNS round trip | checkdmarc domains/min | "
          "ravelin --dns-only domains/min | ratio | ravelin full audit domains/min |")
    print("|---|---|---|---|---|---|---|---|---|")
    day = time.strftime("%Y-%m-%d")
    print(f"| {day} | {machine} | {n} | {args.concurrency} | loopback | {fmt('checkdmarc')} | "
          f"{fmt('dns')} | {ratio('dns', 'checkdmarc')} | {fmt('full')} |")
    if "dns-latency" in row:
        print(f"| {day} | {machine} | {n} (checkdmarc: first {args.latency_sample}) | "
              f"{args.concurrency} | {args.dns_latency} ms | {fmt('checkdmarc-latency')} | "
              f"{fmt('dns-latency')} | {ratio('dns-latency', 'checkdmarc-latency')} | n/a |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
