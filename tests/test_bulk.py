"""A 1 GB TLS transfer through the inspector arrives intact and memory stays flat."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from tests.figures import figure
from tests.proxyproc import Proxy, read_digest
from tlsinspector.lab.certs import make_certs
from tlsinspector.lab.tlsserver import ThreadedTLSServer

TOTAL = int(os.environ.get("TLSINSPECTOR_BULK_BYTES", str(1 << 30)))
BLOCK = hashlib.sha256(b"block").digest() * (1 << 15)  # 1 MiB, deterministic


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class BulkServer(ThreadedTLSServer):
    """Sends as many bytes as the client asks for, from a deterministic block."""

    def handle(self, tls: ssl.SSLSocket) -> None:
        want = int(tls.recv(64).decode())
        sent = 0
        while sent < want:
            n = min(len(BLOCK), want - sent)
            tls.sendall(BLOCK[:n])
            sent += n
        tls.unwrap()


def fetch(port: int, cafile: Path, size: int) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(str(size).encode())
        return read_digest(tls, size)


def expected_digest(size: int) -> bytes:
    h, left = hashlib.sha256(), size
    while left:
        n = min(len(BLOCK), left)
        h.update(BLOCK[:n])
        left -= n
    return h.digest()


@pytest.mark.timeout(600)
def test_1gb_transfer_intact_and_bounded_memory(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    cert = certs.ca_cert
    server = BulkServer(certs.server_cert, certs.server_key)
    server.start()
    with Proxy(f"127.0.0.1:{server.port}", tmp_path / "log.jsonl") as proxy:
        assert fetch(proxy.port, cert, 1 << 20)[0] == 1 << 20  # warm up every code path
        proxy.wait_closes(1)
        base = rss_kib(proxy.proc.pid)
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], rss_kib(proxy.proc.pid))

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        try:
            n, digest = fetch(proxy.port, cert, TOTAL)
        finally:
            done.set()
            t.join(timeout=5)
        events = proxy.wait_closes(2, timeout=60)
    assert n == TOTAL
    assert digest == expected_digest(TOTAL)
    growth_mib = (peak[0] - base) / 1024
    figure(f"{TOTAL >> 20} MiB download through the inspector, every record logged",
           f"SHA-256 equal: {digest == expected_digest(TOTAL)}; RSS base {base / 1024:.1f} MiB, "
           f"peak {peak[0] / 1024:.1f} MiB, growth {growth_mib:.1f} MiB")
    assert growth_mib < 20
    close = [e for e in events if e["event"] == "close"][-1]
    assert close["bytes"]["server"] > TOTAL
