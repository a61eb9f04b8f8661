"""The hot path (addons/hotpath.py, issue 19): regression guards, not timings.

- HotRelay on real loopback transports, fed under any segmentation (hypothesis):
  byte-exact both ways, the same record events and close counts as the engine
  alone on the full path;
- the inspector in-process on mitmproxy's master with real TLS peers: the hot
  path is taken once no fault can apply and never while one can (a ``times: 2``
  fault on the third record, a probability fault), the close event's counts are
  those of the full path, and backpressure holds on the hot path (a client that
  stops reading holds the server back; the relay's buffers stay bounded).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import random
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversation import conversation
from tests.test_engine import strip_ts
from tests.test_reliability import Firehose
from tlsinspector.addons import hotpath, mitm_internals, runner
from tlsinspector.addons import inspector as inspector_addon
from tlsinspector.lab.certs import Certs
from tlsinspector.lab.peers import free_port
from tlsinspector.lab.tlsserver import EchoServer
from tlsinspector.proxy import engine
from tlsinspector.proxy.engine import Connection, Emit, EmitRecords, Output, Send
from tlsinspector.proxy.faults import FaultPlanner

BIG = conversation("1.3", response=b"z" * 120_000)


def new_conn(app: bool, late: bool) -> Connection:
    """``late``: with a fault plan (an empty one), so the engine is relayable only
    once its handshakes are over; otherwise faultless, relayable from the start
    (Connection.faultless: the handshake goes through the hot relay too)."""
    plan = FaultPlanner([], 1, random.Random(0)) if late else None
    return Connection("1", "c:1", "s:2", log_app_data=app, faults=plan)


def settle(flights: list[tuple[str, bytes]], conn: Connection
           ) -> tuple[list[Output], list[tuple[str, bytes]]]:
    """Feed flights until the engine is settled: its outputs, and the flights left."""
    outs: list[Output] = list(conn.start(0.0))
    for i, (side, data) in enumerate(flights):
        if conn.settled:
            return outs, flights[i:]
        outs += conn.receive(side, data, 1.0)  # type: ignore[arg-type]
    return outs, []


class StubLayer:
    def __init__(self) -> None:
        self.outputs: list[Output] = []
        self.packed = 0  # records whose events came packed
        self.finished = asyncio.Event()
        self.last_keys_before_close = False
        self.held_reports = 0

    def hot_emit(self, outputs: list[Output]) -> None:
        # Records packed by the relay's engine (Connection.pack_records) become the
        # Emits an unpacked engine gives, in place (the full path's events compare).
        for o in outputs:
            if isinstance(o, EmitRecords):
                self.packed += len(o.lengths)
                self.outputs += [Emit(e) for e in o.events()]
            else:
                self.outputs.append(o)

    def last_keys(self) -> None:
        self.last_keys_before_close = not self.finished.is_set()

    def hot_held(self, held: int, side: str, now: float) -> bool:
        self.held_reports += 1  # the relay reports during a handshake it relays
        return False

    def hot_finished(self) -> None:
        self.finished.set()


async def relay_on_socketpairs(layer: StubLayer, conn: Connection,
                               rest: list[tuple[str, bytes]], keyed: bool = False
                               ) -> hotpath.HotRelay:
    """A HotRelay on two socketpairs (the peers' ends read nothing) fed ``rest``
    flight by flight, then both ends; returns once it logged the close. ``keyed``:
    the relay must start reading the key log around chunks (not settled yet)."""
    r = hotpath.HotRelay(layer, conn, layer.hot_emit)
    loop = asyncio.get_running_loop()
    pairs, taken = [], {}
    for side in ("client", "server"):
        mine, peer = socket.socketpair()
        peer.setblocking(False)
        pairs.append(peer)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, mine)
        taken[side] = (transport, asyncio.Protocol(), b"", False)
    r.attach(taken, 0.0)  # type: ignore[arg-type]
    assert r.keyed is keyed
    for side, data in rest:
        r.data(side, data)  # type: ignore[arg-type]
        await asyncio.sleep(0)
    r.eof("client")
    r.eof("server")
    await asyncio.wait_for(layer.finished.wait(), 10)
    for peer in pairs:
        peer.close()
    for t, _, _, _ in taken.values():
        t.close()
    return r


async def relay_through(cuts: list[int], app: bool, buffered: int,
                        layer: StubLayer | None = None, late: bool = True
                        ) -> tuple[dict[str, bytes], list[Output], Connection]:
    """BIG's flights after the engine settled, through a HotRelay on two socketpairs:
    inbound chunks cut as ``cuts`` says (what data_received would hand over), the
    first ``buffered`` bytes as mitmproxy's StreamReader's leftovers. ``late``: see
    new_conn (not late: every flight, the handshake's too, goes through the relay)."""
    conn = new_conn(app, late)
    _, rest = settle(BIG, conn)
    loop = asyncio.get_running_loop()
    layer = layer or StubLayer()
    relay = hotpath.HotRelay(layer, conn, layer.hot_emit)
    peers: dict[str, socket.socket] = {}
    taken: dict[Any, tuple[Any, Any, bytes, bool]] = {}
    for side in ("client", "server"):
        mine, peer = socket.socketpair()
        peer.setblocking(False)
        peers[side] = peer
        old = asyncio.Protocol()
        transport, _ = await loop.connect_accepted_socket(lambda o=old: o, mine)
        taken[side] = (transport, old, b"", False)
    first_side, first = rest[0]
    lead = first[:buffered]
    taken[first_side] = (*taken[first_side][:2], lead, False)
    relay.attach(taken, 0.0)
    rest = [(first_side, first[buffered:]), *rest[1:]]
    for side, data in rest:
        pos = 0
        # The cuts again and again, up to 64 pieces a flight (then the rest whole):
        # every write is one transport.write, and the peers read only at the end.
        for n in (cuts * 64)[:64]:
            if pos >= len(data):
                break
            relay.data(side, data[pos:pos + n])  # type: ignore[arg-type]
            pos += n
        if pos < len(data):
            relay.data(side, data[pos:])  # type: ignore[arg-type]
        await asyncio.sleep(0)  # let the slices and writes of this flight run
    relay.eof("client")
    relay.eof("server")
    got = {}
    for side, peer in peers.items():
        buf = bytearray()
        while chunk := await asyncio.wait_for(loop.sock_recv(peer, 1 << 16), 10):
            buf += chunk
        got[side] = bytes(buf)
        peer.close()
    await asyncio.wait_for(layer.finished.wait(), 10)
    assert layer.last_keys_before_close  # keys logged by then complete records first
    for t, _, _, _ in taken.values():
        t.close()
    return got, layer.outputs, conn


def full_path(app: bool) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    conn = Connection("1", "c:1", "s:2", log_app_data=app)  # (no plan: as new_conn's)
    outs: list[Output] = list(conn.start(0.0))
    for side, data in BIG:
        outs += conn.receive(side, data, 1.0)  # type: ignore[arg-type]
    outs += conn.eof("client", 2.0) + conn.eof("server", 2.0) + conn.finish(2.0)
    got = {"client": b"", "server": b""}
    for o in outs:
        if isinstance(o, Send):
            got[o.to] += o.data
    return got, [o.event for o in outs if isinstance(o, Emit)]


def per_side(events: list[dict[str, Any]], side: str) -> list[dict[str, Any]]:
    return strip_ts([e for e in events if e["event"] == "record" and e["from"] == side])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 20_000), min_size=1, max_size=8), st.booleans(),
       st.integers(0, 40), st.booleans())
