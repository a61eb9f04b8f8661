"""How a hot (and detached) connection ends (addons/hotpath.py, issue 19's detach):
a reset or a lost socket on either side, timeouts with a peer that reads nothing,
the shutdown; real TLS peers through the inspector in-process.

The peers finish a real TLS 1.2 handshake (Python's ssl) through the proxy, then
talk on the bare sockets in application_data-framed records that the proxy, without
keys, relays and logs as it does encrypted ones: so each end can half-close, reset
or stop reading at a moment the test chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_hotpath import closes, inspector, on_loop, until
from tlsinspector.addons import hotpath, mitm_internals
from tlsinspector.addons import inspector as inspector_addon
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.tlsserver import ThreadedTLSServer

# What a streaming peer sends at most: far more than the socket buffers on the way
# (a few MiB each) and the relay's own bound hold.
STREAM_LIMIT = 64 << 20
CHUNK = 16_000
AFTER_EOF = 20 * (CHUNK + 5)


def record(payload: bytes) -> bytes:
    """An application_data record (RFC 5246 6.2.1) around ``payload``."""
    return b"\x17\x03\x03" + struct.pack("!H", len(payload)) + payload


def read_record(sock: socket.socket) -> bytes:
    """One record's payload (the peer's framing above)."""
    head = _read_exactly(sock, 5)
    return _read_exactly(sock, struct.unpack("!H", head[3:5])[0])


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("end of stream")
        buf += chunk
    return buf


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (SO_LINGER 0, RFC 9293 3.6.1)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def stream(sock: socket.socket, limit: int = STREAM_LIMIT) -> tuple[int, str | None]:
    """Send records until a send fails or ``limit`` bytes went: (bytes sent, the error)."""
    block, sent = record(b"s" * CHUNK), 0
    try:
        while sent < limit:
            sock.sendall(block)
            sent += len(block)
    except OSError as e:
        return sent, type(e).__name__
    return sent, None


class ScriptedServer(ThreadedTLSServer):
    """After the handshake, the bare socket does what the client's first record says:

    - ``stream``: send records until a send fails (the outcome in ``streamed``);
    - ``reset``: read 64 KiB, then reset the connection;
    - ``echo``: send back every byte until the client's end;
    - ``close`` / ``close-reset``: send one record, then close (reset) the connection;
    - ``after-eof``: read to the client's end, then send AFTER_EOF bytes and close;
    - ``quit``: close at once."""

    def __init__(self, cert: Path, key: Path, tls13: bool = False) -> None:
        super().__init__(cert, key, timeout=30)
        if not tls13:  # no session tickets after the handshake: the bare sockets start clean
            self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.streamed: dict[str, tuple[int, str | None]] = {}
        self.done = threading.Event()
        self.served = 0  # connections whose socket the server closed
        self._lock = threading.Lock()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(self.timeout)
        try:
            sock = socket.socket(fileno=self.ctx.wrap_socket(raw, server_side=True).detach())
        except (OSError, ssl.SSLError):
            raw.close()
            return
        sock.settimeout(self.timeout)
        try:
            command = read_record(sock)
            if command == b"stream":
                self.streamed["server"] = stream(sock)
            elif command == b"reset":
                _read_exactly(sock, 64 << 10)
                reset(sock)
            elif command == b"echo":
                while data := sock.recv(1 << 16):
                    sock.sendall(data)
            elif command in (b"close", b"close-reset"):
                sock.sendall(record(b"b" * 1000))
                if command == b"close-reset":
                    reset(sock)
            elif command == b"after-eof":
                while sock.recv(1 << 16):
                    pass
                sock.sendall(record(b"h" * CHUNK) * (AFTER_EOF // (CHUNK + 5)))
        except OSError:
            pass
        finally:
            sock.close()
            with self._lock:
                self.served += 1
            self.done.set()


@pytest.fixture
def scripted(certs: Certs) -> Iterator[ScriptedServer]:
    server = ScriptedServer(certs.server_cert, certs.server_key)
    server.start()
    yield server
    server.close()


class Relays(list[Any]):
    """The HotRelays the inspector started, and the event loop they run on."""

    loop: asyncio.AbstractEventLoop


@pytest.fixture
def relays(monkeypatch: pytest.MonkeyPatch) -> Relays:
    """Each HotRelay the inspector starts."""
    seen = Relays()
    real = hotpath.maybe_take_over

    def spy(layer: Any, idle: float) -> Any:
        relay = real(layer, idle)
        if relay is not None:
            seen.loop = asyncio.get_running_loop()
            seen.append(relay)
        return relay

    monkeypatch.setattr(hotpath, "maybe_take_over", spy)
    return seen


def bare_client(port: int, certs: Certs) -> socket.socket:
    """A TLS 1.2 handshake through the proxy, then the bare socket."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock = socket.socket(fileno=ctx.wrap_socket(raw, server_hostname="localhost").detach())
    sock.settimeout(30)
    return sock


