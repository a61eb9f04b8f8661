"""addons/limits.py and the inspector's resource bounds (issue 12, item 7).

Before: 200 connections each holding a ClientHello that declares 1 MiB added
220 MiB RSS; at the fd limit new clients got an immediate EOF with nothing
logged anywhere; idle connections were held forever.
"""

from __future__ import annotations

import json
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tlsinspector.addons.limits import FdWatch, HeldBudget
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import free_port, stop_process, wait_for_port
from tlsinspector.lab.tlsserver import HelloServer

BIN = Path(sys.executable).parent / "tlsinspector"


class FakeHolder:
    def __init__(self, sheddable: int) -> None:
        self.sheddable = sheddable
        self.paused = True

    def shed(self, now: float, why: str) -> int:
        freed, self.sheddable = self.sheddable, 0
        return freed

    def pause_for_budget(self, pause: bool) -> None:
        self.paused = pause


def test_budget_sheds_the_largest_first_then_pauses_and_resumes() -> None:
    b = HeldBudget(1000)
    big, small, grower = FakeHolder(700), FakeHolder(100), FakeHolder(0)
    assert not b.update(big, 700, 0.0) and not b.update(small, 100, 0.0)
    # 300 more held for a fault (not sheddable): the largest holder lets go first.
    assert not b.update(grower, 300, 0.0)
    assert big.sheddable == 0 and small.sheddable == 100 and b.total == 400
    # Over again with nothing left to shed but the small one: shed it, then pause.
    assert b.update(grower, 1100, 0.0)
    assert b.total == 1100 and b.bites == 2
    b.update(grower, 400, 0.0)  # <= limit / 2: everyone paused reads again
    assert not grower.paused
    b.forget(grower)
    assert b.total == 0


def test_fd_watch_warns_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    w = FdWatch(clock=lambda: now[0], interval=10.0, probe_every=0.0,
                timer=lambda: 0.0)  # reads cost nothing: one on every call
    usage = [(100, 1024)]
    monkeypatch.setattr(FdWatch, "usage", staticmethod(lambda: usage[0]))
    assert w.check() is None
    usage[0] = (1000, 1024)
    text = w.check()
    assert text is not None and "1000 of 1024 descriptors" in text
    now[0] = 5.0
    assert w.check() is None and w.check(force=True) is None  # rate-limited
    now[0] = 10.0
    assert w.check() is not None


