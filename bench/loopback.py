"""loopback.py: what the Python benchmarks in bench/ share: the repository root, a PATH with
the sbin directories (smtp-sink), free loopback ports, waiting for a listener, smtp-sink and
`ravelin serve` started on a configuration."""

import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def free_port():
    """A TCP port of 127.0.0.1 free at the time of asking, below the kernel's ephemeral range
    (32768 and up by default): a port the kernel hands out could later be the local port of an
    outgoing connection (a relay's to the sink) and make the listener's bind fail."""
    import random

    for _ in range(200):
        port = random.randint(10000, 32767)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    sys.exit("no free port of 127.0.0.1 between 10000 and 32767")


def wait_port(port, who, timeout=30):
    """Waits until 127.0.0.1:port accepts connections; exits naming `who` if it never does."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{who}: nothing listens on 127.0.0.1:{port} after {timeout}s")


def start_gateway(ravelin, directory, config, listeners, who, **popen):
    """Writes CONFIG (TOML text) to DIRECTORY/ravelin.toml and runs `ravelin serve` on it, its
    log (stderr) in DIRECTORY/ravelin.log; returns the process once every (host, port) of
    LISTENERS accepts connections. Exits naming WHO, with the end of the log, when the gateway
    stops or does not listen within 30 s. POPEN goes to subprocess.Popen (e.g. preexec_fn)."""
    import subprocess

    path = os.path.join(directory, "ravelin.toml")
    with open(path, "w") as f:
        f.write(config)
    log = os.path.join(directory, "ravelin.log")
    popen.setdefault("env", dict(os.environ, PATH=PATH))
    proc = subprocess.Popen([ravelin, "serve", "--config", path], stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"), **popen)

    def log_end():
        with open(log, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")

    deadline = time.time() + 30
    for host, port in listeners:
        while True:
            if proc.poll() is not None:
                sys.exit(f"{who}: ravelin serve exited ({proc.returncode}): {log_end()}")
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    proc.kill()
                    sys.exit(f"{who}: ravelin serve does not listen on {host}:{port} after "
                             f"30 s: {log_end()}")
                time.sleep(0.05)
    return proc


def start_sink(tmp, who):
    """smtp-sink on a free port of 127.0.0.1, counting (-c) into TMP/sink.out — a file, never a
    pipe nobody reads, which would stall the sink and every delivery to it. Returns the
    process and its port."""
    import subprocess

    port = free_port()
    out = open(os.path.join(tmp, "sink.out"), "wb")
    sink = subprocess.Popen(
        ["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{port}", "256"],
        stdout=out, stderr=subprocess.DEVNULL, env=dict(os.environ, PATH=PATH))
    wait_port(port, who)
    return sink, port


def stop_sink(sink, tmp):
    """Stops a sink from start_sink and returns how many messages it received."""
    import re
    import signal

    sink.send_signal(signal.SIGTERM)
    sink.wait(timeout=10)
    with open(os.path.join(tmp, "sink.out"), "rb") as f:
        counts = re.findall(r"(\d+)", f.read().decode(errors="replace"))
    return int(counts[-1]) if counts else 0
