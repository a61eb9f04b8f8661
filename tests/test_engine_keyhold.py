"""A fault that needs keys holds the record it must change until they arrive, for at
most ``key_wait`` (issue 14 part 3): real OpenSSL conversations (Python's ssl over
MemoryBIOs, tests/conversation.py) through the sans-io engine, with the key log
fed (or not) while records wait. Nothing else ever waits for keys."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.conversation import conversation
from tlsinspector.proxy import render
from tlsinspector.proxy.decrypt import Decryptor
from tlsinspector.proxy.engine import Close, Connection, Emit, Output, Send, Wakeup
from tlsinspector.proxy.faults import FaultPlanner
from tlsinspector.proxy.keylog import KeyLog
from tlsinspector.proxy.records import Record, RecordFramer
from tlsinspector.proxy.scenario import load_scenario_text

# A close_notify sealed before the server's first real application record.
INSERT = """name: hold
faults:
  - match: {from: server, encrypted: true, content_type: application_data, times: 1}
    action: insert-alert
    level: warning
    description: close_notify
    position: before
"""
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class Run:
    """One Connection fed a conversation's flights; what it sent and logged."""

    def __init__(self, tmp: Path, scenario: str | None = INSERT, version: str = "1.3",
                 key_wait: float = 2.0) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        keys = tmp / "keys.log"
        self.flights = conversation(version, response=RESPONSE, keylog=keys)
        self.text = keys.read_text()
        self.log = KeyLog()  # empty: the keys come (or not) while records wait
        plan = (FaultPlanner([load_scenario_text(scenario)], 1, random.Random(1))
                if scenario else None)
        self.conn = Connection("1", "c", "s", faults=plan, keylog=self.log, key_wait=key_wait)
        self.events: list[dict[str, Any]] = []
        self.sent: list[tuple[str, bytes]] = []  # (sender, bytes) in output order
        self.closes: list[str] = []
        self.wakeups: list[float] = []

    def take(self, outs: list[Output]) -> list[Output]:
        for o in outs:
            if isinstance(o, Emit):
                self.events.append(o.event)
            elif isinstance(o, Send):
                self.sent.append(("server" if o.to == "client" else "client", o.data))
            elif isinstance(o, Close):
                self.closes.append(o.to)
            elif isinstance(o, Wakeup):
                self.wakeups.append(o.at)
        return outs

    def feed_all(self, now: float) -> None:
        for side, data in self.flights:
            self.take(self.conn.receive(side, data, now))  # type: ignore[arg-type]

    def out_bytes(self, sender: str) -> bytes:
        return b"".join(d for s, d in self.sent if s == sender)

    def in_bytes(self, sender: str) -> bytes:
        return b"".join(d for s, d in self.flights if s == sender)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]


def _inner_records(r: Run) -> list[str]:
    """What the client received from the server, decrypted with the full key log:
    one summary per record (a wrong sequence number would be undecryptable)."""
    dec = Decryptor()
    log = KeyLog()
    log.feed(r.text)
    framers = {"client": RecordFramer(), "server": RecordFramer()}
    index = {"client": 0, "server": 0}
    out = []
    for side, data in r.sent:
        for item in framers[side].feed(data):
            assert isinstance(item, Record)
            index[side] += 1
            res = dec.record(side, index[side], item.header(), item.payload)  # type: ignore[arg-type]
            dec.keys_from(log)
            if side == "server" and res.status != "plaintext":
                out.append(res.summary())
    return out


