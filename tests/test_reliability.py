"""Nothing lost under load, and the proxy survives what happens around it.

The load test is sized for the suite (TLSINSPECTOR_LOAD=1000x200 for the
full run): many TLS connections at once, a random payload both ways on each,
SHA-256 compared at both ends, file descriptors and RSS before and after.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.figures import figure
from tests.proxyproc import Proxy, free_port, read_digest
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.tlsserver import EchoServer, HelloServer, ThreadedTLSServer

N, CONCURRENCY = (int(x) for x in os.environ.get("TLSINSPECTOR_LOAD", "200x50").split("x"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fds_down_to(pid: int, limit: int, timeout: float = 30.0) -> int:
    """The proxy's descriptor count once it is at most ``limit``, or after ``timeout``
    (then the count a leak left). A close event is logged before its sockets are
    closed (log first, then act): right after the last close event the last
    connections' sockets may still be open for a loop turn or two."""
    deadline = time.monotonic() + timeout
    while (n := fds(pid)) > limit and time.monotonic() < deadline:
        time.sleep(0.02)  # polling /proc for the sockets to close
    return n


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
        deadline = time.monotonic() + 30
        while proxy.in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)  # polling: the first connection's sockets close after its event
        fd0, rss0 = fds(proxy.proc.pid), rss_kib(proxy.proc.pid)
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            results = list(ex.map(lambda i: roundtrip(proxy.port, certs, i), range(1, N + 1)))
        events = proxy.wait_closes(N + 1, timeout=120)
        fd1, rss1 = fds_down_to(proxy.proc.pid, fd0 + 2), rss_kib(proxy.proc.pid)
    mismatches = sum(not ok for ok, _ in results)
    compared = sum(n for _, n in results)
    errors = [e for e in events if e["event"] == "error"]
    figure("load: TLS connections through the inspector, no fault",
           f"{N} completed of {N}, {CONCURRENCY} concurrent")
    figure("load: bytes compared (random payload, echoed, SHA-256 at the client)",
           f"{compared:,} each way")
    figure("load: mismatches / errors logged", f"{mismatches} / {len(errors)}")
    figure("load: proxy file descriptors before / after", f"{fd0} / {fd1}")
    figure("load: proxy RSS before / after", f"{rss0 // 1024} MiB / {rss1 // 1024} MiB")
    assert mismatches == 0
    assert not errors
    assert fd1 <= fd0 + 2
    assert rss1 - rss0 < 60 * 1024


class Misbehaving(threading.Thread):
    """An upstream that misbehaves in one of several ways for its first ``bad``
    connections, then answers like a server that refuses the hello: one whole alert
    record (a well-behaved peer, so the proxy is shown to still relay)."""

    def __init__(self, how: str, bad: int = 2) -> None:
        super().__init__(daemon=True)
        self.how = how
        self.bad = bad
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []

    def release(self) -> None:
        """Close the connections a silent upstream held open."""
        for c in self.held:
            c.close()

    def run(self) -> None:
        served = 0
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            served += 1
            how = self.how if served <= self.bad else "alert"
            c.settimeout(10)
            try:
                c.recv(65536)
                if how == "reset":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                    c.close()
                elif how == "silent":
                    self.held.append(c)  # accepts and never answers
                elif how == "mid-record":
                    c.sendall(bytes.fromhex("1603030100") + b"x" * 20)
                    c.close()
                else:
                    c.sendall(FATAL_HANDSHAKE_FAILURE)
                    c.close()
            except OSError:
                pass


CLIENT_HELLO = bytes.fromhex("16030100050100000100")
FATAL_HANDSHAKE_FAILURE = bytes.fromhex("15030300020228")  # RFC 8446 6: alert 40, fatal


def recv_all(s: socket.socket) -> bytes:
    got = b""
    while chunk := s.recv(100):
        got += chunk
    return got