class Sink:
    """A TCP upstream that reads and discards until the peer closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(1 << 16):
                    pass
            except OSError:
                pass


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.sock.close()


class Run:
    def __init__(self, tmp: Path, upstream: int, *extra: str, nofile: int | None = None) -> None:
        self.port = free_port()
        self.log = tmp / "log.jsonl"
        self.out = tmp / "out.txt"
        self.err = tmp / "err.txt"

        def limit() -> None:
            if nofile is not None:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [str(BIN), "run", "--listen", f"127.0.0.1:{self.port}", "--upstream",
                 f"127.0.0.1:{upstream}", "--log", str(self.log), "--quiet", *extra],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=limit)
        wait_for_port("127.0.0.1", self.port, proc=self.proc)

    def events(self) -> list[dict[str, Any]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [json.loads(x) for x in text.split("\n")[:-1] if x]

    def wait(self, pred: Any, what: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not pred(evs := self.events()):
            assert time.monotonic() < deadline, f"{what}: {evs[-5:]} {self.err.read_text()}"
            time.sleep(0.05)  # polling the log for the event
        return evs

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(x for x in status.splitlines()
                        if x.startswith("VmRSS:")).split()[1])

    def stop(self) -> None:
        import signal

        stop_process(self.proc, signal.SIGINT)


def partial_hello(declared: int, send: int) -> bytes:
    """A ClientHello header declaring ``declared`` bytes, and ``send`` of them in records."""
    msg = b"\x01" + declared.to_bytes(3, "big") + bytes(send)
    return b"".join(b"\x16\x03\x01" + len(msg[i:i + 16384]).to_bytes(2, "big")
                    + msg[i:i + 16384] for i in range(0, len(msg), 16384))


def tls_ok(port: int, certs: Certs) -> bool:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return s.recv(4096).startswith(b"HTTP/1.1 200")


def test_max_held_bounds_memory_and_says_so(tmp_path: Path, sink: Sink) -> None:
    run = Run(tmp_path, sink.port, "--max-held", "8M")
    socks = []
    try:
        base = run.rss_kib()
        for _ in range(40):  # 40 x ~1 MiB of hellos that never complete
            s = socket.create_connection(("127.0.0.1", run.port), timeout=10)
            s.sendall(partial_hello(1 << 20, (1 << 20) - 64))
            socks.append(s)
        def shed_all(e: list[dict[str, Any]]) -> bool:  # and every record read
            return (sum(x["event"] == "record" for x in e) >= 40 * 64
                    and sum(x["event"] == "held_limit" and x["action"] == "unparsed"
                            for x in e) >= 30)

        evs = run.wait(shed_all, "held_limit events")
        grown = (run.rss_kib() - base) // 1024
        shed = [e for e in evs if e["event"] == "held_limit" and e["action"] == "unparsed"]
        assert all(e["freed"] > 0 for e in shed)
        assert "over --max-held 8388608" in shed[0]["note"]
        paused = [e for e in evs if e["event"] == "held_limit" and e["action"] == "paused"]
        assert all(e["max_held"] == 8 << 20 and e["total"] > 8 << 20 for e in paused)
        # 40 MiB offered; without the bound the proxy kept it all (and more).
        assert grown < 32, f"RSS grew {grown} MiB"
    finally:
        for s in socks:
            s.close()
        run.stop()


class HelloFlood(Sink):
    """An upstream that answers a client's first bytes with a ServerHello header
    declaring 1 MiB and 1 MiB - 64 bytes of it, never the rest, then drains."""

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(1 << 16)
                msg = b"\x02" + (1 << 20).to_bytes(3, "big") + bytes((1 << 20) - 64)
                conn.sendall(b"".join(b"\x16\x03\x03" + len(msg[i:i + 16384]).to_bytes(2, "big")
                                      + msg[i:i + 16384] for i in range(0, len(msg), 16384)))
                while conn.recv(1 << 16):
                    pass
            except OSError:
                pass


def test_max_held_bounds_what_the_hot_relay_holds_during_a_handshake(
        tmp_path: Path) -> None:
    """A faultless connection goes to the hot relay right after its ClientHello
    (Connection.faultless), while the server's hello is still to be assembled: a
    server that declares 1 MiB hellos and never ends them is bounded by --max-held
    there too (the relay reports to the same budget, which sheds and pauses)."""
    flood = HelloFlood()
    run = Run(tmp_path, flood.port, "--max-held", "8M")
    socks = []
    hello = bytes.fromhex("160301002f0100002b0303") + bytes(32) + bytes.fromhex(
        "000002130101000000")  # a minimal ClientHello: one suite, no extensions
    try:
        base = run.rss_kib()
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", run.port), timeout=10)
            s.sendall(hello)
            socks.append(s)

        def shed_all(e: list[dict[str, Any]]) -> bool:
            return sum(x["event"] == "held_limit" and x["action"] == "unparsed"
                       and x["from"] == "server" for x in e) >= 30

        evs = run.wait(shed_all, "held_limit events for the servers' hellos")
        grown = (run.rss_kib() - base) // 1024
        assert any(x["event"] == "record" and x["from"] == "server" for x in evs)
        assert grown < 32, f"RSS grew {grown} MiB"
    finally:
        for s in socks:
            s.close()
        flood.sock.close()
        run.stop()


def test_max_held_keeps_other_clients_served(tmp_path: Path, certs: Certs) -> None:
    server = HelloServer(certs.server_cert, certs.server_key)
    server.start()
    run = Run(tmp_path, server.port, "--max-held", "2M")
    socks = []
    try:
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", run.port), timeout=10)
            s.sendall(partial_hello(1 << 20, 600_000))
            socks.append(s)
        run.wait(lambda e: any(x["event"] == "held_limit" for x in e), "held_limit")
        assert all(tls_ok(run.port, certs) for _ in range(3))
    finally:
        for s in socks:
            s.close()
        run.stop()


def test_idle_timeout_closes_with_a_reason(tmp_path: Path, sink: Sink) -> None:
    run = Run(tmp_path, sink.port, "--idle-timeout", "0.5")
    try:
        with socket.create_connection(("127.0.0.1", run.port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01\x00\x05\x01\x00\x00\x10\x03")  # then nothing
            evs = run.wait(lambda e: any(x["event"] == "close" for x in e), "close")
            assert s.recv(10) == b""  # the proxy closed it
        closes = [e for e in evs if e["event"] == "close"]
        assert {e.get("reason") for e in closes} == {"idle timeout: no bytes either way for 0.5 s"}
        assert all(e["by"] == "proxy" for e in closes)
    finally:
        run.stop()


def test_idle_timeout_is_off_by_default() -> None:
    from tlsinspector.cli import _parser

    args = _parser().parse_args(["run", "--upstream", "h:1"])
    assert args.idle_timeout == 0.0 and args.max_held is None


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_fd_limit_warns_once_and_logs_an_error(tmp_path: Path, sink: Sink, loop: str) -> None:
    run = Run(tmp_path, sink.port, "--loop", loop, nofile=64)
    socks = []
    try:
        for _ in range(60):
            socks.append(socket.create_connection(("127.0.0.1", run.port), timeout=10))
            socks[-1].sendall(b"\x16\x03\x01\x00\x01")
        evs = run.wait(lambda e: any(x.get("kind") == "fd_limit" for x in e), "fd_limit")
        [ev] = [e for e in evs if e.get("kind") == "fd_limit"]
        assert ev["event"] == "error" and "open-file limit" in ev["message"]
        warnings = [x for x in run.err.read_text().splitlines() if "open-file limit" in x]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("tlsinspector: WARNING near the open-file limit (")
    finally:
        for s in socks:
            s.close()
        run.stop()


class Collect(Sink):
    """A TCP upstream that keeps what it reads, per connection, until EOF."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.done = threading.Event()
        super().__init__()

    def _drain(self, conn: socket.socket) -> None:  # type: ignore[override]
        buf = bytearray()
        with conn:
            while chunk := conn.recv(1 << 16):
                buf += chunk
        self.got.append(bytes(buf))
        self.done.set()