def test_keys_arriving_in_time_let_the_fault_apply(tmp_path: Path) -> None:
    r = Run(tmp_path)
    r.feed_all(100.0)
    # The server's first encrypted record (#3, EncryptedExtensions) may be the one the
    # fault wants: held, with everything after it; the client's bytes all went on.
    held = [e for e in r.of("record") if e.get("held")]
    assert held and all(e["from"] == "server" for e in held)
    assert held[0]["index"] == 3 and held[0]["decrypted"]["status"] == "pending"
    assert r.out_bytes("client") == r.in_bytes("client")
    sh_ccs = r.in_bytes("server")[:len(r.out_bytes("server"))]
    assert r.out_bytes("server") == sh_ccs and len(sh_ccs) < len(r.in_bytes("server"))
    assert r.conn.holding_keys and r.conn.pending_timers
    assert r.wakeups == [102.0]  # the deadline: key_wait after the record arrived
    # What waits for keys counts toward --max-held: at least its bytes.
    waiting = len(r.in_bytes("server")) - len(r.out_bytes("server"))
    assert r.conn.held_bytes() >= waiting
    # Keys come: decrypted events at once, the records go on at the next wakeup.
    r.log.feed(r.text)
    r.take(r.conn.keys_arrived(100.5))
    assert not r.of("released") and r.of("decrypted")
    r.take(r.conn.wakeup(100.5))
    released = r.of("released")
    assert [e["index"] for e in released] == [e["index"] for e in held]
    faulted = [e for e in released if "fault" in e]
    assert len(faulted) == 1 and faulted[0]["fault"][0]["action"] == "insert-alert"
    assert "not_applied" not in faulted[0]["fault"][0]["detail"]
    assert faulted[0]["waited_ms"] == 500
    assert not r.conn.holding_keys
    # The client got a sealed close_notify before the response, and every later record
    # re-sealed with its number + 1: all of it decrypts.
    inner = _inner_records(r)
    assert not any(x.startswith("undecryptable") for x in inner), inner
    k = inner.index("ALERT warning close_notify (0)")
    assert inner[k + 1].startswith("application_data") and "close_notify" in inner[-1]
    assert "released after 500 ms | FAULT hold: insert-alert" in render.line(faulted[0])
    closes = [e for e in r.take(r.conn.finish(101.0)) if isinstance(e, Emit)]
    assert "fault-not-applied" not in str(closes[-1].event["diagnosis"])


def test_keys_that_never_arrive_release_the_record_unchanged(tmp_path: Path) -> None:
    r = Run(tmp_path, key_wait=0.25)
    r.feed_all(100.0)
    assert r.conn.holding_keys
    r.take(r.conn.wakeup(100.2))  # early: nothing moves
    assert not r.of("released") and r.conn.holding_keys
    r.take(r.conn.wakeup(100.25))
    released = r.of("released")
    assert released and not r.conn.holding_keys
    [first, *rest] = released
    why = first["fault"][0]["detail"]["not_applied"]
    assert why.startswith("no keys for server record 3 after 250 ms"), why
    assert "SERVER_HANDSHAKE_TRAFFIC_SECRET" in why
    assert not any("fault" in e for e in rest)  # given up: the later records do not wait
    # Byte for byte what the server sent, in order, and the connection goes on.
    assert r.out_bytes("server") == r.in_bytes("server")
    assert r.out_bytes("client") == r.in_bytes("client")
    more = b"\x17\x03\x03\x00\x20" + bytes(32)  # another record later: not held
    r.take(r.conn.receive("server", more, 100.3))
    assert r.out_bytes("server").endswith(more) and not r.conn.holding_keys
    close = [o.event for o in r.take(r.conn.finish(100.4)) if isinstance(o, Emit)][-1]
    [finding] = [d for d in close["diagnosis"] if d["code"] == "fault-not-applied"]
    assert "no keys for server record 3 after 250 ms" in finding["summary"]


def test_a_late_timer_still_gives_up_on_the_keys(tmp_path: Path) -> None:
    """Timers fire late on a busy proxy: a wakeup after --key-wait-ms has passed (not
    at the instant) releases the held records unchanged, and says how long they
    waited."""
    r = Run(tmp_path, key_wait=0.25)
    r.feed_all(100.0)
    r.take(r.conn.wakeup(100.7))
    released = r.of("released")
    assert released and not r.conn.holding_keys
    assert released[0]["waited_ms"] == 700
    assert released[0]["fault"][0]["detail"]["not_applied"].startswith(
        "no keys for server record 3 after 700 ms")
    assert r.out_bytes("server") == r.in_bytes("server")