@pytest.mark.parametrize("how", ["reset", "silent", "mid-record"])
def test_upstream_misbehaves_and_proxy_keeps_serving(how: str, tmp_path: Path) -> None:
    bad = Misbehaving(how)
    bad.start()
    with Proxy(f"127.0.0.1:{bad.port}", tmp_path / "log.jsonl") as proxy:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(CLIENT_HELLO)
                if how == "silent":
                    # The client gives up first: its FIN goes upstream, which stays silent.
                    s.shutdown(socket.SHUT_WR)
                    s.settimeout(1.0)
                    with pytest.raises(TimeoutError):
                        s.recv(100)
                    continue
                got = recv_all(s)
                if how == "mid-record":
                    assert got == bytes.fromhex("1603030100") + b"x" * 20
                else:
                    assert got == b""  # reset: the proxy passes the end on, nothing made up
        bad.release()  # the silent upstream finally hangs up
        events = proxy.wait_closes(2)
        closes = [e for e in events if e["event"] == "close"]
        assert len(closes) == 2
        for close in closes:
            codes = [d["code"] for d in close["diagnosis"]]
            if how == "mid-record":
                assert "partial-record" in codes
                assert close["by"] == "server"
                assert close["records"] == {"client": 1, "server": 0}
            elif how == "reset":
                # The upstream's RST ends the connection from the server's side (the
                # proxy logs no separate error event for a reset peer).
                assert close["by"] == "server", close
                assert close["records"] == {"client": 1, "server": 0}
                assert close["bytes"] == {"client": len(CLIENT_HELLO), "server": 0}
            else:
                assert close["by"] == "client", close
                assert close["records"] == {"client": 1, "server": 0}
                assert close["bytes"]["server"] == 0
        assert proxy.proc.poll() is None
        # and a well-behaved connection still works afterwards, byte for byte
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(CLIENT_HELLO)
            assert recv_all(s) == FATAL_HANDSHAKE_FAILURE
        events = proxy.wait_closes(3)
        [rec] = [e for e in events if e["event"] == "record" and e["from"] == "server"
                 and e.get("content_type") == "alert"]
        assert rec["alert"]["description"] == "handshake_failure"


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
    figure("soak: fault `probability: 0.1` (fatal alert instead of the ServerHello)",
           f"{N} connections, {len(touched)} touched, {len(failed)} failed, "
           f"{len(failed ^ touched)} differ from the touched set, "
           f"{N - len(failed)} byte-exact, proxy up: {alive}")
    assert alive
    assert 0 < len(touched) < N // 4
    assert failed == touched  # the untouched ones are all byte-exact


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, for a real ENOSPC (needs root, as CI and the netns tests do)."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full test mounts a tmpfs and needs root (run the suite as "
                    "root, as CI does)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tlsinspector-test", str(mnt)],
                   check=True, timeout=30)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True, timeout=30)


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system is full; the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                n += f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return n


def hello(port: int, certs: Certs) -> bytes:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return s.recv(4096)