def consistent_close(log: Path, proxy_cut: bool = False) -> dict[str, Any]:
    """The one close event, its counts those of the record events logged (a record the
    stream ended inside was logged at its header, then as ``partial record at close``
    with its missing bytes as length: Connection._eof_rest). ``proxy_cut``: the proxy
    ended the connection (no end of stream from either side): the last record of a
    side may be short, unmarked."""
    events = [json.loads(x) for x in log.read_text().splitlines()]
    [close] = [e for e in events if e["event"] == "close"]
    for side in ("client", "server"):
        records = [e for e in events if e["event"] == "record" and e["from"] == side]
        whole = [e for e in records if "content_type" in e]
        cut = [e for e in records if "content_type" not in e]
        assert all(e["unparsed"].startswith("partial record at close") for e in cut)
        assert close["records"][side] == len(whole)
        logged = sum(5 + e["length"] for e in whole) - sum(e["length"] for e in cut)
        short = logged - close["bytes"][side]
        assert short == 0 or proxy_cut and 0 < short < 5 + whole[-1]["length"]
    return close


@pytest.mark.parametrize(("resets", "detach", "loop"), [
    ("client", True, "asyncio"), ("server", False, "uvloop")])
def test_a_reset_ends_the_whole_hot_connection_once_the_other_side_sends_again(
        certs: Certs, tmp_path: Path, scripted: ScriptedServer, relays: list[Any],
        resets: str, detach: bool, loop: str) -> None:
    """One side resets while the other streams: nothing can reach the reset side any
    more, so (as on the full path, where writing toward it fails) the connection ends
    at the streaming side's next bytes and its socket is closed: the streaming peer's
    sends fail within the buffers on the way, rather than the relay reading and
    dropping its stream for as long as it goes on (it did, detached or not: 4 GB in
    8 s, a record event each)."""
    with inspector(scripted.port, tmp_path, detach=detach, loop=loop) as (port, log):
        client = bare_client(port, certs)
        try:
            if resets == "client":
                client.sendall(record(b"stream"))
                read_record(client)  # the stream started, on the hot path
                until(lambda: relays, "no hand-over")
                reset(client)
                assert scripted.done.wait(30), "the server never finished"
                sent, error = scripted.streamed["server"]
            else:
                client.sendall(record(b"reset"))
                until(lambda: relays, "no hand-over")
                sent, error = stream(client)
        finally:
            client.close()
        until(lambda: closes(log), "no close event")
        assert relays[0].detached is detach
    assert error is not None, f"{sent} bytes relayed into a reset connection"
    assert sent < STREAM_LIMIT
    close = consistent_close(log)
    assert close["by"] == resets


