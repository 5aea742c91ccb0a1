"""loopback.py: what the Python benchmarks in bench/ share: the repository root, a PATH with
the sbin directories (smtp-sink), free loopback ports and waiting for a listener."""

import os
import socket
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def free_port():
    """A TCP port of 127.0.0.1 free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
