#!/usr/bin/env python3
"""inbound-checks.py: inbound mail with sender authentication and a DNS list, Ravelin against
Postfix + policyd-spf + OpenDKIM + OpenDMARC (Debian's packages), on the same load in one run.

    bench/inbound-checks.py [--messages N] [--sessions S] [--size KiB] [--ttl SECONDS]
                            [--domains K] [--ravelin PATH] [--only postfix|ravelin] [--keep]

One DNS server serves both sides: unbound on port 53 of 127.0.0.153 (or of the next free
address up to .199) with the test zones as local data and nothing else (every other name is
NXDOMAIN: no query leaves the machine). The zones:
  - example.net, the sender domain: SPF "v=spf1 ip4:127.0.0.0/8 -all", a DKIM key
    (RSA-2048, selector "bench"), DMARC "p=reject", and mail.example.net (A 127.0.0.1, SPF
    for the HELO name), which is also the PTR of 127.0.0.1 (forward-confirmed);
  - other.example: SPF that passes for loopback, for the message whose DMARC must fail;
  - dnsbl.bench.example, a DNS list where 127.0.0.2 is listed and 127.0.0.1 is not;
  - with --domains K > 1, also sender1.example ... sender(K-1).example, each with the records
    of example.net (SPF, mail.DOMAIN, the same DKIM key under its own name, DMARC p=reject).
Every load message is a 10 KiB message signed beforehand with dkimpy (relaxed/relaxed), From
alice@DOMAIN, sent by smtp-source -F with MAIL FROM sender@DOMAIN and HELO mail.DOMAIN, one
message per connection, S sessions in parallel: one smtp-source per sender domain, the
sessions and messages shared out among them (K = 1, the default: all from example.net, the
same message every time).

  - Postfix: an alternate instance (tests/peers/postfix-instance.sh, relay mode) with
    smtpd_peername_lookup = yes, smtpd_recipient_restrictions = reject_rbl_client
    dnsbl.bench.example, check_policy_service unix:private/policyd-spf (policyd-spf spawned
    by master, Authentication-Results headers, loopback not skipped), and the milters OpenDKIM
    (verify mode) and OpenDMARC (RejectFailures). The daemons read /etc/resolv.conf, so the
    whole stack runs in a mount namespace (unshare -m) where a resolv.conf naming the
    benchmark's DNS server (and an /etc/hosts without "localhost", so that smtpd asks the DNS
    for the client's name) are bind-mounted; the host's files are never touched.
  - Ravelin: `ravelin serve`, one inbound listener, [dns] nameservers = that server,
    [checks] on (SPF, DKIM, DMARC, ARC; enforce_dmarc), [dnsbl] sites = the same list, and
    [screen] exempt = [] and greet_wait = "0s" so that loopback clients are scored like any
    other and nobody waits for a banner (Postfix has no postscreen here).
Both relay to one smtp-sink that counts (-c) and dumps every message (-D). Before its load,
each side must: deliver one message with spf=pass, dkim=pass and dmarc=pass in its own
Authentication-Results; refuse with 5xx a message whose DMARC fails (From example.net,
MAIL FROM other.example, DKIM body altered); refuse the listed client 127.0.0.2. After the
run, every message in the dump must carry the three passes from the side that relayed it,
and each side must have delivered exactly N + 1 messages; otherwise the script exits 1.

Measured per side: messages per second from the start of smtp-source until the sink has all
N; CPU seconds of the server side per message (Postfix: master and all its processes, reaped
ones included, and the two milters; Ravelin: its process); DNS queries unbound answered
during the load per message. --ttl sets the TTL of every record (default 3600; 0 leaves no
cache anything to keep).
Defaults: 5000 messages, 20 sessions, 10 KiB. `--messages 100 --sessions 5` is a smoke run.
Needs root (Postfix, unshare, smtp-sink), the peers of scripts/install-test-deps.sh and the
.venv with dkimpy. Traffic goes only to 127.0.0.0/8; everything started is stopped on exit.
"""

