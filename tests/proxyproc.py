"""The inspector as a process for end-to-end tests (see lab/inspector.py)."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tlsinspector.lab.inspector import InspectorProcess
from tlsinspector.lab.peers import free_port, wait_for_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
Proxy = InspectorProcess

__all__ = ["BIN", "ROOT", "Proxy", "free_port", "read_digest", "wait_port"]


def wait_port(port: int, proc: subprocess.Popen[bytes], output: Callable[[], str],
              timeout: float = 90.0) -> None:
    """Wait until the proxy ``proc`` listens on ``port`` (the timeout bounds a hang:
    several proxies importing mitmproxy at once on a loaded 2-core CI machine took
    over 30 s); on failure say what it printed."""
    try:
        wait_for_port("127.0.0.1", port, timeout, proc)
    except (RuntimeError, TimeoutError) as e:
        raise RuntimeError(f"{e}: {output()}") from e


def read_digest(s: ssl.SSLSocket, total: int) -> tuple[int, bytes]:
    """Read up to ``total`` bytes (or the end): how many, and their SHA-256."""
    h, n = hashlib.sha256(), 0
    while n < total:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    return n, h.digest()
