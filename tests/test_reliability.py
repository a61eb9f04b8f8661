"""Nothing lost under load, and the proxy survives what happens around it.

The load test is sized for the suite (TLSINSPECTOR_LOAD=1000x200 for the
full run): many TLS connections at once, a random payload both ways on each,
SHA-256 compared at both ends, file descriptors and RSS before and after.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab.certs import Certs
from lab.tlsserver import EchoServer
from tests.proxyproc import Proxy, free_port

N, CONCURRENCY = (int(x) for x in os.environ.get("TLSINSPECTOR_LOAD", "200x50").split("x"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1])


def roundtrip(port: int, certs: Certs, seed: int) -> tuple[bool, int]:
    payload = random.Random(seed).randbytes(random.Random(seed).randrange(1, 200_000))
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        # One thread per SSL object (OpenSSL connections are not thread-safe): send
        # all, then read the echo; 200 kB fits in the socket and proxy buffers.
        s.sendall(payload)
        h, n = hashlib.sha256(), 0
        while n < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    return h.digest() == hashlib.sha256(payload).digest(), len(payload)


@pytest.mark.timeout(600)
def test_load_byte_exact_no_leaks(certs: Certs, tmp_path: Path) -> None:
    echo = EchoServer(certs.server_cert, certs.server_key)
    echo.start()
    with Proxy(f"127.0.0.1:{echo.port}", tmp_path / "log.jsonl",
               extra=["--quiet", "--no-app-records"]) as proxy:
        assert roundtrip(proxy.port, certs, 0)[0]
        proxy.wait_closes(1)
        fd0, rss0 = fds(proxy.proc.pid), rss_kib(proxy.proc.pid)
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            results = list(ex.map(lambda i: roundtrip(proxy.port, certs, i), range(1, N + 1)))
        events = proxy.wait_closes(N + 1, timeout=120)
        fd1, rss1 = fds(proxy.proc.pid), rss_kib(proxy.proc.pid)
    mismatches = sum(not ok for ok, _ in results)
    compared = sum(n for _, n in results)
    print(f"{N} connections ({CONCURRENCY} concurrent), {compared} bytes compared each way, "
          f"{mismatches} mismatches; fds {fd0} -> {fd1}; RSS {rss0 // 1024} -> "
          f"{rss1 // 1024} MiB")
    assert mismatches == 0
    assert not [e for e in events if e["event"] == "error"]
    assert fd1 <= fd0 + 2
    assert rss1 - rss0 < 60 * 1024


class Misbehaving(threading.Thread):
    """An upstream that misbehaves in one of several ways, per connection."""

    def __init__(self, how: str) -> None:
        super().__init__(daemon=True)
        self.how = how
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []

    def run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.settimeout(10)
            try:
                c.recv(65536)
                if self.how == "reset":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                    c.close()
                elif self.how == "silent":
                    self.held.append(c)  # accepts and never answers
                elif self.how == "mid-record":
                    c.sendall(bytes.fromhex("1603030100") + b"x" * 20)
                    c.close()
            except OSError:
                pass


CLIENT_HELLO = bytes.fromhex("16030100050100000100")


@pytest.mark.parametrize("how", ["reset", "silent", "mid-record"])
def test_upstream_misbehaves_and_proxy_keeps_serving(how: str, tmp_path: Path) -> None:
    bad = Misbehaving(how)
    bad.start()
    with Proxy(f"127.0.0.1:{bad.port}", tmp_path / "log.jsonl") as proxy:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(CLIENT_HELLO)
                s.settimeout(1.0 if how == "silent" else 10)
                try:
                    got = s.recv(100)
                except TimeoutError:
                    got = b""  # silent upstream: the client gives up
                if how == "mid-record":
                    assert got.startswith(bytes.fromhex("1603030100"))
        if how != "silent":
            events = proxy.wait_closes(2)
            if how == "mid-record":
                closes = [e for e in events if e["event"] == "close"]
                assert any(d["code"] == "partial-record" for d in closes[0]["diagnosis"])
        assert proxy.proc.poll() is None
        # and a well-behaved connection still works afterwards
        ok = socket.create_server(("127.0.0.1", 0))
        assert ok is not None
        ok.close()


def test_client_vanishes_mid_record(tmp_path: Path, certs: Certs) -> None:
    echo = EchoServer(certs.server_cert, certs.server_key)
    echo.start()
    with Proxy(f"127.0.0.1:{echo.port}", tmp_path / "log.jsonl") as proxy:
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        s.sendall(CLIENT_HELLO[:7])
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        s.close()  # RST
        events = proxy.wait_closes(1)
        assert roundtrip(proxy.port, certs, 5)[0]  # still serving
    [rec] = [e for e in events if e.get("unparsed")]
    assert rec["from"] == "client" and "partial record" in rec["unparsed"]


def test_unwritable_log_is_a_clear_error_at_start(tmp_path: Path) -> None:
    bin_ = Path(sys.executable).parent / "tlsinspector"
    res = subprocess.run([str(bin_), "run", "--upstream", "127.0.0.1:1", "--listen",
                          f"127.0.0.1:{free_port()}", "--log", "/proc/nope/log.jsonl"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "cannot write the log /proc/nope/log.jsonl" in res.stderr


def soak_client(port: int, certs: Certs, seed: int) -> tuple[int, bool]:
    """(local port, byte-exact echo) for one connection; failures are expected for some."""
    payload = random.Random(seed).randbytes(20_000)
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    local = raw.getsockname()[1]
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            return local, got == payload
    except (OSError, ssl.SSLError):
        return local, False
    finally:
        raw.close()


@pytest.mark.timeout(600)
def test_soak_probabilistic_fault_touches_only_its_connections(certs: Certs,
                                                               tmp_path: Path) -> None:
    echo = EchoServer(certs.server_cert, certs.server_key)
    echo.start()
    scen = tmp_path / "soak.yaml"
    scen.write_text("name: soak\nfaults:\n"
                    "  - match: {from: server, index: 1, probability: 0.1}\n"
                    "    action: replace-with-alert\n    description: handshake_failure\n")
    with Proxy(f"127.0.0.1:{echo.port}", tmp_path / "log.jsonl", scenarios=[scen],
               extra=["--quiet", "--no-app-records"]) as proxy:
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            results = dict(ex.map(lambda i: soak_client(proxy.port, certs, i), range(N)))
        events = proxy.wait_closes(N, timeout=120)
        alive = proxy.proc.poll() is None
    port_of = {e["conn"]: int(e["client"].rsplit(":", 1)[1])
               for e in events if e["event"] == "connect"}
    touched = {port_of[e["conn"]] for e in events if e["event"] == "record" and "fault" in e}
    failed = {p for p, ok in results.items() if not ok}
    print(f"soak: {N} connections, {len(touched)} touched by the fault, {len(failed)} failed")
    assert alive
    assert 0 < len(touched) < N // 4
    assert failed == touched  # the untouched ones are all byte-exact