def proxy_side(port: int, client: socket.socket) -> list[str]:
    """The TCP states (/proc/net/tcp) of the proxy's socket toward ``client``."""
    mine, theirs = f":{port:04X}", f":{client.getsockname()[1]:04X}"
    rows = [ln.split() for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return [r[3] for r in rows if r[1].endswith(mine) and r[2].endswith(theirs)]


@pytest.mark.parametrize(("timeout", "detach", "loop"), [
    ("idle", True, "asyncio"), ("idle", False, "uvloop"), ("inactivity", True, "uvloop"),
    ("inactivity", False, "asyncio"), ("idle-full-path", False, "uvloop")])
def test_a_timeout_closes_a_hot_connection_whose_client_reads_nothing(
        certs: Certs, tmp_path: Path, scripted: ScriptedServer, relays: list[Any],
        monkeypatch: pytest.MonkeyPatch, timeout: str, detach: bool, loop: str) -> None:
    """--idle-timeout, or mitmproxy's inactivity timeout (shortened here), with a
    client that stopped reading while the server streams: the close event is logged
    and both sockets really close. The relay's write buffer toward the client is full
    (the backpressure that stalled the server), so a close after those bytes waited
    for a peer that reads nothing, forever: the socket stayed open (an fd and half a
    MiB each) long after the close event. Now a socket still holding bytes at a
    timeout is reset (SO_LINGER 0 close), the others closed as before. The same for
    --idle-timeout on the full path (mitmproxy's writer held the bytes)."""
    real = hotpath.maybe_take_over
    if timeout == "idle-full-path":
        monkeypatch.setattr(hotpath, "DISABLED", True)

    def shorter(layer: Any, idle: float) -> Any:
        dog = mitm_internals.timeout_watchdog(layer.context)
        assert dog is not None
        dog.timeout = 0.5  # mitmproxy's 600 s (tcp_timeout), for a test
        return real(layer, idle)

    if timeout == "inactivity":
        monkeypatch.setattr(hotpath, "maybe_take_over", shorter)  # (relays' spy inside)
    idle = 0.0 if timeout == "inactivity" else 0.5
    with inspector(scripted.port, tmp_path, idle_timeout=idle, detach=detach,
                   loop=loop) as (port, log):
        client = bare_client(port, certs)
        with client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            client.sendall(record(b"stream"))
            until(lambda: closes(log), "no close event")
            if timeout == "idle-full-path":
                assert relays == []
            else:
                [relay] = relays
                assert relay.detached is detach
                until(lambda: relay.half["client"].lost, "the client's socket stays open")
            # (ESTABLISHED, 01, while the proxy's socket waits to write what it holds)
            until(lambda: "01" not in proxy_side(port, client), "the socket stays open")
            # Reset: the end comes at once (Linux reports it as ECONNRESET, or as
            # the end of the stream once the error was read with the last bytes).
            with contextlib.suppress(ConnectionResetError):
                while client.recv(1 << 16):
                    pass
    close = consistent_close(log, proxy_cut=timeout != "inactivity")
    assert close["by"] == ("client" if timeout == "inactivity" else "proxy")


class ErrorLog(logging.Handler):
    """mitmproxy's log records at ERROR and above ("mitmproxy has crashed!": a layer
    raised, printed with its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def errors() -> Iterator[list[logging.LogRecord]]:
    handler = ErrorLog()
    logger = logging.getLogger("mitmproxy")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def memory_bio_handshake(port: int, certs: Certs) -> tuple[socket.socket, bytes]:
    """A TLS 1.3 handshake through the proxy whose last flight (the client's Finished)
    is not sent: (the socket, that flight), so that it can leave with what follows
    in one write."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    while True:
        try:
            tls.do_handshake()
            return sock, outgoing.read()
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                sock.sendall(pending)
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the proxy closed during the handshake") from None
            incoming.write(data)


def test_a_hand_over_during_a_turn_of_slices_detaches_without_an_error(
        certs: Certs, tmp_path: Path, relays: list[Any], errors: list[logging.LogRecord],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read larger than the engine may take in one loop turn is handed over in slices
    (issue 12); when the last slice makes the connection relayable, the hand-over (and
    the detach, which lets go of mitmproxy's context) happens inside that turn's Wakeup,
    whose handler then went on to look at the context: 'mitmproxy has crashed!' with an
    AttributeError traceback on every such connection (a client whose Finished and first
    request came in one read, with a slow enough engine; here the turn budget is made
    tiny so that every read over SLICE_MIN bytes is sliced). The connection then still
    relays both ways and closes with its counts."""
    monkeypatch.setattr(inspector_addon, "TURN_BUDGET", 1e-9)
    server = ScriptedServer(certs.server_cert, certs.server_key, tls13=True)
    server.start()
    try:
        with inspector(server.port, tmp_path) as (port, log):
            sock, finished = memory_bio_handshake(port, certs)
            with sock:
                body = b"y" * 4000
                sock.sendall(finished + record(b"echo") + record(body))
                until(lambda: relays, "no hand-over")
                assert relays[0].detached
                # The server's session tickets, then the echo.
                while read_record(sock) != body:
                    pass
                sock.sendall(record(b"z" * 100))
                assert read_record(sock) == b"z" * 100
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(1) == b""
            until(lambda: closes(log), "no close event")
    finally:
        server.close()
    assert [r.getMessage() for r in errors] == []
    close = consistent_close(log)
    assert close["by"] == "client"


def to_end(sock: socket.socket) -> int:
    """Read to the end of the stream (a reset counts as one): how many bytes."""
    n = 0
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 16):
            n += len(chunk)
    return n


def end_one_way(port: int, certs: Certs, how: str) -> str:
    """One connection through the proxy, ended ``how``: who the close event must name
    ("either" when both ends close at once)."""
    with bare_client(port, certs) as sock:
        if how in ("client-fin", "client-reset"):
            sock.sendall(record(b"echo") + record(b"x" * 100))
            assert read_record(sock) == b"x" * 100
            if how == "client-reset":
                reset(sock)
                return "client"
            sock.shutdown(socket.SHUT_WR)
            assert to_end(sock) == 0
            return "client"
        if how in ("server-fin", "server-reset"):
            sock.sendall(record(b"close" if how == "server-fin" else b"close-reset"))
            assert read_record(sock) == b"b" * 1000
            to_end(sock)
            return "server"
        if how == "half-close-then-data":
            sock.sendall(record(b"after-eof"))
            sock.shutdown(socket.SHUT_WR)
            assert to_end(sock) == AFTER_EOF
            return "client"
        assert how == "both-at-once"
        sock.sendall(record(b"quit"))
        sock.shutdown(socket.SHUT_WR)
        return "either"


ENDS = ("client-fin", "client-reset", "server-fin", "server-reset", "half-close-then-data",
        "both-at-once")


def open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_detached_connections_ending_every_way_log_one_close_each_and_leave_nothing_open(
        certs: Certs, tmp_path: Path, scripted: ScriptedServer, relays: Relays,
        errors: list[logging.LogRecord], loop: str) -> None:
    """Detached hot connections ended each way (either side's FIN or reset, a
    half-close with the answer after it, both ends at once), twice each: one close
    event per connection naming who ended it, with the byte and record counts of what
    was logged; afterwards no relay with a socket open, no descriptor more than
    before them (the proxy runs in this process: /proc/self/fd) and no error logged."""
    with inspector(scripted.port, tmp_path, loop=loop) as (port, log):
        assert end_one_way(port, certs, "client-fin") == "client"  # (the log file is open)
        until(lambda: scripted.served == 1 and len(closes(log)) == 1, "no first close")
        before = open_fds()
        expected = [end_one_way(port, certs, how) for how in ENDS * 2]
        n = 1 + len(expected)
        until(lambda: len(closes(log)) == n, "a close event is missing")
        until(lambda: scripted.served == n, "the server still has a connection")
        until(lambda: on_loop(relays.loop, hotpath.detached_open) == 0, "a socket stays open")
        until(lambda: open_fds() <= before, "descriptors left open")
    assert len(relays) == n and all(r.detached for r in relays)
    events = [json.loads(x) for x in log.read_text().splitlines()]
    for conn, want in zip(range(2, n + 1), expected, strict=True):
        mine = [e for e in events if e["conn"] == str(conn)]
        [close] = [e for e in mine if e["event"] == "close"]
        assert close["by"] in (("client", "server") if want == "either" else (want,))
        for side in ("client", "server"):
            records = [e for e in mine if e["event"] == "record" and e["from"] == side]
            assert close["records"][side] == len(records)
            assert close["bytes"][side] == sum(5 + e["length"] for e in records)
    assert [r.getMessage() for r in errors] == []