def test_hot_relay_is_byte_exact_with_the_full_paths_events_under_any_segmentation(
        cuts: list[int], app: bool, buffered: int, late: bool) -> None:
    """From the hand-over after the handshake (a fault plan, spent) or from the
    first byte (a faultless connection: the handshake through the relay too)."""
    conn0 = new_conn(app, late)
    before, rest = settle(BIG, conn0)
    assert rest, "the conversation settles before its application data"
    # Faultless: relayable from its first chunk on (the server's whole handshake and
    # the client's Finished go through the relay).
    assert (len(rest) >= len(BIG) - 1) is not late
    got, outs, conn = asyncio.run(relay_through(cuts, app, buffered, late=late))
    want, want_events = full_path(app)
    sent_before = {"client": b"", "server": b""}
    for o in before:
        if isinstance(o, Send):
            sent_before[o.to] += o.data
    # What the relay delivered is exactly the rest of what each side sent.
    assert sent_before["client"] + got["client"] == want["client"]
    assert sent_before["server"] + got["server"] == want["server"]
    events = [o.event for o in before + outs if isinstance(o, Emit)]
    for side in ("client", "server"):
        assert per_side(events, side) == per_side(want_events, side)
    [close] = [e for e in events if e["event"] == "close"]
    [want_close] = [e for e in want_events if e["event"] == "close"]
    assert close["bytes"] == want_close["bytes"] and close["records"] == want_close["records"]


def test_hot_relay_gets_a_downloads_record_events_packed() -> None:
    """Issue 19: on the hot path a run of bulk records is one EmitRecords (the layer
    unpacks it), the same events as the full path's Emit per record."""
    layer = StubLayer()
    _, outs, conn = asyncio.run(relay_through([1 << 20], True, 0, layer))
    _, want_events = full_path(True)
    assert layer.packed >= 120_000 // 16_384 - 1  # BIG's response, whole reads
    events = [o.event for o in outs if isinstance(o, Emit)]
    assert per_side(events, "server") == per_side(want_events, "server")[-len(
        per_side(events, "server")):]


# -- the inspector in-process, real peers ----------------------------------------------


@contextmanager
def inspector(upstream: int, tmp: Path, scenarios: list[Path] | None = None,
              keylog: list[Path] | None = None, pcap: dict[str, Any] | None = None,
              idle_timeout: float = 0.0, extra: list[Any] | None = None,
              detach: bool = True, loop: str = "uvloop") -> Iterator[tuple[int, Path]]:
    """tlsinspector's own (lean) master on a loop in a thread: (port, log path); ``extra``
    addons are loaded after the inspector's (as ``mitmdump -s`` loads a user's);
    ``detach`` as ``tlsinspector run`` (on) or ``mitmdump -s`` (off) sets it; ``loop``
    as ``run --loop``."""
    port = free_port()
    log = tmp / f"log-{port}.jsonl"
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        master, _ = runner.build_master(("127.0.0.1", port), "reverse",
                                        f"127.0.0.1:{upstream}", log=str(log), quiet=True,
                                        scenarios=[str(s) for s in scenarios or []],
                                        keylog=[str(k) for k in keylog or []], seed=1,
                                        pcap=pcap, idle_timeout=idle_timeout,
                                        detach=detach)
        box["master"], box["loop"] = master, asyncio.get_running_loop()

        class Ready:
            def running(self) -> None:
                ready.set()

        master.addons.add(Ready(), *(extra or []))
        await master.run()

    thread = threading.Thread(target=runner.run_loop, args=(main, loop), daemon=True)
    thread.start()
    assert ready.wait(30), "the proxy never started"
    try:
        yield port, log
    finally:
        box["loop"].call_soon_threadsafe(box["master"].shutdown)
        thread.join(30)
        assert not thread.is_alive()


