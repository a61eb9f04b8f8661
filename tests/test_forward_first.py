"""Forward first, then look (issue 14): a chunk nothing can change is written before
the engine parses, decrypts and logs it. Sans-io, with real conversations
(tests/conversation.py): the engine must say so only when it is true, and what it
logs and sends must not depend on whether the caller took that offer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conversation import conversation
from tlsinspector.proxy.engine import Connection, Emit, Output, Send, Side
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.scenario import load_scenario_text

Flights = list[tuple[str, bytes]]


def _keyed(version: str, tmp: Path) -> tuple[Flights, str]:
    keys = tmp / f"keys-{version}.log"
    flights = conversation(version, response=b"r" * 40_000, keylog=keys)
    return flights, keys.read_text()


def _conn(text: str | None, faults: FaultPlanner | None = None) -> Connection:
    log = None
    if text is not None:
        log = KeyLog()
        log.feed(text)
    return Connection("1", "c:1", "s:2", keylog=log, faults=faults)


def _sent(outputs: list[Output], wire: dict[Side, bytearray]) -> None:
    for o in outputs:
        if type(o) is Send:
            wire[o.to] += o.data


def _drive(flights: Flights, conn: Connection, take_offer: bool, cuts: random.Random | None
           ) -> tuple[list[dict[str, object]], dict[Side, bytes], int]:
    """Events, the bytes that reached each side, and how many chunks went first."""
    outs: list[Output] = list(conn.start(0.0))
    wire: dict[Side, bytearray] = {"client": bytearray(), "server": bytearray()}
    first = 0
    for side_name, data in flights:
        side: Side = "client" if side_name == "client" else "server"
        peer: Side = "server" if side == "client" else "client"
        pieces = [data]
        if cuts is not None:
            at = sorted(cuts.sample(range(1, len(data)), min(3, len(data) - 1)))
            pieces = [data[a:b] for a, b in zip([0, *at], [*at, len(data)], strict=True)]
        for piece in pieces:
            forwarded = take_offer and conn.forwards_unchanged(side, piece)
            if forwarded:
                wire[peer] += piece
                first += 1
            got = conn.receive(side, piece, 1.0, forwarded)
            assert not (forwarded and any(type(o) is Send and o.data is piece for o in got))
            _sent(got, wire)
            outs += got
    for side in ("client", "server"):
        got = conn.eof(side, 2.0)  # type: ignore[arg-type]
        _sent(got, wire)
        outs += got
    outs += conn.finish(2.0)
    events = [o.event for o in outs if isinstance(o, Emit)]
    return events, {s: bytes(b) for s, b in wire.items()}, first


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("keys", [False, True])
def test_taking_the_offer_changes_neither_the_log_nor_the_wire(tmp_path: Path, version: str,
                                                               keys: bool) -> None:
    flights, text = _keyed(version, tmp_path)
    log = text if keys else None
    want_events, want_wire, _ = _drive(flights, _conn(log), False, None)
    events, wire, first = _drive(flights, _conn(log), True, None)
    assert events == want_events
    assert wire == want_wire
    assert wire["server"] == b"".join(d for s, d in flights if s == "client")
    assert wire["client"] == b"".join(d for s, d in flights if s == "server")
    # Every chunk goes first: the ClientHello (its first byte says TLS), the server's
    # flight (opening it is most of what keys cost) and the rest.
    assert first == len(flights)
    if keys:
        assert any("decrypted" in e for e in events)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_any_segmentation_gives_the_same_log_and_bytes(tmp_path_factory: pytest.TempPathFactory,
                                                        seed: int) -> None:
    flights, text = _keyed("1.3", tmp_path_factory.getbasetemp())
    want_events, want_wire, _ = _drive(flights, _conn(text), False, random.Random(seed))
    events, wire, first = _drive(flights, _conn(text), True, random.Random(seed))
    assert events == want_events and wire == want_wire and first > 0


def _plan(faults_yaml: str) -> FaultPlanner:
    return FaultPlanner([load_scenario_text(f"name: t\nfaults:\n{faults_yaml}", "t.yaml")],
                        1, random.Random(1))


def test_no_offer_while_a_fault_may_apply_or_bytes_wait(tmp_path: Path) -> None:
    flights, _ = _keyed("1.2", tmp_path)
    # A fault on the server's third record: nothing of either side goes first while
    # it may still apply (it may act on any later record, or send toward either side).
    conn = _conn(None, _plan("  - match: {from: server, index: 3}\n    action: drop\n"))
    conn.start(0.0)
    offers = []
    for side, data in flights:
        offers.append(conn.forwards_unchanged(side, data))  # type: ignore[arg-type]
        conn.receive(side, data, 1.0)  # type: ignore[arg-type]
    assert not any(offers[:2])
    # A delay on the server's first record: the client's next bytes may not pass the
    # server's delayed ones... but the offer is per direction: the *server's* later
    # bytes wait behind the queue, so no offer for them while it is non-empty.
    conn = _conn(None, _plan("  - match: {from: server, index: 1}\n"
                             "    action: delay\n    ms: 500\n"))
    conn.start(0.0)
    conn.receive("client", flights[0][1], 1.0)
    conn.receive("server", flights[1][1], 1.0)
    assert conn.backlog("client") > 0
    assert not conn.forwards_unchanged("server", flights[3][1])


def test_no_offer_while_the_first_bytes_may_be_a_plaintext_protocol(tmp_path: Path) -> None:
    flights, _ = _keyed("1.3", tmp_path)
    hello = flights[0][1]
    conn = _conn(None)
    conn.start(0.0)
    # A client's first bytes that are not TLS may be a plaintext protocol (SMTP's
    # EHLO before STARTTLS, a proxy's CONNECT): the engine may hold them.
    assert not conn.forwards_unchanged("client", b"EHLO mail.example\r\n")
    assert conn.forwards_unchanged("client", hello)
    # A server that speaks first (a banner): both sides wait for detection.
    conn = _conn(None)
    conn.start(0.0)
    conn.receive("server", b"220 mail.example ESMTP\r\n", 1.0)
    assert not conn.forwards_unchanged("client", b"EHLO x\r\n")
    assert not conn.forwards_unchanged("client", hello)


class _NoCompare(bytes):
    """A chunk that must never be compared by content (the hot relay's memoryview
    compares item by item: a 1 MiB read cost more than relaying it)."""

    def __eq__(self, other: object) -> bool:
        raise AssertionError("compared by content")

    __hash__ = bytes.__hash__


def test_the_forwarded_chunk_is_found_by_identity_not_content(tmp_path: Path) -> None:
    flights, _ = _keyed("1.3", tmp_path)
    conn = _conn(None)
    conn.start(0.0)
    rest = list(flights)
    while rest and not conn.settled:
        side, data = rest.pop(0)
        conn.receive(side, data, 1.0)  # type: ignore[arg-type]
    side, data = next((s, d) for s, d in rest if len(d) > 10_000)
    chunk = _NoCompare(data)
    assert conn.forwards_unchanged(side, chunk)  # type: ignore[arg-type]
    out = conn.receive(side, chunk, 1.0, True)  # type: ignore[arg-type]
    assert not [o for o in out if type(o) is Send]
    assert [e for e in (o.event for o in out if isinstance(o, Emit)) if e["event"] == "record"]