def test_the_fin_waits_behind_held_records(tmp_path: Path) -> None:
    r = Run(tmp_path, key_wait=1.0)
    r.feed_all(100.0)
    r.take(r.conn.eof("server", 100.1))
    assert r.closes == [] and r.conn.pending_timers
    r.take(r.conn.wakeup(101.0))
    assert r.closes == ["client"]
    assert r.out_bytes("server") == r.in_bytes("server")
    r.take(r.conn.wakeup(102.0))  # a later timer: the FIN went out once
    assert r.closes == ["client"]


def test_only_the_record_a_fault_may_match_is_held(tmp_path: Path) -> None:
    """A fault on server record 9 holds nothing before it; no fault holds nothing."""
    one = INSERT.replace("times: 1", "index: 9")
    r = Run(tmp_path / "a", one)
    r.feed_all(100.0)
    held = [e["index"] for e in r.of("record") if e.get("held")]
    assert held and held[0] == 9
    n = len(r.in_bytes("server"))
    assert 0 < len(r.out_bytes("server")) < n
    r0 = Run(tmp_path / "b", None)
    for side, data in r0.flights:  # every chunk goes on in the call that brought it
        before = len(r0.sent)
        r0.take(r0.conn.receive(side, data, 100.0))  # type: ignore[arg-type]
        assert b"".join(d for _, d in r0.sent[before:]) == data
    assert not [e for e in r0.of("record") if e.get("held")] and not r0.wakeups


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_keys_already_there_hold_nothing(tmp_path: Path, version: str) -> None:
    r = Run(tmp_path, version=version)
    r.log.feed(r.text)
    r.feed_all(100.0)
    assert not r.conn.holding_keys and not r.of("released")
    faulted = [e for e in r.of("record") if "fault" in e]
    assert len(faulted) == 1 and faulted[0]["fault"][0]["action"] == "insert-alert"
    inner = _inner_records(r)
    assert "ALERT warning close_notify (0)" in inner[:-1], inner
    assert not any(x.startswith("undecryptable") for x in inner)


def test_tls13_hides_the_content_type_so_a_handshake_fault_holds_for_keys(
        tmp_path: Path) -> None:
    """TLS 1.3 records all say application_data outside (RFC 8446 5.2): a fault on an
    encrypted handshake record must hold the server's encrypted records until the keys
    tell their inner type, then apply to the first one (EncryptedExtensions, #3)."""
    r = Run(tmp_path, INSERT.replace("content_type: application_data",
                                     "content_type: handshake"))
    r.feed_all(100.0)
    held = [e for e in r.of("record") if e.get("held")]
    assert held and held[0]["from"] == "server" and held[0]["index"] == 3
    r.log.feed(r.text)
    r.take(r.conn.keys_arrived(100.5))
    r.take(r.conn.wakeup(100.5))
    faulted = [e for e in r.of("released") if "fault" in e]
    assert [e["index"] for e in faulted] == [3]
    assert faulted[0]["fault"][0]["action"] == "insert-alert"


def test_released_records_say_how_long_they_waited(tmp_path: Path) -> None:
    """Held at +0 s, released when key_wait (2 s) ran out: waited_ms is that wait."""
    r = Run(tmp_path, key_wait=2.0)
    r.feed_all(100.0)
    r.take(r.conn.wakeup(102.0))
    released = r.of("released")
    assert released and {e["waited_ms"] for e in released} == {2000}
    # README: the fault is reported as not applied "after 2000 ms" (the default wait).
    why = released[0]["fault"][0]["detail"]["not_applied"]
    assert why.startswith("no keys for server record 3 after 2000 ms ("), why


def test_a_partial_record_behind_held_records_goes_on_when_they_are_released(
        tmp_path: Path) -> None:
    """Records wait for keys, and the read after them ends inside a record: when the
    wait is over and no fault can apply any more, that record's first bytes go on
    with the released ones and its rest as it comes: byte for byte what was sent."""
    r = Run(tmp_path, key_wait=0.25)
    *head, (last_side, last) = r.flights
    assert last_side == "server" and len(last) > 3
    for side, data in [*head, (last_side, last[:-3])]:
        r.take(r.conn.receive(side, data, 100.0))  # type: ignore[arg-type]
    assert r.conn.holding_keys
    r.take(r.conn.wakeup(100.25))
    assert r.of("released") and not r.conn.holding_keys
    assert r.out_bytes("server") == r.in_bytes("server")[:-3]
    r.take(r.conn.receive("server", last[-3:], 100.3))
    assert r.out_bytes("server") == r.in_bytes("server")