def wait_output(proxy: Proxy, what: str, count: int = 1, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while (out := proxy.output()).count(what) < count:
        assert time.monotonic() < deadline, f"{count} x {what!r} not in the output: {out[-2000:]}"
        time.sleep(0.02)  # polling the proxy's terminal output for the line
    return out


def test_disk_full_while_running_warns_counts_and_marks_the_gap(tiny_fs: Path, tmp_path: Path,
                                                                certs: Certs) -> None:
    server = HelloServer(certs.server_cert, certs.server_key)
    server.start()
    log = tiny_fs / "log.jsonl"
    with Proxy(f"127.0.0.1:{server.port}", log, output=tmp_path / "out.txt") as proxy:
        assert hello(proxy.port, certs).startswith(b"HTTP/1.1 200")
        first = proxy.wait_closes(1)
        fill(tiny_fs / "filler")
        # The disk is full: the proxy keeps serving, and says so.
        for _ in range(3):
            assert hello(proxy.port, certs).startswith(b"HTTP/1.1 200")
        out = wait_output(proxy, "close by", 4)
        assert "WARNING cannot write the JSON Lines log" in out
        assert "No space left on device" in out
        full = proxy.events()  # whole lines only: every line parses
        assert full[:len(first)] == first and len(full) < len(first) * 4
        # Space again: the next write starts with a log_gap event giving the count.
        (tiny_fs / "filler").unlink()
        assert hello(proxy.port, certs).startswith(b"HTTP/1.1 200")
        events = proxy.wait_closes(2)
        out = wait_output(proxy, "close by", 5)
        assert proxy.proc.poll() is None
    gaps = [e for e in events if e["event"] == "log_gap"]
    # Each event the terminal showed is in the log or counted in a gap (a nearly full
    # tmpfs may still take a small write now and then: several gaps are fine).
    shown = [line for line in out.splitlines() if re.match(r"\[\d+\] \S", line)]
    assert len(events) - len(gaps) + sum(g["lost_events"] for g in gaps) == len(shown)
    assert gaps and all("No space left on device" in g["error"] for g in gaps)
    assert out.rstrip().splitlines()[-1].startswith("[5] close by")
    assert re.search(r"is written again; \d+ events were lost", out)
    assert {e["conn"] for e in events if e["event"] == "close"} >= {"1", "5"}
    figure("disk full while running (256 KiB tmpfs filled)",
           f"{len(shown)} events: {len(events) - len(gaps)} written, "
           f"{sum(g['lost_events'] for g in gaps)} lost and counted in {len(gaps)} log_gap "
           "event(s); traffic unaffected (5/5 clients)")


def test_log_on_a_device_that_is_always_full_never_stops_the_proxy(tiny_fs: Path,
                                                                   tmp_path: Path,
                                                                   certs: Certs) -> None:
    """A file system full from the start: every write fails with ENOSPC; traffic
    flows, the loss is reported. (It used to be a symlink to /dev/full: the log
    now refuses symlinks and devices, issue 12, which tests/test_logfile.py checks.)"""
    server = HelloServer(certs.server_cert, certs.server_key)
    server.start()
    log = tiny_fs / "log.jsonl"
    fill(tiny_fs / "filler")
    proxy = Proxy(f"127.0.0.1:{server.port}", log, output=tmp_path / "out.txt")
    try:
        for _ in range(2):
            assert hello(proxy.port, certs).startswith(b"HTTP/1.1 200")
        wait_output(proxy, "close by", 2)
    finally:
        out = proxy.stop()
    assert out.count(f"WARNING cannot write the JSON Lines log {log}") == 1
    assert re.search(rf"WARNING \d+ events were never written to the JSON Lines log {log}",
                     out), out[-2000:]


class Firehose(ThreadedTLSServer):
    """Sends the number of 64 KiB blocks asked for as fast as the path takes them,
    counting what it handed over on the latest connection."""

    total = 256 << 20
    block = random.Random(7).randbytes(1 << 16)

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__(cert, key)
        self.sent = 0

    @classmethod
    def digest(cls, total: int) -> bytes:
        """SHA-256 of what a request for ``total`` bytes gets."""
        h = hashlib.sha256()
        for _ in range(total // len(cls.block)):
            h.update(cls.block)
        return h.digest()

    def handle(self, tls: ssl.SSLSocket) -> None:
        blocks = int(tls.recv(16))
        self.sent = 0
        for _ in range(blocks):
            tls.sendall(self.block)
            self.sent += len(self.block)


@pytest.mark.timeout(300)
def test_slow_reader_backpressure_bounds_the_proxy(certs: Certs, tmp_path: Path) -> None:
    """A client that stops reading: the proxy buffers a bounded amount and the server
    is held back (TCP backpressure through the proxy); nothing is lost once it reads."""
    server = Firehose(certs.server_cert, certs.server_key)
    server.start()
    with Proxy(f"127.0.0.1:{server.port}", tmp_path / "log.jsonl",
               extra=["--quiet"]) as proxy:
        assert roundtrip_hello(proxy.port, certs)
        rss0 = rss_kib(proxy.proc.pid)
        ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"%d" % (Firehose.total // len(Firehose.block)))
            # Read nothing until the server cannot send more: its counter stops moving.
            stalled_at, last, deadline = time.monotonic(), -1, time.monotonic() + 60
            while time.monotonic() - stalled_at < 1.0:
                assert time.monotonic() < deadline, "the server never stalled"
                if server.sent != last:
                    stalled_at, last = time.monotonic(), server.sent
                time.sleep(0.05)  # polling the server's progress
            held_back, rss1 = server.sent, rss_kib(proxy.proc.pid)
            n, digest = read_digest(s, Firehose.total)
    figure("slow reader: client stops reading a 256 MiB download",
           f"server held back after {held_back >> 20} MiB; proxy RSS {rss0 // 1024} -> "
           f"{rss1 // 1024} MiB while stalled; all {n >> 20} MiB byte-exact afterwards")
    assert held_back < Firehose.total // 4
    assert rss1 - rss0 < 16 * 1024
    assert n == Firehose.total and digest == Firehose.digest(Firehose.total)


def roundtrip_hello(port: int, certs: Certs) -> bool:
    """A warm-up connection (imports and first-use costs out of the RSS baseline)."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"1")
        n = 0
        while n < len(Firehose.block) and (chunk := s.recv(1 << 16)):
            n += len(chunk)
        return n == len(Firehose.block)


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1])


@pytest.mark.timeout(300)
def test_delay_fault_on_every_record_is_bounded_by_backpressure(certs: Certs,
                                                                 tmp_path: Path) -> None:
    """A fault that holds data back (delay on every application record) keeps it in
    the engine, out of reach of mitmproxy's own backpressure: the inspector stops
    reading from the server while more than 4 MiB wait, so memory stays bounded."""
    server = Firehose(certs.server_cert, certs.server_key)
    server.start()
    scen = tmp_path / "slow.yaml"
    scen.write_text("name: slow-pipe\nfaults:\n"
                    "  - match: {from: server, content_type: application_data}\n"
                    "    action: delay\n    ms: 250\n")
    total = 64 << 20
    with Proxy(f"127.0.0.1:{server.port}", tmp_path / "log.jsonl", scenarios=[scen],
               extra=["--quiet", "--no-app-records"]) as proxy:
        assert roundtrip_hello(proxy.port, certs)
        base = rss_kib(proxy.proc.pid)
        ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"%d" % (total // len(Firehose.block)))
            n, digest = read_digest(s, total)
        peak = peak_rss_kib(proxy.proc.pid)
        events = proxy.wait_closes(2)
    faulted = sum(1 for e in events if e["event"] == "record" and "fault" in e)
    figure("delay fault on every application record (250 ms), 64 MiB download",
           f"{faulted} records delayed; proxy peak RSS {base // 1024} -> {peak // 1024} MiB "
           "(at most 4 MiB held per direction); all bytes exact")
    assert n == total and digest == Firehose.digest(total)
    assert faulted > total // 16_500
    assert peak - base < 24 * 1024
