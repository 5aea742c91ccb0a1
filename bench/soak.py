#!/usr/bin/env python3
"""soak.py: mixed good and hostile SMTP traffic against `ravelin serve` for a long time.

    bench/soak.py [--minutes 30] [--ravelin PATH] [--json FILE]

A gateway (release build; built when missing) relays to smtp-sink on loopback. For the whole
run, in parallel:
  - good: smtp-source from 127.0.0.1, 4 sessions x 100 messages of 2 KiB, back to back;
  - relay probes, VRFY / EXPN and unknown commands from 127.0.0.2-.99 (banned after a few);
  - pregreet talkers (EHLO before the banner) from 127.0.0.100-.149;
  - bare-LF and smuggling attempts (`\\n.\\n` inside DATA) from 127.0.0.150-.199;
  - oversized messages (2 MiB against message_size = 1 MiB) and garbage bytes;
  - slowloris: 10 connections sending one byte every 5 s, renewed as they are dropped;
  - connection floods: 100 connections opened and closed at once, every 30 s.
Loopback is not exempt from bans in this run, so the hostile addresses get banned and then
refused at connect, as on the internet. Every 10 s the gateway's RSS, peak RSS, open file
descriptors and threads are sampled (/proc). At the end the metrics endpoint gives the
events by kind (delivered, refused, banned, ...), smtp-sink's counter the messages
received, and the script prints a summary (and writes it as JSON with --json).

Exit status: 0 when every message smtp-source got a 250 for reached the sink and the
gateway is still alive at the end, 1 otherwise. Needs root (smtp-sink drops privileges)
and the peers of scripts/install-test-deps.sh. Traffic goes only to 127.0.0.0/8.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loopback import PATH, ROOT, free_port, start_gateway, start_sink, stop_sink  # noqa: E402



def proc_sample(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                fields[key] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


class Client:
    """A raw SMTP client from a chosen loopback source address."""

    def __init__(self, port, source="127.0.0.1", timeout=10):
        self.s = socket.socket()
        self.s.settimeout(timeout)
        self.s.bind((source, 0))
        self.s.connect(("127.0.0.1", port))
        self.buf = b""

    def reply(self):
        while True:
            m = re.search(rb"(?m)^(\d{3}) .*\r\n", self.buf)
            if m:
                code = int(m.group(1))
                self.buf = self.buf[m.end():]
                return code
            data = self.s.recv(65536)
            if not data:
                return 0
            self.buf += data

    def cmd(self, line):
        self.s.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def hostile_session(port, kind, source):
    """One hostile session; every error (a refused or closed connection) is expected."""
    try:
        c = Client(port, source)
    except OSError:
        return
    try:
        if kind == "pregreet":
            c.s.sendall(b"EHLO early.example\r\n")
            c.reply()
            return
        if c.reply() != 220:
            return
        c.cmd("EHLO hostile.example")
        if kind == "relay":
            c.cmd("VRFY root")
            c.cmd("EXPN staff")
            c.cmd("XYZZY")
            c.cmd("MAIL FROM:<spam@example.net>")
            for n in range(3):
                c.cmd(f"RCPT TO:<victim{n}@elsewhere.example>")
            c.cmd("RCPT TO:<user%elsewhere.example@example.org>")
        elif kind == "smuggle":
            c.cmd("MAIL FROM:<a@example.net>")
            c.cmd("RCPT TO:<user@example.org>")
            if c.cmd("DATA") == 354:
                c.s.sendall(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<b@example.net>\r\n.\r\n")
                c.reply()
        elif kind == "bare_lf":
            c.s.sendall(b"MAIL FROM:<a@example.net>\n")
            c.reply()
        elif kind == "oversized":
            c.cmd("MAIL FROM:<a@example.net>")
            c.cmd("RCPT TO:<user@example.org>")
            if c.cmd("DATA") == 354:
                line = b"x" * 998 + b"\r\n"
                for _ in range(2 * 1024 * 1024 // len(line)):
                    c.s.sendall(line)
                c.s.sendall(b".\r\n")
                c.reply()
        elif kind == "garbage":
            c.s.sendall(bytes(random.getrandbits(8) for _ in range(2048)))
            c.reply()
        c.cmd("QUIT")
    except OSError:
        pass
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--ravelin", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if not 0 < args.minutes <= 24 * 60:
        sys.exit("soak: --minutes must be in (0, 1440]")
    if os.geteuid() != 0:
        sys.exit("soak: run as root (smtp-sink needs it)")
    for tool in ("smtp-sink", "smtp-source"):
        if not shutil.which(tool, path=PATH):
            sys.exit(f"soak: {tool} is not installed: run scripts/install-test-deps.sh")
    ravelin = args.ravelin or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "ravelin")
    if not args.ravelin and not os.access(ravelin, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "ravelin"], cwd=ROOT, check=True)

    tmp = tempfile.mkdtemp(prefix="ravelin-soak-")
    os.chmod(tmp, 0o711)  # the gateway runs as nobody and creates its spool inside
    children = []
    try:
        return run(args, ravelin, tmp, children)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


def run(args, ravelin, tmp, children):
    env = dict(os.environ, PATH=PATH)
    smtp_port, metrics_port = free_port(), free_port()
    sink, sink_port = start_sink(tmp, "soak")
    children.append(sink)
    config = f"""hostname = "mx.soak.example"