@pytest.fixture
def handovers(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each hand-over to the hot path, with the engine's record counts and the
    faults' fire counts at that moment."""
    seen: list[dict[str, Any]] = []
    real = hotpath.maybe_take_over

    def spy(layer: Any, idle: float) -> Any:
        relay = real(layer, idle)
        if relay is not None:
            eng = layer.engine
            seen.append({"conn": eng.conn_id,
                         "index": {s: eng._dirs[s].index for s in ("client", "server")},
                         "fired": list(eng.faults.fired) if eng.faults else []})
        return relay

    monkeypatch.setattr(hotpath, "maybe_take_over", spy)
    return seen


def download(port: int, certs: Certs, blocks: int, keylog: Path | None = None
             ) -> tuple[int, bytes]:
    """Ask the Firehose for ``blocks`` and read until it closes, then close.

    Reading to the server's end (not just to the byte count) orders the two FINs:
    the server's reaches the proxy first, always. Closing on the count raced the
    server thread's own close after its last send (the close event said "client"
    on one run and "server" on the next, with no product change). With ``keylog``
    the client writes its secrets there and answers a ClosingFirehose's
    close_notify with its own."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    if keylog is not None:
        ctx.keylog_filename = str(keylog)
    h, n = hashlib.sha256(), 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"%d" % blocks)
        while chunk := s.recv(1 << 20):  # b"" at the server's FIN (a ragged EOF)
            h.update(chunk)
            n += len(chunk)
        if keylog is not None:
            s.unwrap()  # close_notify both ways: encrypted alerts after the bulk
    return n, h.digest()


def closes(log: Path) -> list[dict[str, Any]]:
    events = [json.loads(x) for x in log.read_text().splitlines()]
    return [e for e in events if e["event"] == "close"]


def wait_close(log: Path) -> None:
    """Wait (bounded) for the close event, so that leaving the proxy's ``with`` (its
    shutdown logs open connections as closed "by proxy") cannot race the last FIN."""
    import time

    deadline = time.monotonic() + 30
    while not closes(log):
        assert time.monotonic() < deadline, "no close event"
        time.sleep(0.01)  # polling the log for the close event


@pytest.fixture(scope="module")
def firehose(certs: Certs) -> Iterator[Firehose]:
    server = Firehose(certs.server_cert, certs.server_key)
    server.start()
    yield server
    server.close()


def test_hot_path_taken_without_faults_with_the_full_paths_close_counts(
        certs: Certs, tmp_path: Path, firehose: Firehose, handovers: list[dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = 64  # 4 MiB
    with inspector(firehose.port, tmp_path) as (port, log):
        n, digest = download(port, certs, blocks)
        wait_close(log)
    assert (n, digest) == (blocks << 16, Firehose.digest(blocks << 16))
    assert len(handovers) == 1
    [hot] = closes(log)
    # The same connection on the full path (the hand-over refused).
    monkeypatch.setattr(hotpath, "maybe_take_over", lambda layer, idle: None)
    with inspector(firehose.port, tmp_path) as (port, log2):
        assert download(port, certs, blocks) == (n, digest)
        wait_close(log2)
    [full] = closes(log2)
    assert hot["records"] == full["records"] and hot["bytes"]["client"] == full["bytes"]["client"]
    # The server's bytes differ between two handshakes only by the DER length of
    # its ECDSA signature in CertificateVerify (RFC 8446 4.4.3; r and s vary in
    # length); the exact count is the property test's above.
    assert abs(hot["bytes"]["server"] - full["bytes"]["server"]) <= 2
    # The server closes first (download() waits for its FIN): both paths say so.
    assert hot["by"] == full["by"] == "server"
    # Every record is logged on the hot path too (one header-only event each).
    events = [json.loads(x) for x in log.read_text().splitlines()]
    assert sum(1 for e in events if e["event"] == "record" and e["from"] == "server"
               ) == hot["records"]["server"]
    # Faultless: handed over during the handshake, once the ClientHello went by and
    # before the server's first record (its hello) came (Connection.faultless); the
    # full path's log above has the same records, the handshake's included.
    assert handovers[0]["index"]["server"] == 0 and handovers[0]["index"]["client"] >= 1
    full_events = [json.loads(x) for x in log2.read_text().splitlines()]
    for side in ("client", "server"):
        assert [e["content_type"] for e in events if e["event"] == "record"
                and e["from"] == side] == [e["content_type"] for e in full_events
                                           if e["event"] == "record" and e["from"] == side]
    # The handshake was decoded on both paths (the server's hello by the relay).
    def hellos(evs: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(e["from"], e["messages"][0]["type"]) for e in evs
                if e["event"] == "record" and e.get("messages")]

    assert hellos(events) == hellos(full_events) == [
        ("client", "client_hello"), ("server", "server_hello")]


def test_bytes_a_client_sends_before_the_layers_are_in_place_are_all_relayed(
        tmp_path: Path, handovers: list[dict[str, Any]]) -> None:
    """A ClientHello and 1.28 MB right behind it, at once, then a half-close, to an
    echo server: mitmproxy reads them while its next_layer hook decides, and hands
    them to the record layer one event at a time afterwards. The hand-over to the hot
    relay (a faultless connection may go from its first chunk) waits until none is
    left (mitm_internals.events_queued): it once came after the first two, and the
    rest, read from the socket already, went to a layer that ignores events."""
    from tests.test_inspector_basic import Echo

    ctx = ssl.create_default_context()
    inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inb, outb, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    data = outb.read() + hashlib.sha256(b"seed").digest() * 40_000
    echo = Echo()
    echo.start()
    with inspector(echo.port, tmp_path) as (port, log):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            sender = threading.Thread(target=lambda: (s.sendall(data),
                                                      s.shutdown(socket.SHUT_WR)))
            sender.start()
            got = bytearray()
            while chunk := s.recv(1 << 16):
                got += chunk
            sender.join(30)
        wait_close(log)
    echo.sock.close()
    assert len(got) == len(data) and bytes(got) == data
    [close] = closes(log)
    assert close["bytes"] == {"client": len(data), "server": len(data)}
    assert len(handovers) == 1  # (the relay had it, or this proves nothing)


def test_hot_path_waits_for_a_times_2_fault_and_never_comes_with_a_probability(
        certs: Certs, tmp_path: Path, firehose: Firehose,
        handovers: list[dict[str, Any]]) -> None:
    scen = tmp_path / "twice.yaml"
    scen.write_text("name: twice\nfaults:\n"
                    "  - match: {from: server, content_type: application_data, index: 3,"
                    " times: 2}\n"
                    "    action: delay\n    ms: 1\n"
                    "  - match: {from: server, content_type: application_data, times: 2}\n"
                    "    action: delay\n    ms: 1\n")
    with inspector(firehose.port, tmp_path, [scen]) as (port, log):
        assert download(port, certs, 16) == (16 << 16, Firehose.digest(16 << 16))
        wait_close(log)
    [hot] = handovers
    # Only once both faults are spent (the second fired on two records, the
    # earliest of which is the third or later) may the bytes bypass the planner.
    assert hot["fired"] == [1, 2]
    assert hot["index"]["server"] >= 4
    [close] = closes(log)
    assert close["records"]["server"] > hot["index"]["server"]
    handovers.clear()
    maybe = tmp_path / "maybe.yaml"
    maybe.write_text("name: maybe\nfaults:\n"
                     "  - match: {from: server, content_type: application_data, "
                     "probability: 0.5}\n"
                     "    action: delay\n    ms: 1\n")
    with inspector(firehose.port, tmp_path, [maybe]) as (port, log):
        assert download(port, certs, 16) == (16 << 16, Firehose.digest(16 << 16))
    assert handovers == []  # a probability fault may always fire: the full path


@pytest.mark.timeout(120)
def test_slow_reader_backpressure_on_the_hot_path(certs: Certs, tmp_path: Path,
                                                  firehose: Firehose,
                                                  handovers: list[dict[str, Any]]) -> None:
    blocks = 1024  # 64 MiB asked for; the client reads nothing for a while
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with inspector(firehose.port, tmp_path) as (port, _), \
            socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"%d" % blocks)
            # The first block arrives (the handshake is over, the hot path taken) ...
            first = s.recv(1 << 16)
            assert first
            stalled = firehose_stalls(firehose)
            assert len(handovers) == 1
            # ... then with the client not reading, the server is held back: what is
            # in flight is the sockets' buffers and the relay's bounded write buffer.
            assert stalled < 32 << 20, stalled
            h = hashlib.sha256(first)
            n = len(first)
            while n < blocks << 16 and (chunk := s.recv(1 << 20)):
                h.update(chunk)
                n += len(chunk)
    assert n == blocks << 16 and h.digest() == Firehose.digest(blocks << 16)


def firehose_stalls(server: Firehose) -> int:
    """Wait (bounded) until the server's counter stops moving for 1 s: where it stopped."""

    stalled_at, last, deadline = time.monotonic(), -1, time.monotonic() + 60
    while time.monotonic() - stalled_at < 1.0:
        assert time.monotonic() < deadline, "the server never stalled"
        if server.sent != last:
            stalled_at, last = time.monotonic(), server.sent
        time.sleep(0.05)  # polling the server's progress
    return server.sent