import argparse
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import PATH, ROOT, free_port, start_gateway, wait_port  # noqa: E402

try:
    import dkim
except ImportError:
    venv = os.path.join(ROOT, ".venv", "bin", "python")
    if os.access(venv, os.X_OK) and os.path.realpath(sys.executable) != os.path.realpath(venv):
        os.execv(venv, [venv] + sys.argv)
    sys.exit("inbound-checks: no dkimpy: run scripts/install-test-deps.sh (it makes .venv)")

# The DNS server's address: the first of 127.0.0.153-.199 whose port 53 is free (port 53,
# because the Postfix stack's resolver library knows no other); set by main().
DNS_IP = ""
LISTED_IP = "127.0.0.2"
SENDER = "sender@example.net"
RCPT = "user@example.org"
HELO = "mail.example.net"
DNSBL = "dnsbl.bench.example"
PF_ID = "mx.postfix.bench.example"
RV_ID = "mx.ravelin.bench.example"
ENV = dict(os.environ, PATH=PATH)


def say(msg):
    print(f"inbound-checks: {msg}", file=sys.stderr, flush=True)


def die(msg):
    raise SystemExit(f"inbound-checks: error: {msg}")


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def run(cmd, **kw):
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        die(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


# --- keys, messages, zones ------------------------------------------------------------------

def make_key(work):
    key = os.path.join(work, "dkim.pem")
    run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
         "-out", key])
    der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    with open(key, "rb") as f:
        return f.read(), base64.b64encode(der).decode()


def sender_domains(n):
    """The sender domains of a run: example.net, then sender1.example, sender2.example, ..."""
    return ["example.net"] + [f"sender{i}.example" for i in range(1, n)]