def test_sliced_reads_stay_byte_exact_with_an_early_fin(tmp_path: Path) -> None:
    """A large read of tiny records is handed to the engine in slices over several
    event-loop turns (fairness); bytes and the half-close still arrive in order."""
    from tests.test_handshake import client_hello, one_byte_records

    up = Collect()
    run = Run(tmp_path, up.port)
    try:
        data = one_byte_records(client_hello(20_000)) + b"trailing garbage"
        with socket.create_connection(("127.0.0.1", run.port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # FIN right behind the bytes
            assert up.done.wait(30)
            evs = run.wait(lambda e: any(x["event"] == "close" for x in e), "close")
        assert up.got == [data]
        [hello] = [m for e in evs for m in e.get("messages", [])]
        assert hello["type"] == "client_hello" and hello["sni"] == "example.test"
        # The trailing bytes may come in more than one read (one event each).
        non_tls = [e for e in evs if e["event"] == "non_tls"]
        assert sum(e["length"] for e in non_tls) == len(b"trailing garbage")
        assert non_tls and not any("preview" in e for e in non_tls)
    finally:
        run.stop()
        up.sock.close()


def test_fd_watch_probes_at_most_every_interval_and_counts_calls_between() -> None:
    """Reading the open descriptors costs in proportion to how many are open, so
    FdWatch reads them at most every probe_every (or when forced); in between each
    call counts as one more descriptor. An estimate at the warning's threshold gets a
    read at once (at most every probe_every) and only a count just read warns; calls
    below it read nothing."""
    clock = [0.0]
    probes: list[float] = []
    open_now = [40]

    def usage() -> tuple[int, int]:
        probes.append(clock[0])
        return open_now[0], 64

    w = FdWatch(clock=lambda: clock[0], interval=10.0, probe_every=0.25, usage=usage,
                timer=lambda: 0.0)
    assert w.check() is None and probes == [0.0]
    said = [w.check() for _ in range(20)]  # 40 + 20 by the estimate: past 64 - 8
    assert probes == [0.0] and said == [None] * 20 and w.skipped  # too soon to read
    assert w.next_read_in() == 0.25  # near the threshold: the next read soon
    clock[0] = 0.26
    open_now[0] = 58  # the burst's clients are really there
    text = w.check(opened=0)  # the recheck timer's call
    assert probes == [0.0, 0.26] and text is not None
    assert text.startswith("near the open-file limit (58 of 64")
    clock[0] = 0.6
    open_now[0] = 30  # they left
    assert w.check() is None and probes[-1] == 0.6
    for _ in range(20):
        w.check()
    assert probes[-1] == 0.6  # twenty calls within an interval, far from the limit
    clock[0] = 0.9
    assert w.check() is None and probes[-1] == 0.9  # due again
    clock[0] = 20.0
    open_now[0] = 60
    text = w.check(force=True)
    assert text is not None and "(60 of 64" in text and probes[-1] == 20.0


def test_fd_watch_reads_the_count_less_often_the_longer_a_read_takes() -> None:
    """The spacing of reads grows with what a read costs (a read of 19,000
    descriptors is tens of ms), so reading takes at most FdWatch.BUDGET of the time;
    an estimate near the limit still gets a read within probe_every."""
    clock, timer = [0.0], [0.0]

    def usage() -> tuple[int, int]:
        timer[0] += 0.03  # this read took 30 ms
        return 100, 20_000

    w = FdWatch(clock=lambda: clock[0], probe_every=0.25, usage=usage,
                timer=lambda: timer[0])
    w.check()
    assert w.next_read_in() == 0.03 / FdWatch.BUDGET  # 3 s
    clock[0] = 1.0
    w.check()
    assert w.skipped and abs(w.next_read_in() - 2.0) < 1e-9
    reads = timer[0]
    w.check(opened=19_000)  # an estimate past the threshold: read now, not in 2 s
    assert timer[0] == reads + 0.03 and not w.skipped