def test_a_settled_tls_connection_keeps_no_plaintext_session_nor_delay_queues() -> None:
    """Issue 19's idle-memory trims: what 10,000 idle connections would each hold
    for nothing (a STARTTLS session's buffers, two empty delay queues) is gone
    once the engine settles; a delay still gets its queue (test_engine's delays)."""
    conn = Connection("1", "c:1", "s:2")
    settle(BIG, conn)
    assert conn.settled
    assert conn.history.plain is None
    assert [conn._outbox(s).items for s in ("client", "server")] == [None, None]
    relay = hotpath.HotRelay(StubLayer(), conn, lambda outs: None)
    assert not hasattr(relay, "__dict__")  # slotted: one of these per connection
    # No re-sealing state (only faults inside the encryption make one) and the
    # shared empty frozenset of paced sides.
    assert conn._reseal == {} and conn.split_toward is engine.NO_SIDES


def test_a_lent_read_buffer_is_reused_only_once_no_view_of_it_is_left() -> None:
    """The hot path reads into one buffer; a write the transport could not finish
    keeps a view of it (lent). The next read must never go into a buffer a view
    still holds (the bytes waiting to be written would change), and once the view
    is gone the buffer is reused rather than a new 1 MiB one zeroed and mapped."""
    rb = hotpath._ReadBuffer()
    first = rb.buf
    held = rb.view[:100]  # what a transport keeps of a write it could not finish
    held_bytes = bytes(held)
    rb.lent()
    second = rb.buf
    assert second is not first
    rb.view[:100] = b"x" * 100  # the next read
    assert bytes(held) == held_bytes  # the pending write is untouched
    rb.lent()  # no view of ``second`` remains: it goes to the spares, ``first`` is held
    assert rb.buf is not first and rb.buf is not second
    del held  # the transport wrote it: ``first`` is free again
    third = rb.buf
    rb.lent()
    assert rb.buf is first or rb.buf is second  # reused, not allocated
    assert len(rb.buf) == hotpath.READ_SIZE
    for _ in range(3 * hotpath.SPARES):  # views held forever: the spares stay bounded
        keep = rb.view[:1]
        rb.lent()
        assert len(rb.spare) <= hotpath.SPARES
    del keep, third


# -- with --keylog (issue 14): the hot path once the handshake is over -------------------


class ClosingFirehose(Firehose):
    """Firehose that ends with close_notify (and waits for the client's)."""

    def handle(self, tls: ssl.SSLSocket) -> None:
        super().handle(tls)
        tls.unwrap()


@pytest.fixture(scope="module")
def closing_firehose(certs: Certs) -> Iterator[ClosingFirehose]:
    server = ClosingFirehose(certs.server_cert, certs.server_key)
    server.start()
    yield server
    server.close()