[server]
user = "nobody"
[[listen]]
name = "mx"
address = "127.0.0.1:{smtp_port}"
kind = "inbound"
tls = "off"
max_connections = 200
[inbound]
domains = ["example.org"]
backend = ["smtp://127.0.0.1:{sink_port}"]
backend_tls = "none"
[limits]
message_size = 1048576
[spool]
path = "{tmp}/spool"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[bans]
exempt = []
# Nothing leaves loopback: no resolver, so no sender authentication lookups.
[dns]
nameservers = ["127.0.0.1:9"]
[checks]
enabled = false
"""
    gw = start_gateway(ravelin, tmp, config,
                       [("127.0.0.1", smtp_port), ("127.0.0.1", metrics_port)], "soak", env=env)
    children.append(gw)
    print(f"soak: {args.minutes} min; gateway pid {gw.pid}, spool and log in {tmp}", file=sys.stderr)

    end = time.time() + args.minutes * 60
    stop = threading.Event()
    acked = [0]
    samples = []

    def good():
        while not stop.is_set():
            out = subprocess.run(
                ["smtp-source", "-v", "-s", "4", "-m", "100", "-l", "2048", "-M", "soak.example",
                 "-f", "good@example.net", "-t", "user@example.org", f"127.0.0.1:{smtp_port}"],
                capture_output=True, env=env, timeout=600)
            acked[0] += len(re.findall(rb"250 2\.0\.0 Ok: queued as", out.stderr))

    def hostile():
        kinds = ["relay", "pregreet", "smuggle", "bare_lf", "oversized", "garbage"]
        ranges = {"relay": (2, 99), "pregreet": (100, 149), "smuggle": (150, 199),
                  "bare_lf": (150, 199), "oversized": (200, 220), "garbage": (221, 240)}
        while not stop.is_set():
            kind = random.choice(kinds)
            lo, hi = ranges[kind]
            hostile_session(smtp_port, kind, f"127.0.0.{random.randint(lo, hi)}")
            time.sleep(0.05)

    def slowloris():
        held = []
        while not stop.is_set():
            while len(held) < 10:
                try:
                    c = Client(smtp_port, f"127.0.0.{random.randint(241, 250)}", timeout=1)
                    held.append(c)
                except OSError:
                    break
            for c in list(held):
                try:
                    c.s.sendall(b"N")
                except OSError:
                    c.close()
                    held.remove(c)
            stop.wait(5)
        for c in held:
            c.close()

    def flood():
        while not stop.wait(30):
            conns = []
            for _ in range(100):
                try:
                    conns.append(socket.create_connection(("127.0.0.1", smtp_port), timeout=2))
                except OSError:
                    pass
            for s in conns:
                s.close()

    threads = [threading.Thread(target=t, daemon=True)
               for t in (good, hostile, hostile, slowloris, flood)]
    for t in threads:
        t.start()
    start = time.time()
    while time.time() < end and gw.poll() is None:
        s = proc_sample(gw.pid)
        s["t"] = round(time.time() - start)
        samples.append(s)
        if args.json:  # as it goes, so an interrupted run keeps its samples
            with open(args.json, "w") as f:
                json.dump({"samples": samples}, f)
        time.sleep(min(10, max(0, end - time.time())))
    stop.set()
    for t in threads:
        t.join(timeout=660)
    alive = gw.poll() is None
    # Let the queue drain, then read the metrics.
    time.sleep(5)
    metrics = {}
    if alive:
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        for line in page.splitlines():
            m = re.match(r'ravelin_events_total\{event="([^"]*)",decision="([^"]*)",kind="([^"]*)"\} (\S+)', line)
            if m:
                key = "/".join(x for x in m.groups()[:3] if x)
                metrics[key] = int(float(m.group(4)))
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(timeout=180)
        except subprocess.TimeoutExpired:
            print("soak: the gateway did not stop within 180 s of SIGTERM", file=sys.stderr)
            alive = False
    received = stop_sink(sink, tmp)

    rss = [s["VmRSS"] for s in samples]
    fds = [s["fds"] for s in samples]
    summary = {
        "minutes": args.minutes,
        "good_acknowledged": acked[0],
        "sink_received": received,
        "delivered_events": metrics.get("delivered", 0),
        "events": dict(sorted(metrics.items())),
        "rss_kib": {"start": rss[0], "peak": max(rss), "end": rss[-1],
                    "peak_hwm": samples[-1]["VmHWM"]} if rss else {},
        "fds": {"start": fds[0], "max": max(fds), "end": fds[-1]} if fds else {},
        "threads_end": samples[-1]["Threads"] if samples else 0,
        "alive_at_end": alive,
        "samples": samples,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    shown = {k: v for k, v in summary.items() if k != "samples"}
    print(json.dumps(shown, indent=1))
    ok = alive and received >= acked[0]
    if not ok:
        print(f"soak: FAILED (alive={alive}, acknowledged={acked[0]}, received={received}); "
              f"log: {tmp}/ravelin.log", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