def test_a_failure_while_releasing_loses_and_doubles_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error boundary around the release of held records: the server's flight
    waits for keys, the client's next flight goes on as it comes, then the release
    that follows it in the same call fails (a planted bug). Every byte arrives once,
    in order, and the failure is one internal_error event."""
    r = Run(tmp_path)
    (c1, hello), (s1, flight), *rest = r.flights
    assert (c1, s1, rest[0][0]) == ("client", "server", "client")
    r.take(r.conn.receive("client", hello, 100.0))
    r.take(r.conn.receive("server", flight, 100.0))
    assert r.conn.holding_keys

    def broken(*args: Any) -> None:
        raise RuntimeError("planted failure in a release")
    monkeypatch.setattr(r.conn, "_release_one", broken)
    r.log.feed(r.text)
    r.take(r.conn.keys_arrived(100.1))
    for side, data in rest:
        r.take(r.conn.receive(side, data, 100.2))  # type: ignore[arg-type]
    assert [e["error"] for e in r.of("internal_error")] == [
        "RuntimeError: planted failure in a release"]
    assert r.out_bytes("client") == r.in_bytes("client")
    assert r.out_bytes("server") == r.in_bytes("server")


def test_keys_that_reach_the_log_with_the_record_hold_nothing(tmp_path: Path) -> None:
    """The keys reach the shared key log after the ServerHello and CCS and before the
    record the fault matches (the key log timer has not run yet): that record's own call
    reads them, so the fault applies at once and nothing waits for keys."""
    r = Run(tmp_path)
    (c1, hello), (s1, flight), *rest = r.flights
    records = [x.raw for x in RecordFramer().feed(flight) if isinstance(x, Record)]
    r.take(r.conn.receive("client", hello, 100.0))
    # The ServerHello and the CCS: the engine looks for keys and finds none yet.
    r.take(r.conn.receive("server", b"".join(records[:2]), 100.0))
    r.log.feed(r.text)
    r.take(r.conn.receive("server", b"".join(records[2:]), 100.0))
    for side, data in rest:
        r.take(r.conn.receive(side, data, 100.0))  # type: ignore[arg-type]
    assert not r.conn.holding_keys and not r.of("released")
    assert not [e for e in r.of("record") if e.get("held")]
    faulted = [e for e in r.of("record") if "fault" in e]
    assert len(faulted) == 1 and faulted[0]["fault"][0]["action"] == "insert-alert"
    assert "ALERT warning close_notify (0)" in _inner_records(r)


def test_tls12_shows_the_content_type_so_only_matching_records_wait() -> None:
    """TLS 1.2 protects the payload only (RFC 5246 6.2.3): the record header's type is
    the real one. A fault inside the encryption on a handshake record never holds the
    server's encrypted close_notify (an alert record, type 21) for keys, even at the
    index it names."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        r = Run(Path(tmp), INSERT.replace("content_type: application_data, times: 1",
                                          "content_type: handshake, index: 9"),
                version="1.2")
    r.feed_all(100.0)
    server = [e for e in r.of("record") if e["from"] == "server"]
    assert server[8]["content_type"] == "alert" and server[8]["index"] == 9
    assert not [e for e in server if e.get("held")] and not r.conn.holding_keys
    assert r.out_bytes("server") == r.in_bytes("server")
    # The same fault on the encrypted Finished (record 7, a handshake record) holds it.
    with tempfile.TemporaryDirectory() as tmp:
        r = Run(Path(tmp), INSERT.replace("content_type: application_data, times: 1",
                                          "content_type: handshake, index: 7"),
                version="1.2")
    r.feed_all(100.0)
    assert [e["index"] for e in r.of("record") if e.get("held")][:1] == [7]