def _views(evs: list[dict[str, Any]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Handshake message types and alert names per side, as the log has them: plaintext
    messages, and the decrypted view (inline or completed by a late event)."""
    final: dict[tuple[str, int], dict[str, Any]] = {}
    for e in evs:
        if isinstance(e.get("decrypted"), dict):
            final[(e["from"], e["index"])] = e["decrypted"]
    types: dict[str, list[str]] = {"client": [], "server": []}
    alerts: dict[str, list[str]] = {"client": [], "server": []}
    for e in evs:
        if e["event"] != "record" or "from" not in e:
            continue
        side = e["from"]
        types[side] += [m["type"] for m in e.get("messages", [])]
        d = final.get((side, e["index"]))
        if d is not None:
            types[side] += [str(m["type"]) for m in d.get("messages", [])]
            if "alert" in d:
                alerts[side].append(d["alert"]["description"])
        elif isinstance(e.get("alert"), dict):
            alerts[side].append(e["alert"]["description"])
    return types, alerts


@pytest.mark.timeout(120)
def test_keylog_connection_takes_the_hot_path_and_still_names_what_it_promises(
        certs: Certs, tmp_path: Path, closing_firehose: ClosingFirehose,
        handovers: list[dict[str, Any]]) -> None:
    """With --keylog and no scenario, the connection is handed to the hot path right
    after its ClientHello (Connection.faultless); the relay reads the key log around
    each chunk while keys are due, as the full path does: every encrypted handshake
    message is opened, the records it skims later are opened where DESIGN.md promises
    (the NewSessionTickets, the close_notify alerts after 512 KiB of bulk: tshark reads
    the same from a capture with the same key log), bulk records are counted, not
    opened."""
    from tests.test_decrypt_real import tshark_view
    from tests.test_tshark import Capture

    keys = tmp_path / "keys.log"  # written by the client after the proxy started
    blocks = 8
    with inspector(closing_firehose.port, tmp_path, keylog=[keys]) as (port, log):
        cap = Capture(port, tmp_path / "cap.pcapng")
        try:
            got = download(port, certs, blocks, keylog=keys)
            deadline = time.monotonic() + 20
            # The close event comes once both directions ended, so the server's
            # close_notify went to the client before the capture's end marker.
            while not closes(log):
                assert time.monotonic() < deadline
                time.sleep(0.02)  # polling the log for the close event
        finally:
            cap.stop()
    assert got == (blocks << 16, Firehose.digest(blocks << 16))
    [hot] = handovers
    evs = [json.loads(x) for x in log.read_text().splitlines()]
    records = [e for e in evs if e["event"] == "record"]
    # Handed over before the handshake's encrypted part, which was opened all the same.
    hs_at = max(e["index"] for e in records if e["from"] == "client"
                and any(m["type"] == "finished" for m in
                        e.get("decrypted", {}).get("messages", [])))
    assert hot["index"] == {"client": 1, "server": 0} and hs_at > 1
    # Opened on the hot path: the server's closing alert (and its tickets).
    after = [e for e in records if e["from"] == "server"
             and e["index"] > hot["index"]["server"] and "decrypted" in e]
    assert any(e["decrypted"].get("alert", {}).get("description") == "close_notify"
               for e in after), after
    # Bulk records are counted, not opened (and never pending).
    bulk = [e for e in records if e["from"] == "server" and e["length"] > 512
            and e["index"] > hot["index"]["server"]]
    assert len(bulk) >= blocks and not any("decrypted" in e for e in bulk)
    # (A client's key log has the server's handshake secrets only once the client read
    # the ServerHello, after the proxy passed it on: those records are completed by
    # late events. Nothing stays pending.)
    final: dict[tuple[str, int], str] = {}
    for e in evs:
        if isinstance(e.get("decrypted"), dict):
            final[(e["from"], e["index"])] = e["decrypted"]["status"]
    assert set(final.values()) == {"decrypted"}, final
    theirs = tshark_view(tmp_path / "cap.pcapng", keys, port)
    types, alerts = _views(evs)
    assert "new_session_ticket" in types["server"]
    assert types == theirs.handshakes
    assert alerts == {"client": ["close_notify"], "server": ["close_notify"]}
    # tshark names them too, unless the capture lost a bulk segment under load (then
    # it cannot decrypt what follows): it never names anything else.
    assert all(theirs.alerts[side] in ([], alerts[side]) for side in alerts), theirs.alerts


@pytest.mark.timeout(120)
def test_keylog_connection_with_a_fault_that_needs_keys_stays_on_the_full_path(
        certs: Certs, tmp_path: Path, closing_firehose: ClosingFirehose,
        handovers: list[dict[str, Any]]) -> None:
    """A fault inside encryption that may still fire (a KeyUpdate the server never
    sends) keeps every record opened on the full path: no hand-over, and the bulk
    records are decrypted (inner type and length only)."""
    scen = tmp_path / "armed.yaml"
    scen.write_text("name: armed\nfaults:\n"
                    "  - match: {from: server, handshake: key_update}\n"
                    "    action: drop\n")
    keys = tmp_path / "keys.log"
    with inspector(closing_firehose.port, tmp_path, [scen], keylog=[keys]) as (port, log):
        assert download(port, certs, 4, keylog=keys) == (4 << 16, Firehose.digest(4 << 16))
    assert handovers == []
    evs = [json.loads(x) for x in log.read_text().splitlines()]
    bulk = [e for e in evs if e["event"] == "record" and e["from"] == "server"
            and e["length"] > 512 and e["content_type"] == "application_data"]
    assert bulk and all(e.get("decrypted", {}).get("inner_type") == "application_data"
                        for e in bulk)


def test_keyed_engine_settles_after_the_handshake_and_relays_like_the_full_path(
        tmp_path: Path) -> None:
    """Sans-io: with a key log the engine is settled once both Finished went by (not
    before), and a HotRelay fed the rest gives the full path's events, the decrypted
    tickets and close_notify alerts included."""
    from tlsinspector.proxy.keylog import KeyLog

    keys = tmp_path / "k.log"
    flights = conversation("1.3", response=b"z" * 120_000, keylog=keys)
    text = keys.read_text()

    def keyed() -> Connection:
        log = KeyLog()
        log.feed(text)
        return Connection("1", "c:1", "s:2", keylog=log)

    probe = keyed()
    probe.start(0.0)
    states = []
    for side, data in flights:
        probe.receive(side, data, 1.0)  # type: ignore[arg-type]
        states.append(probe.settled)
    assert not states[0] and not states[1] and any(states)
    conn = keyed()
    before, rest = settle(flights, conn)
    assert rest, "settled before its application data"

    layer = StubLayer()
    asyncio.run(relay_on_socketpairs(layer, conn, rest))
    outs = layer.outputs
    full = keyed()
    want: list[Output] = list(full.start(0.0))
    for side, data in flights:
        want += full.receive(side, data, 1.0)  # type: ignore[arg-type]
    want += full.eof("client", 2.0) + full.eof("server", 2.0) + full.finish(2.0)
    events = [o.event for o in before + outs if isinstance(o, Emit)]
    want_events = [o.event for o in want if isinstance(o, Emit)]
    for side in ("client", "server"):
        assert per_side(events, side) == per_side(want_events, side)
    hidden = [e["decrypted"] for e in events if e["event"] == "record"
              and "decrypted" in e and e["decrypted"].get("inner_type") != "handshake"
              and e["decrypted"].get("inner_type") != "application_data"]
    assert [d["alert"]["description"] for d in hidden] == ["close_notify", "close_notify"]


# -- with --pcap (issue 16): the hot path, its packets the raw payload relayed --------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("headers_only", [False, True])
def test_pcap_connection_takes_the_hot_path_and_each_leg_is_what_it_carried(
        certs: Certs, tmp_path: Path, firehose: Firehose, handovers: list[dict[str, Any]],
        headers_only: bool) -> None:
    """A `run --pcap` connection goes on the hot path once settled (it did not, before:
    about 6 times the CPU per byte), and the capture is still exact: per leg, tshark's
    reassembled TCP payload of our file equals dumpcap's of the same run (most of the
    2 MiB were relayed, and written, by the hot relay). With --pcap-headers-only the
    same records frame, application data zeroed."""
    from tests.test_pcap_run import follow, legs
    from tests.test_tshark import Capture
    from tlsinspector.proxy.records import Record, RecordFramer

    blocks = 32  # 2 MiB
    ours, real = tmp_path / "both.pcapng", tmp_path / "real.pcapng"
    pcap = {"tlsinspector_pcap": str(ours), "tlsinspector_pcap_headers_only": headers_only}
    with inspector(firehose.port, tmp_path, pcap=pcap) as (port, log):
        cap = Capture(port, real, firehose.port, buffer_mb=128)
        try:
            assert download(port, certs, blocks) == (blocks << 16,
                                                     Firehose.digest(blocks << 16))
            wait_close(log)
        finally:
            cap.stop()
    [hot] = handovers
    assert hot["index"]["server"] < 16   # handed over early: the bulk went the hot way
    [close] = closes(log)
    assert close["bytes"]["server"] > blocks << 16
    ours_legs, real_legs = legs(ours), legs(real)
    for (c, s), want in zip(sorted(ours_legs, key=lambda p: p[1] != port),
                            (port, firehose.port), strict=True):
        assert s == want   # the client leg first (to the proxy), then the server leg
        (rc, rs), = [p for p in real_legs if p[1] == want]
        got, carried = follow(ours, c, s), follow(real, rc, rs)
        assert len(got[1]) == len(carried[1]) > blocks << 16
        if not headers_only:
            assert got == carried
            continue
        for g_side, w_side in zip(got, carried, strict=True):
            g = [r for r in RecordFramer().feed(g_side) if isinstance(r, Record)]
            w = [r for r in RecordFramer().feed(w_side) if isinstance(r, Record)]
            assert [(r.content_type, r.length) for r in g] == [
                (r.content_type, r.length) for r in w]
            for a, b in zip(g, w, strict=True):
                assert a.payload == (bytes(len(b.payload)) if b.content_type == 23
                                     else b.payload)


def test_a_keyed_connection_is_relayable_before_its_keys_settle_and_they_still_come(
        tmp_path: Path) -> None:
    """Issue 14: handshake secrets that reach the key log late (a writer that buffers,
    a slow disk) left a keyed connection on the full path until they came. Now the
    hot relay takes it once relayable and reads the key log around each chunk (the
    layer's keys_before/keys_after) until it settles: the handshake records decrypt
    (late ``decrypted`` events), none stays pending, and the relay stops reading the
    key log once settled."""
    from tlsinspector.proxy.keylog import KeyLog

    keys = tmp_path / "k.log"
    flights = conversation("1.3", response=b"z" * 120_000, keylog=keys)
    lines = keys.read_text().splitlines(keepends=True)
    late = [x for x in lines if "_HANDSHAKE_TRAFFIC_SECRET" in x]
    assert len(late) == 2
    log = KeyLog()
    log.feed("".join(x for x in lines if x not in late))
    conn = Connection("1", "c:1", "s:2", keylog=log)
    before, rest = [], list(flights)
    now = time.time()  # the relay's clock: the key wait bound counts on it
    before += conn.start(now)
    while rest and not conn.relayable:
        side, data = rest.pop(0)
        before += conn.receive(side, data, now)  # type: ignore[arg-type]
    assert rest and conn.relayable and not conn.settled

    class KeyedStub(StubLayer):
        polls = 0

        def keys_before(self) -> None:
            self.polls += 1

        def keys_after(self) -> None:
            self.polls += 1
            if conn.needs_keys:  # the secret reaches the key log now
                log.feed("".join(late))
                self.outputs += conn.keys_arrived(time.time())

    layer = KeyedStub()

    r = asyncio.run(relay_on_socketpairs(layer, conn, rest, keyed=True))
    assert not r.keyed  # settled before the close (a closed engine is neither)
    polled = layer.polls
    assert 2 <= polled <= 2 * len(rest)
    events = [o.event for o in before + layer.outputs if isinstance(o, Emit)]
    late_events = [e for e in events if e["event"] == "decrypted"]
    pending = {(e["from"], e["index"]) for e in events if e["event"] == "record"
               and e.get("decrypted", {}).get("status") == "pending"}
    assert pending, "the handshake records waited for their keys"
    assert pending == {(e["from"], e["index"]) for e in late_events}
    assert any(m.get("type") == "certificate" for e in late_events
               for m in e["decrypted"].get("messages", []))


# -- issue 19's RSS row: what a hot idle connection lets go of ----------------------------


@pytest.fixture(scope="module")
def echo(certs: Certs) -> Iterator[EchoServer]:
    server = EchoServer(certs.server_cert, certs.server_key)
    server.start()
    yield server
    server.close()


def idle_client(port: int, certs: Certs) -> socket.socket:
    """A TLS 1.3 handshake through the proxy, then nothing: the raw socket, kept."""
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return socket.socket(fileno=ctx.wrap_socket(raw, server_hostname="localhost").detach())


def to_the_end(sock: socket.socket) -> None:
    """Read (the server's session tickets, unread by the detached client) up to the
    proxy's FIN; a timeout fails the test."""
    sock.settimeout(30)
    while sock.recv(4096):
        pass


def until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)  # polling the proxy's state and log


def on_loop(loop: asyncio.AbstractEventLoop, fn: Any) -> Any:
    """``fn()`` run on the proxy's event loop thread (what it reads is that thread's)."""
    return asyncio.run_coroutine_threadsafe(_call(fn), loop).result(30)


async def _call(fn: Any) -> Any:
    await asyncio.sleep(0)  # a turn: what was cancelled has finished
    return fn()


def per_connection_tasks() -> dict[str, int]:
    names: dict[str, int] = {}
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "?")
        names[name] = names.get(name, 0) + 1
    return names


def test_an_idle_hot_connection_keeps_no_timer_task_or_queue_the_relay_does_not_use(
        certs: Certs, tmp_path: Path, echo: EchoServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19's RSS row: once the hot relay has an idle connection's sockets,
    mitmproxy's watchdog task and the layer's idle wakeup timer are gone (the relay
    keeps both timeouts), the layers' event queues are lists, the full path's relay
    state is the shared empty one; and --idle-timeout still closes it, with its
    reason, and mitmproxy then cleans the connection up as before."""
    seen: dict[str, Any] = {}
    real = hotpath.maybe_take_over

    def spy(layer: Any, idle: float) -> Any:
        before = per_connection_tasks()
        relay = real(layer, idle)
        if relay is not None:
            seen.update(layer=layer, relay=relay, before=before,
                        loop=asyncio.get_running_loop(),
                        wakeups=[weakref.ref(t) for t in asyncio.all_tasks()
                                 if "wakeup" in t.get_coro().__qualname__],
                        proxyserver=mitm_internals.ctx.master.addons.get("proxyserver"))
        return relay

    monkeypatch.setattr(hotpath, "maybe_take_over", spy)
    # (Without detaching, as under mitmdump -s: mitmproxy's handler stays.)
    with inspector(echo.port, tmp_path, idle_timeout=1.5, detach=False) as (port, log):
        client = idle_client(port, certs)
        with client:
            until(lambda: "relay" in seen, "no hand-over")
            layer, relay = seen["layer"], seen["relay"]
            before = seen["before"]
            assert before.get("TimeoutWatchdog.watch") == 1 and seen["wakeups"]

            def after() -> tuple[dict[str, int], list[Any], list[str]]:
                gc.collect()
                queues = [type(x._paused_event_queue).__name__
                          for x in mitm_internals._layers(layer.context)]
                handler = mitm_internals._handler(layer.context)
                queues += [type(getattr(handler, name)).__name__
                           for name in ("wakeup_timer", "hook_tasks") if hasattr(handler, name)]
                return per_connection_tasks(), [w() for w in seen["wakeups"]], queues

            tasks, wakeups, queues = on_loop(seen["loop"], after)
            # The watchdog's and the wakeup timer's tasks ended (and the wakeup's was
            # collected: nothing refers to it); the handler's own three remain.
            assert "TimeoutWatchdog.watch" not in tasks
            assert not any("wakeup" in name for name in tasks)
            assert wakeups == [None] * len(wakeups)
            assert tasks.get("ConnectionHandler.handle_connection") == 1
            assert tasks.get("ConnectionHandler.open_connection") == 1
            # Three layers (mode, NextLayer, ours), none with a deque left; the
            # handler's task sets (one with mitmproxy 12) are lists.
            assert len(queues) >= 4 and not {"deque", "set"} & set(queues)
            assert layer._waiting is inspector_addon.HOT_WAITING
            assert layer._slice is inspector_addon.HOT_SLICE
            assert relay.idle_timeout == 1.5 and relay.dog_timeout > 0
            assert layer.engine.history.undecryptable is engine.NO_COUNTS
            # --idle-timeout: the relay's timer closes it (both sides see the end).
            to_the_end(client)
        until(lambda: closes(log), "no close event")
    [close] = closes(log)
    assert close["by"] == "proxy"
    assert close["reason"] == "idle timeout: no bytes either way for 1.5 s"
    assert not seen["proxyserver"].connections  # mitmproxy's handler ended as before
    assert not any(inspector_addon.HOT_WAITING.values())  # (shared: stays empty)


@pytest.mark.parametrize("detach", [False, True])
def test_mitmproxys_inactivity_timeout_and_the_shutdown_still_close_hot_connections(
        certs: Certs, tmp_path: Path, echo: EchoServer,
        monkeypatch: pytest.MonkeyPatch, detach: bool) -> None:
    """The relay's sweep does the watchdog's job: mitmproxy's inactivity timeout
    (shortened here for the first connection only) closes an idle hot connection
    the way mitmproxy does; the second stays open until the proxy shuts down, which
    logs its close event by the proxy. Detached or not (with ``detach`` mitmproxy's
    handler is gone: the relay keeps the timeout and closes the sockets itself)."""
    relays: list[Any] = []
    real = hotpath.maybe_take_over

    def spy(layer: Any, idle: float) -> Any:
        if not relays:  # mitmproxy's 600 s (its TCP_TIMEOUT / tcp_timeout), for a test
            dog = mitm_internals.timeout_watchdog(layer.context)
            assert dog is not None
            dog.timeout = 0.5
        relay = real(layer, idle)
        if relay is not None:
            relays.append(relay)
        return relay

    monkeypatch.setattr(hotpath, "maybe_take_over", spy)
    with inspector(echo.port, tmp_path, detach=detach) as (port, log):
        first = idle_client(port, certs)
        with first:
            until(lambda: len(relays) == 1, "no hand-over")
            started = time.monotonic()
            to_the_end(first)  # mitmproxy closed it on inactivity
            assert time.monotonic() - started >= 0.3
            until(lambda: closes(log), "no close event")
            assert relays[0].dog_timeout == 0.5 and relays[0].done
            assert relays[0].detached is detach
        second = idle_client(port, certs)
        try:
            until(lambda: len(relays) == 2, "no second hand-over")
            assert relays[1].dog_timeout > 500  # mitmproxy's own
            assert len(closes(log)) == 1
        except BaseException:
            second.close()
            raise
    # The shutdown (leaving the with, the client still there) logged the second
    # one's close, by the proxy, and closed it.
    with second:
        assert len(closes(log)) == 2 and closes(log)[1]["by"] == "proxy"
        to_the_end(second)


def chunks_held(task: asyncio.Task[Any]) -> list[int]:
    """Lengths of the bytes objects longer than one byte that the task's suspended
    coroutines hold (their frames' locals: gc.get_referents, no frame objects made)."""
    held, coro = [], task.get_coro()
    for _ in range(16):
        if coro is None:
            break
        held += [len(x) for x in gc.get_referents(coro)
                 if type(x) is bytes and len(x) > 1]
        coro = getattr(coro, "cr_await", None)
    return held


def test_a_hot_connections_read_tasks_let_go_of_their_last_chunk_and_hooks_keep_order(
        certs: Certs, tmp_path: Path, echo: EchoServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19's RSS row: once the relay has the sockets, neither of mitmproxy's read
    tasks still holds the last chunk it read (a handshake flight) -- and another
    addon (as loaded with ``mitmdump -s``) sees the same hooks in the same order as on
    the full path, the disconnects at the real close, after the close event."""
    seen: dict[str, Any] = {}
    hooks: list[tuple[str, bool]] = []
    real = hotpath.maybe_take_over

    def spy(layer: Any, idle: float) -> Any:
        relay = real(layer, idle)
        if relay is not None:
            seen.update(relay=relay, loop=asyncio.get_running_loop())
        return relay

    class Recorder:
        """A user's addon: each hook with whether the hot relay had ended then."""

        def _saw(self, name: str) -> None:
            relay = seen.get("relay")
            hooks.append((name, relay is not None and relay.done))

        def client_connected(self, client: Any) -> None:
            self._saw("client_connected")

        def server_connect(self, data: Any) -> None:
            self._saw("server_connect")

        def server_connected(self, data: Any) -> None:
            self._saw("server_connected")

        def server_disconnected(self, data: Any) -> None:
            self._saw("server_disconnected")

        def client_disconnected(self, client: Any) -> None:
            self._saw("client_disconnected")

    monkeypatch.setattr(hotpath, "maybe_take_over", spy)
    with inspector(echo.port, tmp_path, extra=[Recorder()], detach=False) as (port, log):
        client = idle_client(port, certs)
        with client:
            until(lambda: "relay" in seen, "no hand-over")

            def readers() -> dict[str, list[int]]:
                return {t.get_coro().__qualname__: chunks_held(t)
                        for t in asyncio.all_tasks() if t.get_coro().__qualname__ in (
                            "ConnectionHandler.handle_connection",
                            "ConnectionHandler.open_connection")}

            held = on_loop(seen["loop"], readers)
            assert set(held) == {"ConnectionHandler.handle_connection",
                                 "ConnectionHandler.open_connection"}
            assert held == {name: [] for name in held}
            assert not seen["relay"].done
            assert [h for h, _ in hooks] == ["client_connected", "server_connect",
                                             "server_connected"]
            client.shutdown(socket.SHUT_WR)  # the real close: the client's FIN
            to_the_end(client)
        until(lambda: len(hooks) == 5, "no disconnect hooks")
    [close] = closes(log)
    assert close["by"] == "client"
    assert hooks == [("client_connected", False), ("server_connect", False),
                     ("server_connected", False), ("server_disconnected", True),
                     ("client_disconnected", True)]


def mitmproxy_objects(layer: Any) -> dict[str, weakref.ref[Any]]:
    """Weak references to mitmproxy's per-connection objects of ``layer``'s connection:
    its handler, each side's StreamReader, StreamWriter and StreamReaderProtocol, the
    Context and its Client and Server."""
    handler = mitm_internals._handler(layer.context)
    assert handler is not None
    refs = {"handler": weakref.ref(handler), "context": weakref.ref(layer.context),
            "client": weakref.ref(layer.context.client),
            "server": weakref.ref(layer.context.server)}
    for conn, io in handler.transports.items():
        side = "client" if conn is layer.context.client else "server"
        assert type(io.reader) is asyncio.StreamReader
        refs.update({f"{side} reader": weakref.ref(io.reader),
                     f"{side} writer": weakref.ref(io.writer),
                     f"{side} protocol": weakref.ref(io.writer._protocol)})
    return refs


def test_a_detached_hot_connection_leaves_nothing_of_mitmproxy_and_still_relays(
        certs: Certs, tmp_path: Path, echo: EchoServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19's RSS row, ``tlsinspector_detach`` (as ``tlsinspector run`` sets it):
    once the relay has the sockets, mitmproxy's handler of the connection ends and
    its handler, streams, protocols, context and connection objects are freed (the
    disconnect hooks fire then, which is why only ``run`` detaches); the connection
    still relays both ways and closes with the client's FIN, logged as by the client
    with every byte counted."""
    seen: dict[str, Any] = {}
    hooks: list[tuple[str, bool]] = []
    real = hotpath.maybe_take_over

    def spy(layer: Any, idle: float) -> Any:
        refs = mitmproxy_objects(layer)
        relay = real(layer, idle)
        if relay is not None:
            seen.update(relay=relay, layer=layer, refs=refs,
                        loop=asyncio.get_running_loop(),
                        proxyserver=mitm_internals.ctx.master.addons.get("proxyserver"))
        return relay

    class Recorder:
        def client_disconnected(self, client: Any) -> None:
            relay = seen.get("relay")
            hooks.append(("client_disconnected", relay is not None and relay.done))

    monkeypatch.setattr(hotpath, "maybe_take_over", spy)
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with inspector(echo.port, tmp_path, extra=[Recorder()]) as (port, log):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
            until(lambda: "relay" in seen, "no hand-over")
            relay = seen["relay"]
            assert relay.detached and seen["layer"].context is None

            def alive() -> list[str]:
                gc.collect()
                return [name for name, ref in seen["refs"].items() if ref() is not None]

            # mitmproxy's end of the handler runs on the loop (a few turns).
            until(lambda: not on_loop(seen["loop"], alive), "mitmproxy's objects stay")
            assert not seen["proxyserver"].connections
            assert not any(t.get_coro().__qualname__.startswith("ConnectionHandler")
                           for t in on_loop(seen["loop"], asyncio.all_tasks))
            # (the consequence, documented: the hook comes at the hand-over)
            assert hooks == [("client_disconnected", False)]
            for size in (5, 70_000):  # both ways, through the relay alone
                tls.sendall(b"x" * size)
                got = b""
                while len(got) < size:
                    got += tls.recv(size - len(got))
                assert got == b"x" * size
            assert not relay.done
            end = socket.socket(fileno=tls.detach())
            with end:
                end.shutdown(socket.SHUT_WR)  # the real close: the client's FIN
                to_the_end(end)  # the server's end, relayed
            until(lambda: closes(log), "no close event")
        until(lambda: on_loop(seen["loop"], hotpath.detached_open) == 0, "sockets stay open")
    [close] = closes(log)
    assert close["by"] == "client"
    events = [json.loads(x) for x in log.read_text().splitlines()]
    for side in ("client", "server"):
        records = [e for e in events if e["event"] == "record" and e["from"] == side]
        assert close["records"][side] == len(records)
        assert close["bytes"][side] == sum(5 + e["length"] for e in records)
    assert close["records"]["client"] >= 4  # the hello, Finished, two app records+


def test_detach_is_set_by_run_only_and_off_under_mitmdump(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``tlsinspector_detach`` moves mitmproxy's disconnect hooks to the hand-over, so
    only ``tlsinspector run`` (its lean master, whose addons do not listen to them)
    turns it on; the option's default (``mitmdump -s``) and DumpMaster's full set of
    addons (TLSINSPECTOR_ALL_ADDONS) keep mitmproxy's handler to the real close."""
    from mitmproxy import options

    async def detach_option(env: bool) -> tuple[bool, bool]:
        if env:
            monkeypatch.setenv(runner.ALL_ADDONS_ENV, "1")
        else:
            monkeypatch.delenv(runner.ALL_ADDONS_ENV, raising=False)
        master, inspector_ = runner.build_master(("127.0.0.1", free_port()), "reverse",
                                                 "127.0.0.1:1", quiet=True)
        return master.options.tlsinspector_detach, inspector_.detach

    assert asyncio.run(detach_option(False)) == (True, True)
    assert asyncio.run(detach_option(True)) == (False, False)
    opts = options.Options()
    loader = type("Loader", (), {"add_option": lambda self, name, typespec, default, help,
                                 *a, **k: opts.add_option(name, typespec, default, help)})()
    inspector_addon.Inspector().load(loader)
    # mitmdump -s, unless --set tlsinspector_detach=true
    assert opts.tlsinspector_detach is False and opts.default("tlsinspector_detach") is False


def test_idle_timeout_closes_a_detached_hot_connection_with_its_reason(
        certs: Certs, tmp_path: Path, echo: EchoServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--idle-timeout on a detached connection: the relay's timer logs the close by the
    proxy with its reason and closes both sockets itself (mitmproxy no longer has
    them): the client sees the end, and no socket of the relay is left open."""
    relays: list[Any] = []
    real = hotpath.maybe_take_over

    def spy(layer: Any, idle: float) -> Any:
        relay = real(layer, idle)
        if relay is not None:
            relays.append((relay, asyncio.get_running_loop()))
        return relay

    monkeypatch.setattr(hotpath, "maybe_take_over", spy)
    with inspector(echo.port, tmp_path, idle_timeout=0.5) as (port, log):
        with idle_client(port, certs) as client:
            until(lambda: relays, "no hand-over")
            relay, loop = relays[0]
            assert relay.detached
            to_the_end(client)  # the proxy's FIN after the idle timeout
        until(lambda: closes(log), "no close event")
        until(lambda: on_loop(loop, hotpath.detached_open) == 0, "a socket stays open")
    [close] = closes(log)
    assert close["by"] == "proxy"
    assert close["reason"] == "idle timeout: no bytes either way for 0.5 s"
