#!/usr/bin/env python3
"""idle-connections.py: memory per idle client connection of `ravelin serve`.

    bench/idle-connections.py [--connections 10000] [--ravelin PATH]

A gateway (release build; built when missing) in front of smtp-sink, its screen's greet wait
set to 120 s for every client but 127.0.0.1. The script opens N connections from N/200
distinct /24s of 127.0.0.0/8 (200 addresses each) and holds them, silent, in the greet wait,
as a botnet or a crowd of slow MTAs would. It reads the gateway's resident memory (VmRSS)
before the first connection and once all N are held (the gateway's open descriptors show
when they are), and sends one legitimate message from 127.0.0.1 while they are held: it must
be answered at once and reach the sink. Prints the memory per held connection,
(RSS held - RSS before) / N in KiB, and a markdown row for docs/BENCHMARKS.md.

Exit status 0 when every connection was held and the legitimate message was delivered.
Needs root (smtp-sink, the descriptor limit) and the peers of scripts/install-test-deps.sh.
Traffic goes only to 127.0.0.0/8.
"""

import argparse
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import PATH, ROOT, free_port, start_gateway, start_sink, stop_sink  # noqa: E402
NOFILE = 65536
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h



def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile():
    """The soft descriptor limit up to the hard one (at most NOFILE), for this script and the
    gateway: each holds one descriptor per connection."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = NOFILE if hard == resource.RLIM_INFINITY else min(hard, NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def legitimate_message(port):
    """One message from 127.0.0.1; returns (seconds to the greeting, final reply code)."""
    start = time.time()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rwb")

    def reply():
        while True:
            line = f.readline()
            if not line or line[3:4] == b" ":
                return int(line[:3]) if line else 0

    greeting_code = reply()
    greeted = time.time() - start
    for cmd in (b"EHLO client.example.net", b"MAIL FROM:<a@example.net>", b"RCPT TO:<user@example.org>", b"DATA"):
        f.write(cmd + b"\r\n")
        f.flush()
        code = reply()
    f.write(b"Subject: while 10k wait\r\n\r\nhello\r\n.\r\n")
    f.flush()
    code = reply()
    f.write(b"QUIT\r\n")
    f.flush()
    s.close()
    return greeted, greeting_code, code


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--ravelin", default="")
    args = ap.parse_args()
    n = args.connections
    if not 1 <= n <= 50000:
        sys.exit("idle-connections: --connections must be in 1..=50000")
    if os.geteuid() != 0:
        sys.exit("idle-connections: run as root")
    if not shutil.which("smtp-sink", path=PATH):
        sys.exit("idle-connections: smtp-sink is not installed: run scripts/install-test-deps.sh")
    raise_nofile()
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < n + 200:
        sys.exit(f"idle-connections: the descriptor limit is below {n + 200}; raise ulimit -Hn")
    ravelin = args.ravelin or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "ravelin")
    if not args.ravelin and not os.access(ravelin, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "ravelin"], cwd=ROOT, check=True)

    tmp = tempfile.mkdtemp(prefix="ravelin-idle-")
    os.chmod(tmp, 0o711)
    children, held = [], []
    env = dict(os.environ, PATH=PATH)
    try:
        smtp_port = free_port()
        sink, sink_port = start_sink(tmp, "idle-connections")
        children.append(sink)
        config = f"""hostname = "mx.idle.example"
[server]
user = "nobody"
[[listen]]
name = "mx"
address = "127.0.0.1:{smtp_port}"
kind = "inbound"
tls = "off"
max_connections = {n + 100}
[inbound]
domains = ["example.org"]
backend = ["smtp://127.0.0.1:{sink_port}"]
backend_tls = "none"
[screen]
greet_wait = "60s"
exempt = ["127.0.0.1/32"]
[dnsbl]
no_ptr = 0
ptr_not_confirmed = 0
[spool]
path = "{tmp}/spool"
[dns]
nameservers = ["127.0.0.1:9"]
[checks]
enabled = false
"""
        gw = start_gateway(ravelin, tmp, config, [("127.0.0.1", smtp_port)],
                           "idle-connections", env=env, preexec_fn=raise_nofile)
        children.append(gw)
        # Warm up: one message through, so the buffers of a first session exist already.
        legitimate_message(smtp_port)
        time.sleep(1)
        base_fds, base_rss = fds(gw.pid), status(gw.pid, "VmRSS")
        start = time.time()
        for i in range(n):
            s = socket.socket()
            # The port is chosen at connect time (IP_BIND_ADDRESS_NO_PORT): a bind to port 0
            # searches the port space, which grows slow with thousands of bound sockets.
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.1.{i // 200}.{i % 200 + 1}", 0))
            s.connect(("127.0.0.1", smtp_port))
            held.append(s)
        deadline = time.time() + 120
        while fds(gw.pid) < base_fds + n and time.time() < deadline:
            time.sleep(0.2)
        opened = time.time() - start
        held_fds = fds(gw.pid) - base_fds
        time.sleep(2)
        rss = status(gw.pid, "VmRSS")
        greeted, greeting_code, code = legitimate_message(smtp_port)
        silent = sum(1 for s in held[:: max(1, n // 100)] if not readable(s))
        per_conn = (rss - base_rss) / n
        gw.send_signal(signal.SIGTERM)
        for s in held:
            s.close()
        gw.wait(timeout=60)
        received = stop_sink(sink, tmp)
    finally:
        for s in held:
            s.close()
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    print(f"connections held: {held_fds} of {n} (opened in {opened:.1f} s); "
          f"{silent} of {len(held[:: max(1, n // 100)])} sampled still waiting for the greeting")
    print(f"gateway VmRSS: {base_rss} KiB before, {rss} KiB with {n} held; "
          f"{per_conn:.1f} KiB per connection")
    print(f"legitimate client from 127.0.0.1 while they were held: greeting {greeting_code} "
          f"after {greeted * 1000:.0f} ms, message answered {code}; sink received {received} (2 expected)")
    print()
    print(f"| {time.strftime('%Y-%m-%d')} | {n} | {base_rss / 1024:.1f} | {rss / 1024:.1f} | "
          f"{per_conn:.1f} | {greeted * 1000:.0f} ms, {code} |")
    ok = held_fds >= n and greeting_code == 220 and code == 250 and received >= 2
    if ok:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"idle-connections: FAILED; log in {tmp}/ravelin.log", file=sys.stderr)
    return 0 if ok else 1


def readable(s):
    """Whether the gateway has sent anything on `s` (it must not have: greet wait)."""
    s.setblocking(False)
    try:
        return bool(s.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


if __name__ == "__main__":
    sys.exit(main())