def message(size_kib, subject, tag, domain="example.net"):
    """A text message of about size_kib KiB from alice@domain, CRLF."""
    head = (f"From: Alice <alice@{domain}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n"
            f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{tag}@{domain}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    words = "the quick brown fox jumps over a lazy dog while the gateway checks mail".split()
    body, size, i = [], 0, 0
    while size < size_kib * 1024:
        line = " ".join(words[(i + k) % len(words)] for k in range(12)) + "\r\n"
        body.append(line)
        size += len(line)
        i += 1
    return (head + "".join(body)).encode()


def sign(msg, pem, domain="example.net"):
    sig = dkim.sign(msg, b"bench", domain.encode(), pem, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + msg


def unbound_conf(work, pub, ttl, domains):
    chunks = [pub[i:i + 200] for i in range(0, len(pub), 200)]
    dkim_txt = '"v=DKIM1; k=rsa; p=" ' + " ".join(f'"{c}"' for c in chunks)
    spf = '"v=spf1 ip4:127.0.0.0/8 -all"'
    data = []
    for d in domains:
        data += [f"{d}. TXT {spf}", f"{d}. MX 10 mail.{d}.", f"mail.{d}. A 127.0.0.1",
                 f"mail.{d}. TXT {spf}", f"bench._domainkey.{d}. TXT {dkim_txt}",
                 f"_dmarc.{d}. TXT \"v=DMARC1; p=reject\""]
    data += [
        "other.example. TXT \"v=spf1 ip4:127.0.0.0/8 -all\"",
        f"1.0.0.127.in-addr.arpa. PTR {HELO}.",
        f"2.0.0.127.in-addr.arpa. PTR {HELO}.",
        f"2.0.0.127.{DNSBL}. A 127.0.0.2",
        f"2.0.0.127.{DNSBL}. TXT \"listed for the benchmark\"",
    ]
    zones = [f"{d}." for d in domains] + ["other.example.", DNSBL + ".", "127.in-addr.arpa."]
    lines = [
        "server:",
        f"  interface: {DNS_IP}", "  port: 53", "  do-ip6: no", "  do-daemonize: no",
        '  username: ""', '  chroot: ""', f'  directory: "{work}"', '  pidfile: ""',
        '  logfile: ""', "  use-syslog: no", "  verbosity: 0", "  num-threads: 1",
        "  access-control: 127.0.0.0/8 allow", '  module-config: "iterator"',
        # No recursion: what is not below is NXDOMAIN, so nothing leaves the machine.
        '  local-zone: "." static',
        '  local-zone: "127.in-addr.arpa." nodefault',
    ]
    lines += [f'  local-zone: "{z}" static' for z in zones]
    lines += [f"  local-data: '{d.replace(' ', f' {ttl} ', 1)}'" for d in data]
    # A control socket of this run, for the query counter (unbound-control stats_noreset).
    lines += ["remote-control:", "  control-enable: yes",
              f'  control-interface: "{work}/unbound.ctl"', "  control-use-cert: no"]
    path = os.path.join(work, "unbound.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def dns_queries(conf):
    """How many queries the benchmark's DNS server has answered so far."""
    out = run(["unbound-control", "-c", conf, "stats_noreset"])
    m = re.search(r"(?m)^total\.num\.queries=(\d+)$", out)
    if not m:
        die(f"no total.num.queries in unbound-control stats: {out[:500]}")
    return int(m.group(1))


def port_53_free(ip):
    """Whether UDP and TCP port 53 of ip can be bound now."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((ip, 53))
            except OSError:
                return False
    return True


def wait_dns(proc, log):
    import dns.resolver
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [DNS_IP]
    r.lifetime = 1
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            die(f"unbound exited: {tail(log)}")
        try:
            txt = r.resolve("_dmarc.example.net", "TXT")[0].to_text()
            if "p=reject" in txt:
                return
        except Exception:
            pass
        time.sleep(0.1)
    die(f"unbound does not answer on {DNS_IP}:53 after 20 s: {tail(log)}")


# --- SMTP ----------------------------------------------------------------------------------

class Smtp:
    """A minimal SMTP client that records every reply, from a chosen loopback address."""

    def __init__(self, port, source="127.0.0.1"):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30,
                                          source_address=(source, 0))
        self.buf = b""

    def reply(self):
        while True:
            m = re.search(rb"(?m)^(\d{3}) [^\r\n]*\r\n", self.buf)
            if m:
                text = self.buf[:m.end()].decode(errors="replace").strip()
                self.buf = self.buf[m.end():]
                return int(m.group(1)), text
            data = self.s.recv(65536)
            if not data:
                return 0, "(connection closed)"
            self.buf += data

    def cmd(self, line):
        self.s.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self):
        self.s.close()


def transaction(port, mail_from, msg, source="127.0.0.1"):
    """One message; returns the first reply that is not 2xx/3xx (code, text), or the
    final 250."""
    c = Smtp(port, source)
    try:
        code, text = c.reply()
        if code != 220:
            return code, text
        for line, want in ((f"EHLO {HELO}", 250), (f"MAIL FROM:<{mail_from}>", 250),
                           (f"RCPT TO:<{RCPT}>", 250), ("DATA", 354)):
            code, text = c.cmd(line)
            if code != want:
                return code, text
        body = re.sub(rb"(?m)^\.", b"..", msg)
        c.s.sendall(body + b".\r\n")
        code, text = c.reply()
        c.cmd("QUIT")
        return code, text
    finally:
        c.close()


# --- the sink --------------------------------------------------------------------------------

class Sink:
    """smtp-sink counting (-c) and dumping every message (-D) into files of the run."""

    def __init__(self, work):
        self.out = os.path.join(work, "sink.out")
        # smtp-sink runs as nobody and writes its dump file there (-D appends every message).
        dump_dir = os.path.join(work, "sink")
        os.makedirs(dump_dir)
        shutil.chown(dump_dir, "nobody")
        self.dump = os.path.join(dump_dir, "all")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", "-D", self.dump, "-h", "sink.bench.example",
             f"127.0.0.1:{self.port}", "1024"],
            stdout=open(self.out, "wb"), stderr=subprocess.DEVNULL, env=ENV)
        wait_port(self.port, "smtp-sink")

    def count(self):
        try:
            with open(self.out, "rb") as f:
                f.seek(max(0, os.path.getsize(self.out) - 256))
                found = re.findall(rb"mesg=(\d+)", f.read())
            return int(found[-1]) if found else 0
        except OSError:
            return 0

    def wait_for(self, n, limit, what):
        deadline = time.time() + limit
        while self.count() < n:
            if time.time() > deadline:
                die(f"{what}: the sink has {self.count()} of {n} messages after {limit} s")
            time.sleep(0.02)


def dump_messages(path):
    """Yields each message of an smtp-sink -D dump as its header block (text)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return
    # smtp-sink starts each dumped message with its own X-Client-Addr line.
    for part in re.split(rb"(?m)^(?=X-Client-Addr: )", data):
        if not part.strip():
            continue
        head = part.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        yield head.decode(errors="replace")


def auth_results(head, authserv):
    """The Authentication-Results fields of `head` that `authserv` wrote, unfolded."""
    fields = re.findall(r"(?ims)^Authentication-Results:(.*?)(?=^\S)", head + "\nX:")
    out = []
    for f in fields:
        f = re.sub(r"\s+", " ", f).strip()
        if f.split(";", 1)[0].strip().lower() == authserv:
            out.append(f)
    return " ; ".join(out)


def verdicts(head, authserv):
    ar = auth_results(head, authserv)
    return {k: (re.search(rf"\b{k}=(\w+)", ar) or [None, None])[1]
            for k in ("spf", "dkim", "dmarc")}


# --- one side --------------------------------------------------------------------------------

def checks_prove(name, port, good, bad, sink, authserv):
    """The checks run and act: a good message passes all three, DMARC failure and the listed
    client are refused."""
    before = sink.count()
    code, text = transaction(port, SENDER, good)
    if code != 250:
        die(f"{name}: the signed message was not accepted: {text}")
    sink.wait_for(before + 1, 60, f"{name}: verification message")
    for _ in range(50):  # the counter can move before the dump is written
        heads = list(dump_messages(sink.dump))
        if len(heads) > before:
            break
        time.sleep(0.1)
    v = verdicts(heads[-1], authserv)
    if v != {"spf": "pass", "dkim": "pass", "dmarc": "pass"}:
        die(f"{name}: Authentication-Results of {authserv} are {v}, not all pass:\n{heads[-1]}")
    say(f"{name}: the signed message got spf=pass dkim=pass dmarc=pass")
    code, text = transaction(port, "bounce@other.example", bad)
    if not 500 <= code < 600 or "DMARC" not in text:
        die(f"{name}: the DMARC-failing message got {code} ({text}), not a 5xx naming DMARC")
    say(f"{name}: the DMARC-failing message was refused: {text.splitlines()[-1]}")
    code, text = transaction(port, SENDER, good, source=LISTED_IP)
    if not 500 <= code < 600 or DNSBL not in text:
        die(f"{name}: the listed client {LISTED_IP} got {code} ({text}), not a 5xx naming "
            f"{DNSBL}")
    say(f"{name}: the listed client {LISTED_IP} was refused: {text.splitlines()[-1]}")


def load(name, port, args, sink):
    """The same smtp-source load: one smtp-source per sender domain, the sessions and messages
    shared out among them. Returns (seconds until the sink has all, until all were accepted,
    DNS queries per message)."""
    q0 = dns_queries(args.dns_conf)
    target = sink.count() + args.messages
    limit = 120 + args.messages // 5
    k = len(args.domains)
    say(f"{name}: {args.messages} messages over {args.sessions} sessions from {k} sender "
        f"domain(s) to 127.0.0.1:{port}")
    t0 = time.time()
    sources = []
    for i, (domain, msg_file) in enumerate(zip(args.domains, args.msg_files)):
        sessions = args.sessions // k + (i < args.sessions % k)
        messages = args.messages // k + (i < args.messages % k)
        sources.append(subprocess.Popen(
            ["smtp-source", "-s", str(sessions), "-m", str(messages), "-F", msg_file,
             "-M", f"mail.{domain}", "-f", f"sender@{domain}", "-t", RCPT,
             f"127.0.0.1:{port}"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for src in sources:
        try:
            _, err = src.communicate(timeout=max(1, limit - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            for other in sources:
                other.kill()
            die(f"{name}: smtp-source did not finish within {limit} s")
        if src.returncode != 0:
            die(f"{name}: smtp-source failed ({src.returncode}): {err.decode()[-1000:]}")
    t_acc = time.time() - t0
    sink.wait_for(target, limit, name)
    elapsed = time.time() - t0
    return elapsed, t_acc, (dns_queries(args.dns_conf) - q0) / args.messages


def cpu_seconds(pids):
    """User + system CPU seconds of processes and their reaped children."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def postfix_side(args, work, sink, good, bad, started):
    pfi = os.path.join(ROOT, "tests", "peers", "postfix-instance.sh")
    d = os.path.join(work, "postfix")
    port = free_port()
    dkim_port, dmarc_port = free_port(), free_port()
    restrictions = (f"reject_rbl_client {DNSBL}, "
                    "check_policy_service unix:private/policyd-spf, permit")
    sets = {
        "myhostname": PF_ID,
        # Postfix's default; the instance script turns it off for tests without DNS.
        "smtpd_peername_lookup": "yes",
        "smtpd_recipient_restrictions": restrictions,
        "smtpd_milters": f"inet:127.0.0.1:{dkim_port}, inet:127.0.0.1:{dmarc_port}",
        "milter_default_action": "tempfail",
    }
    cmd = [pfi, "create", d, "--port", str(port), "--mode", "relay",
           "--relayhost", f"127.0.0.1:{sink.port}", "--hostname", PF_ID]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    run(cmd)
    conf = os.path.join(work, "milters")
    os.makedirs(conf)
    os.chmod(conf, 0o755)
    with open(os.path.join(conf, "policyd-spf.conf"), "w") as f:
        f.write("debugLevel = 0\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
                "PermError_reject = False\nTempError_Defer = False\n"
                # Debian's default skips loopback clients; here loopback is the Internet.
                "skip_addresses = 192.0.2.255/32\n"
                f"Header_Type = AR\nAuthserv_Id = {PF_ID}\n")
    with open(os.path.join(d, "etc", "master.cf"), "a") as f:
        f.write("policyd-spf unix - n n - 0 spawn\n"
                f"  user=nobody argv=/usr/bin/policyd-spf {conf}/policyd-spf.conf\n")
    run(["postconf", "-c", os.path.join(d, "etc"), "-e", "policyd-spf_time_limit = 3600"])
    # OpenDKIM and OpenDMARC ignore (sign, or skip) mail from 127.0.0.1 by default: name a
    # documentation address instead, so that the load's loopback client is checked.
    with open(os.path.join(conf, "internal"), "w") as f:
        f.write("192.0.2.255\n")
    with open(os.path.join(conf, "opendkim.conf"), "w") as f:
        f.write(f"Mode v\nSocket inet:{dkim_port}@127.0.0.1\nPidFile {conf}/opendkim.pid\n"
                f"Syslog no\nAuthservID {PF_ID}\nInternalHosts {conf}/internal\n"
                f"AlwaysAddARHeader yes\nNameservers {DNS_IP}\nUserID nobody\n")
    with open(os.path.join(conf, "opendmarc.conf"), "w") as f:
        f.write(f"Socket inet:{dmarc_port}@127.0.0.1\nPidFile {conf}/opendmarc.pid\n"
                f"Syslog false\nAuthservID {PF_ID}\nTrustedAuthservIDs {PF_ID}\n"
                f"IgnoreHosts {conf}/internal\nRejectFailures true\nSPFSelfValidate false\n"
                # As Debian's /etc/opendmarc.conf: organizational domains from the list.
                "PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat\n"
                "UserID nobody\n")
    with open(os.path.join(conf, "resolv.conf"), "w") as f:
        f.write(f"nameserver {DNS_IP}\noptions attempts:2 timeout:5\n")
    # /etc/hosts names 127.0.0.1 "localhost", which would spare smtpd its PTR lookup.
    with open(os.path.join(conf, "hosts"), "w") as f:
        f.write("# benchmark: names come from the DNS\n")
    for name in os.listdir(conf):
        os.chmod(os.path.join(conf, name), 0o644)
    os.chmod(conf, 0o777)  # the milters write their pid files as nobody
    # One mount namespace for the whole stack: resolv.conf names the benchmark's DNS server.
    script = (f"set -e; mount --bind {conf}/resolv.conf /etc/resolv.conf; "
              f"mount --bind {conf}/hosts /etc/hosts; "
              f"opendkim -x {conf}/opendkim.conf; opendmarc -c {conf}/opendmarc.conf; "
              f"{pfi} start {d} >/dev/null")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       env=ENV, capture_output=True, text=True, timeout=60)
    pidfiles = [os.path.join(conf, "opendkim.pid"), os.path.join(conf, "opendmarc.pid"),
                os.path.join(d, "queue", "pid", "master.pid")]
    started.append(pidfiles)
    if r.returncode != 0:
        die(f"the Postfix stack did not start: {r.stderr.strip()} {tail(d + '/maillog')}")
    pids = []
    for p in pidfiles:
        for _ in range(100):
            try:
                with open(p) as f:
                    pids.append(int(f.read().split()[0]))
                break
            except (OSError, ValueError, IndexError):
                time.sleep(0.1)
        else:
            die(f"no pid file {p}")
    wait_port(port, "Postfix")
    wait_port(dkim_port, "OpenDKIM")
    wait_port(dmarc_port, "OpenDMARC")
    with open(f"/proc/{pids[2]}/root/etc/resolv.conf") as f:
        if f"nameserver {DNS_IP}" not in f.read():
            die("the Postfix master does not see the benchmark's resolv.conf")
    checks_prove("postfix", port, good, bad, sink, PF_ID)
    cpu0 = tree_cpu(pids)
    elapsed, accepted, queries = load("postfix", port, args, sink)
    cpu = tree_cpu(pids) - cpu0
    stop_postfix(pidfiles, d)
    return elapsed, accepted, cpu, queries


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def tree_cpu(roots):
    """CPU seconds of roots, their live descendants and their reaped children."""
    pids = []
    for r in roots:
        pids += descendants(r)
    return cpu_seconds(pids)


def alive(pid):
    """Whether pid runs (a zombie waiting for its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_postfix(pidfiles, d):
    """Stops the Postfix instance and the milters of this run (a milter only if its pid file
    names a process started with this run's configuration)."""
    pfi = os.path.join(ROOT, "tests", "peers", "postfix-instance.sh")
    if os.path.exists(os.path.join(d, "etc", "main.cf")):
        subprocess.run([pfi, "stop", d], env=ENV, capture_output=True, timeout=60)
    for p in pidfiles[:2]:
        try:
            with open(p) as f:
                pid = int(f.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if os.path.dirname(p).encode() not in f.read():
                    continue
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue
        for _ in range(50):
            if not alive(pid):
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def ravelin_side(args, work, sink, good, bad, started):
    d = os.path.join(work, "ravelin")
    os.makedirs(d)
    os.chmod(d, 0o755)
    port = free_port()
    config = f"""hostname = "{RV_ID}"

[server]
user = "nobody"

[[listen]]
name = "mx"
address = "127.0.0.1:{port}"
kind = "inbound"
tls = "offer"

[inbound]
domains = ["example.org"]
backend = ["smtp://127.0.0.1:{sink.port}"]

[spool]
path = "{d}/spool"

[delivery]
retry_initial = "1s"

[dns]
nameservers = ["{DNS_IP}:53"]

# Loopback is the Internet here: scored by the lists like any client, no greet wait (the
# Postfix compared with has no postscreen).
[screen]
greet_wait = "0s"
exempt = []

[dnsbl]
sites = ["{DNSBL}*3"]

[checks]
enabled = true
enforce_dmarc = true

[log]
format = "json"
"""
    proc = start_gateway(args.ravelin, d, config, [("127.0.0.1", port)], "inbound-checks",
                         env=ENV)
    started.append(proc)
    checks_prove("ravelin", port, good, bad, sink, RV_ID)
    cpu0 = cpu_seconds([proc.pid])
    elapsed, accepted, queries = load("ravelin", port, args, sink)
    cpu = cpu_seconds([proc.pid]) - cpu0
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return elapsed, accepted, cpu, queries


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=10, help="KiB of body per message")
    ap.add_argument("--ttl", type=int, default=3600,
                    help="TTL of every DNS record (0: no cache anywhere keeps an answer)")
    ap.add_argument("--domains", type=int, default=1, dest="domains_count", metavar="K",
                    help="sender domains, one smtp-source each (at most --sessions)")
    ap.add_argument("--ravelin", default="")
    ap.add_argument("--only", choices=["postfix", "ravelin"])
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if not (1 <= args.messages <= 1_000_000 and 1 <= args.sessions <= 500
            and 1 <= args.size <= 10240 and 0 <= args.ttl <= 86400
            and 1 <= args.domains_count <= min(100, args.sessions, args.messages)):
        die("limits: 1 <= --messages <= 1000000, 1 <= --sessions <= 500, 1 <= --size <= 10240, "
            "0 <= --ttl <= 86400, 1 <= --domains <= 100, --sessions and --messages")
    if os.getuid() != 0:
        die("run as root (Postfix, unshare -m and smtp-sink need it)")
    for tool in ("unbound", "smtp-sink", "smtp-source", "postfix", "opendkim", "opendmarc",
                 "policyd-spf", "unshare", "openssl"):
        if not shutil.which(tool, path=PATH):
            die(f"{tool} is not installed: run scripts/install-test-deps.sh")
    if args.only != "postfix":
        if not args.ravelin:
            args.ravelin = os.path.join(os.environ.get("CARGO_TARGET_DIR",
                                                       os.path.join(ROOT, "target")),
                                        "release", "ravelin")
            if not os.access(args.ravelin, os.X_OK):
                say(f"building {args.ravelin} (cargo build --release -p ravelin)")
                subprocess.run(["cargo", "build", "--release", "-p", "ravelin"], cwd=ROOT,
                               check=True)
        if not os.access(args.ravelin, os.X_OK):
            die(f"no ravelin binary at {args.ravelin}")
    global DNS_IP
    DNS_IP = next((f"127.0.0.{n}" for n in range(153, 200) if port_53_free(f"127.0.0.{n}")), "")
    if not DNS_IP:
        die("port 53 of 127.0.0.153 to 127.0.0.199 is taken; the DNS server needs one")

    # A TERM (a test's time limit) stops everything started, as the end of the run does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="ravelin-bench.")
    os.chmod(work, 0o755)
    started = []
    try:
        return bench(args, work, started)
    finally:
        for s in reversed(started):
            if isinstance(s, subprocess.Popen):
                if s.poll() is None:
                    s.kill()
                    s.wait()
            else:
                stop_postfix(s, os.path.join(work, "postfix"))
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(args, work, started):
    pem, pub = make_key(work)
    signed_check = message(1, "check", "check")
    good_check = sign(signed_check, pem)
    # The DMARC failure: a valid signature over another body (dkim=fail), MAIL FROM a domain
    # whose SPF passes but is not aligned with From.
    bad = good_check.replace(b"the quick", b"THE QUICK", 1)
    args.domains = sender_domains(args.domains_count)
    args.msg_files = []
    for domain in args.domains:
        good = sign(message(args.size, "benchmark", "bench", domain), pem, domain)
        msg_file = os.path.join(work, f"message.{domain}.eml")
        with open(msg_file, "wb") as f:
            f.write(good.replace(b"\r\n", b"\n"))  # smtp-source -F appends CRLF to each line
        args.msg_files.append(msg_file)

    ulog = os.path.join(work, "unbound.log")
    args.dns_conf = unbound_conf(work, pub, args.ttl, args.domains)
    dns_proc = subprocess.Popen(["unbound", "-d", "-c", args.dns_conf],
                                stdout=open(ulog, "wb"), stderr=subprocess.STDOUT, env=ENV)
    started.append(dns_proc)
    wait_dns(dns_proc, ulog)
    sink = Sink(work)
    started.append(sink.proc)

    results = {}
    if args.only != "ravelin":
        results["postfix"] = postfix_side(args, work, sink, good_check, bad, started)
    if args.only != "postfix":
        results["ravelin"] = ravelin_side(args, work, sink, good_check, bad, started)
    time.sleep(0.5)
    sink.proc.send_signal(signal.SIGTERM)
    sink.proc.wait(timeout=10)

    # Every message the sink got must carry the three passes of the side that relayed it.
    per_side = {"postfix": 0, "ravelin": 0}
    problems = []
    for head in dump_messages(sink.dump):
        side = ("postfix" if auth_results(head, PF_ID) else
                "ravelin" if auth_results(head, RV_ID) else None)
        if side is None:
            problems.append("a message with no Authentication-Results of either side")
            continue
        v = verdicts(head, PF_ID if side == "postfix" else RV_ID)
        if v != {"spf": "pass", "dkim": "pass", "dmarc": "pass"}:
            problems.append(f"{side}: {v}")
            continue
        per_side[side] += 1

    status = 0
    machine = (f"{os.cpu_count()} x "
               + next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                       if line.startswith("model name")), "unknown CPU")
               + f", {os.uname().release}")
    rates = {}
    for side, (elapsed, accepted, cpu, queries) in results.items():
        rates[side] = args.messages / elapsed
        print(f"{side}: {args.messages} messages in {elapsed:.2f} s = {rates[side]:.0f} msg/s "
              f"(all accepted after {accepted:.2f} s); CPU {cpu * 1000 / args.messages:.2f} ms "
              f"per message; {queries:.2f} DNS queries per message; "
              f"the sink got {per_side[side]} messages with spf=pass dkim=pass "
              f"dmarc=pass of {args.messages + 1} expected")
        if per_side[side] != args.messages + 1:
            status = 1
    for p in problems[:5]:
        print(f"inbound-checks: error: {p}", file=sys.stderr)
    if problems:
        status = 1
    ratio = "n/a"
    if len(rates) == 2:
        ratio = f"{rates['ravelin'] / rates['postfix']:.2f}"
        print(f"ratio ravelin/postfix: {ratio}x")
    print(f"machine: {machine}")
    print()
    # A row of the table in docs/BENCHMARKS.md: rate, CPU ms and DNS queries per side.
    cells = {side: ("n/a", "n/a", "n/a") for side in ("postfix", "ravelin")}
    for side, (elapsed, _, cpu, queries) in results.items():
        cells[side] = (f"{args.messages / elapsed:.0f}", f"{cpu * 1000 / args.messages:.2f}",
                       f"{queries:.2f}")
    pf, rv = cells["postfix"], cells["ravelin"]
    print("| date | sender domains | record TTL | Postfix stack msg/s | Ravelin msg/s | ratio "
          "| CPU per message Postfix / Ravelin | DNS queries per message Postfix / Ravelin |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {time.strftime('%Y-%m-%d', time.gmtime())} | {len(args.domains)} | {args.ttl} s "
          f"| {pf[0]} | {rv[0]} "
          f"| {ratio} | {pf[1]} / {rv[1]} ms | {pf[2]} / {rv[2]} |")
    print(f"({args.messages} messages of {args.size} KiB over {args.sessions} sessions from "
          f"{len(args.domains)} sender domain(s))")
    return status


if __name__ == "__main__":
    sys.exit(main())
